"""``ossrun batch`` with the demo model: the output format, resume, bad lines, duplicate ids, Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from helpers.anthropic_shapes import check_error, check_message
from test_serve import demo_home

pytestmark = pytest.mark.slow

QUESTIONS = [
    "What is 23 + 45?",
    "What is the capital of France?",
    "Hello!",
    "What is 38 + 47?",
    "What is the capital of Japan?",
    "What is 19 + 64?",
]


@pytest.fixture(scope="module")
def home(tmp_path_factory, demo_build):
    return demo_home(tmp_path_factory, demo_build)


def request(custom_id, question, url="/v1/chat/completions", **body):
    if url == "/v1/chat/completions":
        payload = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": question}], "temperature": 0, **body}
    elif url == "/v1/messages":
        payload = {
            "model": "claude-sonnet-4-5",
            "max_tokens": 300,
            "messages": [{"role": "user", "content": question}],
            "temperature": 0,
            **body,
        }
    else:
        payload = {"model": "gpt-oss-120b", "input": question, "temperature": 0, **body}
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": payload}


def write(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def batch(home, *args, wait=True):
    command = [sys.executable, "-m", "ossrun", "batch", *args, "--demo", "--threads", "1"]
    env = {**os.environ, "OSSRUN_HOME": str(home), "OSSRUN_DATE": "2025-08-05"}
    if not wait:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_line_is_answered_in_the_batch_format(home, tmp_path):
    lines = [request(f"chat-{i}", q) for i, q in enumerate(QUESTIONS[:3])]
    lines += [request(f"resp-{i}", q, "/v1/responses") for i, q in enumerate(QUESTIONS[3:])]
    lines += [request("msg-0", "What is 19 + 64?", "/v1/messages")]
    out = tmp_path / "out.jsonl"
    result = batch(home, str(write(tmp_path / "in.jsonl", lines)), "-o", str(out), "--parallel", "3")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"7 answered, 0 failed of 7 in [\d.]+s, [\d.]+ tokens/s", result.stderr.strip().splitlines()[-1])
    by_id = {r["custom_id"]: r for r in records(out)}
    assert set(by_id) == {line["custom_id"] for line in lines}
    for record in by_id.values():
        assert record["id"].startswith("batch_req_") and record["error"] is None
        assert record["response"]["status_code"] == 200
    chat = by_id["chat-0"]["response"]["body"]
    assert chat["object"] == "chat.completion" and chat["model"] == "gpt-4o-mini"  # recorded as the body named it
    assert "68" in chat["choices"][0]["message"]["content"] and chat["choices"][0]["message"]["reasoning_content"]
    response = by_id["resp-0"]["response"]["body"]
    assert response["object"] == "response" and response["model"] == "gpt-oss-120b" and response["status"] == "completed"
    assert "85" in next(i for i in response["output"] if i["type"] == "message")["content"][0]["text"]
    message = by_id["msg-0"]["response"]["body"]  # Anthropic's Messages API, by the same translations as the server's
    check_message(message)
    assert message["model"] == "claude-sonnet-4-5" and "83" in message["content"][0]["text"]


def test_bad_lines_are_reported_written_as_errors_and_the_rest_goes_on(home, tmp_path):
    lines = [
        request("good", "Hello!"),
        "not json at all",
        {"url": "/v1/chat/completions", "body": {}},
        request("streamed", "Hi", stream=True),
        {"custom_id": "elsewhere", "url": "/v1/embeddings", "body": {}},
        request("bad-body", "Hi", temperature="hot"),
        request("bad-message", "Hi", "/v1/messages", max_tokens=None),
    ]
    out = tmp_path / "out.jsonl"
    result = batch(home, str(write(tmp_path / "in.jsonl", lines)), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "error: line 2 is not JSON" in result.stderr and "error: line 3 has no custom_id" in result.stderr
    assert "error: line 4: stream is not possible in a batch" in result.stderr
    assert "error: line 5: url '/v1/embeddings' is not one of" in result.stderr
    got = records(out)
    assert len(got) == 7 and "Traceback" not in result.stderr
    by_id = {r["custom_id"]: r for r in got if r["custom_id"]}
    assert by_id["good"]["response"]["status_code"] == 200
    assert by_id["streamed"]["error"]["code"] == "invalid_request" and by_id["streamed"]["response"] is None
    bad = by_id["bad-body"]["response"]  # a request the API refuses is answered with its 400
    assert bad["status_code"] == 400 and bad["body"]["error"]["param"] == "temperature"
    bad = by_id["bad-message"]["response"]  # in Anthropic's shape on its API
    assert bad["status_code"] == 400 and check_error(bad["body"]).error.message == "max_tokens is required"
    assert sum(r["custom_id"] is None for r in got) == 2


def test_duplicate_custom_ids_are_refused_before_starting(home, tmp_path):
    out = tmp_path / "out.jsonl"
    lines = [request("same", "Hello!"), request("other", "Hi"), request("same", "What is 23 + 45?")]
    started = time.perf_counter()
    result = batch(home, str(write(tmp_path / "in.jsonl", lines)), "-o", str(out))
    assert result.returncode == 1 and not out.exists()
    assert result.stderr.strip().endswith("lines 1 and 3 have the same custom_id 'same': give every request its own")
    assert time.perf_counter() - started < 30


def test_a_second_run_goes_on_where_the_first_stopped(home, tmp_path):
    lines = [request(f"q{i}", q) for i, q in enumerate(QUESTIONS)]
    source = write(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    assert batch(home, str(source), "-o", str(out)).returncode == 0
    complete = records(out)
    # As after a crash: two answers kept, one line that failed, and a last line torn in half.
    kept = [r for r in complete if r["custom_id"] in ("q0", "q1")]
    failed = {
        **next(r for r in complete if r["custom_id"] == "q2"),
        "response": None,
        "error": {"code": "server_error", "message": "x"},
    }
    torn = json.dumps(next(r for r in complete if r["custom_id"] == "q3"))[:50]
    out.write_text("".join(json.dumps(r) + "\n" for r in kept + [failed]) + torn)
    result = batch(home, str(source), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "4 answered, 0 failed, 2 already in out.jsonl of 6" in result.stderr
    again = records(out)
    assert sorted(r["custom_id"] for r in again) == [f"q{i}" for i in range(6)]  # each once: the error line was redone
    assert again[:2] == kept  # answered lines are not touched
    assert all(r["error"] is None for r in again)


def test_ctrl_c_stops_the_batch_and_keeps_what_was_finished(home, tmp_path):
    long = "Please read this story to the end. " + "The fox ran over the hill and back again. " * 300
    # Twelve long lines after the two short ones: seconds of work on a quiet machine (each is ~3000
    # prompt tokens and an answer), far more than it takes to see the first two lines written and
    # signal, however busy the machine (with six, a starved test process once saw the batch finish first).
    lines = [request(f"q{i}", q) for i, q in enumerate(QUESTIONS[:2])] + [request(f"long{i}", long + str(i)) for i in range(12)]
    source = write(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    process = batch(home, str(source), "-o", str(out), "--parallel", "2", wait=False)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out.exists() and out.read_text().count("\n") >= 2):
        time.sleep(0.02)
    assert process.poll() is None, "the batch ended before it could be interrupted"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "interrupted: " in stderr and "Traceback" not in stderr
    finished = records(out)  # every line written is whole
    assert 2 <= len(finished) < len(lines) and all(r["error"] is None for r in finished)
    result = batch(home, str(source), "-o", str(out), "--parallel", "2")
    assert result.returncode == 0
    assert sorted(r["custom_id"] for r in records(out)) == sorted(line["custom_id"] for line in lines)
