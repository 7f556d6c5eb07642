"""MCP servers: started together, held by one event loop thread, their tools called from any thread.

The MCP SDK is asynchronous; ossrun's tool loop is not, and ``ossrun serve`` runs its replies
in threads. :class:`McpServers` is the one place that owns the sessions: a daemon thread runs
an asyncio loop, each server has one task there that opens its transport and session, lists
its tools and holds them until :meth:`McpServers.close`, and calls from other threads are
submitted to that loop and waited for, each within its server's timeout.

A stdio server is started through ``mcp_child.py``, which gives it only the environment its
configuration names (plus PATH) and takes its processes down with ossrun, even when ossrun is
killed. Its stderr is read here: the last lines say why a server did not start or stopped. The
SDK is imported only when servers start, so that ``ossrun --help`` stays fast.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import re
import shutil
import sys
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ossrun.errors import McpError
from ossrun.tools.mcp_config import McpServerConfig, McpSource, read_configs

CHILD = Path(__file__).with_name("mcp_child.py")
STDERR_TAIL_BYTES = 16 * 1024  # what is kept of a server's stderr, to say why it failed
STOP_SECONDS = 10.0  # closing: the SDK gives a stdio server 2 s after its stdin closes, then 2 s after SIGTERM
EXIT_REPORT_SECONDS = 2.0  # how long a failed call waits for the server's end to be known, to name it
CANCEL_POLL_SECONDS = 0.1  # how often a waiting call looks at its cancel event
MAX_TOOL_PAGES = 100
_ENDED = re.compile(r"^ossrun-mcp: (exit|signal) (-?\d+)$")  # mcp_child.py's last line


@dataclass(frozen=True)
class McpToolInfo:
    """A tool as its server lists it."""

    server: str
    name: str
    description: str
    input_schema: dict[str, Any]


class _StderrTail:
    """A stdio server's stderr: read by a thread, the last bytes kept; ``ended`` once every writer is
    gone (the server's processes have ended), then ``on_end`` is called."""

    def __init__(self, name: str, on_end: Callable[[], None]):
        read_fd, write_fd = os.pipe()
        self.writer = os.fdopen(write_fd, "w")  # handed to the process, closed here once it started
        self._read_fd = read_fd
        self._tail = bytearray()
        self._lock = threading.Lock()
        self.ended = threading.Event()
        self._on_end = on_end
        self._thread = threading.Thread(target=self._read, name=f"mcp-{name}-stderr", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while True:
                chunk = os.read(self._read_fd, 65536)
                if not chunk:
                    break
                with self._lock:
                    self._tail += chunk
                    del self._tail[:-STDERR_TAIL_BYTES]
        finally:
            os.close(self._read_fd)
            self.ended.set()
        self._on_end()

    def close_writer(self) -> None:
        if not self.writer.closed:
            self.writer.close()

    def lines(self) -> list[str]:
        with self._lock:
            text = self._tail.decode("utf-8", "replace")
        return [line.strip() for line in text.splitlines() if line.strip()]

    def ending(self) -> str | None:
        """How the server ended (``exited with code 1``, ``was killed by signal 9``), once it has."""
        lines = self.lines()
        match = _ENDED.match(lines[-1]) if lines and self.ended.is_set() else None
        if match is None:
            return None
        kind, number = match.group(1), int(match.group(2))
        return f"exited with code {number}" if kind == "exit" else f"was killed by signal {number}"

    def last_words(self) -> str:
        """The last line the server wrote on stderr (ossrun's own line left out), shortened."""
        lines = [line for line in self.lines() if not _ENDED.match(line)]
        return _shorten(lines[-1]) if lines else ""


class _Server:
    """One server's state: its session once it is up, why it is down once it is."""

    def __init__(self, config: McpServerConfig):
        self.config = config
        self.name = config.name
        self.session: Any = None
        self.tools: list[McpToolInfo] = []
        self.stderr: _StderrTail | None = None
        self.ready: concurrent.futures.Future = concurrent.futures.Future()  # None when up, an McpError if not
        self.lifetime: concurrent.futures.Future | None = None
        self.stopping: asyncio.Event | None = None
        self.handshake: Any = None  # the cancel scope of the handshake, while it runs
        self.bad_output: BaseException | None = None
        self.down: str | None = None  # why its calls fail from now on
        self.told = False

    def where(self) -> str:
        return f"MCP server {self.name!r}" + (f" at {self.config.url}" if self.config.url else "")

    def ending(self) -> str:
        """What is known of its end: how it exited and its last line on stderr."""
        if self.stderr is None:
            return ""
        self.stderr.ended.wait(EXIT_REPORT_SECONDS)
        ending, words = self.stderr.ending(), self.stderr.last_words()
        return "".join([f" ({ending})" if ending else "", f": {words}" if words else ""])


class McpServers:
    """The MCP servers of one configuration (or several), started when made, stopped by :meth:`close`.

    ``McpServers("mcp.json")`` (a path, a dict of the same shape, or a list of them) starts every
    server and waits until each has answered the MCP handshake and listed its tools; one that
    cannot start stops the others and raises :class:`ossrun.errors.McpError` naming it.
    ``timeout`` bounds each call (seconds; a server's own ``"timeout"`` wins; its ``"startup_timeout"``,
    60 s by default, bounds its start and handshake). Pass the servers to ``Model.stream``/``chat`` as
    ``mcp=``; they stay up until closed, and are stopped at exit if they were not.
    """

    def __init__(self, sources: McpSource | Sequence[McpSource], *, timeout: float | None = None):
        self._servers = {config.name: _Server(config) for config in read_configs(sources, timeout=timeout)}
        self._closing = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ossrun-mcp", daemon=True)
        self._finalizer = weakref.finalize(self, _stop, self._loop, self._thread, list(self._servers.values()))
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    # -- what callers use ------------------------------------------------------

    @property
    def configs(self) -> list[McpServerConfig]:
        return [server.config for server in self._servers.values()]

    def tools(self) -> list[McpToolInfo]:
        """Every server's tools, in configuration order."""
        return [tool for server in self._servers.values() for tool in server.tools]

    def config(self, server: str) -> McpServerConfig:
        return self._servers[server].config

    def down(self, server: str) -> str | None:
        """Why ``server``'s calls fail now (it stopped), or None while it runs."""
        return self._servers[server].down

    def news(self) -> list[str]:
        """Servers that stopped since the last time this was asked, each said once."""
        out = []
        for server in self._servers.values():
            if server.down and not server.told:
                server.told = True
                out.append(f"{server.down}: its tools answer with an error from now on")
        return out

    def call(self, server: str, tool: str, arguments: dict[str, Any], *, cancel: threading.Event | None = None) -> Any:
        """``tools/call`` on ``server``: its ``CallToolResult``. Failures raise :class:`McpCallFailed`
        with what the model should read: the server is down or went down, the call timed out or
        was cancelled, the server answered with a protocol error."""
        state = self._servers[server]
        if state.down:
            raise McpCallFailed(state.down)
        if self._closing:
            raise McpCallFailed(f"{state.where()} is stopping")
        future = asyncio.run_coroutine_threadsafe(self._call(state, tool, arguments), self._loop)
        while True:
            try:
                return future.result(timeout=CANCEL_POLL_SECONDS)
            except _ConnectionClosed as closed:  # named here: knowing how the server ended may take a moment
                raise McpCallFailed(self._went_down(state, str(closed))) from None
            except concurrent.futures.TimeoutError:
                if cancel is not None and cancel.is_set():
                    future.cancel()  # the SDK tells the server the request is cancelled
                    raise McpCallFailed(f"the call to {tool} was interrupted") from None
            except concurrent.futures.CancelledError:
                raise McpCallFailed(f"the call to {tool} was cancelled: {state.where()} is stopping") from None

    def close(self) -> None:
        """Stop every server (a stdio server's process tree ends) and the loop. Idempotent."""
        self._closing = True
        self._finalizer()

    def __enter__(self) -> McpServers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the loop's side -------------------------------------------------------

    def _start(self) -> None:
        logging.getLogger("mcp").addHandler(logging.NullHandler())  # its errors reach the user as ours
        for server in self._servers.values():
            _check_command(server)
        self._thread.start()
        for server in self._servers.values():
            server.lifetime = asyncio.run_coroutine_threadsafe(self._run(server), self._loop)
        for server in self._servers.values():  # each start is bounded by its server's timeout
            try:
                failure = server.ready.result(server.config.startup_timeout + STOP_SECONDS)
            except concurrent.futures.TimeoutError:
                failure = McpError(f"{server.where()} did not start within {server.config.startup_timeout:g} s")
            if failure is not None:
                raise failure

    async def _run(self, server: _Server) -> None:
        """Open the transport and the session, list the tools, hold them until asked to stop."""
        import anyio
        from mcp import ClientSession

        server.stopping = asyncio.Event()
        try:
            async with contextlib.AsyncExitStack() as stack:
                read, write = await self._open_transport(server, stack)
                session = await stack.enter_async_context(
                    ClientSession(
                        read, write, message_handler=lambda message: _on_message(server, message), client_info=_client_info()
                    )
                )
                with anyio.CancelScope() as scope:
                    server.handshake = scope
                    with anyio.fail_after(server.config.startup_timeout):
                        await session.initialize()
                        server.tools = await _list_tools(session, server.name)
                server.handshake = None
                if scope.cancelled_caught:
                    raise _BadOutput()
                server.session = session
                server.ready.set_result(None)
                await server.stopping.wait()
        except BaseException as exc:  # noqa: B036 - a start that fails is an answer for the caller, whatever it was
            # Off the loop: saying how a stdio server ended waits for its stderr to close.
            if not server.ready.done():
                server.ready.set_result(await asyncio.to_thread(_start_failure, server, exc))
            elif not self._closing:
                await asyncio.to_thread(self._went_down, server)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
        finally:
            if not server.ready.done():
                server.ready.set_result(McpError(f"{server.where()} was stopped while it started"))

    async def _open_transport(self, server: _Server, stack: contextlib.AsyncExitStack) -> Any:
        config = server.config
        if config.url is not None:
            import httpx2
            from mcp.client.streamable_http import streamable_http_client

            client = await stack.enter_async_context(
                httpx2.AsyncClient(
                    headers=config.headers, timeout=httpx2.Timeout(config.timeout, read=max(config.timeout, 300.0))
                )
            )
            return await stack.enter_async_context(streamable_http_client(config.url, http_client=client))
        from mcp import StdioServerParameters
        from mcp.client.stdio import stdio_client

        server.stderr = _StderrTail(server.name, on_end=lambda: self._ended(server))
        parameters = StdioServerParameters(
            command=sys.executable,
            args=[
                "-I",
                "-S",
                str(CHILD),
                str(os.getpid()),
                json.dumps(sorted(config.env)),
                "--",
                str(config.command),
                *config.args,
            ],
            env=config.env,
            cwd=config.cwd,
        )
        try:
            streams = await stack.enter_async_context(stdio_client(parameters, errlog=server.stderr.writer))
        finally:
            server.stderr.close_writer()  # the server holds its copy: the pipe ends when its processes do
        return streams

    async def _call(self, server: _Server, tool: str, arguments: dict[str, Any]) -> Any:
        from mcp import MCPError
        from mcp.types import CONNECTION_CLOSED, REQUEST_TIMEOUT

        try:
            return await server.session.call_tool(tool, arguments, read_timeout_seconds=server.config.timeout)
        except MCPError as exc:
            if exc.code == REQUEST_TIMEOUT:
                raise McpCallFailed(f"{tool} on {server.where()} did not answer within {server.config.timeout:g} s") from None
            if exc.code == CONNECTION_CLOSED:
                raise _ConnectionClosed() from None
            raise McpCallFailed(f"{server.where()} refused the call: {_shorten(exc.message)}") from None
        except Exception as exc:
            if _is_connection_error(exc):
                raise _ConnectionClosed(_describe(exc)) from None
            raise McpCallFailed(f"{server.where()} answered something ossrun cannot read: {_describe(exc)}") from None

    def _ended(self, server: _Server) -> None:
        """A stdio server's processes are gone: unless ossrun stopped it, its tools are down."""
        if server.session is not None and not self._closing and not server.down:
            server.down = f"{server.where()} stopped{server.ending()}"

    def _went_down(self, server: _Server, reason: str = "") -> str:
        if not server.down:
            if reason:
                ending = f": {reason}"
            else:
                ending = server.ending() if server.stderr is not None else " (the connection closed)"
            server.down = f"{server.where()} stopped{ending}"
        return server.down


class McpCallFailed(Exception):
    """A call that did not give a result; its message is what the model reads."""


class _ConnectionClosed(Exception):
    """The server's connection ended during a call; the message, if any, says how."""


class _BadOutput(Exception):
    """The server wrote something that is not MCP where its messages go."""


def _stop(loop: asyncio.AbstractEventLoop, thread: threading.Thread, servers: list[_Server]) -> None:
    """Stop the servers (each ready one leaves its session, an unfinished start is cancelled), then the loop."""
    if not thread.is_alive():
        loop.close()
        return
    lifetimes = []
    for server in servers:
        if server.lifetime is None:
            continue
        lifetimes.append(server.lifetime)
        if server.session is not None and server.stopping is not None:
            loop.call_soon_threadsafe(server.stopping.set)
        else:
            server.lifetime.cancel()
    concurrent.futures.wait(lifetimes, timeout=STOP_SECONDS)
    with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):  # calls still waiting end here
        asyncio.run_coroutine_threadsafe(_cancel_tasks(), loop).result(STOP_SECONDS)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(STOP_SECONDS)
    if not thread.is_alive():
        loop.close()


async def _cancel_tasks() -> None:
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _check_command(server: _Server) -> None:
    """A stdio server's program must exist before anything starts."""
    config = server.config
    if config.command is None:
        return
    if os.sep in config.command:
        path = Path(config.cwd or ".") / Path(config.command).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise McpError(f"{server.where()} cannot start: {config.command} is not an executable file")
    elif shutil.which(config.command, path=config.env.get("PATH")) is None:
        raise McpError(
            f"{server.where()} cannot start: {config.command} is not on its PATH: "
            f"install it, or give its full path or a PATH in the server's env"
        )


def _start_failure(server: _Server, exc: BaseException) -> McpError:
    """One line naming the server and what went wrong, with what it said on stderr."""
    from mcp import MCPError

    cause = _root_cause(exc)
    if isinstance(cause, McpError):
        return cause
    if server.bad_output is not None:
        return McpError(
            f"{server.where()} does not speak MCP: it wrote {_bad_line(server.bad_output)} on stdout, where MCP messages go"
        )
    if isinstance(cause, TimeoutError):
        words = server.stderr.last_words() if server.stderr else ""
        return McpError(
            f"{server.where()} did not answer the MCP handshake within {server.config.startup_timeout:g} s"
            + (f": {words}" if words else "")
            + ' (its "startup_timeout" gives it longer)'
        )
    if isinstance(cause, MCPError) and server.config.command is not None:
        return McpError(f"{server.where()} did not start{server.ending() or ': it ended before the MCP handshake'}")
    if isinstance(cause, (KeyboardInterrupt, asyncio.CancelledError)):
        return McpError(f"{server.where()} was stopped while it started")
    if isinstance(cause, OSError) and server.config.command is not None:
        return McpError(f"{server.where()} cannot start: {cause.strerror or cause}")
    if server.config.url is not None and not _is_connection_error(cause):
        return McpError(f"{server.where()} does not speak MCP: {_describe(cause)}")
    return McpError(f"{server.where()} did not start: {_describe(cause)}")


def _root_cause(exc: BaseException) -> BaseException:
    """The first leaf of nested exception groups (anyio's task groups wrap what failed in them)."""
    while getattr(exc, "exceptions", None):  # BaseExceptionGroup, or its backport before Python 3.11
        exc = exc.exceptions[0]  # type: ignore[attr-defined]
    return exc


def _describe(exc: BaseException) -> str:
    exc = _root_cause(exc)
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status is not None:
        reason = getattr(exc.response, "reason_phrase", "")  # type: ignore[attr-defined]
        return f"HTTP {status} {reason}".strip()
    text = str(exc) or type(exc).__name__
    if _is_connection_error(exc):
        return f"cannot connect ({_shorten(text)})"
    return _shorten(text)


def _is_connection_error(exc: BaseException) -> bool:
    import httpx2

    return isinstance(_root_cause(exc), (httpx2.TransportError, ConnectionError))


async def _on_message(server: _Server, message: Any) -> None:
    """The transport's errors: a line that is not MCP during the handshake ends the handshake."""
    if isinstance(message, Exception) and server.handshake is not None and server.bad_output is None:
        server.bad_output = message
        server.handshake.cancel()


def _bad_line(exc: BaseException) -> str:
    """The text a server wrote that is not a JSON-RPC message, as a pydantic error holds it."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        with contextlib.suppress(Exception):
            value = errors()[0].get("input")
            if isinstance(value, (str, bytes)):
                text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
                return repr(_shorten(text))
    return "text that is not JSON-RPC"


async def _list_tools(session: Any, server: str) -> list[McpToolInfo]:
    from mcp.types import PaginatedRequestParams

    tools: list[McpToolInfo] = []
    cursor = None
    for _ in range(MAX_TOOL_PAGES):
        page = await session.list_tools(params=PaginatedRequestParams(cursor=cursor) if cursor else None)
        tools += [McpToolInfo(server, tool.name, tool.description or "", dict(tool.input_schema or {})) for tool in page.tools]
        cursor = page.next_cursor
        if not cursor:
            break
    return tools


def _client_info() -> Any:
    from mcp.types import Implementation

    from ossrun import __version__

    return Implementation(name="ossrun", version=__version__)


def _shorten(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
