"""The server's python tool: a working directory for each request's tool chain, or for each
conversation a client names.

``serve --tool python`` holds one ``PythonSandbox`` as the model of the others (its probe of the
jail, its notices, its description). A request gets a new session of it, with a working directory
of its own, made when its code first runs and removed when its reply ends: no client sees another's
files. A request that names a conversation (``"conversation": "ID"`` or ``{"id": "ID"}``, the
Responses API's field, taken by Chat Completions too) shares that conversation's session with its
other requests; a conversation's session is closed once it has been idle for ``IDLE_SECONDS``, or
when more than ``MAX_CONVERSATIONS`` are open (the least recently used first: each one's files are in
memory), and all of them when the server stops.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from ossrun.server.fields import bad_request
from ossrun.tools import PythonSandbox

MAX_CONVERSATIONS = 16  # each may hold up to SandboxLimits.disk_bytes of files in memory (its tmpfs)
IDLE_SECONDS = 3600.0
MAX_ID_LENGTH = 256


def conversation_of(body: Mapping[str, Any]) -> str | None:
    """The conversation a request names, if any."""
    value = body.get("conversation")
    if isinstance(value, Mapping):
        value = value.get("id")
        where = "conversation.id"
    else:
        where = "conversation"
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
        raise bad_request(f"{where} must be a conversation id: a string of 1 to {MAX_ID_LENGTH} characters", where)
    return value


class PythonSessions:
    """The python sandboxes of a server's requests and conversations, made from one ``prototype``."""

    def __init__(
        self,
        prototype: PythonSandbox,
        *,
        max_conversations: int = MAX_CONVERSATIONS,
        idle_seconds: float = IDLE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.prototype = prototype
        self.max_conversations = max_conversations
        self.idle_seconds = idle_seconds
        self.clock = clock
        self._conversations: OrderedDict[str, tuple[PythonSandbox, float]] = OrderedDict()
        self._lock = threading.Lock()

    def for_request(self, conversation: str | None) -> PythonSandbox | Callable[[], PythonSandbox]:
        """What a request's ``python_tool`` option is: its conversation's sandbox (kept), or the
        means to make one for its reply alone (``Model.stream`` closes that one when the reply ends)."""
        if conversation is None:
            return self.prototype.new_session
        now = self.clock()
        closing = []
        with self._lock:
            entry = self._conversations.pop(conversation, None)
            sandbox = entry[0] if entry else self.prototype.new_session()
            self._conversations[conversation] = (sandbox, now)
            for key, (other, used) in list(self._conversations.items()):
                if now - used > self.idle_seconds or len(self._conversations) > self.max_conversations:
                    closing.append(other)
                    del self._conversations[key]
        for other in closing:
            other.close()
        return sandbox

    def open_conversations(self) -> int:
        return len(self._conversations)

    def close(self) -> None:
        with self._lock:
            sandboxes = [sandbox for sandbox, _ in self._conversations.values()]
            self._conversations.clear()
        for sandbox in sandboxes:
            sandbox.close()
