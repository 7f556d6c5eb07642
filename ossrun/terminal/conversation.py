"""A chat session's state: the history, the reasoning effort, the system text.

The history is a list of OpenAI-style message dicts, exactly what ``Model.stream``
takes and what ``/save`` writes, so a saved file can be fed straight to the API.
The system text is kept apart and passed as ``system=`` so the history never
holds it twice; on disk it is the leading ``system`` message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ossrun import home as ossrun_home
from ossrun.defaults import DEFAULT_REASONING_EFFORT
from ossrun.errors import ConversationError
from ossrun.events import Reply
from ossrun.harmony.messages import REASONING_EFFORTS, ReasoningEffort, check_reasoning_effort, instructions_from

FILE_FORMAT_VERSION = 1
HISTORY_ROLES = ("user", "assistant", "tool")
SYSTEM_ROLES = ("system", "developer")
_TEXT_FIELDS = ("content", "reasoning", "name")


@dataclass
class Conversation:
    """What the next turn is asked with, and what ``/retry`` and ``/save`` need."""

    messages: list[dict[str, Any]] = field(default_factory=list)  # user/assistant/tool entries
    reasoning_effort: ReasoningEffort = DEFAULT_REASONING_EFFORT
    system: str | None = None  # developer instructions ("system prompt")
    last_question: str | None = None  # the latest user message, answered or not

    def __post_init__(self) -> None:
        self.reasoning_effort = check_reasoning_effort(self.reasoning_effort)

    # -- asking -----------------------------------------------------------

    def ask(self, question: str) -> list[dict[str, Any]]:
        """The messages for a turn answering ``question`` (the history is not changed yet)."""
        self.last_question = question
        return self.messages + [{"role": "user", "content": question}]

    def options(self) -> dict[str, Any]:
        """The keyword arguments of ``Model.stream`` this conversation decides."""
        return {"reasoning_effort": self.reasoning_effort, "system": self.system}

    def commit(self, question: str, reply: Reply) -> None:
        """Record an answered turn. An interrupted reply is not history: callers skip it.

        When the model dropped the oldest messages to fit its context, the same
        ones are dropped here so the history matches what the model saw.
        """
        self.messages.append({"role": "user", "content": question})
        self.messages.extend(reply.messages())  # tool calls and their results, then the answer
        if reply.dropped_messages:
            del self.messages[: reply.dropped_messages]

    def retry(self) -> str:
        """Forget the last answer (if it was recorded) and return the question to ask again."""
        question = self.last_question
        if question is None:
            raise ConversationError("nothing to retry yet: ask a question first")
        # The last answer is everything after the last user message (tool calls included).
        last_user = max((i for i, m in enumerate(self.messages) if m.get("role") == "user"), default=None)
        if (
            last_user is not None
            and last_user < len(self.messages) - 1
            and self.messages[-1].get("role") == "assistant"
            and self.messages[last_user] == {"role": "user", "content": question}
        ):
            del self.messages[last_user:]
        return question

    def reset(self) -> None:
        """Start over with the same effort and system text."""
        self.messages.clear()
        self.last_question = None

    def set_effort(self, value: str) -> None:
        self.reasoning_effort = check_reasoning_effort(value)

    # -- files ------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return {
            "version": FILE_FORMAT_VERSION,
            "reasoning_effort": self.reasoning_effort,
            "messages": head + [dict(m) for m in self.messages],
        }

    def save(self, path: Path) -> None:
        """Write the conversation as JSON, atomically: never a half-written file."""
        path = Path(path).expanduser()
        text = json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n"
        if not path.parent.is_dir():  # the user's own file: no folder is made for it
            raise ConversationError(f"cannot save to {path}: the folder {path.parent} does not exist")
        try:
            ossrun_home.write_atomically(path, text.encode("utf-8"))
        except OSError as exc:  # a folder in the way, no permission, a full disk: the chat goes on
            raise ConversationError(f"cannot save to {path}: {exc.strerror or exc}") from None

    @classmethod
    def load(cls, path: Path) -> Conversation:
        """Read a file written by :meth:`save`, or a bare JSON list of message dicts."""
        path = Path(path).expanduser()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConversationError(f"cannot load {path}: no such file") from None
        except IsADirectoryError:
            raise ConversationError(f"cannot load {path}: it is a folder, not a conversation file") from None
        except UnicodeDecodeError:
            raise ConversationError(f"cannot load {path}: it is not a text file") from None
        except json.JSONDecodeError as exc:
            raise ConversationError(f"cannot load {path}: not JSON ({exc.msg} at line {exc.lineno})") from None
        except OSError as exc:
            raise ConversationError(f"cannot load {path}: {exc.strerror or exc}") from None
        try:
            return cls.from_json(data)
        except ConversationError as exc:
            raise ConversationError(f"cannot load {path}: {exc}") from None

    @classmethod
    def from_json(cls, data: Any) -> Conversation:
        if isinstance(data, list):
            data = {"messages": data}
        if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
            raise ConversationError('expected {"messages": [...]} or a list of messages')
        effort = data.get("reasoning_effort", DEFAULT_REASONING_EFFORT)
        if effort not in REASONING_EFFORTS:
            raise ConversationError(f"unknown reasoning_effort {effort!r}: use low, medium or high")
        for index, message in enumerate(data["messages"]):
            _check_message(index, message)
        history = [dict(m) for m in data["messages"] if m["role"] not in SYSTEM_ROLES]
        last = next((m.get("content") for m in reversed(history) if m["role"] == "user"), None)
        # The system entries become the instructions exactly as Model.stream would read them.
        system = instructions_from(data["messages"])
        return cls(messages=history, reasoning_effort=effort, system=system, last_question=last)


def _check_message(index: int, message: Any) -> None:
    where = f"message {index + 1}"
    if not isinstance(message, dict):
        raise ConversationError(f"{where} is not an object with a role and a content")
    role = message.get("role")
    if role not in HISTORY_ROLES + SYSTEM_ROLES:
        raise ConversationError(f"{where} has an unknown role {role!r}: use system, user, assistant or tool")
    for key in _TEXT_FIELDS:
        if key in message and message[key] is not None and not isinstance(message[key], str):
            raise ConversationError(f"{where}: {key} must be a string")
    if role != "assistant" and not isinstance(message.get("content"), str):
        raise ConversationError(f"{where} ({role}) has no text content")
    if "tool_calls" in message and not isinstance(message["tool_calls"], list):
        raise ConversationError(f"{where}: tool_calls must be a list")
