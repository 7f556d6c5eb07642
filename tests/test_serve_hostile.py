"""Hostile traffic against a real ``ossrun serve --demo``: each request that once crashed, exhausted,
hung or misled the server, then a good request that must be answered at once.

Schemas past the grammar bounds, JSON nested deep or holding NaN, web pages (a foreign Host or
Origin, form and text bodies), broken HTTP, floods of idle and slow connections.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.openai_shapes import check_error
from helpers.serving import ServerProcess, ServerThread
from test_serve import demo_home

pytestmark = pytest.mark.slow

QUICK_SECONDS = 10.0  # a good request after a bad one: the demo answers in well under a second when alone
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def home(tmp_path_factory, demo_build):
    return demo_home(tmp_path_factory, demo_build)


@pytest.fixture(scope="module")
def server(home):
    process = ServerProcess("--demo", "--parallel", "2", home=home)
    yield process
    assert process.stop() == 0


def send(port: int, method: str, path: str, body=None, headers=None, content_type="application/json"):
    """(status, headers, body as JSON or text) of one request, made without the SDK."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    payload = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    connection.request(method, path, payload, {**({"Content-Type": content_type} if content_type else {}), **(headers or {})})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    try:
        parsed = json.loads(data) if data else None
    except ValueError:
        parsed = data.decode(errors="replace")
    return response.status, {k.lower(): v for k, v in response.getheaders()}, parsed


def answered_quickly(port: int) -> None:
    started = time.perf_counter()
    status, _, body = send(port, "POST", "/v1/chat/completions", {"model": "demo", "messages": HI, "max_tokens": 4})
    assert status == 200 and body["choices"][0]["finish_reason"] == "length"
    assert time.perf_counter() - started < QUICK_SECONDS


def refused(port: int, status: int, param, code, *request, **options) -> dict:
    got, _, body = send(port, *request, **options)
    assert got == status, body
    check_error(body)
    assert (body["error"]["param"], body["error"]["code"]) == (param, code), body
    answered_quickly(port)
    return body


def array_schema(**bound):
    return {"type": "object", "properties": {"x": {"type": "array", "items": {"type": "integer"}, **bound}}}


def nested(levels: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


CHAT, RESPONSES = "/v1/chat/completions", "/v1/responses"
SCHEMA_BOMBS = [  # once: a SIGSEGV (maxItems about 20,000 or more) or gigabytes (minItems, minLength)
    (
        CHAT,
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": array_schema(maxItems=20000)}}},
        "response_format.json_schema.schema.properties.x.maxItems",
    ),
    (
        RESPONSES,
        {"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "string", "maxLength": 50000}}}},
        "text.format.schema.maxLength",
    ),
    (
        CHAT,
        {
            "tools": [{"type": "function", "function": {"name": "f", "parameters": array_schema(maxItems=30000)}}],
            "tool_choice": "required",
        },
        "tools[0].function.parameters.properties.x.maxItems",
    ),
    (
        RESPONSES,
        {
            "tools": [{"type": "function", "name": "f", "parameters": array_schema(minItems=10**7)}],
            "tool_choice": {"type": "function", "name": "f"},
        },
        "tools[0].parameters.properties.x.minItems",
    ),
    (
        CHAT,
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "x",
                    "schema": {"type": "object", "properties": {"s": {"type": "string", "minLength": 10**9}}},
                },
            }
        },
        "response_format.json_schema.schema.properties.s.minLength",
    ),
    (
        CHAT,
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "^a{0,100000}$"}},
            }
        },
        "response_format.json_schema.schema.pattern",
    ),
    (
        CHAT,
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": nested(59)}}]},
        "tools[0].function.parameters",
    ),  # once: openai-harmony's ValueError, a 500
]


def vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) << 10
    raise AssertionError("no VmHWM")


