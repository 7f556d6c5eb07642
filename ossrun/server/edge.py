"""The server's edge: what every connection and request goes through before it reaches a route.

Around uvicorn's HTTP/1.1 protocol (:class:`EdgeProtocol`):

- at most ``max_connections`` connections; past that, the one that has waited longest for its
  request is closed to make room (idle keep-alive sockets and clients that never send one), so
  a flood of idle connections cannot lock anyone out, ``/health`` included;
- a connection must send a whole request head within ``header_seconds`` of opening (or of its
  last response), else it is closed: uvicorn alone waits for ever;
- a request that is not HTTP (a malformed ``Content-Length``, headers past 16 KiB) is a 400 in
  OpenAI's error shape, not uvicorn's plain text.

Around the application (:class:`Edge`, ASGI), for every route, those to come included:

- on a loopback address, the ``Host`` must be ``localhost``, an IP address or the machine's name,
  else 403: a DNS-rebinding web page sends its own name (as Ollama checks it);
- a request with an ``Origin`` (browsers send one) is served only from the server's own origin
  or one given with ``--cors``; a CORS preflight is answered for those and refused for others;
- a body must be ``application/json`` (or have no type): a page's form, ``text/plain`` or
  multipart post is a 415, so no web page can make a "simple" request that runs the model;
- the body must arrive within ``body_seconds`` of the head (a 408 otherwise);
- anything that escapes a route is a 500 in OpenAI's shape.

Errors answered here have Anthropic's shape on its routes (``/v1/messages...``), as the routes' own do.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import resource
import socket
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import h11
from starlette.responses import JSONResponse, Response
from uvicorn.protocols.http.h11_impl import H11Protocol

from ossrun.defaults import DEFAULT_MAX_CONNECTIONS
from ossrun.server.fields import ApiError

DEFAULT_HEADER_SECONDS = 30.0
DEFAULT_BODY_SECONDS = 60.0
FD_RESERVE = 256  # open files kept for the model, the caches, tool sandboxes and the log
JSON_TYPES = ("application/json",)
CORS_METHODS = "GET, POST, OPTIONS"
CORS_MAX_AGE = "600"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class Limits:
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    header_seconds: float = DEFAULT_HEADER_SECONDS
    body_seconds: float = DEFAULT_BODY_SECONDS
    cors: tuple[str, ...] = ()  # origins allowed besides the server's own ("*": any)


def raise_open_files_limit() -> int:
    """The soft limit of open files raised to the hard one (1,024 is common; each connection takes one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # some systems cap it below the hard limit
            pass
    return soft


def connection_limit(requested: int, open_files: int) -> int:
    """``requested`` connections, or fewer when the open-files limit would not hold them."""
    return max(1, min(requested, open_files - FD_RESERVE))


def error_body(status: int, message: str, code: str, type: str = "invalid_request_error") -> bytes:
    return json.dumps(ApiError(status, message, type=type, code=code).body()).encode()


# -- connections ----------------------------------------------------------------


def protocol(limits: Limits, log: Callable[[str], None]) -> type[H11Protocol]:
    """uvicorn's h11 protocol with the connection bounds of ``limits``."""

    class EdgeProtocol(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.waiting_since = self.loop.time()
            self.deadline: asyncio.TimerHandle | None = self.loop.call_later(limits.header_seconds, self.timed_out)
            if len(self.connections) > limits.max_connections and not self.make_room():
                self.refuse()

        def make_room(self) -> bool:
            """Close the connection that has waited longest for a request; False when all are busy."""
            idle = [c for c in self.connections if c is not self and isinstance(c, EdgeProtocol) and c.waiting()]
            if not idle:
                return False
            oldest = min(idle, key=lambda c: c.waiting_since)
            oldest.transport.close()
            return True

        def waiting(self) -> bool:
            """Between requests: no request head yet, or the last response sent."""
            return not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete)

        def refuse(self) -> None:
            body = error_body(
                503,
                f"the server holds {limits.max_connections} connections, all busy: retry in a few seconds",
                "too_many_connections",
                "server_error",
            )
            head = (
                f"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {len(body)}"
                f"\r\nretry-after: 5\r\nconnection: close\r\n\r\n"
            ).encode()
            self.transport.write(head + body)
            self.transport.close()
            log(f"refused a connection: {limits.max_connections} connections are open and busy")

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and not self.cycle.response_complete and self.deadline is not None:
                self.deadline.cancel()  # a whole head arrived: the body has its own deadline (Edge)
                self.deadline = None

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.waiting():
                self.waiting_since = self.loop.time()
                self.arm()

        def arm(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
            self.deadline = self.loop.call_later(limits.header_seconds, self.timed_out)

        def timed_out(self) -> None:
            self.deadline = None
            if self.waiting() and not self.transport.is_closing():
                self.transport.close()  # no whole request within the bound: h11 cannot answer one it has not read

        def connection_lost(self, exc: Exception | None) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
                self.deadline = None
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            body = error_body(
                400,
                "the request is not valid HTTP/1.1 (a malformed request line, header or Content-Length, or a head past 16 KiB)",
                "invalid_http",
            )
            headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
            try:
                for event in (
                    h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                    h11.Data(data=body),
                    h11.EndOfMessage(),
                ):
                    self.transport.write(self.conn.send(event) or b"")
            except h11.LocalProtocolError:
                pass  # a response had started: nothing more can be said
            self.transport.close()
            log("- - 400 not valid HTTP/1.1")

    return EdgeProtocol


# -- requests -------------------------------------------------------------------


class Edge:
    """The checks every request goes through (see the module's docstring), then ``app``.

    ``log(method, path, status, started, kind)`` writes the request line of a request refused here
    (``kind``: the error's, for the metrics).
    """

    def __init__(self, app: App, limits: Limits, log: Callable[[str, str, int, float, str | None], None]):
        self.app = app
        self.limits = limits
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        method = scope["method"]
        origin = headers.get("origin")
        cross = origin is not None and not self.same_origin(origin, headers)  # past the checks: one given with --cors
        refusal = self.refusal(scope, headers)
        if refusal is not None:
            if cross and origin is not None and self.origin_allowed(origin, headers):  # that page may read why
                refusal.headers.update({"Access-Control-Allow-Origin": origin, "Vary": "Origin"})
            await self.answer(scope, receive, send, refusal, started)
            return
        if method == "OPTIONS" and origin is not None and "access-control-request-method" in headers:
            await self.preflight(scope, receive, send, origin, headers, started)
            return
        response_started = False

        async def sending(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                if cross and origin is not None:
                    message["headers"] = [
                        *message.get("headers", []),
                        (b"access-control-allow-origin", origin.encode()),
                        (b"vary", b"Origin"),
                    ]
            await send(message)

        try:
            await self.app(scope, self.body_deadline(receive), sending)
        except Exception as exc:  # what escaped a route: still the API's error shape
            if response_started:
                raise
            error = ApiError(500, f"the server failed on this request ({type(exc).__name__})", type="server_error")
            await self.answer(scope, receive, send, error, started)

    def refusal(self, scope: Scope, headers: dict[str, str]) -> ApiError | None:
        """Why this request is refused before any route sees it (None: it is not)."""
        host = headers.get("host")
        if host is not None and not self.host_allowed(scope, host):
            return ApiError(
                403,
                f"the Host {host[:100]!r} is refused: a server on a loopback address answers only to "
                f"localhost, an IP address or this machine's name (another name reaching it is a web "
                f"page's DNS rebinding); serve with --host to use it otherwise",
                code="host_not_allowed",
            )
        origin = headers.get("origin")
        if origin is not None and not self.origin_allowed(origin, headers):
            return ApiError(
                403,
                f"requests from the web page at {origin[:100]!r} are refused: this server serves its "
                f"own origin only; start it with --cors {origin[:100]} to allow that page",
                code="origin_not_allowed",
            )
        kind = headers.get("content-type")
        if scope["method"] in ("POST", "PUT", "PATCH") and kind is not None:
            media = kind.split(";", 1)[0].strip().lower()
            if media not in JSON_TYPES:
                return ApiError(
                    415,
                    f"the body is {media or 'of no type'!r}: send JSON with Content-Type: application/json",
                    code="unsupported_media_type",
                )
        return None

    # -- Host and Origin ---------------------------------------------------------

    def host_allowed(self, scope: Scope, host: str) -> bool:
        server = scope.get("server")
        if not server or not _is_loopback(server[0]):
            return True  # listening beyond loopback: names cannot be known (--api-key protects it)
        try:
            return _local_name(urlsplit(f"//{host}").hostname or "")
        except ValueError:  # "[::1" and the like
            return False

    def same_origin(self, origin: str, headers: dict[str, str]) -> bool:
        host = headers.get("host")
        return host is not None and urlsplit(origin).netloc.lower() == host.lower()

    def origin_allowed(self, origin: str, headers: dict[str, str]) -> bool:
        return self.same_origin(origin, headers) or "*" in self.limits.cors or origin.rstrip("/") in self.limits.cors

    async def preflight(
        self, scope: Scope, receive: Receive, send: Send, origin: str, headers: dict[str, str], started: float
    ) -> None:
        allow = {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": CORS_METHODS,
            "Access-Control-Max-Age": CORS_MAX_AGE,
            "Vary": "Origin",
        }
        requested = headers.get("access-control-request-headers")
        if requested:
            allow["Access-Control-Allow-Headers"] = requested
        await Response(status_code=204, headers=allow)(scope, receive, send)
        self.log(scope["method"], scope["path"], 204, started, None)

    # -- the body -----------------------------------------------------------------

    def body_deadline(self, receive: Receive) -> Receive:
        """``receive`` with a deadline on the body: a 408 for a body that does not arrive in time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.body_seconds
        seconds = self.limits.body_seconds
        complete = False

        async def receiving() -> Message:
            nonlocal complete
            if complete:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise ApiError(
                    408,
                    f"the body did not arrive within {seconds:g} seconds of the request's head",
                    code="request_timeout",
                    headers={"Connection": "close"},
                ) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            return message

        return receiving

    async def answer(self, scope: Scope, receive: Receive, send: Send, error: ApiError, started: float) -> None:
        status, body = error.answer(scope["path"])
        await JSONResponse(body, status, headers=error.headers)(scope, receive, send)
        self.log(scope["method"], scope["path"], status, started, error.kind)


def _local_name(name: str) -> bool:
    """A Host name no web page can rebind: an IP address, localhost (and its subdomains, which browsers
    resolve themselves) or this machine's own name. Any port: tunnels and port forwards change it."""
    name = name.lower().rstrip(".")
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    return name == "localhost" or name.endswith(".localhost") or name == socket.gethostname().lower()


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return address == "localhost"


def uvicorn_config(app: App, limits: Limits, log: Callable[[str], None], **options: Any) -> Any:
    """uvicorn's configuration for ``app`` behind these limits (the CLI and the tests both use it)."""
    import uvicorn

    return uvicorn.Config(app, http=protocol(limits, log), log_level="error", access_log=False, lifespan="off", **options)


def cors_origins(values: Sequence[str]) -> tuple[str, ...]:
    """``--cors`` values as origins (``http://localhost:3000``, ``*``), or a ValueError naming a bad one."""
    origins = []
    for value in values:
        value = value.strip().rstrip("/")
        if value != "*":
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
                raise ValueError(
                    f"--cors {value!r} is not an origin: give scheme://host[:port], like http://localhost:3000, or *"
                )
            value = f"{parts.scheme}://{parts.netloc}".lower()  # as browsers send it
        origins.append(value)
    return tuple(origins)
