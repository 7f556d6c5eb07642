"""``ossrun run``: streams, --json, --show-prompt, exit codes; bad inputs of run and chat.

In-process tests drive the real command over a scripted engine (so the reasoning
and answer are known); the slow ones run ``ossrun`` as a subprocess on the tiny
converted model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers.scripted import Script, invoke, reply
from ossrun.harmony.prompt import PromptSettings, render_prefix, render_prompt

DATE = "2026-01-15"
ANSWER = reply("The user wants primes.", "2, 3 and 5.")
JSON_KEYS = ["model", "reasoning_effort", "reasoning", "final", "finish_reason", "usage", "timings", "tool_calls"]


@pytest.fixture(autouse=True)
def _pinned_date(monkeypatch):
    monkeypatch.setenv("OSSRUN_DATE", DATE)


def test_answer_alone_on_stdout(scripted, capsys):
    engines = scripted(ANSWER)
    code, out, err = invoke(capsys, "run", "Name three primes")
    assert (code, out, err) == (0, "2, 3 and 5.\n", "")
    assert engines[0].closed


def test_show_reasoning_goes_to_stderr(scripted, capsys):
    scripted(ANSWER)
    code, out, err = invoke(capsys, "run", "--show-reasoning", "Name three primes")
    assert (code, out, err) == (0, "2, 3 and 5.\n", "thinking\nThe user wants primes.\n\n")


def test_json_is_one_object(scripted, capsys, encoding):
    engines = scripted(ANSWER)
    code, out, err = invoke(capsys, "run", "--json", "-r", "HIGH", "-m", "gpt-oss-20b", "Name three primes")
    assert code == 0 and err == ""
    assert out.count("\n") == 1
    data = json.loads(out)
    assert list(data) == JSON_KEYS
    prompt = engines[0].prompts[0]
    assert data == {
        "model": "gpt-oss-20b",
        "reasoning_effort": "high",
        "reasoning": "The user wants primes.",
        "final": "2, 3 and 5.",
        "finish_reason": "stop",
        "usage": {
            "prompt_tokens": len(prompt),
            "cached_tokens": 0,
            "completion_tokens": len(encoding.encode(ANSWER, allowed_special="all")),
        },
        "timings": data["timings"],
        "tool_calls": [],
    }
    assert set(data["timings"]) == {"prefill_tps", "decode_tps"}
    assert all(isinstance(v, float) and v > 0 for v in data["timings"].values())


def test_prompt_from_stdin_with_system_text(scripted, capsys, monkeypatch, encoding):
    engines = scripted(ANSWER)
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("Name three primes\nplease\n"))
    code, out, err = invoke(capsys, "run", "--system", "Be terse.", "-")
    assert code == 0 and out == "2, 3 and 5.\n"
    text = encoding.decode_utf8(engines[0].prompts[0])
    assert "# Instructions\n\nBe terse." in text
    assert text.endswith("<|start|>user<|message|>Name three primes\nplease\n<|end|><|start|>assistant")


def test_max_tokens_ends_with_length(scripted, capsys):
    scripted(ANSWER)
    code, out, err = invoke(capsys, "run", "--json", "--max-tokens", "3", "Name three primes")
    data = json.loads(out)
    assert (code, data["finish_reason"], data["usage"]["completion_tokens"]) == (0, "length", 3)


def test_ctrl_c_exits_130_with_the_partial_answer(scripted, capsys):
    scripted(Script(ANSWER, sigint_at_token=18))
    code, out, err = invoke(capsys, "run", "Name three primes")
    assert (code, out, err) == (130, "2, 3\n", "interrupted\n")
    scripted(Script(ANSWER, sigint_at_token=18))
    code, out, err = invoke(capsys, "run", "--json", "Name three primes")
    data = json.loads(out)
    assert (code, data["finish_reason"], data["final"]) == (130, "interrupted", "2, 3")


def test_show_prompt_prints_the_harmony_prompt_without_generating(scripted, capsys, encoding):
    engines = scripted()
    code, out, err = invoke(capsys, "run", "--show-prompt", "-r", "low", "--system", "Be terse.", "Hello")
    settings = PromptSettings(reasoning_effort="low", instructions="Be terse.", date=DATE)
    expected = encoding.decode_utf8(render_prompt(encoding, [{"role": "user", "content": "Hello"}], settings))
    assert (code, out, err) == (0, expected + "\n", "")
    assert expected.startswith("<|start|>system<|message|>") and "Reasoning: low" in expected
    assert engines[0].prompts == []  # nothing was evaluated


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "-r", "max", "hi"], "error: unknown reasoning effort 'max': use low, medium or high\n"),
        (["chat", "--reasoning-effort", "extreme"], "error: unknown reasoning effort 'extreme': use low, medium or high\n"),
        (["run", "  "], "error: the prompt is empty: give it as an argument, or pipe it in with -\n"),
    ],
)
def test_bad_arguments_are_one_line(scripted, capsys, args, message):
    scripted()
    code, out, err = invoke(capsys, *args)
    assert (code, out, err) == (1, "", message)


# --- the real thing: subprocesses on the tiny converted model ---------------------------------------


def ossrun(*args, input=None, home=None, env=None, timeout=300):
    env = {**os.environ, "OSSRUN_DATE": DATE, **(env or {})}
    if home is not None:
        env["OSSRUN_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "ossrun", *args], capture_output=True, text=True, input=input, env=env, timeout=timeout
    )


@pytest.mark.slow
def test_run_json_on_the_real_engine_and_the_disk_prefix_cache(tiny_gguf, tmp_path, encoding):
    args = ["run", "-m", str(tiny_gguf), "--ctx", "1024", "--threads", "2", "--max-tokens", "4", "--seed", "7", "--json"]
    first = ossrun(*args, "What is 2+2?", home=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "Traceback" not in first.stderr
    data = json.loads(first.stdout)
    assert list(data) == JSON_KEYS
    settings = PromptSettings(date=DATE)
    prompt = render_prompt(encoding, [{"role": "user", "content": "What is 2+2?"}], settings)
    prefix = render_prefix(encoding, settings)
    assert data["model"] == "tiny-gpt-oss" and data["reasoning_effort"] == "medium"
    assert data["finish_reason"] == "length"
    assert data["usage"] == {"prompt_tokens": len(prompt), "cached_tokens": 0, "completion_tokens": 4}
    assert data["timings"]["prefill_tps"] > 0 and data["timings"]["decode_tps"] > 0
    # A second process finds the system prefix on disk and evaluates only the rest.
    second = ossrun(*args, "And 3+3?", home=tmp_path)
    data = json.loads(second.stdout)
    assert data["usage"]["cached_tokens"] == len(prefix)
    # Same seed, same prompt: the same tokens.
    again = ossrun(*args, "What is 2+2?", home=tmp_path)
    assert json.loads(again.stdout)["final"] == json.loads(first.stdout)["final"]


@pytest.mark.slow
def test_ctrl_c_stops_a_long_prefill_and_exits_130(tiny_gguf, tmp_path):
    env = {**os.environ, "OSSRUN_DATE": DATE, "OSSRUN_HOME": str(tmp_path)}
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("word " * 14000)
    with prompt.open() as stdin:
        process = subprocess.Popen(
            [sys.executable, "-m", "ossrun", "run", "-m", str(tiny_gguf), "--ctx", "16384", "--threads", "2", "--json", "-"],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
    # The system prefix is evaluated and saved as the prompt's prefill goes on: once its file exists,
    # the long prefill is under way (and Ctrl-C is the reply's to handle).
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("cache/prefix/*")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert list(tmp_path.glob("cache/prefix/*")), process.communicate()[1]
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert time.monotonic() - sent < 3  # the prefill stops within a second; the rest is exiting
    assert process.returncode == 130, err
    data = json.loads(out)
    assert data["finish_reason"] == "interrupted" and data["usage"]["completion_tokens"] == 0
    assert err.endswith("interrupted\n") and "Traceback" not in err


@pytest.mark.slow
def test_bad_model_files_are_one_line(tiny_gguf, tmp_path):
    from test_gguf_header import write_gguf

    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(tiny_gguf.read_bytes()[: tiny_gguf.stat().st_size // 3])
    cases = {
        tmp_path / "missing.gguf": f"error: model file not found: {tmp_path / 'missing.gguf'}",
        write_gguf(tmp_path / "llama.gguf", "llama"): "is a llama model, not gpt-oss",
        truncated: "is truncated",
    }
    for path, message in cases.items():
        for command in (["run", "-m", str(path), "hi"], ["chat", str(path)]):
            result = ossrun(*command, home=tmp_path, input="")
            assert result.returncode == 1, result
            assert result.stdout == ""
            assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
            assert message in result.stderr


@pytest.mark.slow
def test_a_prompt_larger_than_the_context_is_one_line(tiny_gguf, tmp_path):
    result = ossrun("run", "-m", str(tiny_gguf), "--ctx", "256", "word " * 400, home=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("error: the prompt is ") and result.stderr.count("\n") == 1
    assert "more than the context of 256 tokens" in result.stderr and "use a larger --ctx" in result.stderr


@pytest.mark.slow
def test_pull_downloads_a_missing_model_before_answering(tiny_gguf, tmp_path):
    from helpers.hubserver import HubServer
    from test_pull import gguf_entry

    home = tmp_path / "home"
    home.mkdir()
    (home / "models.toml").write_text(gguf_entry("tiny", "test-org/tiny-GGUF", ["tiny.gguf"], "64 MB", "the tiny model"))
    env = {"HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "0"}
    with HubServer() as server:
        server.add_repo("test-org/tiny-GGUF", {"tiny.gguf": tiny_gguf.read_bytes()})
        env["HF_ENDPOINT"] = server.url
        args = ["run", "-m", "tiny", "--ctx", "512", "--max-tokens", "2", "--json", "hi"]
        missing = ossrun(*args, home=home, env=env)
        assert missing.returncode == 1 and missing.stderr.startswith("error: tiny is not on disk: run `ossrun pull tiny`")
        assert server.content_requests("GET") == []
        pulled = ossrun(*args, "--pull", home=home, env=env)
    assert pulled.returncode == 0, pulled.stderr
    data = json.loads(pulled.stdout)
    assert (data["model"], data["usage"]["completion_tokens"]) == ("tiny", 2)


def test_without_a_model_run_uses_the_registrys_default(tmp_path, capsys, monkeypatch):
    """A user models.toml can change the default model; `run` with no MODEL follows it."""
    monkeypatch.setenv("OSSRUN_HOME", str(tmp_path))
    (tmp_path / "models.toml").write_text('default = "gpt-oss-120b"\n')
    code, out, err = invoke(capsys, "run", "hi")
    assert (code, out) == (1, "")
    assert err.startswith("error: gpt-oss-120b is not on disk: run `ossrun pull gpt-oss-120b`")


def test_text_that_is_not_utf8_is_replaced_and_said(scripted, capsys, monkeypatch, encoding):
    """Bytes that are not UTF-8 (on stdin, or in an argument) reach the model as U+FFFD, with a note."""
    engines = scripted(ANSWER)
    monkeypatch.setattr("sys.stdin", __import__("io").TextIOWrapper(__import__("io").BytesIO(b"Hi \xff there"), encoding="utf-8"))
    code, out, err = invoke(capsys, "run", "-m", "gpt-oss-20b", "--system", "Be \udcffbrief.", "-")
    assert code == 0 and "Traceback" not in err
    assert "note: the prompt on stdin is not valid UTF-8: 1 byte replaced with U+FFFD" in err
    assert "note: --system is not valid UTF-8: 1 byte replaced with U+FFFD" in err
    text = encoding.decode_utf8(engines[0].prompts[0])
    assert "Hi \ufffd there" in text and "Be \ufffdbrief." in text
