"""``ossrun serve`` with the real openai client, the demo model and a server process on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import threading
import time

import pytest

from helpers.serving import ServerProcess

pytestmark = pytest.mark.slow

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
WEATHER_RESPONSES = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather in a city.",
    "parameters": WEATHER["function"]["parameters"],
}
CAPITAL_SCHEMA = {
    "type": "object",
    "properties": {"capital": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]}},
    "required": ["capital"],
}


def demo_home(tmp_path_factory, demo_build):
    """An ossrun home holding the session's demo build, as a second run finds it."""
    home = tmp_path_factory.mktemp("serve-home")
    target = home / "cache" / "demo" / demo_build.name
    target.parent.mkdir(parents=True)
    os.link(demo_build, target)
    return home


@pytest.fixture(scope="module")
def home(tmp_path_factory, demo_build):
    return demo_home(tmp_path_factory, demo_build)


@pytest.fixture(scope="module")
def server(home):
    process = ServerProcess("--demo", "--parallel", "2", home=home)
    yield process
    assert process.stop() == 0


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.base_url, api_key="anything", max_retries=0, timeout=120)


def post(server, path, body, headers=None, raw=None):
    """(status, headers, parsed JSON body) of a POST made without the SDK."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    payload = raw if raw is not None else json.dumps(body).encode()
    connection.request("POST", path, payload, {"Content-Type": "application/json", **(headers or {})})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, dict(response.getheaders()), json.loads(data) if data else None


def sse(server, path, body):
    """The data lines (and event names) of a streamed POST."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    connection.request("POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    response = connection.getresponse()
    lines = [line for line in response.read().decode().splitlines() if line]
    connection.close()
    return response.status, lines


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list()] == ["demo"]
    assert client.models.retrieve("demo").id == "demo"
    from openai import NotFoundError

    with pytest.raises(NotFoundError):
        client.models.retrieve("gpt-7")
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request("GET", "/health")
    assert json.loads(connection.getresponse().read()) == {"status": "ok", "model": "demo"}


def test_chat_completion_plain_and_streamed(client):
    reply = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "What is 23 + 45?"}])
    message = reply.choices[0].message
    assert "68" in message.content and message.reasoning_content and message.reasoning == message.reasoning_content
    assert "<|" not in message.content and reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens_details.reasoning_tokens > 0

    chunks = list(
        client.chat.completions.create(
            model="demo",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant" and all(d.role is None for d in deltas[1:])
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-2].choices[0].delta.content is None  # finish_reason in a chunk of its own
    reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    content = "".join(d.content or "" for d in deltas)
    assert "Paris" in content and "France" in reasoning
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_reasoning_effort_changes_the_reasoning(client):
    def reasoning_tokens(**effort):
        reply = client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "What is 38 + 47?"}], temperature=0, **effort
        )
        assert "85" in reply.choices[0].message.content
        return reply.usage.completion_tokens_details.reasoning_tokens

    low, high = reasoning_tokens(reasoning_effort="low"), reasoning_tokens(reasoning_effort="high")
    assert high > low * 2
    assert reasoning_tokens(reasoning_effort="minimal") == low  # OpenAI's other efforts map onto the trained ones
    assert reasoning_tokens(extra_body={"reasoning": {"effort": "xhigh"}}) == high


def test_a_weather_round_trip_uses_the_tool_result(client):
    messages = [{"role": "user", "content": "What's the weather in Oslo?"}]
    first = client.chat.completions.create(model="demo", messages=messages, tools=[WEATHER], temperature=0)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.id and call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Oslo"}
    # The client sends the call back without the reasoning (as Open WebUI does): the server kept it.
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature_c": 14, "condition": "rainy"}'},
    ]
    second = client.chat.completions.create(model="demo", messages=messages, tools=[WEATHER], temperature=0)
    answer = second.choices[0].message.content
    assert second.choices[0].finish_reason == "stop" and "14" in answer and "rain" in answer.lower()
    # The chain of thought came back with the call: the whole first turn was still in the cache.
    assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens + first.usage.completion_tokens - 8


def test_json_schema_output_parses_and_validates(client):
    question = [{"role": "user", "content": "What is the capital of France?"}]
    schema = {"type": "json_schema", "json_schema": {"name": "capital", "schema": CAPITAL_SCHEMA}}
    for seed in (1, 2):
        reply = client.chat.completions.create(model="demo", messages=question, response_format=schema, seed=seed)
        answer = json.loads(reply.choices[0].message.content)
        assert list(answer) == ["capital"] and answer["capital"] in ("Paris", "Rome", "Oslo")
    plain = client.chat.completions.create(model="demo", messages=question, seed=1)
    with pytest.raises(json.JSONDecodeError):
        json.loads(plain.choices[0].message.content)


