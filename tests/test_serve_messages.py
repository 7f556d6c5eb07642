"""Anthropic's Messages API on ``ossrun serve``, with the real ``anthropic`` SDK, the demo model and a
server process on 127.0.0.1. Every message, stream event, count and error is validated strictly
against the SDK's types (tests/helpers/anthropic_shapes.py)."""

from __future__ import annotations

import http.client
import json

import pytest

from helpers.anthropic_shapes import check_body, check_count, check_error, check_message, check_stream
from helpers.serving import ServerProcess
from test_serve import demo_home, pydantic_answer, wait_for_log

pytestmark = pytest.mark.slow

KEY = "sesame-key"
WEATHER = {
    "name": "get_weather",
    "description": "Get the current weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
OSLO = [{"role": "user", "content": "What's the weather in Oslo?"}]
RAINY = '{"temperature_c": 14, "condition": "rainy"}'
GREEDY = {"temperature": 0}  # the SDK no longer names temperature; Anthropic's API (and ossrun) still take it


@pytest.fixture(scope="module")
def server(tmp_path_factory, demo_build):
    process = ServerProcess("--demo", "--parallel", "2", "--api-key", KEY, home=demo_home(tmp_path_factory, demo_build))
    yield process
    assert process.stop() == 0


@pytest.fixture(scope="module")
def client(server):
    from anthropic import Anthropic

    return Anthropic(base_url=server.url, api_key=KEY, max_retries=0, timeout=120)


def exchange(server, method: str, path: str, body=None, headers=None) -> tuple[int, dict, str]:
    """(status, headers, text) of a request made without the SDK (the key as x-api-key unless given)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    payload = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    sent = {"Content-Type": "application/json", "x-api-key": KEY, "anthropic-version": "2023-06-01", **(headers or {})}
    connection.request(method, path, payload, {k: v for k, v in sent.items() if v is not None})
    response = connection.getresponse()
    text = response.read().decode()
    connection.close()
    return response.status, dict(response.getheaders()), text


def test_a_message_plain_and_streamed(client, server):
    message = client.messages.create(model="demo", max_tokens=200, messages=[{"role": "user", "content": "What is 38 + 47?"}])
    assert [block.type for block in message.content] == ["text"]  # no thinking asked for: none shown
    assert "85" in message.content[0].text and message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.output_tokens_details.thinking_tokens > 0  # gpt-oss reasoned all the same
    status, _, text = exchange(
        server,
        "POST",
        "/v1/messages",
        {"model": "demo", "max_tokens": 200, "messages": [{"role": "user", "content": "What is the capital of France?"}]},
    )
    assert status == 200 and "Paris" in check_message(json.loads(text)).content[0].text

    status, headers, text = exchange(
        server,
        "POST",
        "/v1/messages",
        {
            "model": "demo",
            "max_tokens": 200,
            "stream": True,
            "thinking": {"type": "adaptive"},
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
        },
    )
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = check_stream(text)
    kinds = [event["type"] for event in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    starts = [event["content_block"]["type"] for event in events if event["type"] == "content_block_start"]
    assert starts == ["thinking", "text"]
    thinking = "".join(e["delta"].get("thinking", "") for e in events if e["type"] == "content_block_delta")
    answer = "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta")
    assert "France" in thinking and "Paris" in answer
    signature = next(
        e["delta"]["signature"] for e in events if e["type"] == "content_block_delta" and e["delta"]["type"] == "signature_delta"
    )
    assert signature.startswith("ossrun.r1.")
    start, delta = events[0]["message"]["usage"], events[-2]["usage"]
    assert start["input_tokens"] == delta["input_tokens"] + delta["cache_read_input_tokens"]  # the prompt, split at the end
    assert delta["output_tokens"] > delta["output_tokens_details"]["thinking_tokens"] > 0
    assert events[-2]["delta"]["stop_reason"] == "end_turn"


def test_the_sdks_stream_helper_collects_the_message(client):
    with client.messages.stream(
        model="demo",
        max_tokens=300,
        thinking={"type": "enabled", "budget_tokens": 2000},
        messages=[{"role": "user", "content": "What is 23 + 45?"}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert "68" in text and [block.type for block in final.content] == ["thinking", "text"]
    assert final.content[1].text == text and final.content[0].thinking and final.content[0].signature
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0


def test_the_effort_changes_the_thinking(client):
    def thinking_tokens(**asked):
        message = client.messages.create(
            model="demo", max_tokens=400, extra_body=GREEDY, messages=[{"role": "user", "content": "What is 38 + 47?"}], **asked
        )
        assert "85" in message.content[-1].text
        return message.usage.output_tokens_details.thinking_tokens

    low = thinking_tokens(output_config={"effort": "low"})
    high = thinking_tokens(output_config={"effort": "high"})
    assert high > low * 2
    assert thinking_tokens(thinking={"type": "enabled", "budget_tokens": 1024}) == low  # a small budget is low
    assert thinking_tokens(thinking={"type": "enabled", "budget_tokens": 31999}) == high  # "ultrathink" is high
    assert thinking_tokens(output_config={"effort": "max"}) == high
    # The effort wins over a budget, and thinking turned off still thinks a little (gpt-oss always reasons).
    assert thinking_tokens(thinking={"type": "enabled", "budget_tokens": 31999}, output_config={"effort": "low"}) == low
    assert thinking_tokens(thinking={"type": "disabled"}) == low


def test_a_weather_round_trip_through_tool_use_and_tool_result(client, server):
    raw = client.messages.with_raw_response.create(
        model="demo", max_tokens=300, messages=OSLO, tools=[WEATHER], extra_body=GREEDY, thinking={"type": "adaptive"}
    )
    check_message(json.loads(raw.http_response.text))  # what the server sent, before the SDK read it
    first = raw.parse()
    assert first.stop_reason == "tool_use" and [block.type for block in first.content] == ["thinking", "tool_use"]
    call = first.content[1]
    assert call.name == "get_weather" and call.input == {"city": "Oslo"} and call.id.startswith("toolu_")
    history = [
        *OSLO,
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": RAINY}]},
    ]
    with client.messages.stream(
        model="demo", max_tokens=300, messages=history, tools=[WEATHER], extra_body=GREEDY, thinking={"type": "adaptive"}
    ) as stream:
        second = stream.get_final_message()
    assert second.stop_reason == "end_turn" and "14" in second.content[-1].text and "rain" in second.content[-1].text.lower()
    # The thinking and the call came back as the model wrote them: only the tool's result was new to the cache.
    first_turn = first.usage.input_tokens + first.usage.cache_read_input_tokens + first.usage.output_tokens
    assert second.usage.cache_read_input_tokens >= first_turn - 8 and second.usage.input_tokens < 40
    line = wait_for_log(server, f"POST /v1/messages 200 {second.usage.input_tokens + second.usage.cache_read_input_tokens}+")
    assert f"({second.usage.cache_read_input_tokens} cached)" in line

    # A client that keeps no thinking (none asked for) gets the same prompt: the server kept the reasoning.
    plain = client.messages.create(model="demo", max_tokens=300, messages=OSLO, tools=[WEATHER], extra_body=GREEDY)
    assert [block.type for block in plain.content] == ["tool_use"]
    history = [
        *OSLO,
        {"role": "assistant", "content": plain.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": plain.content[0].id, "content": RAINY}]},
    ]
    again = client.messages.create(model="demo", max_tokens=300, messages=history, tools=[WEATHER], extra_body=GREEDY)
    assert "14" in again.content[-1].text and again.usage.cache_read_input_tokens >= first_turn - 8

    # A failed call is an error result, as ossrun's own tools report one; the model answers from it.
    history[-1] = {
        "role": "user",
        "content": [
            {
                "type": "tool_result",
                "tool_use_id": plain.content[0].id,
                "is_error": True,
                "content": [{"type": "text", "text": "the weather service is down"}],
            }
        ],
    }
    failed = client.messages.create(model="demo", max_tokens=300, messages=history, tools=[WEATHER], extra_body=GREEDY)
    assert failed.stop_reason in ("end_turn", "tool_use") and failed.usage.cache_read_input_tokens >= first_turn - 8


def test_tool_choice_any_a_named_tool_and_none(client):
    clock = {"name": "get_time", "description": "Get the current time in a city.", "input_schema": WEATHER["input_schema"]}
    france = [{"role": "user", "content": "What is the capital of France?"}]  # no tool helps: only a choice makes a call
    forced = client.messages.create(
        model="demo", max_tokens=300, messages=france, tools=[WEATHER], tool_choice={"type": "any"}, extra_body=GREEDY
    )
    assert forced.stop_reason == "tool_use" and [block.type for block in forced.content] == ["tool_use"]
    assert forced.content[0].name == "get_weather" and isinstance(forced.content[0].input.get("city"), str)
    named = client.messages.create(
        model="demo",
        max_tokens=300,
        messages=OSLO,
        tools=[WEATHER, clock],
        tool_choice={"type": "tool", "name": "get_time"},
        extra_body=GREEDY,
    )
    assert named.stop_reason == "tool_use" and [block.name for block in named.content if block.type == "tool_use"] == ["get_time"]
    none = client.messages.create(
        model="demo", max_tokens=300, messages=OSLO, tools=[WEATHER], tool_choice={"type": "none"}, extra_body=GREEDY
    )
    assert none.stop_reason == "end_turn" and [block.type for block in none.content] == ["text"] and none.content[0].text


def test_the_thinking_comes_back_through_its_signature(client):
    """Under tool_use ids the server never gave out (so its own memory cannot help), the reasoning the
    next prompt renders is the one the signature carries: the cache holds the whole first turn. Without
    the signature the prompt differs where the reasoning was."""
    first = client.messages.create(
        model="demo",
        max_tokens=300,
        messages=OSLO,
        tools=[WEATHER],
        extra_body=GREEDY,
        thinking={"type": "adaptive", "display": "omitted"},
    )
    thinking, call = first.content
    assert thinking.type == "thinking" and thinking.thinking == "" and thinking.signature  # omitted: the signature alone
    first_turn = first.usage.input_tokens + first.usage.cache_read_input_tokens + first.usage.output_tokens

    def answer(thinking_block):
        content = ([thinking_block] if thinking_block else []) + [{**call.model_dump(exclude_none=True), "id": "toolu_client_1"}]
        history = [
            *OSLO,
            {"role": "assistant", "content": content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_client_1", "content": RAINY}]},
        ]
        return client.messages.create(model="demo", max_tokens=300, messages=history, tools=[WEATHER], extra_body=GREEDY)

    kept = answer({"type": "thinking", "thinking": "", "signature": thinking.signature})
    assert "14" in kept.content[-1].text and kept.usage.cache_read_input_tokens >= first_turn - 8
    lost = answer(None)
    assert lost.usage.cache_read_input_tokens < first_turn - 8
    prompt = kept.usage.input_tokens + kept.usage.cache_read_input_tokens
    assert lost.usage.input_tokens + lost.usage.cache_read_input_tokens < prompt
    # A signature that is not ossrun's (from Claude itself) is read as plain thinking text, not an error.
    assert answer({"type": "thinking", "thinking": "Call the tool.", "signature": "EqQBCkYIBxgCKkD-from-anthropic"}).content


def test_count_tokens_is_the_prompt_a_message_reads(client, server):
    body = {
        "model": "demo",
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": OSLO,
        "tools": [WEATHER],
        "thinking": {"type": "adaptive"},
    }
    counted = client.messages.count_tokens(**body)
    check_count(counted.model_dump(mode="json"))
    message = client.messages.create(max_tokens=50, **body)
    assert counted.input_tokens == message.usage.input_tokens + message.usage.cache_read_input_tokens
    status, _, text = exchange(server, "POST", "/v1/messages/count_tokens?beta=true", {"model": "demo", "messages": OSLO})
    assert status == 200 and check_count(json.loads(text)).input_tokens < counted.input_tokens  # no tools, no system


def test_stop_sequences_and_a_json_schema_answer(client):
    stopped = client.messages.create(
        model="demo",
        max_tokens=200,
        stop_sequences=["47 ="],
        extra_body=GREEDY,
        messages=[{"role": "user", "content": "What is 38 + 47?"}],
    )
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == "47 ="
    assert stopped.content[0].text == "38 + "
    short = client.messages.create(model="demo", max_tokens=5, messages=[{"role": "user", "content": "What is 38 + 47?"}])
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 5
    answer = pydantic_answer()  # an enum and a nested model: $defs in the schema, twice in a row
    for _ in range(2):
        parsed = client.messages.parse(
            model="demo",
            max_tokens=300,
            output_format=answer,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
        )
        assert isinstance(parsed.parsed_output, answer)


def test_a_claude_code_shaped_request_is_served(server):
    """What Claude Code 2.1 sends (the shape of a captured first turn, with texts of our own): ``?beta=true``,
    a bearer token, many anthropic-beta values, system blocks with cache_control, a system turn among the
    messages, adaptive thinking with an effort, context_management, metadata.user_id, tools whose schemas
    name their $schema; then its second request with the answer's thinking and a tool_result."""
    tool = {
        "name": "Read",
        "description": "Reads a file from the local filesystem.",
        "input_schema": {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {"file_path": {"description": "The absolute path", "type": "string"}},
            "required": ["file_path"],
            "additionalProperties": False,
        },
    }
    body = {
        "model": "demo",
        "max_tokens": 32000,
        "stream": True,
        "system": [
            {"type": "text", "text": "x-billing-header: cc_version=2.1"},
            {"type": "text", "text": "You are an agent.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Help with software tasks.", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "<system-reminder>Today's date is 2026-01-01.</system-reminder>\n\n"},
                    {"type": "text", "text": "What's the weather in Oslo?", "cache_control": {"type": "ephemeral"}},
                ],
            },
            {"role": "system", "content": "Skills available: none."},
        ],
        "tools": [tool, WEATHER],
        "metadata": {"user_id": json.dumps({"device_id": "abc", "session_id": "s1"})},
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "high"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
    }
    headers = {
        "x-api-key": None,
        "Authorization": f"Bearer {KEY}",
        "anthropic-dangerous-direct-browser-access": "true",
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27,"
        "prompt-caching-scope-2026-01-05,effort-2025-11-24",
        "x-app": "cli",
    }
    status, _, text = exchange(server, "POST", "/v1/messages?beta=true", body, headers)
    assert status == 200, text
    events = check_stream(text)
    blocks = {e["index"]: dict(e["content_block"]) for e in events if e["type"] == "content_block_start"}
    for event in events:
        if event["type"] == "content_block_delta":
            block, delta = blocks[event["index"]], event["delta"]
            for key, field in (("thinking", "thinking"), ("text", "text"), ("signature", "signature"), ("partial_json", "input")):
                if key in delta:
                    block[field] = (block.get(field) or "") + delta[key] if field != "input" else json.loads(delta[key])
    content = [blocks[i] for i in sorted(blocks)]
    assert content[0]["type"] == "thinking" and content[0]["signature"]
    # The answer goes back with a tool_result, and a Claude Code style reminder after it.
    call = next((block for block in content if block["type"] == "tool_use"), None)
    follow = [{"type": "tool_result", "tool_use_id": call["id"], "content": RAINY}] if call else []
    reminder = {"type": "text", "text": "<system-reminder>Be brief.</system-reminder>"}
    body["messages"] += [{"role": "assistant", "content": content}, {"role": "user", "content": [*follow, reminder]}]
    if not call:
        body["messages"][-1]["content"].insert(0, {"type": "text", "text": "And in Paris?"})
    status, _, text = exchange(server, "POST", "/v1/messages?beta=true", body, headers)
    assert status == 200, text
    check_stream(text)


