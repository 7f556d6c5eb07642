"""The one mapping of ossrun's errors to the APIs' (``ossrun.server.errors``): each library error's
status, shape, field and code, in OpenAI's shape and in Anthropic's; then the server over a
scripted model whose reply fails in the middle, which every API answers with the mapped error."""

from __future__ import annotations

import http.client
import json

import pytest

from helpers.scripted import ScriptedEngine, reply
from helpers.serving import ServerThread
from ossrun.errors import ContextError, McpError, ModelError, OssrunError, ToolError
from ossrun.limits import SchemaError
from ossrun.model import Model
from ossrun.server.errors import api_error, response_failure, stream_error
from ossrun.server.fields import ApiError

OVER = "the prompt is 700 tokens, more than the context of 512 tokens allows: use a larger --ctx (at least 2048)"


def openai(exc, **named) -> tuple[int, dict]:
    return api_error(exc, **named).answer("/v1/chat/completions")


def test_a_prompt_over_the_context_is_context_length_exceeded_about_the_messages():
    status, body = openai(ContextError(OVER))
    assert status == 400
    assert body == {
        "error": {"message": OVER, "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}
    }


@pytest.mark.parametrize(
    "exc, param",
    [
        (SchemaError("tools[0].parameters nests more than 64 deep: flatten it", "tools[0].parameters"), "tools[0].parameters"),
        (ToolError("two tools are named 'f': give each tool its own name"), "tools"),
        (McpError("an MCP server's tool failed"), "tools"),
        (ModelError("the model was closed"), None),
        (OssrunError("anything else"), None),
    ],
)
def test_a_library_error_is_a_400_with_its_message_naming_the_field_its_type_says(exc, param):
    status, body = openai(exc)
    assert status == 400
    assert body == {"error": {"message": str(exc), "type": "invalid_request_error", "param": param, "code": None}}


def test_a_route_names_the_field_an_untyped_error_is_about():
    # /detokenize: ids the vocabulary does not have
    error = api_error(ModelError("token 999999 is not in the vocabulary"), param="tokens", code="invalid_value")
    assert (error.status, error.param, error.code) == (400, "tokens", "invalid_value")
    # a type that names its field wins
    assert api_error(ToolError("bad tool"), param="tokens", code="invalid_value").param == "tools"


def test_an_api_error_is_answered_as_it_is():
    error = ApiError(429, "every sequence is busy", type="rate_limit_error", code="queue_full", headers={"Retry-After": "5"})
    assert api_error(error) is error
    assert openai(error) == (
        429,
        {"error": {"message": "every sequence is busy", "type": "rate_limit_error", "param": None, "code": "queue_full"}},
    )


@pytest.mark.parametrize(
    "exc, status, kind",
    [
        (ContextError(OVER), 400, "invalid_request_error"),
        (ToolError("bad tool"), 400, "invalid_request_error"),
        (ApiError(401, "missing or wrong API key", type="authentication_error"), 401, "authentication_error"),
        (ApiError(404, "no such model", code="model_not_found"), 404, "not_found_error"),
        (ApiError(429, "every sequence is busy", type="rate_limit_error"), 529, "overloaded_error"),
        (ApiError(503, "the server is stopping", type="server_error"), 529, "overloaded_error"),
        (ApiError(500, "the server failed on this request", type="server_error"), 500, "api_error"),
    ],
)
def test_on_anthropics_routes_the_same_errors_have_anthropics_shape_and_status(exc, status, kind):
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        got, body = api_error(exc).answer(path)
        assert got == status and set(body) == {"type", "error", "request_id"}
        assert body["type"] == "error" and body["error"] == {"type": kind, "message": str(exc)}
        assert body["request_id"].startswith("req_")


def test_a_stream_under_way_ends_with_the_same_error_about_no_field():
    for exc in (ContextError(OVER), ToolError("bad tool"), ModelError("the model was closed")):
        error, streamed = api_error(exc), stream_error(exc)
        assert (streamed.status, streamed.message, streamed.type, streamed.code, streamed.param) == (
            error.status,
            error.message,
            error.type,
            error.code,
            None,
        )


def test_a_failed_responses_stream_has_its_own_codes():
    assert response_failure(api_error(ContextError(OVER))) == ("context_length_exceeded", OVER)
    assert response_failure(api_error(ModelError("the model was closed"))) == ("invalid_prompt", "the model was closed")
    shutdown = ApiError(503, "the server stopped before the reply was complete", type="server_error", code="server_shutting_down")
    assert response_failure(shutdown) == ("server_error", "the server stopped before the reply was complete")


# -- the server: a reply that fails after it has begun ---------------------------------------------


class FailingModel(Model):
    """A model whose replies begin (their first event comes) and then fail with ``failure``, as one
    whose tool results outgrow the context does: the prompt was checked before, so the request
    was admitted and a stream has started."""

    failure: OssrunError

    def stream(self, messages, options=None, /, **fields):
        events = super().stream(messages, options, **fields)
        try:
            yield next(events)
            raise self.failure
        finally:
            events.close()


@pytest.fixture
def failing(encoding):
    model = FailingModel(ScriptedEngine(encoding, [reply("Thinking.", "Hello.")] * 8), encoding, name="scripted")
    server = ServerThread(model)
    yield model, server
    server.stop()


BODIES = {
    "/v1/chat/completions": {"model": "scripted", "messages": [{"role": "user", "content": "Hi"}]},
    "/v1/responses": {"model": "scripted", "input": "Hi"},
    "/v1/messages": {"model": "scripted", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]},
}


