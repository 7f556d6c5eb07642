"""Every object ``ossrun serve`` sends, validated strictly against the openai SDK's types
(tests/openai_shapes.py): completions, chunks, responses, every stream event, the model list,
errors; over the demo model and over a scripted engine (malformed output, the python tool)."""

from __future__ import annotations

import http.client
import json

import pytest

from helpers.openai_shapes import ShapeError, check_body, check_chat_completion, check_event, check_response, check_sse
from helpers.scripted import ScriptedEngine, reply
from helpers.serving import ServerProcess, ServerThread
from ossrun.model import Model
from test_serve import CAPITAL_SCHEMA, WEATHER, WEATHER_RESPONSES, demo_home

HI = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER_QUESTION = [{"role": "user", "content": "What's the weather in Oslo?"}]
NAMESPACE = {
    "type": "namespace",
    "name": "multi_agent_v1",
    "description": "Sub-agents.",
    "tools": [
        {
            "type": "function",
            "name": "spawn_agent",
            "description": "Start an agent.",
            "parameters": {"type": "object", "properties": {"task": {"type": "string"}}, "required": ["task"]},
        }
    ],
}

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
REQUESTS = [  # (path, body): each sent plain and streamed
    (CHAT, {"messages": HI}),
    (CHAT, {"messages": HI, "max_tokens": 1}),
    (CHAT, {"messages": HI, "stream_options": {"include_usage": True}}),
    (CHAT, {"messages": WEATHER_QUESTION, "tools": [WEATHER], "temperature": 0}),
    (CHAT, {"messages": HI, "tools": [WEATHER], "tool_choice": "required", "temperature": 0}),
    (CHAT, {"messages": HI, "response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": CAPITAL_SCHEMA}}}),
    (CHAT, {"messages": HI, "response_format": {"type": "json_object"}, "seed": 7, "stop": ["Paris"], "max_tokens": 40}),
    (RESPONSES, {"input": "What is the capital of Japan?"}),
    (RESPONSES, {"input": "Hello", "max_output_tokens": 1, "metadata": {"k": "v"}, "instructions": "Be brief."}),
    (
        RESPONSES,
        {
            "input": "What's the weather in Paris?",
            "tools": [WEATHER_RESPONSES, {"type": "web_search"}],
            "temperature": 0,
            "include": ["reasoning.encrypted_content"],
            "store": False,
        },
    ),
    (
        RESPONSES,
        {
            "input": "What is 2 + 3?",
            "tools": [NAMESPACE],
            "tool_choice": {"type": "function", "name": "spawn_agent"},
            "max_output_tokens": 60,
        },
    ),
    (
        RESPONSES,
        {
            "input": "What is the capital of Italy?",
            "reasoning": {"effort": "low", "summary": "auto"},
            "text": {"format": {"type": "json_schema", "name": "c", "schema": CAPITAL_SCHEMA, "strict": True}},
        },
    ),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory, demo_build):
    process = ServerProcess("--demo", "--parallel", "2", home=demo_home(tmp_path_factory, demo_build))
    yield process
    assert process.stop() == 0


def exchange(port: int, method: str, path: str, body=None, headers=None) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    payload = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    connection.request(method, path, payload, {"Content-Type": "application/json", **(headers or {})})
    response = connection.getresponse()
    text = response.read().decode()
    connection.close()
    return response.status, text


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("path, body", REQUESTS)
def test_every_answer_and_event_has_openais_shape(server, path, body, stream):
    status, text = exchange(server.port, "POST", path, {"model": "demo", **body, "stream": stream})
    assert status == 200, text
    if not stream:
        check_body(path, status, json.loads(text))
        return
    objects = check_sse(path, text)
    if path == CHAT:
        assert objects[-1] == "[DONE]" and all(o != "[DONE]" for o in objects[:-1])
    else:
        assert objects[0]["type"] == "response.created" and objects[-1]["type"] in ("response.completed", "response.incomplete")