def test_schemas_past_the_bounds_are_400s_and_cost_no_memory(server):
    before = vm_hwm(server.process.pid)
    for path, fields, param in SCHEMA_BOMBS:
        body = {"model": "demo", **fields, **({"messages": HI} if path == CHAT else {"input": "Hi"})}
        for stream in (False, True):
            answer = refused(server.port, 400, param, "invalid_schema", "POST", path, {**body, "stream": stream})
            assert "1000" in answer["error"]["message"] or "64 deep" in answer["error"]["message"]
    assert vm_hwm(server.process.pid) - before < 64 << 20
    assert server.process.poll() is None


def test_patterns_are_json_schemas_and_what_a_grammar_cannot_hold_is_a_400(server):
    def pattern_format(pattern):
        schema = {"type": "object", "properties": {"code": {"type": "string", "pattern": pattern}}, "required": ["code"]}
        return {
            "model": "demo",
            "messages": HI,
            "max_tokens": 8,
            "response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
        }

    # Unanchored (once refused: "Pattern must start with ^"), and with the escapes llama.cpp's parser refused.
    for pattern in ("[A-Z]{2}", r"^(\d{1,3}\.){3}\d{1,3}$", r"[\w.-]+@[\w-]+\.com", r"\s+\S"):
        status, _, body = send(server.port, "POST", CHAT, pattern_format(pattern))
        assert status == 200 and body["choices"][0]["finish_reason"] == "length", (pattern, body)
    answer = refused(server.port, 400, None, None, "POST", CHAT, {**pattern_format(r"\bword\b"), "stream": True})
    assert "\\b, which a grammar cannot hold" in answer["error"]["message"]
    refused(
        server.port,
        400,
        "response_format.json_schema.schema.properties.code.pattern",
        "invalid_schema",
        "POST",
        CHAT,
        pattern_format("^(a{0,30}){0,30}$"),
    )
    assert not any("error parsing grammar" in line for line in server.lines)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "demo", "input": "Hi", "metadata": ' + b"[" * 990 + b"]" * 990 + b"}",  # once: RecursionError, a 500
        b'{"model": "demo", "input": "Hi", "metadata": {"a": NaN}}',  # once: a 500, or NaN echoed into a stream
        b'{"model": "demo", "input": "Hi", "text": {"verbosity": Infinity}}',
        b'{"model": "demo", "input": "Hi", "reasoning": {"effort": "low", "budget": 1e309}}',
        b'{"model": "demo", "input": "Hi", "stream": true, "tools": [{"type": "web_search", "x": -Infinity}]}',
        b'{"model": "demo", "messages": [{"role": "user", "content": "Hi"}], "temperature": NaN}',
    ],
)
def test_bodies_json_cannot_carry_are_400s(server, raw):
    path = CHAT if b"messages" in raw else RESPONSES
    refused(server.port, 400, None, "invalid_json", "POST", path, raw)


@pytest.mark.parametrize(
    "fields, param, code",
    [
        ({"max_tokens": "abc", "max_completion_tokens": 5}, "max_tokens", "invalid_type"),  # once: accepted
        ({"seed": -1}, "seed", "invalid_value"),
        ({"seed": 2**32}, "seed", "invalid_value"),
        ({"stop": [str(n) for n in range(17)]}, "stop", "invalid_value"),
        ({"tools": [{"type": "function", "function": {"name": "no spaces!"}}]}, "tools[0].function.name", "invalid_value"),
        (
            {
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": {"type": "function", "function": {"name": "g"}},
            },
            "tool_choice.function.name",
            "invalid_value",
        ),
        ({"tool_choice": "required"}, "tool_choice", "invalid_value"),
        (
            {"tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "all"}}},
            "tool_choice.allowed_tools.mode",
            "invalid_value",
        ),
        ({"response_format": {"type": "json_schema", "json_schema": "x"}}, "response_format.json_schema", "invalid_type"),
        (
            {"response_format": {"type": "json_schema", "json_schema": None}},
            "response_format.json_schema",
            "missing_required_parameter",
        ),  # once: a 500
    ],
)
def test_every_bad_chat_field_is_named(server, fields, param, code):
    refused(server.port, 400, param, code, "POST", CHAT, {"model": "demo", "messages": HI, **fields})


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"metadata": {"user": 5}}, "metadata.user"),  # once: echoed, and not a string
        ({"reasoning": {"summary": "everything"}}, "reasoning.summary"),
        ({"tools": [{"name": "f"}]}, "tools[0].type"),
        ({"text": {"format": {"type": "xml"}}}, "text.format.type"),
    ],
)
def test_every_bad_responses_field_is_named(server, fields, param):
    body = refused(
        server.port,
        400,
        param,
        {"tools[0].type": "missing_required_parameter", "metadata.user": "invalid_type"}.get(param, "invalid_value"),
        "POST",
        RESPONSES,
        {"model": "demo", "input": "Hi", **fields},
    )
    assert body["error"]["message"]