def post(server, path, body) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", server.sock.getsockname()[1], timeout=60)
    connection.request("POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    response = connection.getresponse()
    status, text = response.status, response.read().decode()
    connection.close()
    return status, text


def last_event(text: str) -> dict:
    data = [line[6:] for line in text.splitlines() if line.startswith("data: ") and line != "data: [DONE]"]
    return json.loads(data[-1])


@pytest.mark.parametrize("failure", [ContextError(OVER), ModelError("the model was closed")], ids=["context", "other"])
def test_a_reply_that_fails_is_answered_with_the_mapped_error_by_every_api(failing, failure):
    model, server = failing
    model.failure = failure
    expected, streamed = api_error(failure), stream_error(failure)
    for path, body in BODIES.items():
        status, text = post(server, path, body)  # not streamed: the error is the answer
        assert (status, json.loads(text)["error"]["message"]) == (400, str(failure)), (path, text)
        if path == "/v1/messages":
            assert json.loads(text)["error"]["type"] == "invalid_request_error"
        else:
            assert json.loads(text)["error"] == expected.body()["error"]
        status, text = post(server, path, {**body, "stream": True})  # streamed: the error ends the stream
        assert status == 200
        last = last_event(text)
        if path == "/v1/chat/completions":
            assert last == streamed.body() and text.endswith("data: [DONE]\n\n")
        elif path == "/v1/responses":
            assert last["type"] == "response.failed"
            assert last["response"]["error"] == dict(zip(("code", "message"), response_failure(streamed), strict=True))
        else:
            assert last["type"] == "error" and last["error"] == {"type": "invalid_request_error", "message": str(failure)}
    connection = http.client.HTTPConnection("127.0.0.1", server.sock.getsockname()[1], timeout=60)
    connection.request("GET", "/metrics")
    counted = {
        line.split('"')[1]: float(line.rsplit(" ", 1)[1])
        for line in connection.getresponse().read().decode().splitlines()
        if line.startswith("ossrun_errors_total{")
    }
    connection.close()
    if isinstance(failure, ContextError):
        assert counted == {"context_length_exceeded": 6}
    else:  # the Responses stream counts its failure's code
        assert counted == {"invalid_request_error": 5, "invalid_prompt": 1}
