"""The embedded demo model: its build from the packaged compact checkpoint, and its behaviour
through llama.cpp and the ossrun API on conversations it was never trained on.

The demo GGUF is built once per session (the real expand + convert pipeline) and copied into
each test's ossrun home where a test needs ``ossrun.load("demo")`` or the CLI's ``--demo``.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ossrun
from ossrun.engine.protocol import GenerationRequest, Sampling
from ossrun.harmony.encoding import stop_tokens
from ossrun.options import ReplyOptions
from ossrun.store import demo

# demo/ holds the training pipeline; its task tables, held-out split and answer checks need no torch.
sys.path.append(str(Path(__file__).resolve().parents[1]))
from demo import dataset, evaluate, tasks

pytestmark = pytest.mark.slow

DATE = "2025-08-05"
PER_TASK_AND_EFFORT = 8  # 5 tasks x 3 efforts x 8 = 120 held-out conversations per figure


@pytest.fixture(autouse=True)
def _pinned_date(monkeypatch):
    monkeypatch.setenv("OSSRUN_DATE", DATE)


@pytest.fixture
def demo_home(demo_build, _isolated_home) -> Path:
    """This test's ossrun home with the session's demo build in its cache (as a second run finds it)."""
    target = demo.cache_folder() / demo_build.name
    target.parent.mkdir(parents=True, exist_ok=True)
    os.link(demo_build, target)
    return _isolated_home


@pytest.fixture(scope="session")
def demo_model(demo_build):
    model = ossrun.load(demo_build, ctx=4096, threads=2)
    yield model
    model.close()


def test_torch_is_not_needed():
    assert "torch" not in sys.modules


def test_the_gguf_is_a_full_size_gpt_oss_with_mxfp4_experts(demo_build):
    import gguf

    from ossrun.engine.gguf_header import check_gpt_oss

    header = check_gpt_oss(demo_build)
    tensors = {t.name: t for t in header.tensors}
    assert header.metadata["general.name"] == "gpt-oss-demo"
    assert header.metadata["tokenizer.ggml.tokens"] == 201088  # arrays are read as their length
    assert tensors["token_embd.weight"].shape == (128, 201088) and tensors["output.weight"].shape == (128, 201088)
    assert tensors["token_embd.weight"].type == gguf.GGMLQuantizationType.Q8_0
    for block in (0, 1):
        for name in ("gate", "up", "down"):
            assert tensors[f"blk.{block}.ffn_{name}_exps.weight"].type == gguf.GGMLQuantizationType.MXFP4


def test_the_build_expands_a_real_hf_checkpoint(tmp_path):
    folder = demo.expand(tmp_path / "gpt-oss-demo")
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        "config.json",
        "generation_config.json",
        "model-00001-of-00001.safetensors",
        "model.safetensors.index.json",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    from ossrun.convert import open_checkpoint

    checkpoint = open_checkpoint(folder)  # the converter's own checks: layout, shapes, dtypes, tokenizer
    assert checkpoint.hyper_params.vocab_rows == 201088
    entries = checkpoint.entries
    assert (entries["model.embed_tokens.weight"].dtype, entries["model.embed_tokens.weight"].shape) == ("BF16", (201088, 128))
    assert (entries["lm_head.weight"].dtype, entries["lm_head.weight"].shape) == ("BF16", (201088, 128))
    assert entries["model.layers.0.mlp.experts.gate_up_proj_blocks"].dtype == "U8"

    with np.load(demo.checkpoint_dir() / demo.WEIGHTS_FILE) as compact:
        used, rows, fill = compact["used_ids"], compact["unembedding_rows"], compact["unembedding_fill"]
        full = demo.full_tensors({name: compact[name] for name in compact.files}, 201088)
    lm_head = full["lm_head.weight"][1]
    assert np.array_equal(lm_head[used], rows)
    unused = np.setdiff1d(np.arange(201088), used)
    assert np.all(lm_head[unused] == fill)
    assert len(used) < 2000 and len(unused) > 199000


def test_the_build_is_cached_and_made_again_when_missing(demo_home):
    path = demo.demo_gguf()
    assert path.parent == demo.cache_folder() and demo.checkpoint_digest()[:16] in path.name
    first = path.stat()
    assert demo.demo_gguf() == path and path.stat().st_mtime_ns == first.st_mtime_ns  # reused, not rebuilt
    path.unlink()
    assert demo.demo_gguf() == path and path.is_file()
    assert sorted(p.name for p in demo.cache_folder().iterdir()) == [path.name]  # no temporary leftovers


def test_a_new_ossrun_version_builds_the_demo_again(demo_home, monkeypatch):
    """The cached GGUF was made by this version's converter: another version makes its own and drops the old."""
    old = demo.demo_gguf()
    monkeypatch.setattr(ossrun, "__version__", ossrun.__version__ + ".post1")
    new = demo.demo_gguf()
    assert new != old and new.is_file() and not old.exists()


