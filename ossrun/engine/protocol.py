"""What ossrun needs from an inference engine.

:class:`ossrun.engine.llama.LlamaEngine` (llama.cpp) is the real one; tests also drive
the library with a scripted engine that replays token streams. Token ids in,
token ids out: prompts are rendered and outputs parsed by ``ossrun.harmony``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Optional, Protocol, Sequence, runtime_checkable

DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 1.0


@dataclass(frozen=True)
class Sampling:
    """OpenAI's recommendation for gpt-oss: temperature 1.0, top_p 1.0 and no other truncation."""

    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    seed: Optional[int] = None


@dataclass(frozen=True)
class PrefillStats:
    reused: int  # tokens already in the cache (the longest common prefix)
    evaluated: int  # tokens run through the model
    seconds: float


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share: what a KV cache holding ``a`` can keep for ``b``."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class Interrupted(Exception):
    """Generation was cancelled (Ctrl-C): raised by an engine from inside a prefill or a decode step."""


class Engine(Protocol):
    @property
    def n_ctx(self) -> int:
        """The context size in tokens."""

    @property
    def evaluated(self) -> Sequence[int]:
        """The tokens whose keys and values are in the cache, in order."""

    def prefill(self, tokens: Sequence[int], cancel: Optional[threading.Event] = None) -> PrefillStats:
        """Make the cache hold exactly ``tokens``: keep the longest common prefix, evaluate the rest.

        Raises :class:`Interrupted` soon after ``cancel`` is set, even mid-batch.
        """

    def sample(self, sampling: Sampling) -> int:
        """Draw the next token from the logits after the last evaluated token."""

    def append(self, token: int, cancel: Optional[threading.Event] = None) -> None:
        """Evaluate one more token."""

    def close(self) -> None:
        """Free the model and its context."""


@runtime_checkable
class PrefixStore(Protocol):
    """An engine that keeps the KV state of a prompt prefix on disk, so new sessions skip it."""

    def prefix_saved(self, tokens: Sequence[int]) -> bool:
        """Whether a state for exactly ``tokens`` is on disk."""

    def restore_prefix(self, tokens: Sequence[int]) -> bool:
        """Make the cache hold exactly ``tokens`` from disk; False if no usable state is saved."""

    def save_prefix(self, tokens: Sequence[int]) -> bool:
        """Save the cache to disk; it must hold exactly ``tokens``."""
