"""llama.cpp's RPC server, run in this process: the engine half of ``ossrun worker``.

``ggml_backend_rpc_start_server`` serves one client at a time until the process ends. It runs
in a thread with SIGINT and SIGTERM blocked (an interrupted ``accept`` or ``recv`` would end
it, or drop the client), so the main thread gets Ctrl-C. Its ``printf`` lines (a banner, then
"Accepted client connection" / "Client connection closed") go to C's stdout: that file
descriptor is pointed at a pipe and the lines become :class:`ServerEvent` values, so the
worker prints its own. llama.cpp's log lines (one per tensor it caches) are dropped unless
``verbose``; warnings and errors are kept.

Weights reach a worker in the CPU backend's default buffer type: the AMX buffer type that
crashes on hosts reporting AMX (see :mod:`ossrun.engine.ggml`) is never used there, and
neither is the MXFP4 repack of the local CPU.
"""

from __future__ import annotations

import errno
import io
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import llama_cpp

from ossrun.engine.rpc import require_rpc, start_server
from ossrun.errors import WorkerError

_GGML_LOG_WARN = 3
_STARTUP_SECONDS = 10.0  # time to wait for the server to listen


@dataclass(frozen=True)
class ServerEvent:
    kind: str  # "listening", "connected", "left", "stopped"
    text: str = ""


_log_verbose = False


@llama_cpp.llama_log_callback
def _log(level: int, text: bytes, _user_data: Any) -> None:
    if _log_verbose or level in (_GGML_LOG_WARN, _GGML_LOG_WARN + 1):
        sys.stderr.write(text.decode("utf-8", errors="replace"))
        sys.stderr.flush()


def check_address(host: str, port: int) -> None:
    """WorkerError unless this process can listen on ``host:port`` (IPv4 only, as llama.cpp's server)."""
    try:
        socket.inet_pton(socket.AF_INET, host)
    except OSError:
        raise WorkerError(
            f"--host {host!r} is not an IPv4 address: llama.cpp's RPC server listens on one, "
            f"such as 127.0.0.1 (this machine only) or this machine's address on a private network"
        ) from None
    if not 0 < port < 65536:
        raise WorkerError(f"--port {port} is out of range: use 1-65535")
    if _bound(host, port) is not None:
        raise WorkerError(f"cannot listen on {host}:{port}: {_bound(host, port)} (another worker?); choose another --port")


def _bound(host: str, port: int) -> str | None:
    """Why a socket cannot bind ``host:port`` with SO_REUSEADDR, as llama.cpp's server binds, or None.

    A listening socket on that address is the one thing that makes such a bind fail: how the
    worker sees that its server listens.
    """
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
        return None
    except OSError as exc:
        return "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
    finally:
        probe.close()


def serve(
    host: str, port: int, *, threads: int, cache_dir: str | None, on_event: Callable[[ServerEvent], None], verbose: bool = False
) -> None:
    """Run the server until Ctrl-C or SIGTERM (then return), reporting what happens to ``on_event``.

    The server cannot be stopped from inside: after this returns, end the process with
    ``os._exit`` (the server thread is still in llama.cpp's ``accept``).
    """
    global _log_verbose
    require_rpc()
    check_address(host, port)
    _log_verbose = verbose
    llama_cpp.llama_log_set(_log, None)
    lines = _capture_c_stdout()

    def run() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        start_server(f"{host}:{port}", cache_dir, threads)

    def read() -> None:
        for raw in lines:
            line = raw.decode("utf-8", errors="replace").strip()
            if line == "Accepted client connection":
                on_event(ServerEvent("connected"))
            elif line == "Client connection closed":
                on_event(ServerEvent("left"))

    server = threading.Thread(target=run, name="llama.cpp-rpc-server", daemon=True)
    threading.Thread(target=read, name="llama.cpp-rpc-server-output", daemon=True).start()
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        server.start()
        started = time.monotonic()
        while _bound(host, port) is None:
            if not server.is_alive() or time.monotonic() - started > _STARTUP_SECONDS:
                raise WorkerError(f"llama.cpp's RPC server could not listen on {host}:{port}")
            time.sleep(0.02)
        on_event(ServerEvent("listening"))
        while server.is_alive():
            server.join(0.5)
        raise WorkerError(f"llama.cpp's RPC server on {host}:{port} stopped")
    except KeyboardInterrupt:
        on_event(ServerEvent("stopped"))
    finally:
        signal.signal(signal.SIGTERM, previous)


def _capture_c_stdout() -> io.BufferedReader:
    """Point file descriptor 1 (C's stdout) at a pipe; Python's stdout keeps the terminal."""
    sys.stdout.flush()
    kept = os.dup(1)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 1)
    os.close(write_end)
    sys.stdout = io.TextIOWrapper(
        open(kept, "wb", buffering=0), encoding=sys.stdout.encoding or "utf-8", errors="replace", line_buffering=True
    )
    return open(read_end, "rb")
