"""Benchmark generation through ossrun's API against a bare llama-cpp-python loop, and time to first token.

On a full-size gpt-oss GGUF (by default the random-weight gpt-oss-20b that
``benchmarks/convert_benchmark.py`` leaves in ~/ossrun-bench):

1. Decode speed: ``Model.chat`` (the API path ``ossrun run`` and ``ossrun chat``
   call: harmony rendering, prefix reuse, sampling, harmony's streaming parser,
   typed events) against a bare loop over llama-cpp-python's C bindings
   (``llama_sampler_sample`` + a one-token ``llama_decode``) on a second context
   of the same loaded model: the same weights in memory, threads, context size
   and sampler (temperature 1, nothing else). Each token costs one sample and
   one decode in both.

   - interleaved (the figure): the two loops take turns token by token (the bare
     step runs inside the scheduler's sampler call and is not counted as ossrun's),
     so both see the same machine load, second by second. ossrun's time per token
     runs from the end of one sample to the end of the next in its engine thread:
     handing the token to the caller, building the next batch, the decode, the
     sample (the caller parses the token in its own thread meanwhile). Ratio of
     median times per token, per run.
   - whole runs: ``--tokens`` tokens through ossrun (``Reply.timings.decode_tps``),
     then as many through the bare loop, alternating: noisier on a shared machine.

2. Time to first token (a ``max_tokens=1`` call) with the prompt tokens
   evaluated: a first turn from an empty cache, a second turn in the same
   session (only the new tokens), and a second session, a new load, whose
   system prefix comes from the disk cache.

    python benchmarks/decode_benchmark.py --runs 5 --tokens 24

Target: ossrun's decode speed >= 97% of the bare loop's. The machine is shared:
medians, not means.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp

import ossrun
from ossrun.engine.protocol import Sampling
from ossrun.engine.sampler import build_sampler_chain

DEFAULT_MODEL = Path.home() / "ossrun-bench" / "gpt-oss-20b-random.gguf"  # left by benchmarks/convert_benchmark.py
DEFAULT_CTX = 4096
QUESTION = [{"role": "user", "content": "Explain, step by step, how a bicycle stays upright when it moves."}]
FOLLOW_UP = {"role": "user", "content": "And why is it harder to balance when it goes slowly?"}


class BareLoop:
    """The least Python one can put around llama.cpp: a context, a batch of one, a sampler chain."""

    def __init__(self, llama_model, threads: int, n_ctx: int, prompt: list[int]):
        params = llama_cpp.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = n_ctx, 512, 512
        params.n_threads = params.n_threads_batch = threads
        params.swa_full, params.no_perf = True, True
        self.ctx = llama_cpp.llama_init_from_model(llama_model, params)
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(512, 0, 1)
        self.prompt = prompt
        self.chain = None
        self._decode(prompt[:-1], 0)

    def _decode(self, tokens: list[int], pos: int) -> None:
        batch = self.batch
        for start in range(0, len(tokens), 512):
            chunk = tokens[start : start + 512]
            for i, token in enumerate(chunk):
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos + start + i, 1, False
                batch.seq_id[i][0] = 0
            batch.logits[len(chunk) - 1] = True
            batch.n_tokens = len(chunk)
            assert llama_cpp.llama_decode(self.ctx, batch) == 0

    def reset(self, seed: int) -> None:
        """Back to the prompt with its logits ready, as ossrun's prefill leaves it, and a fresh sampler."""
        n_prompt = len(self.prompt)
        llama_cpp.llama_memory_seq_rm(self.memory, 0, n_prompt - 1, -1)
        self._decode(self.prompt[-1:], n_prompt - 1)
        if self.chain is not None:
            llama_cpp.llama_sampler_free(self.chain)
        self.chain = build_sampler_chain(Sampling(seed=seed))
        self.pos = n_prompt

    def step(self) -> None:
        """One token: sample it, evaluate it."""
        batch = self.batch
        batch.token[0] = llama_cpp.llama_sampler_sample(self.chain, self.ctx, -1)
        batch.pos[0], batch.logits[0], batch.n_tokens = self.pos, True, 1
        llama_cpp.llama_decode(self.ctx, batch)
        self.pos += 1

    def run(self, n_tokens: int, seed: int) -> float:
        """Tokens per second of ``n_tokens`` samples and ``n_tokens - 1`` decodes, as ossrun counts them."""
        self.reset(seed)
        ctx, batch, chain, sample, decode = (
            self.ctx,
            self.batch,
            self.chain,
            llama_cpp.llama_sampler_sample,
            llama_cpp.llama_decode,
        )
        pos = self.pos
        start = time.perf_counter()
        for i in range(n_tokens):
            token = sample(chain, ctx, -1)
            if i == n_tokens - 1:
                break
            batch.token[0], batch.pos[0], batch.logits[0], batch.n_tokens = token, pos + i, True, 1
            decode(ctx, batch)
        return n_tokens / (time.perf_counter() - start)

    def close(self) -> None:
        llama_cpp.llama_sampler_free(self.chain)
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)


@dataclass
class Interleaved:
    """Seconds per token of both loops, and the part of ossrun's spent outside llama.cpp."""

    ossrun: list[float] = field(default_factory=list)
    bare: list[float] = field(default_factory=list)
    overhead: list[float] = field(default_factory=list)  # ossrun's time per token minus its sample and decode