def pydantic_answer():
    """A Pydantic model holding an enum and a nested model: the SDK sends it with $defs and $refs."""
    import enum

    from pydantic import BaseModel

    class Capital(str, enum.Enum):
        paris, rome, oslo = "Paris", "Rome", "Oslo"

    class Kind(str, enum.Enum):
        capital, city = "capital", "city"

    class Place(BaseModel):
        capital: Capital

    class Answer(BaseModel):
        kind: Kind
        place: Place

    assert "$defs" in Answer.model_json_schema()
    return Answer


def test_the_sdks_parse_helpers_get_a_defs_schema_answered(client):
    answer = pydantic_answer()
    question = [{"role": "user", "content": "What is the capital of France?"}]
    for seed in (1, 2):  # twice: the schema is the same object both times
        parsed = (
            client.chat.completions.parse(model="demo", messages=question, response_format=answer, seed=seed, max_tokens=300)
            .choices[0]
            .message.parsed
        )
        assert isinstance(parsed, answer) and parsed.place.capital.value in ("Paris", "Rome", "Oslo")
    with client.chat.completions.stream(model="demo", messages=question, response_format=answer, max_tokens=300) as stream:
        assert isinstance(stream.get_final_completion().choices[0].message.parsed, answer)
    response = client.responses.parse(
        model="demo", input="What is the capital of Italy?", text_format=answer, max_output_tokens=300
    )
    assert isinstance(response.output_parsed, answer)
    with client.responses.stream(
        model="demo", input="What is the capital of Italy?", text_format=answer, max_output_tokens=300
    ) as stream:
        assert isinstance(stream.get_final_response().output_parsed, answer)


def test_a_follow_up_turn_reports_its_cached_tokens(client):
    messages = [{"role": "user", "content": "Hello!"}]
    first = client.chat.completions.create(model="demo", messages=messages, temperature=0)
    messages += [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "What is the capital of Japan?"},
    ]
    second = client.chat.completions.create(model="demo", messages=messages, temperature=0)
    assert second.usage.prompt_tokens > first.usage.prompt_tokens
    assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens


def test_responses_plain_and_streamed(client):
    response = client.responses.create(model="demo", input="What is the capital of Japan?")
    assert "Tokyo" in response.output_text and response.status == "completed"
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.usage.output_tokens_details.reasoning_tokens > 0

    with client.responses.stream(model="demo", input="What is 56 + 27?") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    for index in range(len(final.output)):  # every item announced, its deltas, then done, at its index
        added = next(i for i, e in enumerate(events) if e.type == "response.output_item.added" and e.output_index == index)
        done = next(i for i, e in enumerate(events) if e.type == "response.output_item.done" and e.output_index == index)
        deltas = [i for i, e in enumerate(events) if e.type.endswith("_text.delta") and e.output_index == index]
        assert added < min(deltas) and max(deltas) < done
        assert events[added + 1].type == "response.content_part.added" and events[added + 1].content_index == 0
    assert "83" in final.output_text
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_a_function_call_round_trip_through_function_call_output(client):
    first = client.responses.create(
        model="demo",
        input="What's the weather in Paris?",
        tools=[WEATHER_RESPONSES],
        temperature=0,
        include=["reasoning.encrypted_content"],
        store=False,
    )
    call = next(item for item in first.output if item.type == "function_call")
    reasoning = next(item for item in first.output if item.type == "reasoning")
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"} and reasoning.encrypted_content
    history = [
        {"role": "user", "content": "What's the weather in Paris?"},
        reasoning.model_dump(exclude_none=True),
        call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": call.call_id, "output": '{"temperature_c": 25, "condition": "sunny"}'},
    ]
    # Under a call id the server never gave out, its own memory of the reasoning (by call_id) cannot help:
    history[2]["call_id"] = history[3]["call_id"] = "call_renamed_by_the_client"
    second = client.responses.create(model="demo", input=history, tools=[WEATHER_RESPONSES], temperature=0, store=False)
    assert "25" in second.output_text and "sunny" in second.output_text.lower()
    # The reasoning came back from encrypted_content: the prompt kept the first turn's cache whole.
    first_turn = first.usage.input_tokens + first.usage.output_tokens
    assert second.usage.input_tokens_details.cached_tokens >= first_turn - 8
    # Without it (a client dropping reasoning items), the chain of thought is gone: less of the cache fits.
    without = client.responses.create(
        model="demo", input=[history[0], *history[2:]], tools=[WEATHER_RESPONSES], temperature=0, store=False
    )
    assert without.usage.input_tokens < second.usage.input_tokens
    # Content that is not ossrun's is ignored, not an error.
    forged = {**history[1], "encrypted_content": "gAAAAAB-from-another-server"}
    assert client.responses.create(
        model="demo", input=[history[0], forged, *history[2:]], tools=[WEATHER_RESPONSES], temperature=0
    ).output_text


