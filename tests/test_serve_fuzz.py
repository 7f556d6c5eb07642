"""A bounded fuzz pass over ``ossrun serve --demo``: request bodies drawn by hypothesis from the
fields the APIs take (right values, near misses and junk), and raw bytes to any route.

Whatever comes in, the server answers with no 5xx, every answer has OpenAI's shape (tests/
openai_shapes.py), or Anthropic's on its routes (tests/helpers/anthropic_shapes.py), and the process is
alive at the end. Derandomized, so CI sees the same
requests each run; generation is held to a few tokens so the pass stays well under a minute.
"""

from __future__ import annotations

import http.client
import json
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import anthropic_shapes
from helpers.openai_shapes import check_body, check_sse
from helpers.serving import ServerProcess
from test_serve import demo_home

pytestmark = pytest.mark.slow

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
MAX_TOKENS = 12

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
# Junk objects have no "type": one of an unknown type is repeated as sent in a response's tools,
# which no SDK type can know.
keys = st.text(max_size=6).filter(lambda key: key != "type")
junk = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3), max_leaves=8)


def either(good, bad=junk, odds: int = 20):
    """Mostly a value the API takes, one time in ``odds`` anything at all (so that many bodies get past
    every check and reach the model)."""
    return st.integers(1, odds).flatmap(lambda draw: bad if draw == 1 else good)


def record(fields: dict, /, **optional):
    """Objects with ``fields`` always and any of ``optional``."""
    return st.fixed_dictionaries(fields, optional=optional)


short = st.text(max_size=8)
counts = st.integers(-3, 1500) | st.sampled_from([10**7, 10**9, 2**40]) | junk
patterns = st.sampled_from(["^[a-z]+$", "[0-9]{2}", "a{2,3000}", "(", "^(a|b)*$", "x{5}", '[^"]*', "\\d+$"]) | short
refs = st.sampled_from(["#/$defs/A", "#/$defs/missing", "https://example.com/s.json", "#"])
keywords = {
    "minItems": counts,
    "maxItems": counts,
    "minLength": counts,
    "maxLength": counts,
    "pattern": patterns,
    "enum": st.lists(scalars, max_size=4),
    "format": st.sampled_from(["date", "uuid", "email"]),
    "const": scalars,
    "$ref": refs,
}
TYPES = ["string", "integer", "number", "boolean", "null", "array", "object"]


def schemas(depth: int = 3):
    leaf = record({"type": st.sampled_from(TYPES)}, **keywords)
    if depth == 0:
        return leaf
    inner = schemas(depth - 1)
    node = record(
        {"type": st.sampled_from(["object", "array"]) | st.lists(st.sampled_from(["string", "null"]))},
        properties=st.dictionaries(st.from_regex(r"[a-z]{1,6}", fullmatch=True), inner, max_size=4),
        required=st.lists(short, max_size=3),
        items=inner,
        anyOf=st.lists(inner, max_size=3),
        additionalProperties=st.booleans() | inner,
        **{"$defs": record({"A": inner})},
        **keywords,
    )
    return either(leaf | node)