def interleaved_run(model, bare: BareLoop, messages, n_tokens: int, seed: int) -> Interleaved:
    """ossrun and the bare loop taking turns token by token.

    The bare step runs inside the scheduler's call to sample a token (ossrun's engine thread),
    before the real sample on even tokens and after it on odd ones, so neither loop always
    follows the other; its time is left out of ossrun's.
    """
    bare.reset(seed)
    backend, times = model.engine._backend, Interleaved()
    real_sample, real_decode = backend.sample, backend.decode
    resumed = None  # when the scheduler got control back after sampling the previous token
    decoded = 0.0  # how long its last decode took
    count = 0

    def bare_step() -> None:
        start = time.perf_counter()
        bare.step()
        times.bare.append(time.perf_counter() - start)

    def sample_with_bare_step(sampler, index):
        nonlocal resumed, count
        entered = time.perf_counter()
        if count % 2 == 0:
            bare_step()
        sample_start = time.perf_counter()
        token = real_sample(sampler, index)
        sampled = time.perf_counter()
        if resumed is not None:  # hand over the last token, build the batch, evaluate it, sample this one
            times.ossrun.append((entered - resumed) + (sampled - sample_start))
            times.overhead.append(entered - resumed - decoded)
        if count % 2 == 1:
            bare_step()
        count += 1
        resumed = time.perf_counter()
        return token

    def timed_decode(entries, abort):
        nonlocal decoded
        start = time.perf_counter()
        code = real_decode(entries, abort)
        decoded = time.perf_counter() - start
        return code

    backend.sample, backend.decode = sample_with_bare_step, timed_decode
    try:
        reply = model.chat(messages, max_tokens=n_tokens, seed=seed)
    finally:
        del backend.sample, backend.decode
    assert reply.usage.completion_tokens == n_tokens and len(times.ossrun) == n_tokens - 1
    return times


def time_first_token(model, messages) -> tuple[float, int, int]:
    """(seconds to the first sampled token, prompt tokens evaluated, prompt tokens)."""
    start = time.perf_counter()
    reply = model.chat(messages, max_tokens=1, seed=0)
    return time.perf_counter() - start, reply.timings.prefill_tokens, reply.usage.prompt_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=32, help="tokens generated per run")
    parser.add_argument("--ctx", type=int, default=DEFAULT_CTX)
    parser.add_argument("--threads", type=int, default=None, help="default: the physical cores")
    args = parser.parse_args()

    os.environ.setdefault("OSSRUN_DATE", "2025-06-01")
    # A home of its own: the first session must start with no prefix cache on disk.
    os.environ["OSSRUN_HOME"] = tempfile.mkdtemp(prefix="ossrun-bench-")

    start = time.perf_counter()
    model = ossrun.load(args.model, ctx=args.ctx, threads=args.threads)
    threads = model.engine.threads
    print(f"{args.model.name}: loaded in {time.perf_counter() - start:.1f} s; {threads} threads, context {args.ctx}")

    first = time_first_token(model, QUESTION)  # evaluates the system prefix and saves it to disk
    turn = model.chat(QUESTION, max_tokens=args.tokens, seed=1)
    second = time_first_token(model, QUESTION + [turn.message(), FOLLOW_UP])

    # The bare loop shares the loaded weights (engine._model): both loops read the same memory.
    bare = BareLoop(model.engine._model, threads, args.ctx, model.render(QUESTION))
    interleaved, overhead = [], []
    for run in range(args.runs):
        times = interleaved_run(model, bare, QUESTION, args.tokens, seed=100 + run)
        o, b = statistics.median(times.ossrun), statistics.median(times.bare)
        interleaved.append((1 / o, 1 / b, b / o))
        overhead += times.overhead
        print(
            f"interleaved run {run + 1}: ossrun {1 / o:.3f} tok/s, bare loop {1 / b:.3f} tok/s, ratio {b / o:.3f}, "
            f"ossrun outside llama.cpp {statistics.median(times.overhead) * 1e6:.0f} us/token"
        )
    whole = []
    for run in range(args.runs):
        reply = model.chat(QUESTION, max_tokens=args.tokens, seed=200 + run)
        assert reply.usage.completion_tokens == args.tokens and reply.timings.prefill_tokens <= 1
        o, b = reply.timings.decode_tps, bare.run(args.tokens, seed=200 + run)
        whole.append((o, b, o / b))
        print(f"whole run {run + 1}: ossrun {o:.3f} tok/s, bare loop {b:.3f} tok/s, ratio {o / b:.3f}")
    bare.close()
    model.close()

    again = ossrun.load(args.model, ctx=args.ctx, threads=args.threads)
    session = time_first_token(again, QUESTION)
    again.close()

    print()
    print(f"decode, {args.tokens} tokens per run, {args.runs} runs (medians):")
    for label, runs in [("interleaved by token", interleaved), ("whole runs", whole)]:
        ossrun_tps, bare_tps, ratios = zip(*runs, strict=True)
        print(
            f"  {label:21s} ossrun {statistics.median(ossrun_tps):6.3f} tok/s, "
            f"bare loop {statistics.median(bare_tps):6.3f} tok/s, "
            f"ratio {statistics.median(ratios):.3f} (runs: {', '.join(f'{r:.3f}' for r in ratios)}; target >= 0.97)"
        )
    per_token = statistics.median(overhead)
    print(
        f"  ossrun's own work per token (parser, events, loop; outside llama.cpp): median {per_token * 1e6:.0f} us, "
        f"max {max(overhead) * 1e6:.0f} us = {per_token * statistics.median(r[0] for r in interleaved) * 100:.3f}% of a token"
    )
    print("time to first token (prompt tokens evaluated / prompt tokens):")
    for label, (seconds, evaluated, total) in [
        ("first turn, empty cache", first),
        ("second turn, same session", second),
        ("new session, prefix on disk", session),
    ]:
        print(f"  {label:29s} {seconds:7.2f} s   {evaluated:4d} / {total}")


if __name__ == "__main__":
    main()