def test_a_function_call_sent_back_without_its_reasoning_keeps_it(client, server):
    """Open WebUI's Responses connection sends the call and its output back, never the reasoning item:
    the server kept the reasoning by call_id (as on Chat Completions), so the prompt is the one the
    model read and wrote, and only the tool's output is new to the cache."""
    first = client.responses.create(
        model="demo", input="What's the weather in Oslo?", tools=[WEATHER_RESPONSES], temperature=0, store=False
    )
    call = next(item for item in first.output if item.type == "function_call")
    assert any(item.type == "reasoning" for item in first.output)
    history = [
        {"role": "user", "content": "What's the weather in Oslo?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": '{"temperature_c": 14, "condition": "rainy"}'},
    ]
    with client.responses.stream(model="demo", input=history, tools=[WEATHER_RESPONSES], temperature=0, store=False) as stream:
        second = stream.get_final_response()
    assert "14" in second.output_text and "rain" in second.output_text.lower()
    first_turn = first.usage.input_tokens + first.usage.output_tokens
    cached = second.usage.input_tokens_details.cached_tokens
    assert cached >= first_turn - 8 and second.usage.input_tokens - cached < 40
    # The log line (written as the stream closes) shows what the cache held.
    wait_for_log(
        server, f"POST /v1/responses 200 {second.usage.input_tokens}+{second.usage.output_tokens} tokens ({cached} cached) "
    )


def wait_for_log(server, prefix: str, seconds: float = 10, after: int = 0) -> str:
    """The server's last log line starting with ``prefix``, once more than ``after`` such lines are written."""
    deadline = time.monotonic() + seconds
    while len(server.log_lines(prefix)) <= after:
        assert time.monotonic() < deadline, f"no log line {prefix!r} in:\n" + "\n".join(server.lines[-5:])
        time.sleep(0.05)
    return server.log_lines(prefix)[-1]


def test_previous_response_id_continues_a_stored_conversation(client):
    first = client.responses.create(model="demo", input="What's the weather in Oslo?", tools=[WEATHER_RESPONSES], temperature=0)
    call = next(item for item in first.output if item.type == "function_call")
    second = client.responses.create(
        model="demo",
        previous_response_id=first.id,
        tools=[WEATHER_RESPONSES],
        temperature=0,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"temperature_c": 3, "condition": "snowy"}'}],
    )
    assert "3" in second.output_text and second.usage.input_tokens_details.cached_tokens > first.usage.input_tokens
    status, _, body = post(
        client_server(client), "/v1/responses", {"model": "demo", "input": "hi", "previous_response_id": "resp_nope"}
    )
    assert status == 400 and body["error"]["code"] == "previous_response_not_found"


def client_server(client):
    return type("S", (), {"port": int(str(client.base_url).rstrip("/").rsplit(":", 1)[1].split("/")[0])})