OVER_CONTEXT = object()  # a prompt longer than the server's context, sized once the server says its context
BAD = [  # (body or raw bytes, headers, status, Anthropic's error type, words of the message)
    ({"model": "demo", "messages": OSLO}, {}, 400, "invalid_request_error", "max_tokens is required"),
    ({"model": "demo", "max_tokens": 0, "messages": OSLO}, {}, 400, "invalid_request_error", "max_tokens is 0"),
    ({"model": "demo", "max_tokens": 9, "messages": []}, {}, 400, "invalid_request_error", "messages is empty"),
    (
        {"model": "demo", "max_tokens": 9, "messages": [{"role": "wizard", "content": "hi"}]},
        {},
        400,
        "invalid_request_error",
        "messages[0].role 'wizard'",
    ),
    (
        {
            "model": "demo",
            "max_tokens": 9,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
                    ],
                }
            ],
        },
        {},
        400,
        "invalid_request_error",
        "gpt-oss reads text",
    ),
    (
        {
            "model": "demo",
            "max_tokens": 9,
            "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_nowhere", "content": "1"}]}],
        },
        {},
        400,
        "invalid_request_error",
        "answers no tool_use block",
    ),
    (
        {"model": "demo", "max_tokens": 9, "messages": [*OSLO, {"role": "assistant", "content": "It is"}]},
        {},
        400,
        "invalid_request_error",
        "cannot continue a prefilled answer",
    ),
    (
        {"model": "demo", "max_tokens": 9, "messages": OSLO, "thinking": {"type": "enabled", "budget_tokens": 100}},
        {},
        400,
        "invalid_request_error",
        "thinking.budget_tokens is 100",
    ),
    (
        {"model": "demo", "max_tokens": 9, "messages": OSLO, "thinking": {"type": "enabled"}},
        {},
        400,
        "invalid_request_error",
        "thinking.budget_tokens is required",
    ),
    (
        {"model": "demo", "max_tokens": 9, "messages": OSLO, "output_config": {"effort": "extreme"}},
        {},
        400,
        "invalid_request_error",
        "output_config.effort 'extreme'",
    ),
    (
        {"model": "demo", "max_tokens": 9, "messages": OSLO, "tools": [WEATHER], "tool_choice": {"type": "tool", "name": "x"}},
        {},
        400,
        "invalid_request_error",
        "tool_choice.name 'x'",
    ),
    (
        {"model": "demo", "max_tokens": 9, "messages": OSLO, "tool_choice": {"type": "any"}},
        {},
        400,
        "invalid_request_error",
        "has no tools",
    ),
    (
        {"model": "demo", "max_tokens": 9, "messages": OSLO, "tools": [{"name": "get_weather"}]},
        {},
        400,
        "invalid_request_error",
        "tools[0].input_schema is required",
    ),
    (
        {"model": "demo", "max_tokens": 9, "messages": OSLO, "tools": [{**WEATHER, "name": "bad name!"}]},
        {},
        400,
        "invalid_request_error",
        "is not a tool name",
    ),
    (
        {"model": "demo", "max_tokens": 9, "messages": OSLO, "metadata": {"user_id": "u", "team": "x"}},
        {},
        400,
        "invalid_request_error",
        "metadata.team",
    ),
    (
        {"model": "demo", "max_tokens": 9, "messages": OSLO, "temperature": 1.5},
        {},
        400,
        "invalid_request_error",
        "temperature is 1.5",
    ),
    (
        {"model": "demo", "max_tokens": 9, "messages": OSLO, "stop_sequences": ["x"] * 17},
        {},
        400,
        "invalid_request_error",
        "stop_sequences holds 17 texts",
    ),
    (OVER_CONTEXT, {}, 400, "invalid_request_error", "--ctx"),
    ({"model": "claude-sonnet-4-5", "max_tokens": 9, "messages": OSLO}, {}, 404, "not_found_error", "does not exist"),
    ({"model": "demo", "max_tokens": 9, "messages": OSLO}, {"x-api-key": None}, 401, "authentication_error", "API key"),
    ({"model": "demo", "max_tokens": 9, "messages": OSLO}, {"x-api-key": "wrong"}, 401, "authentication_error", "API key"),
    (b'{"model": "demo", "max_tokens": 9, "messages": [', {}, 400, "invalid_request_error", "not JSON"),
    (b"model=demo", {"Content-Type": "application/x-www-form-urlencoded"}, 415, "invalid_request_error", "send JSON"),
    ({"model": "demo", "max_tokens": 9, "messages": OSLO}, {"Host": "evil.example.com"}, 403, "permission_error", "Host"),
]


