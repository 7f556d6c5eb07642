"""``ossrun serve``: the model behind OpenAI's HTTP API, for the SDK, Codex CLI and Open WebUI."""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer

from ossrun.cli import options as opt
from ossrun.defaults import DEFAULT_CTX, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_WAITING, DEFAULT_SERVE_PARALLEL
from ossrun.defaults import DEFAULT_SERVE_HOST as DEFAULT_HOST
from ossrun.defaults import DEFAULT_SERVE_PORT as DEFAULT_PORT
from ossrun.errors import OssrunError

if TYPE_CHECKING:
    import uvicorn  # imported when the server starts: ossrun --help stays fast

GRACEFUL_SHUTDOWN_SECONDS = 10

HELP = """Serve a model over OpenAI's HTTP API: /v1/chat/completions, /v1/responses, /v1/models,
and Anthropic's Messages API: /v1/messages.

Point a client at http://HOST:PORT/v1 (the openai SDK's base_url, a Codex CLI
model provider with wire_api = "responses", an Open WebUI connection), an Anthropic
client at http://HOST:PORT (Claude Code's ANTHROPIC_BASE_URL), or open
http://HOST:PORT/ in a browser to chat. /metrics (Prometheus), /tokenize and
/detokenize are there for operators. The model
loads once; up to --parallel replies are decoded together and --max-queue more wait
(past that: 429). The server listens on 127.0.0.1 only unless --host says otherwise;
--api-key (or OSSRUN_API_KEY) makes every request need "Authorization: Bearer KEY"
(or "x-api-key: KEY").
Web pages other than the server's own cannot use it unless --cors names them.
--ctx is the pool of KV cells all requests share [default: auto, the largest that
fits in memory with room for --parallel sequences, said on the start line]; a prompt
that does not fit is refused with the --ctx it needs.
--tool python and --mcp FILE give the model tools the server runs itself (the flag
is the consent: nobody is asked), shown to clients with the reasoning (Chat
Completions) or as code_interpreter_call and mcp_call items (Responses); tools a
request declares are returned to the client. Ctrl-C stops it: replies in flight
end with an error event.

Examples:

\b
  ossrun serve
  ossrun serve --demo --port 8081
  ossrun serve 20b --host 0.0.0.0 --api-key "$(openssl rand -hex 16)"
  ossrun serve --mcp mcp.json
"""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, made here so that port 0 (any free port) can be announced."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OssrunError(f"cannot listen on {host}:{port}: {exc.strerror or exc}: pick another --port or --host") from None
    sock.listen(128)
    return sock