def test_web_pages_cannot_use_it_and_the_servers_own_origin_can(server):
    port, body = server.port, {"model": "demo", "messages": HI, "max_tokens": 2}
    refused(port, 403, None, "host_not_allowed", "POST", CHAT, body, {"Host": "evil.example.com"})
    refused(port, 403, None, "host_not_allowed", "GET", "/v1/models", None, {"Host": f"evil.example.com:{port}"})
    refused(port, 403, None, "origin_not_allowed", "POST", CHAT, body, {"Origin": "http://evil.example.com"})
    refused(
        port,
        403,
        None,
        "origin_not_allowed",
        "OPTIONS",
        CHAT,
        None,
        {"Origin": "http://evil.example.com", "Access-Control-Request-Method": "POST"},
    )
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        refused(port, 415, None, "unsupported_media_type", "POST", CHAT, json.dumps(body).encode(), content_type=kind)
    refused(port, 403, None, "host_not_allowed", "GET", "/health", None, {"Host": "[::1"})
    # Names no page can rebind; any port, as an SSH tunnel or a port forward changes it.
    for host in (
        f"localhost:{port}",
        f"127.0.0.1:{port}",
        f"[::1]:{port}",
        f"LOCALHOST:{port}",
        "localhost:9000",
        "app.localhost",
        f"{socket.gethostname()}:{port}",
        "10.1.2.3:8080",
    ):
        assert send(port, "POST", CHAT, body, {"Host": host})[0] == 200, host
    # The page the server itself serves (the chat page to come) fetches from its own origin.
    own = f"http://127.0.0.1:{port}"
    status, headers, _ = send(port, "POST", CHAT, body, {"Origin": own}, content_type="application/json; charset=utf-8")
    assert status == 200 and "access-control-allow-origin" not in headers
    status, headers, _ = send(
        port,
        "OPTIONS",
        CHAT,
        None,
        {"Origin": own, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"},
    )
    assert status == 204 and headers["access-control-allow-origin"] == own
    assert send(port, "POST", CHAT, json.dumps(body).encode(), content_type=None)[0] == 200  # clients that send no type


def raw_exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: abc\r\n\r\n{}",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n{}",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 TLS to a plain port\r\n\r\n",
    ],
)
def test_requests_that_are_not_http_get_a_json_400(server, request_bytes):
    answer = raw_exchange(server.port, request_bytes)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head.lower()
    assert check_error(json.loads(body)).code == "invalid_http"
    answered_quickly(server.port)


