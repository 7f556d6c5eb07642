"""A scripted engine for REPL transcripts: replays harmony token streams, records what it evaluated.

It implements ``ossrun.engine.protocol.Engine`` like the llama.cpp one, minus the model:
its cache is the list of evaluated tokens (so prefix reuse is real and counted),
and each turn's "sampled" tokens come from a script written as harmony text and
encoded with the real o200k_harmony encoding. A script can also press Ctrl-C
(a real SIGINT to this process) at a chosen token, in the prefill or the decode.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ossrun.engine.protocol import GenerationRequest, GenerationStats, Occupancy, Sampling, common_prefix_length

DEFAULT_N_CTX = 4096


PLAIN = ("\x02", "\x03")  # text between these is ordinary text, even "<|start|>": the tokens a model writes it with


def plain(text: str) -> str:
    """``text`` for a script, encoded as ordinary tokens (special-token text included)."""
    return f"{PLAIN[0]}{text}{PLAIN[1]}"


def encode_script(encoding, text: str) -> list[int]:
    tokens: list[int] = []
    for number, part in enumerate(text.replace(PLAIN[1], PLAIN[0]).split(PLAIN[0])):
        if number % 2:
            tokens += encoding.encode(part, disallowed_special=())
        elif part:
            tokens += encoding.encode(part, allowed_special="all")
    return tokens


def reply(reasoning: str, final: str) -> str:
    """The harmony text of a normal turn: analysis, then the final answer."""
    return f"<|channel|>analysis<|message|>{reasoning}<|end|><|start|>assistant<|channel|>final<|message|>{final}<|return|>"


@dataclass
class Script:
    """One assistant turn to replay."""

    text: str  # harmony text after the prompt's "<|start|>assistant", e.g. reply(...)
    sigint_at_token: int | None = None  # send SIGINT when this many tokens were sampled
    sigint_in_prefill: bool = False  # send SIGINT halfway through this turn's prefill


@dataclass(frozen=True)
class PrefillStats:
    reused: int  # tokens already in the cache (the longest common prefix)
    evaluated: int  # tokens run through the model
    seconds: float


class ScriptedEngine:
    """Replays :class:`Script` turns in order, one per generation; one sequence, no threads."""

    parallel = 1

    def __init__(
        self, encoding, scripts: Sequence[Script | str], *, n_ctx: int = DEFAULT_N_CTX, prefill_seconds_per_token: float = 0.0
    ):
        self.encoding = encoding
        self.scripts = [s if isinstance(s, Script) else Script(s) for s in scripts]
        self._n_ctx = n_ctx
        self.prefill_seconds_per_token = prefill_seconds_per_token
        self._evaluated: list[int] = []
        self.turns_started = 0
        self.prefills: list[PrefillStats] = []  # one per generation that read its prompt
        self.prompts: list[list[int]] = []  # the tokens each generation was asked to hold
        self.samplings: list[Sampling] = []
        self.interruptions: list[str] = []  # "prefill" or "decode", each time cancel stopped the engine
        self.running = 0  # generations being iterated
        self.closed = False

    # -- the Engine protocol ---------------------------------------------

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    @property
    def evaluated(self) -> Sequence[int]:
        return tuple(self._evaluated)

    def cached_prefix(self, prompt: Sequence[int], prefix_length: int = 0) -> int:
        return common_prefix_length(self._evaluated, prompt)

    def occupancy(self) -> Occupancy:
        return Occupancy(busy=self.running, cells_used=len(self._evaluated))

    def generate(self, request: GenerationRequest) -> ScriptedGeneration:
        if len(request.prompt) > self._n_ctx:
            raise AssertionError(f"prefill of {len(request.prompt)} tokens past n_ctx {self._n_ctx}")
        return ScriptedGeneration(self, request)

    def close(self) -> None:
        self.closed = True


class ScriptedGeneration:
    def __init__(self, engine: ScriptedEngine, request: GenerationRequest):
        self.engine, self.request = engine, request
        self.stats = GenerationStats()
        tokens = list(request.prompt)
        engine.prompts.append(tokens)
        self.reused = common_prefix_length(engine._evaluated, tokens)
        del engine._evaluated[self.reused :]
        self.stats.cached = self.reused

    def pending(self) -> int:
        return len(self.request.prompt) - self.reused

    def close(self) -> None:
        pass

    def _cancelled(self) -> bool:
        return self.request.cancel is not None and self.request.cancel.is_set()

    def __iter__(self):
        self.engine.running += 1
        try:
            yield from self._run()
        finally:
            self.engine.running -= 1

    def _run(self):
        engine, request, stats = self.engine, self.request, self.stats
        upcoming = engine.scripts[engine.turns_started] if engine.turns_started < len(engine.scripts) else None
        todo = list(request.prompt)[self.reused :]
        started = time.perf_counter()
        for index, token in enumerate(todo):
            if upcoming is not None and upcoming.sigint_in_prefill and index == len(todo) // 2:
                upcoming.sigint_in_prefill = False  # once: /retry replays it in full
                os.kill(os.getpid(), signal.SIGINT)
            if engine.prefill_seconds_per_token:
                time.sleep(engine.prefill_seconds_per_token)
            if self._cancelled():
                engine.prefills.append(PrefillStats(self.reused, index, time.perf_counter() - started))
                engine.turns_started += 1  # the turn this prefill was for is over
                engine.interruptions.append("prefill")
                stats.evaluated, stats.finish_reason = index, "interrupted"
                stats.context_used = len(engine._evaluated)
                return
            engine._evaluated.append(token)
            stats.evaluated = index + 1  # live, as the real engine's: a server reports the prefill's progress
        engine.prefills.append(PrefillStats(self.reused, len(todo), time.perf_counter() - started))
        stats.evaluated = len(todo)
        stats.prefill_seconds = time.perf_counter() - started
        stats.finish_reason = "length"
        if self._cancelled():
            stats.finish_reason = "interrupted"
        else:
            decoding = time.perf_counter()
            yield from self._decode()
            stats.decode_seconds = time.perf_counter() - decoding
        stats.context_used = len(engine._evaluated)

    def _decode(self):
        engine, request, stats = self.engine, self.request, self.stats
        if engine.turns_started >= len(engine.scripts):
            raise AssertionError("the scripted engine ran out of scripts")
        script = engine.scripts[engine.turns_started]
        turn = encode_script(engine.encoding, script.text)
        engine.turns_started += 1
        engine.samplings.append(request.sampling)
        for sampled, token in enumerate(turn, start=1):
            if self._cancelled():
                stats.finish_reason = "interrupted"
                return
            if script.sigint_at_token == sampled:
                os.kill(os.getpid(), signal.SIGINT)
            stats.generated += 1
            yield token
            if token in request.stop_tokens:
                stats.finish_reason = "stop"
                return
            if (request.max_tokens is not None and sampled >= request.max_tokens) or len(engine._evaluated) >= engine.n_ctx:
                return
            if self._cancelled():
                engine.interruptions.append("decode")
                stats.finish_reason = "interrupted"
                return
            engine._evaluated.append(token)
        raise AssertionError("the model sampled past the end of its script (no stop token?)")


def invoke(capsys, *args: str) -> tuple[int, str, str]:
    """Run the ``ossrun`` command line in this process: (exit code, stdout, stderr)."""
    import pytest

    from ossrun.cli import main

    with pytest.raises(SystemExit) as exited:
        main(list(args))
    captured = capsys.readouterr()
    return exited.value.code or 0, captured.out, captured.err
