"""The Python API on the real engine with a tiny converted gpt-oss: load, generate, reuse, overflow, cancel."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import ossrun
from ossrun import home
from ossrun.engine.gguf_header import read_header
from ossrun.engine.protocol import GenerationRequest, Sampling
from ossrun.errors import ContextError, ModelError, OssrunError, VocabError
from ossrun.events import Done, FinalDelta, Notice, ReasoningDelta
from ossrun.harmony.prompt import PromptSettings, render_prefix, render_prompt
from ossrun.harmony.tiktoken_file import O200K_BASE_SHA256

pytestmark = pytest.mark.slow

DATA_VOCAB = __import__("pathlib").Path(ossrun.__file__).parent / "data" / "o200k_base.tiktoken"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
DATE = "2025-06-01"


def load(path, **options):
    return ossrun.load(path, threads=1, **{"ctx": 4096, **options})


@pytest.fixture(scope="module")
def model(tiny_gguf, tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:  # module scope: a home of its own
        patch.setenv("OSSRUN_HOME", str(tmp_path_factory.mktemp("home")))
        loaded = load(tiny_gguf)
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def small_model(tiny_gguf, tmp_path_factory):
    """A 512-token context: overflow is easy to reach."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OSSRUN_HOME", str(tmp_path_factory.mktemp("home")))
        loaded = load(tiny_gguf, ctx=512)
    yield loaded
    loaded.close()


def prompt_logits(model, prompt):
    """The logits after ``prompt``, as the engine's cache gives them now."""
    generation = model.engine.generate(
        GenerationRequest(tuple(prompt), Sampling(temperature=0), max_tokens=1, record_logits=True)
    )
    list(generation)
    return generation.stats.logits[0]


@pytest.fixture(autouse=True)
def _pinned_date(monkeypatch):
    monkeypatch.setenv("OSSRUN_DATE", DATE)


def test_load_returns_a_named_model(model, tiny_gguf):
    assert model.name == "tiny-gpt-oss"
    assert model.path == tiny_gguf
    assert model.n_ctx == 4096
    assert ossrun.load is ossrun.loading.load


def test_stream_ends_with_one_done_whose_reply_matches_the_events(model):
    events = list(model.stream(QUESTION, max_tokens=100, seed=0))
    assert isinstance(events[-1], Done) and sum(isinstance(e, Done) for e in events) == 1
    reply = events[-1].reply
    prompt = model.render(QUESTION)
    assert reply.finish_reason == "length"
    assert reply.usage.prompt_tokens == len(prompt)
    assert reply.usage.completion_tokens == reply.timings.decode_tokens == 100
    assert reply.context_used == len(prompt) + 99  # the last sampled token is never evaluated
    assert reply.context_size == 4096
    assert reply.final == "".join(e.text for e in events if isinstance(e, FinalDelta))
    assert reply.reasoning == "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    # A random tiny model does not speak harmony: its output is shown raw, with a notice.
    assert reply.malformed and reply.final
    assert any(isinstance(e, Notice) and "not valid harmony" in e.text for e in events)
    assert reply.timings.prefill_seconds > 0 and reply.timings.decode_seconds > 0


def test_same_seed_same_reply_and_chat_collects_stream(model):
    first = model.chat(QUESTION, max_tokens=100, seed=7)
    streamed = [e for e in model.stream(QUESTION, max_tokens=100, seed=7)][-1].reply
    assert first.final == streamed.final
    assert model.chat(QUESTION, max_tokens=100, seed=8).final != first.final


def test_default_sampling_reaches_the_engine(model, monkeypatch):
    seen = []
    real_generate = model.engine.generate
    monkeypatch.setattr(model.engine, "generate", lambda request: seen.append(request) or real_generate(request))
    reply = model.chat(QUESTION, max_tokens=3)
    assert [request.sampling for request in seen] == [Sampling(temperature=1.0, top_p=1.0, seed=None)]
    assert seen[0].max_tokens == 3 and reply.usage.completion_tokens == 3