def test_an_empty_api_key_and_a_bad_cors_origin_stop_at_the_start(tmp_path):
    for option, value in (("--api-key", ""), ("--api-key", "  "), ("--cors", "evil.example.com")):
        result = subprocess.run(
            [sys.executable, "-m", "ossrun", "serve", "--demo", option, value],
            capture_output=True,
            text=True,
            timeout=60,
            env={"OSSRUN_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        )
        assert result.returncode == 2 and option in result.stderr and "Traceback" not in result.stderr, result.stderr


# -- connections ----------------------------------------------------------------


@pytest.fixture(scope="module")
def small_server(home):
    """At most 64 connections, one cross-origin page allowed, started with a soft limit of 256 open files."""
    process = ServerProcess("--demo", "--max-connections", "64", "--cors", "http://localhost:3000", home=home, open_files=256)
    yield process
    process.stop()


def open_files_limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open files limit")


def test_the_open_files_limit_is_raised_at_start(small_server):
    soft, hard = open_files_limits(small_server.process.pid)
    assert soft == hard > 256


def test_idle_and_slow_connections_past_the_limit_lock_nobody_out(small_server):
    port = small_server.port
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(200)]
    slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
    try:
        for sock in slow:  # a head that never ends
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        started = time.perf_counter()
        status, _, body = send(port, "GET", "/health")
        assert status == 200 and body["status"] == "ok" and time.perf_counter() - started < QUICK_SECONDS
        answered_quickly(port)
        closed = 0
        for sock in idle + slow:  # the server closed the connections that waited longest
            sock.setblocking(False)
            try:
                closed += sock.recv(1) == b""
            except BlockingIOError:
                pass
            except ConnectionResetError:
                closed += 1
        assert closed >= len(idle) + len(slow) - 64
    finally:
        for sock in idle + slow:
            sock.close()
    assert not any("Too many open files" in line or "Traceback" in line for line in small_server.lines)


def test_a_page_given_with_cors_may_call_it_and_others_may_not(small_server):
    port, body = small_server.port, {"model": "demo", "messages": HI, "max_tokens": 2}
    page = "http://localhost:3000"
    status, headers, _ = send(
        port,
        "OPTIONS",
        CHAT,
        None,
        {"Origin": page, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"},
    )
    assert status == 204 and headers["access-control-allow-origin"] == page
    assert headers["access-control-allow-headers"] == "authorization,content-type"
    status, headers, _ = send(port, "POST", CHAT, body, {"Origin": page})
    assert status == 200 and headers["access-control-allow-origin"] == page and headers["vary"] == "Origin"
    status, headers, _ = send(port, "POST", CHAT, json.dumps(body).encode(), {"Origin": page}, content_type="text/plain")
    assert status == 415 and headers["access-control-allow-origin"] == page  # the page may read why
    refused(port, 403, None, "origin_not_allowed", "POST", CHAT, body, {"Origin": "http://localhost:3001"})


@pytest.fixture
def quick_timeouts(encoding):
    """An in-process server over a scripted engine with one-second request timeouts."""
    from helpers.scripted import ScriptedEngine, reply
    from ossrun.model import Model
    from ossrun.server.edge import Limits

    model = Model(ScriptedEngine(encoding, [reply("Hm.", "Hello.")] * 4), encoding, name="demo")
    server = ServerThread(model, name="demo", limits=Limits(max_connections=8, header_seconds=1, body_seconds=1))
    yield server
    server.stop()


def closed_within(sock: socket.socket, seconds: float) -> bytes:
    sock.settimeout(seconds)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_connections_that_send_no_whole_request_are_closed(quick_timeouts):
    port = quick_timeouts.sock.getsockname()[1]
    with (
        socket.create_connection(("127.0.0.1", port)) as idle,
        socket.create_connection(("127.0.0.1", port)) as head,
        socket.create_connection(("127.0.0.1", port)) as body,
    ):
        head.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        body.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"model": ' % port
        )
        started = time.perf_counter()
        assert closed_within(idle, 10) == b"" and closed_within(head, 10) == b""
        answer = closed_within(body, 10)
        assert time.perf_counter() - started < 8
    head_line, _, payload = answer.partition(b"\r\n\r\n")
    assert head_line.startswith(b"HTTP/1.1 408") and check_error(json.loads(payload)).code == "request_timeout"
    status, _, _ = send(port, "POST", CHAT, {"model": "demo", "messages": HI})
    assert status == 200