def test_a_codex_shaped_request_is_served(server):
    """What Codex CLI sends on a first turn (shape of a captured request), streamed."""
    body = {
        "model": "demo",
        "stream": True,
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "reasoning": {"summary": "auto"},
        "store": False,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "0199a3f4-0000-7000-8000-000000000000",
        "client_metadata": {"originator": "codex_exec"},
        "input": [
            {
                "type": "message",
                "role": "developer",
                "id": "m1",
                "content": [{"type": "input_text", "text": "You are a coding agent."}],
            },
            {"type": "message", "role": "developer", "id": "m2", "content": [{"type": "input_text", "text": "## Skills\nNone."}]},
            {
                "type": "message",
                "role": "user",
                "id": "m3",
                "content": [{"type": "input_text", "text": "<environment_context>cwd=/tmp</environment_context>"}],
            },
            {
                "type": "message",
                "role": "user",
                "id": "m4",
                "content": [{"type": "input_text", "text": "What's the weather in Oslo?"}],
            },
        ],
        "tools": [
            {
                "type": "function",
                "name": "exec_command",
                "description": "Run a command.",
                "strict": False,
                "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]},
            },
            {
                "type": "function",
                "name": "get_weather",
                "description": "Get the current weather in a city.",
                "parameters": WEATHER["function"]["parameters"],
            },
            {
                "type": "namespace",
                "name": "multi_agent_v1",
                "description": "Sub-agents.",
                "tools": [
                    {
                        "type": "function",
                        "name": "spawn_agent",
                        "description": "Start an agent.",
                        "parameters": {"type": "object", "properties": {"task": {"type": "string"}}},
                    }
                ],
            },
            {"type": "web_search"},
        ],
    }
    status, lines = sse(server, "/v1/responses", body)
    assert status == 200
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.completed"
    completed = events[-1]["response"]
    assert completed["usage"]["input_tokens"] > 0 and completed["usage"]["total_tokens"] > 0
    items = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert items and all(i["type"] in ("reasoning", "message", "function_call") for i in items)
    assert all(i.get("encrypted_content") for i in items if i["type"] == "reasoning")
    assert all("<|" not in json.dumps(i) for i in items)
    # Codex's --oss warm-up: empty input, one token.
    status, _, warm = post(server, "/v1/responses", {"model": "demo", "input": "", "max_output_tokens": 1})
    assert status == 200 and warm["status"] == "incomplete" and warm["usage"]["output_tokens"] == 1


def test_a_call_to_a_namespace_comes_back_with_its_namespace(client):
    tools = [
        {
            "type": "namespace",
            "name": "multi_agent_v1",
            "description": "Sub-agents.",
            "tools": [
                {
                    "type": "function",
                    "name": "spawn_agent",
                    "description": "Start an agent.",
                    "parameters": {
                        "type": "object",
                        "properties": {"task": {"type": "string", "enum": ["look", "write"]}},
                        "required": ["task"],
                    },
                }
            ],
        }
    ]
    response = client.responses.create(
        model="demo", input="What is 2 + 3?", tools=tools, temperature=0, tool_choice={"type": "function", "name": "spawn_agent"}
    )
    call = next(item for item in response.output if item.type == "function_call")
    assert (call.namespace, call.name) == ("multi_agent_v1", "spawn_agent") and json.loads(call.arguments)["task"] in (
        "look",
        "write",
    )


