"""The llama.cpp engine on a tiny converted gpt-oss: prefix reuse, sampling, cancel, KV state on disk."""

from __future__ import annotations

import ctypes
import subprocess
import sys
import textwrap
import threading
import time

import llama_cpp
import numpy as np
import pytest

from ossrun.engine.gguf_header import check_gpt_oss
from ossrun.engine.llama import LlamaEngine, read_token_bytes
from ossrun.engine.memory import CacheSettings
from ossrun.engine.protocol import GenerationRequest, Sampling
from ossrun.engine.sampler import build_sampler_chain
from ossrun.errors import ContextError

pytestmark = pytest.mark.slow

THREADS = 1  # the tests share a 2-core machine: one thread per engine keeps timings sane
GREEDY = Sampling(temperature=0)


def random_tokens(n: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(0, 199998, n).tolist()


def run(engine, prompt, *, max_tokens=1, sampling=GREEDY, **options):
    """Generate to the end: (tokens, stats)."""
    generation = engine.generate(GenerationRequest(tuple(prompt), sampling, max_tokens=max_tokens, **options))
    try:
        tokens = list(generation)
    finally:
        generation.close()
    return tokens, generation.stats


def held(engine, seq: int = 0) -> list[int]:
    """What the cache of one sequence holds."""
    return list(engine.scheduler.slots[seq].tokens)


@pytest.fixture(scope="module")
def header(tiny_gguf):
    return check_gpt_oss(tiny_gguf)


@pytest.fixture(scope="module")
def engine(header, tmp_path_factory):
    engine = LlamaEngine(header, n_ctx=4096, threads=THREADS, cache_dir=tmp_path_factory.mktemp("cache"))
    yield engine
    engine.close()


def fresh_logits(header, tokens, tmp_path, n_ctx: int = 4096, **options) -> np.ndarray:
    """Logits after evaluating ``tokens`` from scratch in a new engine.

    Compare like with like: llama.cpp's one-token and many-token kernels round
    differently, so tests re-evaluate batches of tokens, never a single one.
    """
    other = LlamaEngine(header, n_ctx=n_ctx, threads=THREADS, cache_dir=tmp_path, **options)
    try:
        return run(other, tokens, record_logits=True)[1].logits[0]
    finally:
        other.close()


def test_a_prompt_keeps_the_longest_common_prefix(engine):
    a = random_tokens(300, seed=1)
    b = a[:200] + random_tokens(100, seed=2)
    first = run(engine, a)[1]
    assert (first.cached, first.evaluated) == (0, 300)
    second = run(engine, b)[1]
    assert (second.cached, second.evaluated) == (200, 100)
    assert held(engine) == b  # the sampled token is never evaluated
    again = run(engine, b)[1]  # all cached, but a finished reply's logits are gone: the last token again
    assert (again.cached, again.evaluated) == (299, 1)
    shorter = run(engine, b[:250])[1]
    assert (shorter.cached, shorter.evaluated) == (249, 1)
    assert held(engine) == b[:250]
    assert engine.cached_prefix(b) == 250


def test_generation_goes_on_until_the_context_is_full(header, tmp_path):
    small = LlamaEngine(header, n_ctx=256, threads=THREADS, cache_dir=tmp_path)
    try:
        tokens, stats = run(small, random_tokens(250), max_tokens=None)
        # 6 sampled tokens fill the 256 cells; the 7th is the last, not evaluated
        assert (stats.generated, stats.context_used, stats.finish_reason) == (7, 256, "length")
        assert len(tokens) == 7 and held(small) == random_tokens(250) + tokens[:6]
        with pytest.raises(ContextError, match="the prompt is 300 tokens but the context holds 256"):
            small.generate(GenerationRequest(tuple(random_tokens(300))))
    finally:
        small.close()


SWA_FULL = CacheSettings(swa_full=True)


def test_reused_prefix_gives_the_logits_of_a_fresh_evaluation(header, tmp_path):
    """1000 tokens kept of 2000, far past the 128-token window: exact with the full-size SWA cache."""
    a = random_tokens(2000, seed=4)
    b = a[:1000] + random_tokens(200, seed=5)
    full = LlamaEngine(header, n_ctx=4096, threads=THREADS, cache_dir=tmp_path, cache=SWA_FULL)
    try:
        run(full, a)
        stats = run(full, b, record_logits=True)[1]
    finally:
        full.close()
    assert (stats.cached, stats.evaluated) == (1000, 200)
    np.testing.assert_allclose(stats.logits[0], fresh_logits(header, b, tmp_path), rtol=0, atol=1e-4)


def test_the_small_swa_cache_cut_back_without_a_checkpoint_would_give_wrong_logits(header, tmp_path):
    """Why checkpoints exist: llama.cpp's small sliding-window cache, cut back 1000 positions and
    evaluated on from there, is wrong (the scheduler never does that: see the next test)."""
    from ossrun.engine.scheduler import Entry

    a = random_tokens(2000, seed=4)
    b = a[:1000] + random_tokens(200, seed=5)
    small = LlamaEngine(header, n_ctx=4096, threads=THREADS, cache_dir=tmp_path)
    try:
        backend = small.scheduler.backend
        run(small, a)
        assert backend.seq_min(0) > 1000 - backend.window  # the window before position 1000 is gone
        backend.seq_keep(0, 1000)
        entries = [Entry(0, token, 1000 + i, i == 199) for i, token in enumerate(b[1000:])]
        assert backend.decode(entries, None) == 0
        wrong = backend.logits(199)
        backend.seq_keep(0, 0)
        small.scheduler.slots[0].tokens = []
    finally:
        small.close()
    assert np.abs(wrong - fresh_logits(header, b, tmp_path)).max() > 0.01


@pytest.mark.parametrize("model", ["tiny_gguf", "demo_build"])
def test_a_restored_checkpoint_gives_the_logits_of_the_whole_evaluation(model, request, tmp_path):
    """The small cache: a prompt that parts from the cached one 1000 positions back restores the
    checkpoint kept there and gives, at every step of the reply, the logits of evaluating it whole
    (the tiny test model and the trained demo model)."""
    header = check_gpt_oss(request.getfixturevalue(model))
    mark = (11, 12)
    a = random_tokens(998, seed=4) + list(mark) + random_tokens(1000, seed=6)
    b = a[:1000] + random_tokens(200, seed=5)
    small = LlamaEngine(header, n_ctx=4096, threads=THREADS, cache_dir=tmp_path)
    try:
        run(small, a, checkpoint_after=(mark,))
        assert small.scheduler.slots[0].checkpoints.lengths == [1000, 2000]
        assert small.cached_prefix(b) == 1000
        path, stats = run(small, b, max_tokens=8, record_logits=True, checkpoint_after=(mark,))
        assert (stats.cached, stats.evaluated, stats.restored) == (1000, 200, 1000)
        # b sent again once the window has moved on (a retry): its last token from the checkpoint at its end.
        run(small, b + random_tokens(900, seed=7))
        again = run(small, b, record_logits=True)[1]
        assert (again.cached, again.evaluated, again.restored) == (1199, 1, 1200)
        # Another sequence of the same prefix shares it too: a second engine evaluates b whole.
        fresh = LlamaEngine(header, n_ctx=4096, threads=THREADS, cache_dir=tmp_path)
        try:
            whole = run(fresh, b, max_tokens=8, record_logits=True, forced=tuple(path))[1]
            assert (whole.cached, whole.evaluated) == (0, 1200)
        finally:
            fresh.close()
    finally:
        small.close()
    restored, expected = np.array(stats.logits), np.array(whole.logits)
    cosine = (restored * expected).sum(axis=1) / np.linalg.norm(restored, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() > 0.999
    assert (restored.argmax(axis=1) == expected.argmax(axis=1)).all()
    np.testing.assert_allclose(restored[0], expected[0], rtol=0, atol=1e-4)
    retry = again.logits[0]  # one token alone: llama.cpp's one-token kernels round a little differently
    assert retry @ expected[0] / np.linalg.norm(retry) / np.linalg.norm(expected[0]) > 0.999
    assert retry.argmax() == expected[0].argmax()


def test_the_small_cache_with_swa_full_beside_it_gives_the_same_logits(header, tmp_path):
    a = random_tokens(700, seed=14)
    small = fresh_logits(header, a, tmp_path)
    full = fresh_logits(header, a, tmp_path, cache=SWA_FULL)
    np.testing.assert_allclose(small, full, rtol=0, atol=1e-4)


def chain_stages(chain) -> list[str]:
    # llama.cpp marks samplers that could run on a GPU backend with a leading "?".
    return [
        llama_cpp.llama_sampler_name(llama_cpp.llama_sampler_chain_get(chain, i)).decode().lstrip("?")
        for i in range(llama_cpp.llama_sampler_chain_n(chain))
    ]


def apply_stages(chain, logits: np.ndarray, stages: int) -> tuple[np.ndarray, np.ndarray]:
    """Run the first ``stages`` samplers of ``chain`` on ``logits``: the surviving ids and their logits."""
    data = (llama_cpp.llama_token_data * len(logits))()
    for i, logit in enumerate(logits):
        data[i].id, data[i].logit, data[i].p = i, float(logit), 0.0
    candidates = llama_cpp.llama_token_data_array(data=data, size=len(logits), selected=-1, sorted=False)
    for i in range(stages):
        llama_cpp.llama_sampler_apply(llama_cpp.llama_sampler_chain_get(chain, i), ctypes.pointer(candidates))
    kept = [candidates.data[i] for i in range(candidates.size)]
    return np.array([c.id for c in kept]), np.array([c.logit for c in kept], dtype=np.float32)


def test_default_sampling_is_temperature_1_top_p_1_and_nothing_else(engine):
    """What llama.cpp is given: no top-k or min-p stage, no truncation, logits untouched, then a draw."""
    assert Sampling() == Sampling(temperature=1.0, top_p=1.0, seed=None)
    logits = run(engine, random_tokens(50, seed=6), record_logits=True)[1].logits[0]
    chain = build_sampler_chain(Sampling())
    try:
        assert chain_stages(chain) == ["temp", "dist"]
        ids, kept = apply_stages(chain, logits, stages=1)
        assert len(ids) == engine.n_vocab  # every token stays a candidate
        np.testing.assert_array_equal(kept[np.argsort(ids)], logits)
    finally:
        llama_cpp.llama_sampler_free(chain)
    # The same check sees truncation and scaling when they are asked for.
    chain = build_sampler_chain(Sampling(temperature=0.5, top_p=0.5))
    try:
        assert chain_stages(chain) == ["temp", "top-p", "dist"]
        ids, kept = apply_stages(chain, logits, stages=2)
        assert 0 < len(ids) < engine.n_vocab
        np.testing.assert_allclose(kept, logits[ids] * 2, rtol=1e-6)
    finally:
        llama_cpp.llama_sampler_free(chain)
    greedy = build_sampler_chain(Sampling(temperature=0))
    try:
        assert chain_stages(greedy) == ["greedy"]
    finally:
        llama_cpp.llama_sampler_free(greedy)


def test_greedy_takes_the_argmax_and_a_seed_repeats(engine):
    prompt = random_tokens(40, seed=7)
    tokens, stats = run(engine, prompt, record_logits=True)
    assert tokens == [int(np.argmax(stats.logits[0]))]

    def draw(seed: int) -> list[int]:
        return run(engine, prompt, max_tokens=8, sampling=Sampling(seed=seed))[0]

    assert draw(seed=11) == draw(seed=11)
    assert draw(seed=11) != draw(seed=12)


def test_cancel_stops_a_long_prefill_within_a_second(header, tmp_path):
    """32k tokens take many seconds even for the tiny model; cancel after 0.3 s, back well within a second."""
    n = 32768
    tokens = random_tokens(n, seed=8)
    long = LlamaEngine(header, n_ctx=n, threads=THREADS, cache_dir=tmp_path)
    try:
        cancel = threading.Event()
        timer = threading.Timer(0.3, cancel.set)
        start = time.perf_counter()
        timer.start()
        out, stats = run(long, tokens, cancel=cancel)
        stopped_after = time.perf_counter() - start
        timer.cancel()
        assert out == [] and stats.finish_reason == "interrupted"
        assert stopped_after < 1.3
        done = stats.evaluated
        assert 0 < done < n // 4  # the prefill had most of its work ahead of it
        assert held(long) == tokens[:done]  # what is recorded is what the cache holds
        # The cache is consistent: continuing reuses exactly what was kept and gives fresh logits.
        target = tokens[: done + 300]
        assert long.cached_prefix(target) == done
        stats = run(long, target, record_logits=True)[1]
        assert (stats.cached, stats.evaluated) == (done, 300)
        np.testing.assert_allclose(stats.logits[0], fresh_logits(header, target, tmp_path, n_ctx=n), rtol=0, atol=1e-4)
    finally:
        long.close()


def test_ctrl_c_stops_a_long_prefill_with_keyboard_interrupt(tiny_gguf):
    """Without a SIGINT handler of the caller's, Ctrl-C mid-prefill is a KeyboardInterrupt, promptly."""
    script = textwrap.dedent(
        f"""
        import os, signal, threading, time
        import numpy as np
        from ossrun.engine.llama import LlamaEngine
        from ossrun.engine.gguf_header import check_gpt_oss
        from ossrun.engine.protocol import GenerationRequest
        # As in a terminal, whatever the test runner's parent did with SIGINT (a background job ignores it).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        engine = LlamaEngine(check_gpt_oss({str(tiny_gguf)!r}), n_ctx=16384, threads=1, cache_dir={str(tiny_gguf.parent)!r})
        tokens = np.random.default_rng(0).integers(0, 199998, 16384).tolist()
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
        start = time.perf_counter()
        generation = engine.generate(GenerationRequest(tuple(tokens), max_tokens=1))
        try:
            list(generation)
            print("finished")
        except KeyboardInterrupt:
            generation.close()
            seconds = time.perf_counter() - start
            engine.close()  # waits for the engine to stop
            print("interrupted", seconds, time.perf_counter() - start, generation.stats.evaluated)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.stderr == ""
    word, seconds, stopped, evaluated = result.stdout.split()
    assert word == "interrupted"
    assert float(seconds) < 1.3 and float(stopped) < 1.3
    assert int(evaluated) < 8192


def test_prefix_state_saved_and_restored_by_a_new_engine(header, tmp_path):
    prefix = random_tokens(150, seed=9)
    prompt = prefix + random_tokens(60, seed=10)
    first = LlamaEngine(header, n_ctx=4096, threads=THREADS, cache_dir=tmp_path)
    try:
        assert first.cached_prefix(prompt, prefix_length=150) == 0
        stats = run(first, prompt, prefix_length=150, record_logits=True)[1]
        assert (stats.cached, stats.evaluated) == (0, 210)
        expected = stats.logits[0]
    finally:
        first.close()
    assert len(list((tmp_path / "prefix").glob("*.kv"))) == 1  # the prefix alone, read first and saved
    second = LlamaEngine(header, n_ctx=4096, threads=THREADS, cache_dir=tmp_path)
    try:
        assert second.cached_prefix(prompt, prefix_length=150) == 150
        assert second.cached_prefix(prompt) == 0  # without saying where the prefix ends, nothing is known
        stats = run(second, prompt, prefix_length=150, record_logits=True)[1]
        assert (stats.cached, stats.evaluated) == (150, 60)
        np.testing.assert_allclose(stats.logits[0], expected, rtol=0, atol=1e-4)
    finally:
        second.close()
    other_ctx = LlamaEngine(header, n_ctx=2048, threads=THREADS, cache_dir=tmp_path)
    try:
        assert other_ctx.cached_prefix(prompt, prefix_length=150) == 0  # a state is only valid for its context size
    finally:
        other_ctx.close()
    for cache in (SWA_FULL, CacheSettings("q8_0", "q8_0")):  # ... and its cache type and mode
        other_cache = LlamaEngine(header, n_ctx=4096, threads=THREADS, cache_dir=tmp_path, cache=cache)
        try:
            assert other_cache.cached_prefix(prompt, prefix_length=150) == 0
        finally:
            other_cache.close()


def test_token_bytes_from_a_vocabulary_only_load(tiny_gguf):
    pieces = read_token_bytes(tiny_gguf, 199998)
    assert len(pieces) == 199998
    assert pieces[:3] == [b"!", b'"', b"#"]
    assert pieces[220] == b" "  # GPT-2's byte-level 'Ġ' comes back as a space
    assert all(pieces)
