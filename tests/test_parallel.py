"""Several replies decoded together on the real engine with the demo model.

Greedy answers do not depend on what else is in the batch; a cancelled prefill ends one
request while the others decode; each sequence reuses its own cache and the prefixes the
others hold.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import ossrun
from ossrun.events import Done, Prefill, ReasoningDelta
from ossrun.harmony.prompt import PromptSettings, render_prefix

pytestmark = pytest.mark.slow

DATE = "2025-08-05"
GREEDY = {"temperature": 0, "max_tokens": 200}
QUESTIONS = [
    ("What is 23 + 45?", "low"),
    ("What is 38 plus 47?", "high"),
    ("What's the sum of 19 and 64?", "medium"),
    ("What is the capital of France?", "low"),
    ("What's the capital city of Japan?", "medium"),
    ("What is the capital of Kenya?", "high"),
    ("Hello!", "low"),
    ("Hi there", "medium"),
    ("What is the meaning of life?", "low"),
    ("What will the stock market do tomorrow?", "medium"),
    ("What is 56 + 27?", "medium"),
    ("What is the capital of Brazil?", "high"),
    ("What is 71 + 18?", "low"),
    ("Write me a poem about the sea.", "high"),
    ("What is 44 + 39?", "high"),
    ("What is the capital of Spain?", "medium"),
]


@pytest.fixture(autouse=True)
def _pinned_date(monkeypatch):
    monkeypatch.setenv("OSSRUN_DATE", DATE)


@pytest.fixture(scope="module")
def parallel_model(demo_build):
    model = ossrun.load(demo_build, ctx=8192, parallel=4, threads=2)
    yield model
    model.close()


def ask(model, question, effort, **options):
    return model.chat([{"role": "user", "content": question}], reasoning_effort=effort, **{**GREEDY, **options})


def test_greedy_answers_do_not_depend_on_what_else_is_decoded(demo_build, parallel_model):
    with ossrun.load(demo_build, ctx=8192, threads=2) as alone:
        expected = [ask(alone, q, effort) for q, effort in QUESTIONS]
    steps_before = parallel_model.engine.scheduler.steps
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda qe: ask(parallel_model, *qe), QUESTIONS))
    for (question, _), one, many in zip(QUESTIONS, expected, together, strict=True):
        assert (many.reasoning, many.final, many.finish_reason) == (one.reasoning, one.final, one.finish_reason), question
        assert many.final and many.finish_reason == "stop"
    generated = sum(r.usage.completion_tokens for r in together)
    steps = parallel_model.engine.scheduler.steps - steps_before
    assert steps < generated * 0.6  # most steps decoded several sequences at once


def test_cancelling_one_prefill_leaves_the_others_decoding(parallel_model):
    long_question = "Please read all of this. " + "The quick brown fox jumps over the lazy dog. " * 300
    cancel = threading.Event()
    seen = []

    def long_one():
        for event in parallel_model.stream([{"role": "user", "content": long_question}], cancel=cancel, **GREEDY):
            seen.append(event)
            if isinstance(event, Prefill):
                threading.Timer(0.2, cancel.set).start()

    with ThreadPoolExecutor(4) as pool:
        others = [pool.submit(ask, parallel_model, q, effort) for q, effort in QUESTIONS[:3]]
        time.sleep(0.05)
        started = time.perf_counter()
        cancelled = pool.submit(long_one)
        cancelled.result(timeout=30)
        stopped_after = time.perf_counter() - started
        replies = [f.result(timeout=60) for f in others]
    reply = seen[-1].reply
    assert isinstance(seen[-1], Done) and reply.finish_reason == "interrupted"
    assert reply.timings.prefill_tokens < seen[0].tokens  # stopped while reading the prompt
    assert stopped_after < 5
    assert all(r.finish_reason == "stop" and r.final for r in replies)


def test_each_sequence_reuses_its_cache_and_shares_the_common_instructions(parallel_model):
    system = "You are a helpful assistant. Answer briefly and precisely, always in English. " * 8  # long shared instructions
    conversations = [[{"role": "user", "content": q}] for q, _ in QUESTIONS[:4]]
    first = []
    with ThreadPoolExecutor(4) as pool:
        first = list(pool.map(lambda m: parallel_model.chat(m, system=system, **GREEDY), conversations))
    head = render_prefix(parallel_model.encoding, PromptSettings(instructions=system, date=DATE))
    assert all(parallel_model.render(m, system=system)[: len(head)] == head for m in conversations)
    # They arrived together: one read the instructions, the others took its cells (or its state on disk).
    cached = sorted(r.usage.cached_tokens for r in first)
    assert cached[0] < len(head) <= cached[1], cached
    follow = [m + [r.message(), {"role": "user", "content": "Thanks!"}] for m, r in zip(conversations, first, strict=True)]
    with ThreadPoolExecutor(4) as pool:
        pending = [parallel_model.pending_tokens(m, system=system) for m in follow]
        second = list(pool.map(lambda m: parallel_model.chat(m, system=system, **GREEDY), follow))
    for m, reply in zip(follow, second, strict=True):
        previous = parallel_model.render(m[:-2], system=system)
        # Only what came after the previous prompt is new: the answer (rendered as history) and the question.
        assert reply.usage.cached_tokens >= len(previous)
        assert reply.timings.prefill_tokens <= reply.usage.prompt_tokens - len(previous)
    assert all(p < 60 for p in pending)


def test_reasoning_streams_from_several_threads_at_once(parallel_model):
    counts = {}

    def stream(question):
        events = list(parallel_model.stream([{"role": "user", "content": question}], reasoning_effort="high", **GREEDY))
        counts[question] = sum(isinstance(e, ReasoningDelta) for e in events)
        return events[-1].reply

    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(stream, [q for q, _ in QUESTIONS[:8]]))
    assert all(isinstance(r.final, str) and r.finish_reason == "stop" for r in replies)
    assert all(counts[q] > 0 for q, _ in QUESTIONS[:8])


def test_a_forced_continuation_is_scored_beside_others_as_alone(parallel_model):
    """Forced tokens replace sampling (scoring a known path): the logits of each step match the
    run that chose the path, here a greedy one alone, while three others decode beside it."""
    import numpy as np

    from ossrun.engine.protocol import GenerationRequest, Sampling

    engine = parallel_model.engine
    prompt = tuple(parallel_model.render([{"role": "user", "content": "What is 38 plus 47?"}], reasoning_effort="high"))
    alone = engine.generate(GenerationRequest(prompt, Sampling(temperature=0), max_tokens=24, record_logits=True))
    path = list(alone)
    others = [
        engine.generate(
            GenerationRequest(tuple(parallel_model.render([{"role": "user", "content": q}])), Sampling(seed=i), max_tokens=1500)
        )
        for i, (q, _) in enumerate(QUESTIONS[3:6])
    ]
    forced = path[:20]  # then greedy sampling takes over for the last four
    beside = engine.generate(
        GenerationRequest(prompt, Sampling(temperature=0), max_tokens=24, record_logits=True, forced=tuple(forced))
    )
    assert list(beside)[:20] == forced
    assert all(0 < other.stats.generated < 1500 for other in others)  # still decoding when it ended
    for other in others:
        other.close()
    a, b = np.array(alone.stats.logits), np.array(beside.stats.logits)
    assert a.shape == b.shape == (24, engine.n_vocab)
    cosine = (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.999
    assert (a.argmax(axis=1) == b.argmax(axis=1)).all()
    wrong = engine.generate(GenerationRequest(prompt, Sampling(temperature=0), max_tokens=3, forced=(path[1], path[0])))
    assert list(wrong)[:2] == [path[1], path[0]]  # forced means forced, whatever the model prefers
