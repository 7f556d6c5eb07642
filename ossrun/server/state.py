"""What the server remembers between requests, bounded: tool-chain reasoning, stored responses.

Many clients do not send reasoning back (Open WebUI, on Chat Completions and on the Responses
API alike); the analysis of a turn that ended in tool calls is kept here by tool-call id, on
every API, so the chain of thought (and the KV prefix) survive the round trip. So is the
model's own JSON text of each call's arguments, which Anthropic's clients send back parsed.
Responses kept for ``previous_response_id`` live here too. The reasoning handed to clients in
``encrypted_content`` (Responses) or a thinking block's ``signature`` (Messages) is opaque and
versioned but needs no server state: it survives a restart.
"""

from __future__ import annotations

import base64
import collections
import json
import threading
import zlib
from typing import Any, Generic, TypeVar

DEFAULT_REASONING_ENTRIES = 1024
DEFAULT_STORED_RESPONSES = 256
ENCRYPTED_PREFIX = "ossrun.r1."  # the version of the opaque reasoning format
# How many bytes an opaque reasoning may inflate to, per character of it: prose inflates to about twice
# its encoded length, a crafted blob a thousandfold (a 16 MiB body of them would take 16 GB of memory).
MAX_INFLATION = 16

V = TypeVar("V")


class BoundedStore(Generic[V]):
    """A thread-safe map that forgets its least recently used entries past ``limit``."""

    def __init__(self, limit: int):
        self.limit = limit
        self._items: collections.OrderedDict[str, V] = collections.OrderedDict()
        self._lock = threading.Lock()

    def put(self, key: str, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.limit:
                self._items.popitem(last=False)

    def get(self, key: str) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def __len__(self) -> int:
        return len(self._items)


class ServerState:
    def __init__(self, *, reasoning_entries: int = DEFAULT_REASONING_ENTRIES, stored_responses: int = DEFAULT_STORED_RESPONSES):
        self.reasoning: BoundedStore[str] = BoundedStore(reasoning_entries)  # tool-call id -> reasoning
        self.arguments: BoundedStore[str] = BoundedStore(reasoning_entries)  # tool-call id -> the model's JSON text
        self.responses: BoundedStore[dict[str, Any]] = BoundedStore(stored_responses)  # response id -> conversation


def encode_reasoning(text: str) -> str:
    """Reasoning as the opaque ``encrypted_content`` a stateless client sends back."""
    data = zlib.compress(json.dumps({"reasoning": text}, ensure_ascii=False).encode())
    return ENCRYPTED_PREFIX + base64.urlsafe_b64encode(data).decode()


def decode_reasoning(blob: Any) -> str | None:
    """The reasoning in an ``encrypted_content`` made by :func:`encode_reasoning`; None for anything else."""
    if not isinstance(blob, str) or not blob.startswith(ENCRYPTED_PREFIX):
        return None
    inflater = zlib.decompressobj()
    try:
        packed = base64.urlsafe_b64decode(blob[len(ENCRYPTED_PREFIX) :].encode())
        inflated = inflater.decompress(packed, MAX_INFLATION * len(blob))
        if not inflater.eof:  # truncated, or past the bound: not one this server made
            return None
        data = json.loads(inflated)
    except (ValueError, zlib.error, UnicodeDecodeError):
        return None
    text = data.get("reasoning") if isinstance(data, dict) else None
    return text if isinstance(text, str) else None