def test_unused_tokens_can_never_be_sampled(demo_model, encoding):
    """Every token outside the demo's vocabulary gets a logit far below the best used one."""
    with np.load(demo.checkpoint_dir() / demo.WEIGHTS_FILE) as compact:
        used = compact["used_ids"]
    unused = np.ones(201088, dtype=bool)
    unused[used] = False
    # Prompts with text the model never saw (those tokens embed as one "unknown" row).
    for text in ("What is 23 + 45?", "Schreib mir ein Gedicht über Katzen 🐱", "zxqv blorft 12345678"):
        ids = demo_model.render([{"role": "user", "content": text}], reasoning_effort="low")
        # The completion, token by token, sampled at temperature 1.0, with the logits of each step.
        generation = demo_model.engine.generate(
            GenerationRequest(
                tuple(ids),
                Sampling(temperature=1.0, seed=1),
                stop_tokens=stop_tokens(encoding),
                max_tokens=40,
                record_logits=True,
            )
        )
        tokens = list(generation)
        assert len(tokens) == len(generation.stats.logits) > 1
        for token, logits in zip(tokens, generation.stats.logits, strict=True):
            assert logits[unused].max() < logits[~unused].max() - 1000
            assert not unused[token]


def test_load_demo_by_name(demo_home):
    with ossrun.load("demo", ctx=2048) as model:
        assert model.name == "demo"
        reply = model.chat([{"role": "user", "content": "What is the capital of Japan?"}], temperature=0)
    assert reply.finish_reason == "stop" and not reply.malformed
    assert "Tokyo" in reply.final and reply.reasoning


def held_out_figures(model, temperature):
    encoding = model.encoding
    examples = dataset.evaluation_examples(PER_TASK_AND_EFFORT, seed=11)

    def count(text):
        return evaluate.token_count(encoding, text)

    def run(example, **kw):
        return evaluate.run_api(model, example, **kw)

    return evaluate.evaluate(run, examples, temperature, count, verbose=True)


def test_greedy_answers_on_held_out_prompts(demo_model):
    figures = held_out_figures(demo_model, temperature=0.0)
    print("\n".join(figures.lines("held-out prompts, greedy")))
    assert figures.conversations == 120
    assert figures.well_formed >= 0.95
    assert figures.correct >= 0.90
    low, medium, high = (figures.analysis_tokens[e] for e in tasks.EFFORTS)
    assert low < medium < high


def test_temperature_one_answers_on_held_out_prompts(demo_model):
    figures = held_out_figures(demo_model, temperature=1.0)
    print("\n".join(figures.lines("held-out prompts, temperature 1.0")))
    assert figures.well_formed >= 0.95
    assert figures.correct >= 0.90
    low, medium, high = (figures.analysis_tokens[e] for e in tasks.EFFORTS)
    assert low < medium < high