@pytest.mark.slow
def test_the_model_list_and_every_error_have_openais_shape(server):
    for path in ("/v1/models", "/v1/models/demo"):
        status, text = exchange(server.port, "GET", path)
        check_body(path, status, json.loads(text))
    refused = [
        ("GET", "/v1/models/gpt-7", None, {}),
        ("GET", "/nowhere", None, {}),
        ("DELETE", CHAT, None, {}),
        ("POST", CHAT, b"{", {}),
        ("POST", CHAT, {"model": "demo", "messages": HI, "seed": -1}, {}),
        ("POST", RESPONSES, {"model": "demo", "input": 5}, {}),
        ("POST", RESPONSES, {"model": "demo", "input": "hi", "metadata": {"n": 1}}, {}),
        ("POST", CHAT, {"model": "demo", "messages": HI}, {"Host": "evil.example.com"}),
        ("POST", CHAT, {"model": "demo", "messages": HI}, {"Origin": "http://evil.example.com"}),
        ("POST", CHAT, {"model": "demo", "messages": HI}, {"Content-Type": "text/plain"}),
    ]
    for method, path, body, headers in refused:
        status, text = exchange(server.port, method, path, body, headers)
        assert status >= 400, (method, path, text)
        check_body(path, status, json.loads(text))


@pytest.fixture
def scripted_server(encoding):
    servers = []

    def start(*scripts, **options):
        server = ServerThread(Model(ScriptedEngine(encoding, list(scripts)), encoding, name="scripted"), **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


MALFORMED = "<|channel|>analysis<|message|>Hmm<|start|>assistant<|channel|>final<|message|>Broken<|return|>"


@pytest.mark.parametrize("script", [MALFORMED, reply("Thinking.", "An answer that explains <|start|>user turns.")])
def test_scripted_replies_have_openais_shape(scripted_server, script):
    server = scripted_server(*[script] * 4)
    for path, body in ((CHAT, {"messages": HI}), (RESPONSES, {"input": "Hi"})):
        for stream in (False, True):
            status, text = exchange(server.sock.getsockname()[1], "POST", path, {"model": "scripted", **body, "stream": stream})
            assert status == 200
            check_sse(path, text) if stream else check_body(path, status, json.loads(text))


def test_the_python_tools_items_have_openais_shape(scripted_server):
    from ossrun.tools import PythonSandbox

    call = "<|channel|>analysis to=python code<|message|>print(6 * 7)<|call|>"
    answer = reply("It printed 42.", "42.")
    with PythonSandbox() as sandbox:
        server = scripted_server(call, answer, call, answer, python_tool=sandbox)
        port = server.sock.getsockname()[1]
        status, text = exchange(port, "POST", RESPONSES, {"model": "scripted", "input": "6 * 7?"})
        body = json.loads(text)
        check_body(RESPONSES, status, body)
        assert "code_interpreter_call" in [item["type"] for item in body["output"]]
        status, text = exchange(port, "POST", RESPONSES, {"model": "scripted", "input": "6 * 7?", "stream": True})
        assert any(
            o["type"] == "response.output_item.done" and o["item"]["type"] == "code_interpreter_call"
            for o in check_sse(RESPONSES, text)
        )


# The deviations a fuzzer found against OpenAI's reference: each one fails the check.

GOOD_COMPLETION = {
    "id": "c",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hi", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
}
GOOD_RESPONSE = {
    "id": "r",
    "object": "response",
    "created_at": 1,
    "status": "completed",
    "model": "m",
    "output": [],
    "error": None,
    "incomplete_details": None,
    "instructions": None,
    "metadata": {},
    "tool_choice": "auto",
    "temperature": None,
    "top_p": None,
    "parallel_tool_calls": True,
    "tools": [{"type": "function", "name": "f", "parameters": None, "strict": None}],
}


def test_the_checks_catch_each_deviation_openais_reference_forbids():
    check_chat_completion(GOOD_COMPLETION)
    check_response(GOOD_RESPONSE)
    no_refusal = json.loads(json.dumps(GOOD_COMPLETION))
    del no_refusal["choices"][0]["message"]["refusal"]
    no_strict = {**GOOD_RESPONSE, "tools": [{"type": "function", "name": "f", "parameters": None}]}
    null_usage = {**GOOD_RESPONSE, "usage": None}
    no_cache_write = {
        **GOOD_RESPONSE,
        "usage": {
            "input_tokens": 1,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 1,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 2,
        },
    }
    for check, bad in (
        (check_chat_completion, no_refusal),
        (check_response, no_strict),
        (check_response, null_usage),
        (check_response, no_cache_write),
        (check_response, {**GOOD_RESPONSE, "created_at": "1"}),
    ):
        with pytest.raises((ShapeError, ValueError)):
            check(bad)
    with pytest.raises(ShapeError):
        check_event(
            {
                "type": "response.function_call_arguments.done",
                "item_id": "i",
                "output_index": 0,
                "arguments": "{}",
                "sequence_number": 3,
            }
        )
    with pytest.raises(ValueError):
        check_event({"type": "response.created", "sequence_number": 0, "response": {**GOOD_RESPONSE, "status": "maybe"}})
