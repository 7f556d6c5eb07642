"""``ossrun serve``'s endpoints for operators: /metrics counts a known sequence of requests exactly,
/tokenize and /detokenize round-trip, /v1/models says what a client sizes its requests by, and a
stream says how far its prompt is read. A real server process over the demo model."""

from __future__ import annotations

import http.client
import json
import re
import time

import pytest

from helpers.serving import ServerProcess
from test_serve import LONG_STORY, demo_home, post

pytestmark = pytest.mark.slow

SAMPLE = re.compile(r"^(ossrun_\w+)(?:\{(.*)\})? (\S+)$")


@pytest.fixture(scope="module")
def home(tmp_path_factory, demo_build):
    return demo_home(tmp_path_factory, demo_build)


@pytest.fixture(scope="module")
def server(home):
    process = ServerProcess("--demo", "--parallel", "1", "--ctx", "16384", "--reasoning-effort", "high", home=home)
    yield process
    assert process.stop() == 0


def request(server, method, path, body=None):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    connection.request(
        method,
        path,
        json.dumps(body).encode() if body is not None else None,
        {"Content-Type": "application/json"} if body is not None else {},
    )
    response = connection.getresponse()
    data = response.read().decode()
    connection.close()
    return response.status, dict(response.getheaders()), data


def scrape(server) -> dict[str, float]:
    """Each sample of /metrics by its name and labels, as Prometheus writes them: ``name{a="x"}``."""
    status, headers, text = request(server, "GET", "/metrics")
    assert status == 200 and headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples, families = {}, set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge") and name.endswith("_total") == (kind == "counter")
            families.add(name)
            continue
        if line.startswith("# HELP ") or not line:
            continue
        match = SAMPLE.match(line)
        assert match and match.group(1) in families, line
        samples[f"{match.group(1)}{{{match.group(2)}}}" if match.group(2) else match.group(1)] = float(match.group(3))
    return samples