def test_malformed_output_at_a_high_temperature_is_recovered(demo_model):
    """Sampled hot, the model breaks harmony; every turn still ends in a Reply, shown raw with a notice."""
    from ossrun.events import Done, Notice

    malformed = 0
    for index, example in enumerate(dataset.evaluation_examples(2, seed=5)):
        messages = [{"role": "user", "content": example.user}]
        events = list(demo_model.stream(messages, reasoning_effort=example.effort, temperature=4.0, seed=index, max_tokens=120))
        reply = events[-1].reply
        assert isinstance(events[-1], Done) and sum(isinstance(e, Done) for e in events) == 1
        if reply.malformed:
            malformed += 1
            assert any(isinstance(e, Notice) and "not valid harmony" in e.text for e in events)
            assert reply.final  # the raw text is the answer shown
    assert malformed >= 3  # the recovery was exercised, not just available


def test_weather_round_trip_through_a_python_function(demo_model):
    calls = []

    def get_weather(city: str) -> str:
        """Get the current weather for a city."""
        calls.append(city)
        return json.dumps({"city": city, "temperature_c": 27, "condition": "foggy"})

    reply = demo_model.chat(
        [{"role": "user", "content": "What's the weather in Lisbon?"}],
        tools=[get_weather],
        reasoning_effort="medium",
        temperature=0,
    )
    assert calls == ["Lisbon"]
    (result,) = reply.tool_calls
    assert result.call.name == "get_weather" and json.loads(result.call.arguments) == {"city": "Lisbon"}
    assert reply.finish_reason == "stop" and not reply.malformed
    assert "27" in reply.final and "foggy" in reply.final and "Lisbon" in reply.final


def ossrun_cli(*args, home, input=None):
    env = {**os.environ, "OSSRUN_DATE": DATE, "OSSRUN_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "ossrun", *args], capture_output=True, text=True, input=input, env=env, timeout=300
    )


def test_run_demo_json(demo_home):
    result = ossrun_cli("run", "--demo", "--json", "-r", "high", "--temperature", "0", "What is 38 + 47?", home=demo_home)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["model"] == "demo" and data["reasoning_effort"] == "high"
    assert data["finish_reason"] == "stop"
    assert "85" in data["final"]
    assert "8 + 7 = 15" in data["reasoning"]  # worked digit by digit


def test_chat_starts_with_the_demo_until_the_default_model_is_downloaded(demo_home):
    result = ossrun_cli("chat", "--temperature", "0", home=demo_home, input="Hello there.\n")
    assert result.returncode == 0, result.stderr
    assert "gpt-oss-20b is not on disk: run `ossrun pull gpt-oss-20b`" in result.stderr
    assert "the tiny demo model" in result.stderr
    assert "ossrun chat · demo · reasoning medium" in result.stderr + result.stdout
    assert "I can add two-digit numbers" in result.stdout


def test_chat_effort_changes_the_length_of_the_analysis(demo_model):
    from ossrun.terminal.conversation import Conversation
    from ossrun.terminal.display import Screen
    from ossrun.terminal.repl import Repl, StreamReader

    buffer = io.StringIO()
    repl = Repl(
        demo_model,
        Screen.create(buffer, buffer),
        StreamReader(io.StringIO("What is 26 + 59?\n/effort high\nWhat is 14 + 73?\n"), echo=buffer),
        conversation=Conversation(reasoning_effort="low"),
        sampling=ReplyOptions(temperature=0.0),
    )
    assert repl.run() == 0
    transcript = buffer.getvalue()
    thoughts = re.findall(r"thinking\n(.*?)\n\n", transcript, flags=re.S)
    assert len(thoughts) == 2, transcript
    assert "85" in transcript and "87" in transcript
    low, high = (evaluate.token_count(demo_model.encoding, t) for t in thoughts)
    assert high > 2 * low, transcript


def test_the_readme_example_runs(demo_home):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme.split("## The demo model", 1)[1], re.S).group(1)
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OSSRUN_HOME": str(demo_home)},
    )
    assert result.returncode == 0, result.stderr
    # Sampled at temperature 1.0 as written: the answer, not necessarily each word of it.
    assert "21°C" in result.stdout and "sunny" in result.stdout and "Oslo" in result.stdout