@pytest.mark.parametrize("body, headers, status, kind, words", BAD, ids=[case[4] for case in BAD])
def test_every_bad_request_has_anthropics_error_shape_and_the_server_goes_on(server, body, headers, status, kind, words):
    if body is OVER_CONTEXT:  # more words than the context the server chose (--ctx auto) holds tokens
        context_length = json.loads(exchange(server, "GET", "/v1/models/demo")[2])["context_length"]
        body = {"model": "demo", "max_tokens": 9, "messages": [{"role": "user", "content": "word " * (context_length + 100)}]}
    got, _, text = exchange(server, "POST", "/v1/messages", body, headers)
    error = json.loads(text)
    assert got == status, text
    check_error(error)
    assert error["type"] == "error" and error["error"]["type"] == kind and words in error["error"]["message"]
    assert "\n" not in error["error"]["message"] and error["request_id"].startswith("req_")
    ok, _, text = exchange(
        server, "POST", "/v1/messages", {"model": "demo", "max_tokens": 4, "messages": [{"role": "user", "content": "Hello!"}]}
    )
    assert ok == 200 and json.loads(text)["stop_reason"] == "max_tokens"


def test_errors_of_other_routes_and_methods_have_anthropics_shape_there(server):
    for method, path, status, kind in (
        ("GET", "/v1/messages", 405, "invalid_request_error"),
        ("POST", "/v1/messages/batches", 404, "not_found_error"),
        ("POST", "/v1/messages/count_tokens", 400, "invalid_request_error"),
    ):
        got, _, text = exchange(server, method, path, {"model": "demo"} if method == "POST" else None)
        assert got == status and json.loads(text)["error"]["type"] == kind
        check_body(path, got, json.loads(text))
    got, _, text = exchange(server, "POST", "/v1/chat/completions", {"model": "demo"})  # OpenAI's shape on OpenAI's routes
    assert got == 400 and json.loads(text)["error"]["param"] == "messages"


def test_the_readmes_anthropic_example_runs(server):
    import re
    import subprocess
    import sys
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Anthropic's Messages API and Claude Code", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    for original, replacement in [
        ("http://127.0.0.1:8080", server.url),
        ('model="gpt-oss-20b"', 'model="demo"'),
        ('api_key="unused"', f'api_key="{KEY}"'),
    ]:
        assert original in code
        code = code.replace(original, replacement)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