def register(app: typer.Typer) -> None:
    @app.command("serve", help=HELP)
    def serve_command(
        model_argument: opt.ModelArgument = None,
        model: opt.ModelOption = None,
        demo: opt.Demo = False,
        host: Annotated[
            str, typer.Option("--host", help="Address to listen on (loopback unless you say otherwise).")
        ] = DEFAULT_HOST,
        port: Annotated[
            int, typer.Option("--port", min=0, max=65535, help="Port to listen on (0: any free port).")
        ] = DEFAULT_PORT,
        api_key: Annotated[
            str | None,
            typer.Option(
                "--api-key",
                envvar="OSSRUN_API_KEY",
                show_default=False,
                help="Require this key (Authorization: Bearer KEY, or x-api-key: KEY).",
            ),
        ] = None,
        cors: Annotated[
            list[str] | None,
            typer.Option(
                "--cors",
                metavar="ORIGIN",
                show_default=False,
                help="Let the web page at ORIGIN (http://localhost:3000; * for any) call the API (repeatable).",
            ),
        ] = None,
        max_connections: Annotated[
            int, typer.Option("--max-connections", min=1, help="Open connections at most (idle ones are closed first past it).")
        ] = DEFAULT_MAX_CONNECTIONS,
        reasoning_effort: opt.ReasoningEffort = None,
        ctx: Annotated[
            str,
            typer.Option(
                "--ctx",
                metavar="auto|TOKENS",
                callback=opt.parse_ctx,
                help="KV cells shared by all requests; auto: the most that fit in memory.",
            ),
        ] = DEFAULT_CTX,
        kv_type: opt.KvType = opt.DEFAULT_KV_TYPE,
        swa_full: opt.SwaFull = False,
        parallel: Annotated[
            int, typer.Option("--parallel", min=1, max=64, help="Replies decoded together.")
        ] = DEFAULT_SERVE_PARALLEL,
        max_queue: Annotated[
            int, typer.Option("--max-queue", min=0, help="Requests that may wait for a free sequence.")
        ] = DEFAULT_MAX_WAITING,
        threads: opt.Threads = None,
        verbose: opt.Verbose = False,
        pull: opt.Pull = False,
        rpc: opt.Rpc = None,
        tool: opt.Tool = None,
        mcp: opt.Mcp = None,
        mcp_timeout: opt.McpTimeout = None,
    ) -> None:
        from ossrun.server.app import Server
        from ossrun.server.edge import Limits, connection_limit, cors_origins, raise_open_files_limit
        from ossrun.server.served import ServedModel

        name = opt.pick_model(model_argument, model, demo)
        if api_key is not None and not api_key.strip():
            raise typer.BadParameter(
                "the key is empty (an unset variable?): give a key, or leave --api-key out to serve without one",
                param_hint="--api-key",
            )
        try:
            origins = cors_origins(cors or ())
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--cors") from None
        limits = Limits(max_connections=connection_limit(max_connections, raise_open_files_limit()), cors=origins)
        tools = opt.toolbox(None, tool, mcp, mcp_timeout)
        try:
            sock = bind(host, port)
        except BaseException:
            tools.close()
            raise
        try:
            loaded = opt.load_model(
                name,
                ctx=ctx,
                threads=threads,
                verbose=verbose,
                pull=pull,
                parallel=parallel,
                rpc=rpc,
                kv_type=kv_type,
                swa_full=swa_full,
            )
        except BaseException:
            sock.close()
            tools.close()
            raise
        served = ServedModel(
            name=loaded.name,
            aliases=registry_aliases(loaded.name),
            default_effort=opt.effort(reasoning_effort) or loaded.reasoning_effort,
            python_tool=tools.python,
            created=int(time.time()),
            mcp=tools.mcp,
        )
        server = Server(loaded, served, api_key=api_key, max_waiting=max_queue, limits=limits)
        for text in tools.notices():
            server.write_log(f"note: {text}")
        for mcp_server in tools.mcp.configs if tools.mcp is not None else ():
            offered = [tool.name for tool in tools.mcp.tools() if tool.server == mcp_server.name]
            server.write_log(
                f"MCP server {mcp_server.name} ({mcp_server.describe()}): {len(offered)} "
                f"tool{'' if len(offered) == 1 else 's'}: {', '.join(offered) or 'none'}"
            )
        address = sock.getsockname()
        shown = f"[{address[0]}]" if ":" in address[0] else address[0]
        base = f"http://{shown}:{address[1]}/v1"
        if not is_loopback(host):
            server.write_log(
                f"warning: listening on {host}: anyone who can reach it can use the model"
                + ("" if api_key else "; add --api-key KEY (or set OSSRUN_API_KEY) to require a key")
            )
        key = "the --api-key" if api_key else "any API key"
        chosen = " (auto)" if loaded.auto_ctx else ""
        server.write_log(
            f"ossrun serve · {loaded.name} · ctx {loaded.n_ctx}{chosen} · {parallel} in parallel · "
            f"listening on {base} (OpenAI base_url, {key})"
        )
        server.write_log(f"chat in a browser at {base[: -len('/v1')]}/")
        if limits.max_connections < max_connections:
            server.write_log(f"note: at most {limits.max_connections} connections: the limit of open files is low")
        config = server.uvicorn_config(timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS)
        runner = _Uvicorn(config, on_exit=server.runner.cancel_all)
        try:
            runner.run(sockets=[sock])
        finally:
            server.runner.close()
            served.close()
            loaded.close()
            tools.close()
            sock.close()
        server.write_log("ossrun serve stopped")


def registry_aliases(name: str) -> tuple[str, ...]:
    """The names besides its own that requests may call a registry model by."""
    from ossrun.server.served import served_names
    from ossrun.store.registry import load_registry

    registry = load_registry()
    entry = registry.find(name)
    if entry is None:
        return ()
    return tuple(dict.fromkeys([*registry.aliases_of(name), *served_names(name, entry)]))


class _Uvicorn:
    """uvicorn's server, told first to cancel the replies in flight when Ctrl-C or SIGTERM arrives.

    uvicorn raises the signal again once it has shut down (so that a parent sees it); a
    stop asked for is the normal end of ``ossrun serve``, exit code 0.
    """

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]):
        import uvicorn

        class Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: FrameType | None) -> None:
                on_exit()
                super().handle_exit(sig, frame)
                self._captured_signals.clear()

        self.server = Server(config)

    def run(self, sockets: list[socket.socket]) -> None:
        self.server.run(sockets=sockets)