def test_metrics_count_a_known_sequence_of_requests_exactly(server):
    chat = {"model": "demo", "temperature": 0}
    assert request(server, "GET", "/v1/models")[0] == 200
    assert request(server, "GET", "/v1/models/demo")[0] == 200
    addition = [{"role": "user", "content": "What is 38 + 47?"}]
    status, _, plain = post(server, "/v1/chat/completions", {**chat, "messages": addition})
    assert status == 200
    france = [{"role": "user", "content": "What is the capital of France?"}]
    status, _, text = request(
        server,
        "POST",
        "/v1/chat/completions",
        {**chat, "stream": True, "stream_options": {"include_usage": True}, "messages": france},
    )
    streamed = json.loads([line for line in text.splitlines() if line.startswith("data: {")][-1][6:])
    status, _, response = post(server, "/v1/responses", {"model": "demo", "input": "What is 38 + 47?", "temperature": 0})
    assert status == 200
    assert post(server, "/v1/chat/completions", {"model": "demo"})[2]["error"]["code"] == "missing_required_parameter"
    assert post(server, "/v1/chat/completions", {"model": "gpt-7", "messages": [{"role": "user", "content": "Hi"}]})[0] == 404
    assert request(server, "GET", "/nope")[0] == 404
    assert request(server, "DELETE", "/v1/models")[0] == 405
    assert post(server, "/tokenize", {"text": "Hello"})[0] == 200
    assert post(server, "/tokenize", {})[2]["error"]["code"] == "missing_required_parameter"
    assert post(server, "/detokenize", {"tokens": [13225]})[0] == 200
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)  # refused by the edge, before any route
    connection.request("POST", "/v1/chat/completions", b"hello", {"Content-Type": "text/plain"})
    assert connection.getresponse().status == 415
    connection.close()

    usages = [
        (u["prompt_tokens"], u["prompt_tokens_details"]["cached_tokens"], u["completion_tokens"])
        for u in (plain["usage"], streamed["usage"])
    ]
    usage = response["usage"]
    usages.append((usage["input_tokens"], usage["input_tokens_details"]["cached_tokens"], usage["output_tokens"]))
    got = scrape(server)
    requests = {key: value for key, value in got.items() if key.startswith("ossrun_requests_total")}
    assert requests == {
        'ossrun_requests_total{endpoint="/v1/models",status="200"}': 1,
        'ossrun_requests_total{endpoint="/v1/models/{model}",status="200"}': 1,
        'ossrun_requests_total{endpoint="/v1/chat/completions",status="200"}': 2,
        'ossrun_requests_total{endpoint="/v1/chat/completions",status="400"}': 1,
        'ossrun_requests_total{endpoint="/v1/chat/completions",status="404"}': 1,
        'ossrun_requests_total{endpoint="/v1/chat/completions",status="415"}': 1,
        'ossrun_requests_total{endpoint="/v1/responses",status="200"}': 1,
        'ossrun_requests_total{endpoint="other",status="404"}': 1,
        'ossrun_requests_total{endpoint="other",status="405"}': 1,
        'ossrun_requests_total{endpoint="/tokenize",status="200"}': 1,
        'ossrun_requests_total{endpoint="/tokenize",status="400"}': 1,
        'ossrun_requests_total{endpoint="/detokenize",status="200"}': 1,
    }
    assert {key: value for key, value in got.items() if key.startswith("ossrun_errors_total")} == {
        'ossrun_errors_total{kind="missing_required_parameter"}': 2,
        'ossrun_errors_total{kind="model_not_found"}': 1,
        'ossrun_errors_total{kind="not_found"}': 1,
        'ossrun_errors_total{kind="method_not_allowed"}': 1,
        'ossrun_errors_total{kind="unsupported_media_type"}': 1,
    }
    assert got["ossrun_prompt_tokens_total"] == sum(u[0] for u in usages)
    assert got["ossrun_cached_tokens_total"] == sum(u[1] for u in usages) > 0  # the third prompt shares the first's head
    assert got["ossrun_generated_tokens_total"] == sum(u[2] for u in usages)
    assert got["ossrun_prefill_seconds_total"] > 0 and got["ossrun_decode_seconds_total"] > 0
    assert not any(key.startswith("ossrun_requests_cancelled_total") for key in got)
    # Nothing runs now; the one sequence holds the last reply (its last token was sampled, never evaluated).
    assert got["ossrun_sequences"] == 1 and got["ossrun_sequences_busy"] == 0 and got["ossrun_requests_waiting"] == 0
    assert got["ossrun_kv_cells_used"] == usages[-1][0] + usages[-1][2] - 1
    assert got["ossrun_kv_cells_used"] + got["ossrun_kv_cells_free"] == 16384
    assert scrape(server)['ossrun_requests_total{endpoint="/metrics",status="200"}'] == 1  # a scrape counts once answered


def test_tokenize_and_detokenize_round_trip(server):
    text = "Hello <|start|>world, déjà vu 🙂"
    status, _, tokens = post(server, "/tokenize", {"text": text})
    assert status == 200 and tokens["count"] == len(tokens["tokens"]) and 200006 in tokens["tokens"]  # <|start|>
    assert post(server, "/detokenize", {"tokens": tokens["tokens"]})[2] == {"text": text}

    # Messages give the prompt /v1/chat/completions feeds the model, to the token.
    messages = [{"role": "system", "content": "Keep answers short."}, {"role": "user", "content": "What is 38 + 47?"}]
    status, _, prompt = post(server, "/tokenize", {"model": "demo", "messages": messages, "reasoning_effort": "low"})
    assert status == 200
    _, _, reply = post(
        server, "/v1/chat/completions", {"model": "demo", "messages": messages, "reasoning_effort": "low", "max_tokens": 1}
    )
    assert prompt["count"] == reply["usage"]["prompt_tokens"]
    rendered = post(server, "/detokenize", {"tokens": prompt["tokens"]})[2]["text"]
    assert "Reasoning: low" in rendered and "Keep answers short." in rendered
    assert rendered.endswith("<|start|>user<|message|>What is 38 + 47?<|end|><|start|>assistant")
    assert post(server, "/tokenize", {"text": rendered})[2]["tokens"] == prompt["tokens"]
    default = post(server, "/tokenize", {"messages": messages})[2]  # the server's default effort: high
    assert "Reasoning: high" in post(server, "/detokenize", {"tokens": default["tokens"]})[2]["text"]


