"""What ossrun needs from an inference engine.

:class:`ossrun.engine.LlamaEngine` (llama.cpp) is the real one; tests also drive
the library with a scripted engine that replays token streams. Token ids in,
token ids out: prompts are rendered and outputs parsed by ``ossrun.harmony``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Optional, Protocol, Sequence

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