def test_a_second_turn_evaluates_only_the_new_tokens(model):
    first_prompt = model.render(QUESTION)
    model.chat(QUESTION, max_tokens=8, seed=1)
    history = QUESTION + [{"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And of Italy?"}]
    second_prompt = model.render(history)
    assert second_prompt[: len(first_prompt)] == first_prompt
    new = len(second_prompt) - len(first_prompt)
    assert model.pending_tokens(history) == new
    reply = model.chat(history, max_tokens=8, seed=1)
    assert reply.usage.cached_tokens == len(first_prompt)
    assert reply.timings.prefill_tokens == new
    assert reply.usage.prompt_tokens == len(second_prompt)


def test_the_system_prefix_is_cached_on_disk_for_the_next_session(tiny_gguf):
    prefix = None
    first = load(tiny_gguf)
    try:
        prompt = first.render(QUESTION)
        prefix = render_prefix(first.encoding, PromptSettings(date=DATE))
        assert prompt[: len(prefix)] == prefix
        assert first.pending_tokens(QUESTION) == len(prompt)
        reply = first.chat(QUESTION, max_tokens=1)
        assert (reply.usage.cached_tokens, reply.timings.prefill_tokens) == (0, len(prompt))
        expected = prompt_logits(first, prompt)  # the prompt's last token is evaluated again, on its own
    finally:
        first.close()
    saved = list((home.cache_dir() / "prefix").glob("*.kv"))
    assert len(saved) == 1

    second = load(tiny_gguf)
    try:
        assert second.pending_tokens(QUESTION) == len(prompt) - len(prefix)
        reply = second.chat(QUESTION, max_tokens=1)
        assert reply.usage.cached_tokens == len(prefix)
        assert reply.timings.prefill_tokens == len(prompt) - len(prefix)
        np.testing.assert_allclose(prompt_logits(second, prompt), expected, rtol=0, atol=1e-4)
        # Other developer instructions are another prefix: nothing to reuse.
        assert second.pending_tokens(QUESTION, system="Answer in French.") > len(prompt) - len(prefix)
    finally:
        second.close()

    saved[0].write_bytes(b"damaged")
    third = load(tiny_gguf)
    try:
        reply = third.chat(QUESTION, max_tokens=1)
        assert reply.usage.cached_tokens == 0  # the damaged file is ignored...
    finally:
        third.close()
    fourth = load(tiny_gguf)
    try:
        assert fourth.chat(QUESTION, max_tokens=1).usage.cached_tokens == len(prefix)  # ...and replaced
    finally:
        fourth.close()


def long_history(turns: int) -> list[dict]:
    history = []
    for i in range(turns):
        history.append({"role": "user", "content": f"Question {i}: " + "tell me about the weather in Paris " * 4})
        history.append({"role": "assistant", "content": f"Answer {i}: " + "it is mild and often grey " * 5})
    return history + [{"role": "user", "content": "And in Rome?"}]


def test_context_overflow_drops_the_oldest_turns_with_a_notice(small_model):
    history = long_history(turns=8)
    assert len(render_prompt(small_model.encoding, history, PromptSettings(date=DATE))) > 512
    events = list(small_model.stream(history, max_tokens=4, seed=0))
    notice, reply = events[0], events[-1].reply
    dropped = reply.dropped_messages
    assert isinstance(notice, Notice)
    assert notice.text == (f"the conversation is longer than the context of 512 tokens: left out the {dropped} oldest messages")
    assert dropped % 2 == 0 and history[dropped]["role"] == "user"  # whole turns, oldest first
    budget = 512 - 4  # room is kept for the reply: max_tokens, at most a quarter of the context
    settings = PromptSettings(date=DATE)
    kept = render_prompt(small_model.encoding, history[dropped:], settings)
    one_more = render_prompt(small_model.encoding, history[dropped - 2 :], settings)
    assert len(kept) <= budget < len(one_more)  # no more than needed
    assert reply.usage.prompt_tokens == len(kept)
    assert small_model.render(history, max_tokens=4) == kept


def test_a_prompt_that_cannot_fit_even_alone_is_a_clear_error(small_model):
    huge = [{"role": "user", "content": "word " * 600}]
    with pytest.raises(ContextError) as error:
        list(small_model.stream(huge))
    message = str(error.value)
    assert message.startswith("the prompt is ")
    assert message.endswith(
        "more than the context of 512 tokens allows with 128 kept for the reply: shorten it or use a larger --ctx "
        f"(at least {-(-(int(message.split()[3]) + 1024) // 1024) * 1024})"
    )


