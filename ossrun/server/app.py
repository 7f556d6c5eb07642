"""The HTTP layer of ``ossrun serve``: Starlette routes over the translations in ``chat``, ``responses``
and ``messages`` (Anthropic's Messages API).

Every error is answered in OpenAI's shape, or on Anthropic's routes in its own (``errors``: the
mapping of library errors). Requests are checked before they take a place in the queue, and the
prompt is rendered before a stream starts, so a prompt too long for the context is a 400 rather
than a broken stream. Streams stay alive while a long prompt is read
(SSE comments for Chat Completions, ``: prefill READ/TOTAL`` with the prompt's progress,
repeated ``response.in_progress`` for Responses, whose clients ignore comments, and ``ping``
events for Messages). A client that goes away cancels its reply, prefill included. Besides the
API: the chat page at ``/`` (``page``), ``/metrics`` (``metrics``), ``/tokenize`` and
``/detokenize`` (``tokens``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import sys
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TextIO

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ossrun.errors import OssrunError
from ossrun.events import Done, Prefill
from ossrun.options import ReplyOptions
from ossrun.server import chat, messages, page, responses, tokens
from ossrun.server.edge import Edge, Limits, uvicorn_config
from ossrun.server.errors import api_error, response_failure, stream_error
from ossrun.server.fields import ApiError, bad_request, check_unicode, parse_json
from ossrun.server.metrics import CONTENT_TYPE as METRICS_TYPE
from ossrun.server.metrics import Capacity, Metrics
from ossrun.server.runner import KEEPALIVE, Busy, Runner
from ossrun.server.served import ServedModel
from ossrun.server.state import ServerState

if TYPE_CHECKING:
    from ossrun.model import Model

DEFAULT_MAX_BODY_BYTES = 16 << 20
DEFAULT_KEEPALIVE_SECONDS = 15.0
PROGRESS_SECONDS = 0.5  # how often a stream says how far the prompt is read
RETRY_AFTER_SECONDS = 5
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class Server:
    """What the routes share: the model, its name, the queue, the server's memory, the log."""

    def __init__(
        self,
        model: Model,
        served: ServedModel,
        *,
        api_key: str | None = None,
        max_waiting: int = 16,
        max_body: int = DEFAULT_MAX_BODY_BYTES,
        keepalive_seconds: float = DEFAULT_KEEPALIVE_SECONDS,
        log: TextIO | None = None,
        limits: Limits | None = None,
    ):
        self.model = model
        self.served = served
        self.api_key = api_key
        self.max_body = max_body
        self.limits = limits or Limits()
        self.keepalive_seconds = keepalive_seconds
        self.log = log if log is not None else sys.stderr
        self.state = ServerState()
        self.metrics = Metrics()
        served.context_length, served.parallel = model.n_ctx, model.engine.parallel
        self.runner = Runner(model.stream, model.engine.parallel, max_waiting=max_waiting, on_reply=self.metrics.reply)

    def app(self) -> Edge:
        """The routes behind the checks of :class:`ossrun.server.edge.Edge`, which every route gets."""
        routes = [
            Route("/", self.guarded(self.page_index, "/", public=True), methods=["GET"]),
            Route("/static/{name}", self.guarded(self.page_file, "/static", public=True), methods=["GET"]),
            Route("/health", self.guarded(self.health, "/health"), methods=["GET"]),
            Route("/metrics", self.guarded(self.metrics_page, "/metrics"), methods=["GET"]),
            Route("/tokenize", self.guarded(self.tokenize, "/tokenize"), methods=["POST"]),
            Route("/detokenize", self.guarded(self.detokenize, "/detokenize"), methods=["POST"]),
            Route("/v1/models", self.guarded(self.list_models, "/v1/models"), methods=["GET"]),
            Route("/v1/models/{model_id:path}", self.guarded(self.get_model, "/v1/models/{model}"), methods=["GET"]),
            Route("/v1/chat/completions", self.guarded(self.chat_completions, "/v1/chat/completions"), methods=["POST"]),
            Route("/v1/responses", self.guarded(self.openai_responses, "/v1/responses"), methods=["POST"]),
            Route("/v1/messages", self.guarded(self.anthropic_messages, "/v1/messages"), methods=["POST"]),
            Route("/v1/messages/count_tokens", self.guarded(self.count_tokens, "/v1/messages/count_tokens"), methods=["POST"]),
        ]
        routed = Starlette(routes=routes, exception_handlers={404: self.not_found, 405: self.not_allowed})
        return Edge(routed, self.limits, self.log_refused)

    def uvicorn_config(self, **options: Any) -> Any:
        """uvicorn's configuration for this server, with the connection bounds of ``limits``."""
        return uvicorn_config(self.app(), self.limits, self.write_log, **options)

    # -- around every route -------------------------------------------------

    def guarded(self, handler: Callable[[Request], Any], endpoint: str, *, public: bool = False) -> Callable[[Request], Any]:
        """``handler`` with the key checked (unless ``public``), its errors answered (library errors too:
        ``errors.api_error``), the log and the counts."""

        async def route(request: Request) -> Response:
            started = time.perf_counter()
            request.state.tokens = ""
            request.state.endpoint = endpoint
            try:
                if not public:
                    self.authorize(request)
                response = await handler(request)
            except (ApiError, OssrunError) as exc:
                error = api_error(exc)
                self.metrics.error(error.kind)
                response = _error_response(request, error)
            except Exception as exc:  # a bug answers 500 and the server goes on
                self.write_log(f"error: {type(exc).__name__}: {exc}")
                self.metrics.error("server_error")
                response = _error_response(request, ApiError(500, "the server failed on this request", type="server_error"))
            if isinstance(response, StreamingResponse):
                request.state.log_later = (started, response.status_code)  # the stream logs when it ends
            else:
                self.log_request(request, response.status_code, started)
            return response

        return route

    def authorize(self, request: Request) -> None:
        """The key as a bearer token (OpenAI's clients) or in ``x-api-key`` (Anthropic's)."""
        if self.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else request.headers.get("x-api-key", "")
        if not hmac.compare_digest(given.encode(), self.api_key.encode()):
            raise ApiError(
                401,
                "missing or wrong API key: send Authorization: Bearer KEY (or x-api-key: KEY)",
                type="authentication_error",
                code="invalid_api_key",
            )

    def log_request(self, request: Request, status: int, started: float) -> None:
        """One line per request: what it was, its status, its tokens (or how it was cancelled), its effort, its time."""
        self.metrics.request(getattr(request.state, "endpoint", "other"), status)
        tokens = getattr(request.state, "tokens", "")
        effort = getattr(request.state, "effort", None)
        shown = f"{tokens} effort={effort}" if effort else tokens
        self.write_log(f"{request.method} {request.url.path} {status}{shown} {time.perf_counter() - started:.2f}s")

    def log_refused(self, method: str, path: str, status: int, started: float, kind: str | None) -> None:
        """A request the edge answered itself (a refusal, a CORS preflight): logged and counted like the others."""
        self.metrics.request(_endpoint_of(path), status)
        if kind is not None:
            self.metrics.error(kind)
        self.write_log(f"{method} {path} {status} {time.perf_counter() - started:.2f}s")

    def write_log(self, line: str) -> None:
        self.log.write(line + "\n")
        self.log.flush()

    async def not_found(self, request: Request, exc: Exception) -> Response:
        started = time.perf_counter()
        error = ApiError(
            404,
            f"no route {request.method} {request.url.path}: see /v1/models, /v1/chat/completions, /v1/responses, /v1/messages",
            code="not_found",
        )
        self.metrics.error(error.kind)
        self.log_request(request, 404, started)
        return _error_response(request, error)

    async def not_allowed(self, request: Request, exc: Exception) -> Response:
        started = time.perf_counter()
        error = ApiError(405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed")
        self.metrics.error(error.kind)
        self.log_request(request, 405, started)
        return _error_response(request, error)

    async def read_json(self, request: Request) -> dict[str, Any]:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > self.max_body:
            raise ApiError(
                413, f"the body is {int(length)} bytes, more than the {self.max_body} this server takes", code="request_too_large"
            )
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.max_body:
                    raise ApiError(
                        413, f"the body is more than the {self.max_body} bytes this server takes", code="request_too_large"
                    )
                chunks.append(chunk)
        except ClientDisconnect:
            raise bad_request("the client went away before its body was read", code="client_disconnected") from None
        body = parse_json(b"".join(chunks))
        check_unicode(body)
        return body

    # -- routes -------------------------------------------------------------

    async def page_index(self, request: Request) -> Response:
        return self.page_response("index.html")

    async def page_file(self, request: Request) -> Response:
        return self.page_response(request.path_params["name"])

    def page_response(self, name: str) -> Response:
        try:
            content, media_type = page.read(name)
        except KeyError:
            raise ApiError(404, f"the chat page has no file {name!r}", code="not_found") from None
        return Response(content, media_type=media_type, headers=page.HEADERS)

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": self.served.name})

    async def metrics_page(self, request: Request) -> Response:
        occupancy = await run_in_threadpool(self.model.occupancy)
        text = self.metrics.render(occupancy, Capacity(sequences=self.served.parallel, cells=self.served.context_length))
        return Response(text, headers={"Content-Type": METRICS_TYPE})

    async def tokenize(self, request: Request) -> Response:
        call = tokens.parse_tokenize(await self.read_json(request), self.served, self.state)
        if call.text is not None:
            ids = await run_in_threadpool(self.model.encode, call.text)
        else:
            ids = await run_in_threadpool(self.model.render, call.messages, call.options)
        return JSONResponse({"tokens": ids, "count": len(ids)})

    async def detokenize(self, request: Request) -> Response:
        ids = tokens.parse_detokenize(await self.read_json(request))
        try:
            text = await run_in_threadpool(self.model.decode, ids)
        except OssrunError as exc:  # ids the vocabulary does not have
            raise api_error(exc, param="tokens", code="invalid_value") from None
        return JSONResponse({"text": text})

    async def list_models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self.served.describe()]})

    async def get_model(self, request: Request) -> Response:
        self.served.check_model(request.path_params["model_id"])
        return JSONResponse(self.served.describe())

    async def chat_completions(self, request: Request) -> Response:
        call = chat.parse(await self.read_json(request), self.served, self.state)
        completion = chat.Completion(call, self.state)

        def logged(result: dict[str, Any]) -> str:
            usage = result["usage"]
            return _tokens(usage["prompt_tokens"], usage["completion_tokens"], usage["prompt_tokens_details"]["cached_tokens"])

        return await self.answer(
            request, call, lambda events: self.chat_stream(request, completion, events), completion.completion, logged
        )

    async def openai_responses(self, request: Request) -> Response:
        call = responses.parse(await self.read_json(request), self.served, self.state)
        response = responses.Response(call, self.state)

        def logged(result: dict[str, Any]) -> str:
            usage = result["usage"]
            return _tokens(usage["input_tokens"], usage["output_tokens"], usage["input_tokens_details"]["cached_tokens"])

        return await self.answer(
            request, call, lambda events: self.responses_stream(request, response, events), response.run, logged
        )

    async def anthropic_messages(self, request: Request) -> Response:
        call = messages.parse(await self.read_json(request), self.served, self.state)
        message = messages.Message(call, self.state)

        def logged(result: dict[str, Any]) -> str:
            usage = result["usage"]
            cached = usage["cache_read_input_tokens"]
            return _tokens(usage["input_tokens"] + cached, usage["output_tokens"], cached)

        return await self.answer(
            request, call, lambda events: self.messages_stream(request, message, events), message.message, logged
        )

    async def count_tokens(self, request: Request) -> Response:
        call = messages.parse(await self.read_json(request), self.served, self.state, counting=True)
        options = call.options
        if self.served.python_tool is not None:  # the server's tools are declared as for any request; nothing runs
            options = dataclasses.replace(options, python_tool=self.served.python_tool)
        if self.served.mcp is not None:
            options = dataclasses.replace(options, mcp=self.served.mcp)
        ids = await run_in_threadpool(self.model.render, call.messages, options)
        return JSONResponse(messages.count(ids))

    # -- running a reply ----------------------------------------------------

    async def answer(
        self,
        request: Request,
        call: chat.ChatCall | responses.ResponsesCall | messages.MessagesCall,
        stream: Callable[[AsyncGenerator[Any, None]], AsyncIterator[str]],
        consume: Callable[[Any], dict[str, Any]],
        logged: Callable[[dict[str, Any]], str],
    ) -> Response:
        """Start a parsed call's reply and hand back its stream, or its one object once it is done."""
        request.state.effort = call.options.reasoning_effort
        cancel, request.state.prompt_tokens = await self.start(call.messages, call.options)
        events = self.runner.events(
            cancel, call.messages, call.options, keepalive_seconds=min(PROGRESS_SECONDS, self.keepalive_seconds)
        )
        if call.stream:
            return self.sse(request, stream(events))
        try:
            result = await self.collect(request, cancel, events, consume)
        finally:
            await events.aclose()
        request.state.tokens = logged(result)
        return JSONResponse(result)

    async def start(self, messages: list[dict[str, Any]], options: ReplyOptions) -> tuple[threading.Event, int]:
        """Check the prompt fits (no message is ever dropped for the API: the calls' options never truncate),
        then take a place in the queue. Returns the reply's cancel event and the prompt's length."""
        ids = await run_in_threadpool(self.model.render, messages, options)  # a library error: a 400 (``guarded``)
        try:
            return self.runner.admit(), len(ids)
        except Busy:
            if self.runner.stopping:
                raise ApiError(503, "the server is stopping", type="server_error", code="server_shutting_down") from None
            raise ApiError(
                429,
                f"every sequence is busy and {self.runner.capacity} requests are already admitted: retry in a few seconds",
                type="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            ) from None

    async def collect(
        self,
        request: Request,
        cancel: threading.Event,
        events: AsyncGenerator[Any, None],
        consume: Callable[[Any], dict[str, Any]],
    ) -> dict[str, Any]:
        """Run a reply that is not streamed: its events in a list, cancelled if the client leaves."""
        watcher = asyncio.create_task(_cancel_on_disconnect(request, cancel))
        gathered = []
        try:
            async for event in events:
                if event is not KEEPALIVE:
                    gathered.append(event)
        finally:
            watcher.cancel()
        if cancel.is_set() and not self.runner.stopping:  # the client went away: no one reads the answer
            self.cancelled(request, None)
        if self.runner.stopping and _interrupted(gathered):
            raise _shutdown_error()
        return await run_in_threadpool(consume, gathered)

    def sse(self, request: Request, chunks: AsyncIterator[str]) -> StreamingResponse:
        async def body() -> AsyncIterator[str]:
            request.state.reading = None  # the Prefill being read, while it is
            finished = False
            try:
                async for chunk in chunks:
                    yield chunk
                finished = True
            finally:
                if not finished and not self.runner.stopping:
                    self.cancelled(request, request.state.reading)
                started, status = getattr(request.state, "log_later", (time.perf_counter(), 200))
                self.log_request(request, status, started)

        return StreamingResponse(body(), media_type="text/event-stream", headers=SSE_HEADERS)

    def cancelled(self, request: Request, reading: Prefill | None) -> None:
        """The client left before the end: the reply was cancelled (the runner saw to it)."""
        self.metrics.cancelled(request.state.endpoint)
        request.state.tokens = f" cancelled in prefill {reading.read()}/{reading.tokens}" if reading else " cancelled"

    async def chat_stream(
        self, request: Request, completion: chat.Completion, events: AsyncGenerator[Any, None]
    ) -> AsyncIterator[str]:
        gathered: list[Any] = []
        quiet = _Quiet(self.keepalive_seconds)
        shown = -1  # the prefill progress last sent
        try:
            for chunk in completion.open():
                yield _data(chunk)
            async for event in events:
                reading = request.state.reading
                if event is KEEPALIVE:
                    if reading is not None and (reading.read() != shown or quiet.due()):
                        shown = reading.read()
                        yield quiet.sent(f": prefill {shown}/{reading.tokens}\n\n")
                    elif quiet.due():
                        yield quiet.sent(": keep-alive\n\n")
                    continue
                gathered.append(event)
                if isinstance(event, Prefill):
                    request.state.reading, shown = (event, 0) if event.tokens else (None, -1)
                    if event.tokens:
                        yield quiet.sent(f": prefill 0/{event.tokens}\n\n")
                    continue
                request.state.reading = None
                for chunk in completion.feed(event):
                    yield quiet.sent(_data(chunk))
            if self.runner.stopping and _interrupted(gathered):
                self.metrics.error("server_shutting_down")
                yield _data(_shutdown_error().body())
            else:
                for chunk in completion.close():
                    yield _data(chunk)
                if completion.transcript.reply is not None:  # close() has checked the reply ended with Done
                    usage = completion.transcript.reply.usage
                    request.state.tokens = _tokens(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)
        except OssrunError as exc:
            error = stream_error(exc)
            self.metrics.error(error.kind)
            yield _data(error.body())
        finally:
            await events.aclose()
        yield "data: [DONE]\n\n"

    async def responses_stream(
        self, request: Request, response: responses.Response, events: AsyncGenerator[Any, None]
    ) -> AsyncIterator[str]:
        gathered: list[Any] = []
        failed: tuple[str, str] | None = None
        quiet = _Quiet(self.keepalive_seconds)
        try:
            for event in response.start():
                yield _named(event)
            async for event in events:
                if event is KEEPALIVE:
                    if quiet.due():
                        yield quiet.sent(_named(response.keepalive()))
                    continue
                gathered.append(event)
                request.state.reading = event if isinstance(event, Prefill) and event.tokens else None
                for out in response.feed(event):
                    yield quiet.sent(_named(out))
        except OssrunError as exc:
            failed = response_failure(stream_error(exc))
        finally:
            await events.aclose()
        if failed is None and self.runner.stopping and _interrupted(gathered):
            failed = response_failure(_shutdown_error())
        if failed:
            self.metrics.error(failed[0])
        for event in response.failed(*failed) if failed else response.finish():
            yield _named(event)
        if response.reply is not None:
            usage = response.reply.usage
            request.state.tokens = _tokens(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)

    async def messages_stream(
        self, request: Request, message: messages.Message, events: AsyncGenerator[Any, None]
    ) -> AsyncIterator[str]:
        gathered: list[Any] = []
        quiet = _Quiet(self.keepalive_seconds)
        message.prompt_tokens = request.state.prompt_tokens
        try:
            for out in message.open():
                yield _named(out)
            async for event in events:
                if event is KEEPALIVE:
                    if quiet.due():
                        yield quiet.sent(_named({"type": "ping"}))
                    continue
                gathered.append(event)
                request.state.reading = event if isinstance(event, Prefill) and event.tokens else None
                for out in message.feed(event):
                    yield quiet.sent(_named(out))
            if self.runner.stopping and _interrupted(gathered):
                self.metrics.error("server_shutting_down")
                yield _named(messages.error_event(_shutdown_error()))
            else:
                for out in message.close():
                    yield _named(out)
                if message.reply is not None:
                    usage = message.reply.usage
                    request.state.tokens = _tokens(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)
        except OssrunError as exc:
            error = stream_error(exc)
            self.metrics.error(error.kind)
            yield _named(messages.error_event(error))
        finally:
            await events.aclose()


ROUTES = (
    "/",
    "/health",
    "/metrics",
    "/tokenize",
    "/detokenize",
    "/v1/models",
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/messages",
    "/v1/messages/count_tokens",
)


def _endpoint_of(path: str) -> str:
    """The route a path would take, as the metrics name it (``other`` for none)."""
    if path in ROUTES:
        return path
    if path.startswith("/static/"):
        return "/static"
    return "/v1/models/{model}" if path.startswith("/v1/models/") else "other"


class _Quiet:
    """When a stream has been silent for ``seconds``: time to say something to keep it alive."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.last = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.seconds

    def sent(self, text: str) -> str:
        self.last = time.monotonic()
        return text


def _data(chunk: dict[str, Any]) -> str:
    return f"data: {json.dumps(chunk, ensure_ascii=False, allow_nan=False)}\n\n"


def _named(event: dict[str, Any]) -> str:
    return f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False, allow_nan=False)}\n\n"


def _tokens(prompt: int, completion: int, cached: int) -> str:
    return f" {prompt}+{completion} tokens ({cached} cached)"


def _error_response(request: Request, error: ApiError) -> JSONResponse:
    status, body = error.answer(request.url.path)
    return JSONResponse(body, status, headers=error.headers)


def _interrupted(events: list[Any]) -> bool:
    return bool(events) and isinstance(events[-1], Done) and events[-1].reply.finish_reason == "interrupted"


def _shutdown_error() -> ApiError:
    return ApiError(503, "the server stopped before the reply was complete", type="server_error", code="server_shutting_down")


async def _cancel_on_disconnect(request: Request, cancel: threading.Event) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            cancel.set()
            return
