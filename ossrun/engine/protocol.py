"""What ossrun needs from an inference engine: token ids in, token ids out.

An engine takes :class:`GenerationRequest` s (a prompt's ids, how to sample, when to
stop) and returns a :class:`Generation` per request, an iterator over the sampled ids.
:class:`ossrun.engine.llama.LlamaEngine` (llama.cpp) is the real one, and it decodes
several requests together; tests also drive the library with a scripted engine that
replays token streams. Prompts are rendered and outputs parsed by ``ossrun.harmony``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ossrun.defaults import DEFAULT_TEMPERATURE, DEFAULT_TOP_P

EngineFinish = Literal["stop", "length", "interrupted"]


@dataclass(frozen=True)
class Constraint:
    """What the sampled tokens must follow: ``banned`` tokens are never sampled, and a grammar
    (GBNF, rule ``root``), if any, holds them to its language.

    With ``triggers`` (regular expressions) the grammar waits until the generated text matches
    one, and constrains from the start of that match on; otherwise from the first token.
    """

    grammar: str | None = None
    triggers: tuple[str, ...] = ()
    banned: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Sampling:
    """OpenAI's recommendation for gpt-oss: temperature 1.0, top_p 1.0 and no other truncation."""

    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    seed: int | None = None
    constraint: Constraint | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """One completion: evaluate ``prompt`` (reusing what the cache holds), then sample until
    a stop token (returned as the last token), ``max_tokens``, a full context or ``cancel``."""

    prompt: tuple[int, ...]
    sampling: Sampling = Sampling()
    stop_tokens: frozenset[int] = frozenset()
    max_tokens: int | None = None
    # The prompt's first tokens that every prompt of the same settings shares (the system and
    # developer messages): an engine may keep their state on disk for the next session.
    prefix_length: int = 0
    cancel: threading.Event | None = None
    record_logits: bool = False  # keep a copy of the logits each token was sampled from (tests, benchmarks)
    # Tokens to emit in this order instead of sampling (scoring a known continuation: each
    # step's logits then come from the same history as the run that chose them); sampling
    # takes over once they run out.
    forced: tuple[int, ...] = ()
    # Token sequences after which the history may later change (for harmony, the start of an
    # assistant message): with the small sliding-window cache, the engine keeps a checkpoint
    # there, in the prompt and in the generated text, so a later prompt that differs from
    # that point on is evaluated from there and not from the start.
    checkpoint_after: tuple[tuple[int, ...], ...] = ()


@dataclass
class GenerationStats:
    cached: int = 0  # prompt tokens reused from the KV cache (any sequence's) or restored from disk
    evaluated: int = 0  # prompt tokens run through the model (grows while the prompt is read)
    generated: int = 0  # tokens sampled
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    finish_reason: EngineFinish = "length"
    context_used: int = 0  # tokens the sequence's cache holds at the end (the last sample is not evaluated)
    restored: int = 0  # the length of the checkpoint the reused prefix was restored from (0: none was needed)
    logits: list[Any] = field(default_factory=list)  # with record_logits: one numpy array per sampled token


@dataclass(frozen=True)
class Occupancy:
    """What an engine holds at one moment, for a server's metrics."""

    busy: int = 0  # sequences running a request
    waiting: int = 0  # requests waiting for a free sequence
    cells_used: int = 0  # KV cells holding tokens; a prefix several sequences share counts once


class Generation(Protocol):
    def pending(self) -> int:
        """Wait until the prompt starts being read; how many of its tokens are evaluated (not cached).

        Returns at once (0) if the request ended before that, e.g. cancelled while queued.
        """

    def __iter__(self) -> Iterator[int]:
        """The sampled token ids as they come. Raises the engine's error (ContextError, ModelError)."""

    @property
    def stats(self) -> GenerationStats:
        """Counts and timings, final once the iteration has ended (``evaluated`` is live before)."""

    def close(self) -> None:
        """Stop the generation if it is still running and free what it holds."""


class Engine(Protocol):
    @property
    def n_ctx(self) -> int:
        """The context size in tokens: the KV cells all sequences share, and each one's limit."""

    @property
    def parallel(self) -> int:
        """How many requests are decoded together; more wait for a free sequence."""

    def generate(self, request: GenerationRequest) -> Generation:
        """Start ``request``; safe to call from several threads at once."""

    def cached_prefix(self, prompt: Sequence[int], prefix_length: int = 0) -> int:
        """How many leading tokens of ``prompt`` a generation started now would not evaluate."""

    def occupancy(self) -> Occupancy:
        """Busy sequences, waiting requests and KV cells used, now; safe from any thread."""

    def close(self) -> None:
        """Stop every generation and free the model."""


_BLOCK = 256  # tokens compared at once, at C speed, before looking for the first difference


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share: what a KV cache holding ``a`` can keep for ``b``."""
    a, b = list(a), list(b)
    n = min(len(a), len(b))
    start = 0
    while start < n and a[start : start + _BLOCK] == b[start : start + _BLOCK]:
        start += _BLOCK
    for i in range(start, min(n, start + _BLOCK)):
        if a[i] != b[i]:
            return i
    return n