def test_generation_stops_when_the_context_is_full(small_model):
    reply = small_model.chat(long_history(turns=1), seed=0)
    assert reply.finish_reason == "length"
    assert reply.context_used == 512
    assert reply.usage.prompt_tokens + reply.usage.completion_tokens == 513


def test_cancel_stops_the_reply_and_returns_what_was_made(model):
    cancel = threading.Event()
    events = []
    for event in model.stream(QUESTION, cancel=cancel, seed=0):
        events.append(event)
        if isinstance(event, FinalDelta):
            cancel.set()
    reply = events[-1].reply
    assert reply.finish_reason == "interrupted"
    assert reply.final == "".join(e.text for e in events if isinstance(e, FinalDelta))
    assert 0 < reply.usage.completion_tokens < 100

    cancel = threading.Event()
    cancel.set()  # before the prefill: nothing is evaluated
    list(model.engine.generate(GenerationRequest((200006,), max_tokens=1)))  # make the prompt not cached
    reply = model.chat(QUESTION, cancel=cancel)
    assert reply.finish_reason == "interrupted"
    assert reply.usage.completion_tokens == 0 and reply.final == ""


def test_bad_options_are_clear_errors(model):
    with pytest.raises(OssrunError, match="unknown reasoning effort 'extreme': use low, medium or high"):
        model.chat(QUESTION, reasoning_effort="extreme")
    with pytest.raises(OssrunError, match="temperature -1.0 is negative"):
        model.chat(QUESTION, temperature=-1)
    with pytest.raises(OssrunError, match="top_p 0.0 is out of range"):
        model.chat(QUESTION, top_p=0)
    with pytest.raises(OssrunError, match="max_tokens 0 is less than 1"):
        model.chat(QUESTION, max_tokens=0)
    with pytest.raises(TypeError, match="unknown option\\(s\\): top_k"):
        model.chat(QUESTION, top_k=40)


def test_system_text_becomes_the_developer_instructions(model):
    with_entry = [{"role": "system", "content": "Be brief."}] + QUESTION
    assert model.render(with_entry) == model.render(QUESTION, system="Be brief.")
    assert model.render(with_entry, system="Be verbose.") == model.render(QUESTION, system="Be verbose.")
    assert model.render(with_entry) != model.render(QUESTION)


# --- loading: checks before llama.cpp, memory, logs, vocabulary ------------------------------------