names = either(st.sampled_from(["get_weather", "f", "spawn_agent"]), st.text(max_size=70))
function = record({"name": names}, description=either(short), parameters=schemas(), strict=st.booleans())
chat_tool = either(record({"type": st.just("function"), "function": function}))
inner_tool = record({"type": st.just("function"), "name": names, "parameters": schemas()})
flat_tool = either(
    record(
        {"type": st.sampled_from(["function", "web_search", "custom", "namespace"]), "name": names},
        parameters=schemas(),
        description=short,
        strict=st.booleans(),
        tools=st.lists(inner_tool, max_size=2),
    )
)
tool_choices = either(
    st.sampled_from(["auto", "none", "required"])
    | record({"type": st.just("function"), "function": record({"name": names})})
    | record({"type": st.sampled_from(["function", "allowed_tools", "auto"]), "name": names})
)
json_schema = record({"name": short, "schema": schemas()}, strict=st.booleans())
formats = either(
    record(
        {"type": st.sampled_from(["text", "json_object", "json_schema", "yaml"])},
        json_schema=either(json_schema),
        name=short,
        schema=schemas(),
    )
)
part = record({"type": either(st.sampled_from(["text", "input_text"]), st.just("image_url")), "text": either(short)})
texts = either(st.text(max_size=40) | st.lists(part, max_size=2))
roles = either(st.sampled_from(["system", "developer", "user", "user", "assistant"]), st.sampled_from(["tool", "wizard"]))
call = record({"id": short, "type": st.just("function"), "function": record({"name": names, "arguments": either(short)})})
message = either(
    record({"role": roles, "content": texts}, tool_calls=st.lists(call, max_size=2), tool_call_id=short, reasoning_content=short)
)
string_map = st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3)
limits = either(st.integers(1, 50))
sampling = {
    "temperature": either(st.floats(0, 2)),
    "top_p": either(st.floats(0.01, 1)),
    "seed": either(st.integers(0, 2**32 - 1)),
    "stream": either(st.booleans()),
    "parallel_tool_calls": either(st.booleans()),
    "metadata": either(string_map),
}
chat_bodies = record(
    {"model": either(st.just("demo"), odds=40), "messages": either(st.lists(message, min_size=1, max_size=4))},
    **sampling,
    max_tokens=limits,
    max_completion_tokens=limits,
    n=either(st.just(1)),
    stop=either(st.text(max_size=5) | st.lists(st.text(max_size=5), max_size=20)),
    tools=either(st.lists(chat_tool, max_size=3)),
    tool_choice=tool_choices,
    response_format=formats,
    reasoning_effort=either(st.sampled_from(["low", "medium", "high", "minimal", "xhigh"])),
    stream_options=either(record({"include_usage": st.booleans()})),
    user=short,
)
ITEM_TYPES = ["message", "reasoning", "function_call", "function_call_output", "web_search_call"]
item = either(
    record(
        {"type": st.sampled_from(ITEM_TYPES)},
        role=st.sampled_from(["user", "assistant", "developer", "system", "tool"]),
        content=texts,
        name=names,
        call_id=short,
        arguments=short,
        output=texts,
        encrypted_content=st.text(max_size=20),
    )
)
responses_bodies = record(
    {"model": either(st.just("demo"), odds=40), "input": either(st.text(max_size=40) | st.lists(item, max_size=4))},
    **sampling,
    max_output_tokens=limits,
    instructions=either(st.text(max_size=20)),
    tools=either(st.lists(flat_tool, max_size=3)),
    tool_choice=tool_choices,
    text=either(record({}, format=formats, verbosity=st.sampled_from(["low", "high"]))),
    reasoning=either(
        record({}, effort=st.sampled_from(["low", "high", "none"]), summary=st.sampled_from(["auto", "detailed", "all"]))
    ),
    store=either(st.booleans()),
    include=either(st.lists(st.just("reasoning.encrypted_content"))),
    previous_response_id=either(st.none(), st.text(max_size=10), odds=6),
)
text_block = record({"type": st.just("text"), "text": short}, cache_control=record({"type": st.just("ephemeral")}))
BLOCK_TYPES = ["text", "text", "text", "thinking", "tool_use", "tool_result", "redacted_thinking", "image"]
block = either(
    record(
        {"type": st.sampled_from(BLOCK_TYPES), "text": short},
        thinking=short,
        signature=either(short | st.just("ossrun.r1.eJyrVg")),
        id=short,
        name=names,
        input=either(st.dictionaries(short, scalars, max_size=2)),
        tool_use_id=short,
        content=either(short | st.lists(text_block, max_size=2)),
        is_error=either(st.booleans()),
    )
)
anthropic_message = either(
    record(
        {
            "role": either(st.sampled_from(["user", "user", "assistant", "system"])),
            "content": either(st.text(max_size=40) | st.lists(block, min_size=1, max_size=3)),
        }
    )
)
question = record(
    {"role": st.just("user"), "content": st.text(min_size=1, max_size=40) | st.lists(text_block, min_size=1, max_size=2)}
)
conversation = st.tuples(st.lists(anthropic_message, max_size=3), question).map(lambda parts: [*parts[0], parts[1]])
anthropic_tool = either(
    record(
        {"name": names, "input_schema": schemas()},
        description=short,
        type=st.sampled_from(["custom", "custom", "web_search_20250305"]),
        cache_control=junk,
    )
)
messages_bodies = record(
    {"model": either(st.just("demo"), odds=40), "max_tokens": limits, "messages": either(conversation)},
    system=either(st.text(max_size=20) | st.lists(text_block, max_size=2)),
    stream=either(st.booleans()),
    temperature=either(st.floats(0, 1)),
    top_p=either(st.floats(0.01, 1)),
    top_k=either(st.integers(0, 50)),
    stop_sequences=either(st.lists(st.text(max_size=5), max_size=4)),
    metadata=either(record({}, user_id=short)),
    tools=either(st.lists(anthropic_tool, max_size=3)),
    tool_choice=either(
        record(
            {"type": st.sampled_from(["auto", "auto", "none", "any", "tool"])},
            name=names,
            disable_parallel_tool_use=st.booleans(),
        )
    ),
    thinking=either(
        record(
            {"type": st.sampled_from(["enabled", "adaptive", "disabled"]), "budget_tokens": st.integers(1024, 40000)},
            display=st.sampled_from(["summarized", "omitted"]),
        )
    ),
    output_config=either(
        record(
            {},
            effort=st.sampled_from(["low", "medium", "high", "xhigh", "max"]),
            format=record({"type": st.just("json_schema"), "schema": schemas()}),
        )
    ),
)


