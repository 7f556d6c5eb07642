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
import threading
import time
from dataclasses import dataclass
from typing import Optional, Sequence

from ossrun.engine.protocol import Interrupted, PrefillStats, Sampling, common_prefix_length

DEFAULT_N_CTX = 4096


def reply(reasoning: str, final: str) -> str:
    """The harmony text of a normal turn: analysis, then the final answer."""
    return (f"<|channel|>analysis<|message|>{reasoning}<|end|>"
            f"<|start|>assistant<|channel|>final<|message|>{final}<|return|>")


@dataclass
class Script:
    """One assistant turn to replay."""

    text: str  # harmony text after the prompt's "<|start|>assistant", e.g. reply(...)
    sigint_at_token: Optional[int] = None  # send SIGINT when this many tokens were sampled
    sigint_in_prefill: bool = False  # send SIGINT halfway through this turn's prefill


class ScriptedEngine:
    """Replays :class:`Script` turns in order, one per prefill."""

    def __init__(self, encoding, scripts: Sequence[Script | str], *, n_ctx: int = DEFAULT_N_CTX,
                 prefill_seconds_per_token: float = 0.0):
        self.encoding = encoding
        self.scripts = [s if isinstance(s, Script) else Script(s) for s in scripts]
        self._n_ctx = n_ctx
        self.prefill_seconds_per_token = prefill_seconds_per_token
        self._evaluated: list[int] = []
        self._turn: Optional[list[int]] = None
        self._script: Optional[Script] = None
        self._sampled = 0
        self.turns_started = 0
        self.prefills: list[PrefillStats] = []  # one per prefill call
        self.prompts: list[list[int]] = []  # the tokens each prefill was asked to hold
        self.samplings: list[Sampling] = []
        self.interruptions: list[str] = []  # "prefill" or "decode", each time cancel stopped the engine
        self.closed = False

    # -- the Engine protocol ---------------------------------------------

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    @property
    def evaluated(self) -> Sequence[int]:
        return tuple(self._evaluated)

    def prefill(self, tokens: Sequence[int], cancel: Optional[threading.Event] = None) -> PrefillStats:
        tokens = list(tokens)
        if len(tokens) > self._n_ctx:
            raise AssertionError(f"prefill of {len(tokens)} tokens past n_ctx {self._n_ctx}")
        self.prompts.append(tokens)
        self._turn = None  # the next sample starts the next script
        started = time.perf_counter()
        reused = common_prefix_length(self._evaluated, tokens)
        del self._evaluated[reused:]
        upcoming = self.scripts[self.turns_started] if self.turns_started < len(self.scripts) else None
        todo = tokens[reused:]
        for index, token in enumerate(todo):
            if upcoming is not None and upcoming.sigint_in_prefill and index == len(todo) // 2:
                upcoming.sigint_in_prefill = False  # once: /retry replays it in full
                os.kill(os.getpid(), signal.SIGINT)
            if self.prefill_seconds_per_token:
                time.sleep(self.prefill_seconds_per_token)
            if cancel is not None and cancel.is_set():
                self.prefills.append(PrefillStats(reused, index, time.perf_counter() - started))
                self.turns_started += 1  # the turn this prefill was for is over
                self.interruptions.append("prefill")
                raise Interrupted()
            self._evaluated.append(token)
        stats = PrefillStats(reused, len(todo), time.perf_counter() - started)
        self.prefills.append(stats)
        return stats

    def sample(self, sampling: Sampling) -> int:
        if self._turn is None:
            if self.turns_started >= len(self.scripts):
                raise AssertionError("the scripted engine ran out of scripts")
            self._script = self.scripts[self.turns_started]
            self._turn = self.encoding.encode(self._script.text, allowed_special="all")
            self.turns_started += 1
            self._sampled = 0
            self.samplings.append(sampling)
        if self._sampled >= len(self._turn):
            raise AssertionError("the model sampled past the end of its script (no stop token?)")
        token = self._turn[self._sampled]
        self._sampled += 1
        if self._script.sigint_at_token == self._sampled:
            os.kill(os.getpid(), signal.SIGINT)
        return token

    def append(self, token: int, cancel: Optional[threading.Event] = None) -> None:
        if cancel is not None and cancel.is_set():
            self.interruptions.append("decode")
            raise Interrupted()
        if len(self._evaluated) >= self._n_ctx:
            raise AssertionError("append past n_ctx")
        self._evaluated.append(token)

    def close(self) -> None:
        self.closed = True



def invoke(capsys, *args: str) -> tuple[int, str, str]:
    """Run the ``ossrun`` command line in this process: (exit code, stdout, stderr)."""
    import pytest

    from ossrun.cli import main

    with pytest.raises(SystemExit) as exited:
        main(list(args))
    captured = capsys.readouterr()
    return exited.value.code or 0, captured.out, captured.err