def test_bad_model_files_are_refused_before_loading(tmp_path, tiny_gguf):
    with pytest.raises(ModelError, match="model file not found"):
        ossrun.load(tmp_path / "missing.gguf")
    text = tmp_path / "notes.gguf"
    text.write_text("just some text\n")
    with pytest.raises(ModelError, match="is not a GGUF model file"):
        ossrun.load(text)
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(tiny_gguf.read_bytes()[: tiny_gguf.stat().st_size // 2])
    with pytest.raises(ModelError, match="is truncated"):
        ossrun.load(truncated)


def test_another_architecture_is_refused(tmp_path):
    from test_gguf_header import write_gguf

    with pytest.raises(ModelError, match="is a llama model, not gpt-oss"):
        ossrun.load(write_gguf(tmp_path / "llama.gguf", "llama"))


def test_a_model_that_does_not_fit_in_memory_is_refused_with_the_numbers(tiny_gguf, monkeypatch):
    from ossrun import machine
    from ossrun.engine import memory
    from ossrun.units import format_memory

    monkeypatch.setattr(machine, "available_memory", lambda: 32 * 2**20)
    header = read_header(tiny_gguf)
    plan = memory.plan(header, 65536)
    with pytest.raises(ModelError) as error:
        ossrun.load(tiny_gguf, ctx=65536)
    message = str(error.value)
    assert f"needs about {format_memory(plan.total)} at --ctx 65536" in message
    assert f"other weights {format_memory(plan.weights)}" in message
    assert f"KV cache (f16) {format_memory(plan.kv_cache)}" in message
    assert message.endswith(
        "but only 32 MiB is available: not even --ctx 1024 fits; use a smaller model, or close other programs"
    )
    with pytest.raises(ModelError, match="context size 200000 is out of range: use a --ctx between 1 and 131072"):
        ossrun.load(tiny_gguf, ctx=200000)


LOAD_AND_CHAT = """
import ossrun
model = ossrun.load({path!r}, ctx=1024, verbose={verbose})
reply = model.chat([{{"role": "user", "content": "Hi"}}], max_tokens=4, seed=0)
print(reply.finish_reason, reply.usage.completion_tokens)
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_llama_cpp_logs_stay_off_stderr_unless_verbose(tiny_gguf, tmp_path, verbose):
    """A fresh home: the vocabulary-only load runs too. Default threads (physical cores)."""
    script = textwrap.dedent(LOAD_AND_CHAT.format(path=str(tiny_gguf), verbose=verbose))
    env = {**__import__("os").environ, "OSSRUN_HOME": str(tmp_path / "home")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "length 4\n"
    if verbose:
        assert "llama_model_loader" in result.stderr and "gpt-oss" in result.stderr
    else:
        assert result.stderr == ""


def test_vocabulary_derived_from_the_model_checked_and_cached(tiny_gguf, monkeypatch):
    from ossrun.engine import llama as engine

    calls = []
    real_read = engine.read_token_bytes
    monkeypatch.setattr(engine, "read_token_bytes", lambda *a: calls.append(a) or real_read(*a))
    load(tiny_gguf).close()
    derived = home.cache_dir() / "vocab" / "o200k_base.tiktoken"
    assert hashlib.sha256(derived.read_bytes()).hexdigest() == O200K_BASE_SHA256
    assert derived.read_bytes() == DATA_VOCAB.read_bytes()
    assert len(calls) == 1
    load(tiny_gguf).close()
    assert len(calls) == 1  # this model file was checked before: no derivation
    derived.write_bytes(derived.read_bytes()[:-100])
    load(tiny_gguf).close()
    assert len(calls) == 2  # a damaged cache is derived again
    assert hashlib.sha256(derived.read_bytes()).hexdigest() == O200K_BASE_SHA256


def swap_first_two_tokens(source, target):
    """A copy of ``source`` whose tokens 0 and 1 ("!" and '"') trade places: not o200k any more."""
    data = bytearray(source.read_bytes())
    key = b"tokenizer.ggml.tokens"
    start = data.index(key) + len(key) + 4 + 4 + 8  # value type, item type, count
    first = data[start : start + 18]
    assert first == b"\x01" + b"\x00" * 7 + b"!" + b"\x01" + b"\x00" * 7 + b'"'
    data[start + 8], data[start + 17] = data[start + 17], data[start + 8]
    target.write_bytes(bytes(data))
    return target


def test_a_model_with_another_vocabulary_is_refused(tiny_gguf, tmp_path):
    other = swap_first_two_tokens(tiny_gguf, tmp_path / "other-vocab.gguf")
    with pytest.raises(VocabError, match="other-vocab does not use the o200k vocabulary of gpt-oss"):
        load(other)
    assert not (home.cache_dir() / "vocab" / "o200k_base.tiktoken").exists()


def test_copy_of_a_model_is_checked_again(tiny_gguf, tmp_path, monkeypatch):
    """The vocabulary check is remembered per model file (path, size, mtime), not per name."""
    from ossrun.engine import llama as engine

    calls = []
    real_read = engine.read_token_bytes
    monkeypatch.setattr(engine, "read_token_bytes", lambda *a: calls.append(a) or real_read(*a))
    load(tiny_gguf).close()
    copy = shutil.copy(tiny_gguf, tmp_path / "copy.gguf")
    load(copy).close()
    assert len(calls) == 2


def test_the_library_draws_nothing_and_says_how_far_the_load_is(tiny_gguf, capfd):
    fractions = []
    load(tiny_gguf, ctx=512, on_progress=fractions.append).close()
    assert capfd.readouterr().err == ""  # front ends draw the progress (ossrun.terminal.progress)
    assert fractions and fractions == sorted(fractions) and fractions[-1] == 1.0


def test_the_front_ends_draw_the_load_on_a_terminal_only(tiny_gguf):
    from rich.console import Console

    from ossrun.terminal.progress import loading

    shown = io.StringIO()
    with loading("tiny-gpt-oss", Console(file=shown, force_terminal=True, width=80)) as on_progress:
        load(tiny_gguf, ctx=512, on_progress=on_progress).close()
    assert "loading tiny-gpt-oss" in shown.getvalue() and "100%" in shown.getvalue()
    with loading("tiny-gpt-oss", Console(file=io.StringIO(), force_terminal=False)) as on_progress:
        assert on_progress is None