def test_an_open_webui_shaped_stream_yields_reasoning_content_deltas(server):
    body = {
        "model": "demo",
        "stream": True,
        "reasoning_effort": "high",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": [{"type": "text", "text": "What is 19 + 64?"}]},
        ],
    }
    status, lines = sse(server, "/v1/chat/completions", body)
    assert status == 200 and lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    reasoning = "".join(c["choices"][0]["delta"].get("reasoning_content", "") for c in chunks if c["choices"])
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert len(reasoning) > 40 and "83" in content


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({"model": "demo"}, 400, "messages"),
        ({"model": "demo", "messages": []}, 400, "messages"),
        ({"model": "demo", "messages": "hi"}, 400, "messages"),
        ({"messages": [{"role": "user", "content": "hi"}]}, 400, "model"),
        ({"model": "gpt-7", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
        ({"model": "demo", "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role"),
        ({"model": "demo", "messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
        (
            {"model": "demo", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            400,
            "messages[0].content[0].type",
        ),
        ({"model": "demo", "messages": [{"role": "user", "content": "hi \udcff"}]}, 400, "messages[0].content"),
        ({"model": "demo", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, 400, "temperature"),
        ({"model": "demo", "messages": [{"role": "user", "content": "hi"}], "temperature": 9}, 400, "temperature"),
        ({"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400, "max_tokens"),
        ({"model": "demo", "messages": [{"role": "user", "content": "hi"}], "n": 3}, 400, "n"),
        ({"model": "demo", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, 400, "stream"),
        (
            {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "reasoning_effort": "extreme"},
            400,
            "reasoning_effort",
        ),
        (
            {"model": "demo", "messages": [{"role": "tool", "tool_call_id": "call_x", "content": "1"}]},
            400,
            "messages[0].tool_call_id",
        ),
        (
            {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]},
            400,
            "tools[0].function",
        ),
        (
            {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "yaml"}},
            400,
            "response_format.type",
        ),
    ],
)
def test_bad_chat_requests_are_answered_and_the_server_goes_on(server, body, status, param):
    got, _, answer = post(server, "/v1/chat/completions", body)
    assert got == status
    assert set(answer["error"]) == {"message", "type", "param", "code"} and answer["error"]["param"] == param
    ok, _, reply = post(
        server, "/v1/chat/completions", {"model": "demo", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 4}
    )
    assert ok == 200 and reply["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(
    "raw, status",
    [
        (b"not json", 400),
        (b"[1, 2]", 400),
        (b'{"model": "demo", "input": 3}', 400),
        (b'{"model": "demo", "input": [{"type": "function_call_output", "call_id": "x", "output": "1"}]}', 400),
    ],
)
def test_bad_responses_requests_are_answered(server, raw, status):
    got, _, answer = post(server, "/v1/responses", None, raw=raw)
    assert got == status and answer["error"]["message"]


def test_a_body_too_large_is_413(server):
    big = b'{"model": "demo", "messages": [{"role": "user", "content": "' + b"x" * (17 << 20) + b'"}]}'
    got, _, answer = post(server, "/v1/chat/completions", None, raw=big)
    assert got == 413 and answer["error"]["code"] == "request_too_large"


def test_every_request_is_logged_on_one_line(server):
    logged = len(server.log_lines("POST /v1/chat/completions 200"))
    post(
        server, "/v1/chat/completions", {"model": "demo", "messages": [{"role": "user", "content": "Hi there"}], "max_tokens": 3}
    )
    line = wait_for_log(server, "POST /v1/chat/completions 200", after=logged)
    assert line.endswith("s") and re.search(r" \d+\+3 tokens \(\d+ cached\) ", line)


@pytest.fixture(scope="module")
def small_server(home):
    process = ServerProcess("--demo", "--ctx", "512", "--parallel", "1", "--max-queue", "0", "--api-key", "sesame", home=home)
    yield process
    process.stop()


def test_a_prompt_over_the_context_is_context_length_exceeded(small_server):
    long = {"model": "demo", "messages": [{"role": "user", "content": "word " * 600}]}
    got, _, answer = post(small_server, "/v1/chat/completions", long, {"Authorization": "Bearer sesame"})
    assert got == 400 and answer["error"]["code"] == "context_length_exceeded"
    assert "--ctx (at least 2048)" in answer["error"]["message"]
    got, _, answer = post(
        small_server, "/v1/responses", {"model": "demo", "input": "word " * 600}, {"Authorization": "Bearer sesame"}
    )
    assert got == 400 and answer["error"]["code"] == "context_length_exceeded"


def test_an_api_key_is_required_when_set(small_server):
    body = {"model": "demo", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 2}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sesame"}):
        got, _, answer = post(small_server, "/v1/chat/completions", body, headers)
        assert got == 401 and answer["error"]["code"] == "invalid_api_key"
    assert post(small_server, "/v1/chat/completions", body, {"Authorization": "Bearer sesame"})[0] == 200


@pytest.fixture(scope="module")
def single_server(home):
    process = ServerProcess("--demo", "--parallel", "1", "--max-queue", "0", home=home)
    yield process
    process.stop()


LONG_STORY = "Please read this story to the end. " + "The fox ran over the hill and back again. " * 1200


def test_a_full_queue_is_429_and_a_client_that_leaves_is_cancelled(single_server):
    """One sequence, no queue: a second request is refused while the first runs; when the first
    client goes away in the middle of its (long) prefill, its reply stops and the next request
    is served at once."""
    auth = {"Content-Type": "application/json"}
    long = {"model": "demo", "stream": True, "messages": [{"role": "user", "content": LONG_STORY}]}
    small_server = single_server
    connection = http.client.HTTPConnection("127.0.0.1", small_server.port, timeout=60)
    connection.request("POST", "/v1/chat/completions", json.dumps(long).encode(), auth)
    response = connection.getresponse()
    assert response.status == 200
    response.readline()  # it is streaming
    got, headers, answer = post(
        small_server, "/v1/chat/completions", {"model": "demo", "messages": [{"role": "user", "content": "Hi"}]}, auth
    )
    assert got == 429 and headers.get("retry-after") and answer["error"]["type"] == "rate_limit_error"
    got, headers, answer = post(
        small_server, "/v1/messages", {"model": "demo", "max_tokens": 9, "messages": [{"role": "user", "content": "Hi"}]}, auth
    )  # Anthropic's clients retry its 529
    assert got == 529 and headers.get("retry-after") and answer["error"]["type"] == "overloaded_error"
    connection.close()  # the client goes away
    started = time.perf_counter()
    while True:
        got, _, _ = post(
            small_server,
            "/v1/chat/completions",
            {"model": "demo", "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]},
            auth,
        )
        if got == 200:
            break
        assert got == 429 and time.perf_counter() - started < 2, "the abandoned reply was not cancelled within a second"
        time.sleep(0.05)
    assert any(line.startswith("POST /v1/chat/completions 200") for line in small_server.lines)


def test_default_bind_is_loopback_and_another_address_is_warned_about(home, server):
    assert server.host == "127.0.0.1"
    exposed = ServerProcess("--demo", "--host", "0.0.0.0", home=home)  # listens everywhere; the test talks to 127.0.0.1
    try:
        assert any(
            "warning: listening on 0.0.0.0: anyone who can reach it can use the model; add --api-key KEY" in line
            for line in exposed.lines
        )
    finally:
        exposed.stop()


def test_a_registry_model_not_on_disk_is_an_error_not_the_demo(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "ossrun", "serve", "gpt-oss-20b", "--port", "0"],
        capture_output=True,
        text=True,
        env={**os.environ, "OSSRUN_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"},
        timeout=60,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: gpt-oss-20b is not on disk: run `ossrun pull gpt-oss-20b`")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stopping_ends_streams_in_flight_with_an_error_event_and_exits_0(home, sig):
    process = ServerProcess("--demo", "--parallel", "3", home=home)
    results = {}
    streaming = {key: threading.Event() for key in ("chat", "responses", "messages")}
    story = LONG_STORY

    def stream(path, body, key):
        """Like ``sse``, read line by line: ``streaming[key]`` is set once the reply has begun."""
        connection = http.client.HTTPConnection("127.0.0.1", process.port, timeout=120)
        connection.request("POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        response = connection.getresponse()
        lines = []
        for raw in response:
            if line := raw.decode().rstrip("\r\n"):
                lines.append(line)
                streaming[key].set()
        connection.close()
        results[key] = (response.status, lines)

    long = {"model": "demo", "stream": True}
    threads = [
        threading.Thread(
            target=stream, args=("/v1/chat/completions", {**long, "messages": [{"role": "user", "content": story}]}, "chat")
        ),
        threading.Thread(target=stream, args=("/v1/responses", {**long, "input": story + " "}, "responses")),
        threading.Thread(
            target=stream,
            args=(
                "/v1/messages",
                {**long, "max_tokens": 99, "messages": [{"role": "user", "content": story + "  "}]},
                "messages",
            ),
        ),
    ]
    for thread in threads:
        thread.start()
    # In flight: each client has the beginning of its stream, and the engine runs all three requests.
    for key, begun in streaming.items():
        assert begun.wait(120), f"the {key} stream did not begin"
    deadline = time.monotonic() + 60
    while busy_sequences(process) < 3:
        assert time.monotonic() < deadline, "the engine did not take the three requests"
        time.sleep(0.05)
    assert process.stop(sig) == 0
    for thread in threads:
        thread.join(30)
    status, lines = results["chat"]
    assert status == 200 and lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2][6:])["error"]["code"] == "server_shutting_down"
    status, lines = results["responses"]
    last = json.loads([line for line in lines if line.startswith("data: ")][-1][6:])
    assert last["type"] == "response.failed" and last["response"]["error"]["code"] == "server_error"
    status, lines = results["messages"]
    assert status == 200 and lines[-2:] == ["event: error", lines[-1]]
    assert json.loads(lines[-1][6:])["error"]["type"] == "overloaded_error"
    assert process.lines[-1] == "ossrun serve stopped"


def busy_sequences(server) -> int:
    """/metrics' count of the sequences running a request."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    connection.close()
    return int(float(re.search(r"^ossrun_sequences_busy (\S+)$", text, re.M).group(1)))


def test_the_readmes_sdk_example_runs(server):
    import re
    import subprocess
    import sys
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Serving", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    for original, replacement in [("http://127.0.0.1:8080/v1", server.base_url), ('model="gpt-oss-20b"', 'model="demo"')]:
        assert original in code
        code = code.replace(original, replacement)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