@pytest.fixture(scope="module")
def server(tmp_path_factory, demo_build):
    process = ServerProcess("--demo", "--parallel", "2", "--max-queue", "64", home=demo_home(tmp_path_factory, demo_build))
    yield process
    assert process.process.poll() is None  # no request killed it
    assert process.stop() == 0
    assert not [line for line in process.lines if "Traceback" in line or line.startswith("error:")]


def exchange(port: int, method: str, path: str, payload: bytes, content_type: str = "application/json") -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.request(method, path, payload, {"Content-Type": content_type})
    response = connection.getresponse()
    text = response.read().decode()
    connection.close()
    return response.status, text


def held_to_a_few_tokens(body: dict, keys: tuple[str, ...]) -> dict:
    """A valid limit stays (small); none at all gets one: the pass fuzzes requests, not generation length."""
    if not any(isinstance(body.get(key), int) and not isinstance(body.get(key), bool) for key in keys):
        body[keys[0]] = MAX_TOKENS
    for key in keys:
        if isinstance(body.get(key), int) and not isinstance(body[key], bool) and body[key] > MAX_TOKENS:
            body[key] = MAX_TOKENS
    return body


def answer_is_well_formed(path: str, body: dict, status: int, text: str) -> None:
    assert status < 500, (status, text[:500], json.dumps(body)[:2000])
    anthropic = path.startswith("/v1/messages")
    if status == 200 and body.get("stream") is True:
        anthropic_shapes.check_stream(text) if anthropic else check_sse(path, text)
    else:
        (anthropic_shapes.check_body if anthropic else check_body)(path, status, json.loads(text))


@FUZZ
@given(body=chat_bodies)
def test_chat_completions_meet_no_server_error(server, body):
    body = held_to_a_few_tokens(body, ("max_completion_tokens", "max_tokens"))
    status, text = exchange(server.port, "POST", "/v1/chat/completions", json.dumps(body).encode())
    answer_is_well_formed("/v1/chat/completions", body, status, text)


@FUZZ
@given(body=responses_bodies)
def test_responses_meet_no_server_error(server, body):
    body = held_to_a_few_tokens(body, ("max_output_tokens",))
    status, text = exchange(server.port, "POST", "/v1/responses", json.dumps(body).encode())
    answer_is_well_formed("/v1/responses", body, status, text)


@settings(FUZZ, max_examples=120)
@given(body=messages_bodies)
def test_messages_meet_no_server_error(server, body):
    body = held_to_a_few_tokens(body, ("max_tokens",))
    status, text = exchange(server.port, "POST", "/v1/messages", json.dumps(body).encode())
    answer_is_well_formed("/v1/messages", body, status, text)


@settings(FUZZ, max_examples=80)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]),
    path=st.sampled_from(
        [
            "/v1/chat/completions",
            "/v1/responses",
            "/v1/models",
            "/v1/models/demo",
            "/health",
            "/",
            "/v1/models/%00",
            "/v1/../etc/passwd",
            "/v1/messages",
            "/v1/messages/count_tokens",
        ]
    ),
    payload=st.binary(max_size=200) | junk.map(lambda value: json.dumps(value).encode()),
    content_type=st.sampled_from(["application/json", "text/plain", "application/json; charset=latin-1", ""]),
)
def test_any_bytes_to_any_route_meet_no_server_error(server, method, path, payload, content_type):
    status, text = exchange(server.port, method, path, payload, content_type)
    assert status < 500, (status, text[:300])
    if path.startswith("/v1/messages"):
        anthropic_shapes.check_body(path, status, json.loads(text))
    elif status >= 400 or path.startswith("/v1/models"):
        check_body(path, status, json.loads(text))


def test_the_server_is_alive_and_quick_after_the_pass(server):
    status, text = exchange(
        server.port,
        "POST",
        "/v1/chat/completions",
        json.dumps({"model": "demo", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}).encode(),
    )
    assert status == 200 and json.loads(text)["choices"][0]["finish_reason"] == "length"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10):
        pass