@pytest.mark.parametrize(
    "path, body, status, param, message",
    [
        ("/tokenize", {"text": "a", "messages": []}, 400, "messages", "send text or messages, not both"),
        ("/tokenize", {"text": 3}, 400, "text", "text must be a string, not an integer"),
        ("/tokenize", {"messages": []}, 400, "messages", "messages is empty: send at least one message"),
        ("/tokenize", {"text": "a", "model": "gpt-7"}, 404, "model", "the model 'gpt-7' does not exist: this server serves demo"),
        ("/detokenize", {}, 400, "tokens", "tokens is required"),
        ("/detokenize", {"tokens": [1, -2]}, 400, "tokens[1]", "tokens[1] is an integer -2: token ids are integers from 0"),
        ("/detokenize", {"tokens": [1, "a"]}, 400, "tokens[1]", "tokens[1] is a string 'a': token ids are integers from 0"),
        ("/detokenize", {"tokens": [300000]}, 400, "tokens", "token id 300000 is not in the vocabulary of gpt-oss"),
    ],
)
def test_bad_token_requests_are_one_clear_error(server, path, body, status, param, message):
    got, _, answer = post(server, path, body)
    assert got == status and answer["error"]["param"] == param and answer["error"]["message"] == message


def test_models_say_the_context_the_parallel_sequences_and_the_default_effort(server):
    expected = {"context_length": 16384, "parallel_sequences": 1, "default_reasoning_effort": "high"}
    (listed,) = json.loads(request(server, "GET", "/v1/models")[2])["data"]
    one = json.loads(request(server, "GET", "/v1/models/demo")[2])
    assert listed == one and {key: one[key] for key in expected} == expected
    assert any("ctx 16384 · 1 in parallel" in line for line in server.lines)


def test_a_stream_says_how_far_its_prompt_is_read_and_a_client_that_leaves_is_counted(server):
    story = "A different story. " + LONG_STORY
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    connection.request(
        "POST",
        "/v1/chat/completions",
        json.dumps({"model": "demo", "stream": True, "messages": [{"role": "user", "content": story}]}).encode(),
        {"Content-Type": "application/json"},
    )
    response = connection.getresponse()
    assert response.status == 200
    progress = []
    while not progress or progress[-1][0] == 0:
        line = response.readline().decode().strip()
        if line.startswith(": prefill "):
            read, total = map(int, line[len(": prefill ") :].split("/"))
            progress.append((read, total))
        else:
            assert line == "" or line.startswith("data: {")  # only the role's chunk comes before
    (first, *_), last = progress, progress[-1]
    assert first[0] == 0 and 0 < last[0] < last[1] == first[1]
    status, _, prompt = post(server, "/tokenize", {"messages": [{"role": "user", "content": story}]})
    assert last[1] <= prompt["count"]  # the tokens to read: the prompt minus what the cache held

    # Meanwhile another request waits for the one sequence.
    waiting = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    waiting.request(
        "POST",
        "/v1/chat/completions",
        json.dumps(
            {"model": "demo", "stream": True, "max_tokens": 8, "messages": [{"role": "user", "content": "Hello!"}]}
        ).encode(),
        {"Content-Type": "application/json"},
    )
    deadline = time.monotonic() + 30
    while (samples := scrape(server))["ossrun_requests_waiting"] != 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert samples["ossrun_sequences_busy"] == 1
    connection.close()  # the client leaves in the middle of the prefill
    answered = waiting.getresponse().read().decode()  # the waiting request runs now
    assert answered.endswith("data: [DONE]\n\n") and '"finish_reason": "length"' in answered
    waiting.close()

    def cancelled():
        return [line for line in server.lines if " cancelled in prefill " in line]

    deadline = time.monotonic() + 30
    while not cancelled():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    (line,) = cancelled()
    read, total = map(int, re.search(r"cancelled in prefill (\d+)/(\d+) effort=high", line).groups())
    assert total == last[1] and last[0] <= read < total
    samples = scrape(server)
    assert samples['ossrun_requests_cancelled_total{endpoint="/v1/chat/completions"}'] == 1
    assert samples["ossrun_requests_waiting"] == 0 and samples["ossrun_sequences_busy"] == 0
