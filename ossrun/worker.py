"""``ossrun worker``: lend this machine's memory and cores to a model that runs on another one.

A worker is llama.cpp's RPC server (:mod:`ossrun.engine.rpc_server`): a client started with
``--rpc HOST:PORT`` sends it some of the model's layers at load time and asks it to compute
them for every token. It serves one client at a time. With a cache folder it keeps each
weight tensor over 10 MiB under its hash, so a later load of the same model skips sending it.

llama.cpp's RPC protocol has no authentication and no encryption: anyone who reaches the port
can make the worker compute, and read and write its memory. So the worker listens on the
loopback address unless told otherwise, and says how to reach it safely when told.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ossrun import home
from ossrun.defaults import DEFAULT_WORKER_HOST as DEFAULT_HOST
from ossrun.defaults import DEFAULT_WORKER_PORT as DEFAULT_PORT
from ossrun.errors import OssrunError
from ossrun.machine import available_memory, physical_cores
from ossrun.units import format_memory, format_size

# How llama.cpp names a cached tensor: the FNV-1a hash of its bytes, 16 hex digits.
CACHE_FILE = re.compile(r"^[0-9a-f]{16}$")


def default_cache_dir() -> Path:
    return home.cache_dir() / "rpc"


@dataclass(frozen=True)
class CacheContents:
    folder: Path
    tensors: int
    bytes: int

    def describe(self) -> str:
        if not self.tensors:
            return f"{self.folder}, empty"
        return f"{self.folder}, {format_size(self.bytes)} in {self.tensors} tensors"


def cached_tensors(folder: Path) -> list[Path]:
    """The files llama.cpp wrote to a cache folder (nothing else that may live there)."""
    try:
        return [p for p in Path(folder).iterdir() if CACHE_FILE.match(p.name) and p.is_file()]
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise OssrunError(f"cannot read the weight cache {folder}: {exc.strerror or exc}") from None


def cache_contents(folder: Path) -> CacheContents:
    files = cached_tensors(folder)
    return CacheContents(Path(folder), len(files), sum(p.stat().st_size for p in files))


def clear_cache(folder: Path) -> CacheContents:
    """Delete the cached tensors in ``folder``; returns what was there."""
    contents = cache_contents(folder)
    for path in cached_tensors(folder):
        try:
            path.unlink()
        except OSError as exc:
            raise OssrunError(f"cannot delete {path}: {exc.strerror or exc}") from None
    return contents


def exposure_warning(host: str, port: int) -> str | None:
    """What to say when a worker listens beyond this machine (None on a loopback address)."""
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass  # not an address: the server refuses it before listening
    where = "on every network this machine is on" if host == "0.0.0.0" else f"on {host}"
    return (
        f"warning: this worker listens {where}. llama.cpp's RPC protocol has no authentication and no encryption: "
        f"anyone who reaches port {port} can run computations here and read what the worker holds, and the weights "
        f"and activations cross the network in the clear. Reach it through an SSH tunnel instead (keep the default "
        f"--host 127.0.0.1 and run `ssh -N -L {port}:127.0.0.1:{port} THIS-MACHINE` on the client, then "
        f"--rpc 127.0.0.1:{port}), or listen only on a private network that no one else uses."
    )


def serve(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    threads: int | None = None,
    cache_dir: Path | None = None,
    verbose: bool = False,
    out: TextIO | None = None,
) -> None:
    """Serve llama.cpp's RPC on ``host:port`` until Ctrl-C or SIGTERM, which end the process with exit code 0.

    ``cache_dir`` None serves without a weight cache. Lines about the worker and its
    clients go to ``out`` (default: stdout), a warning to stderr when it listens beyond this
    machine; an error before it listens is an OssrunError.
    """
    from ossrun.engine import rpc, rpc_server

    rpc.require_rpc()
    rpc_server.check_address(host, port)
    warning = exposure_warning(host, port)
    if warning:
        sys.stderr.write(warning + "\n")
    threads = threads or physical_cores()
    if cache_dir is not None:
        cache_dir = home.ensure_dir(Path(cache_dir).expanduser())
    endpoint = f"{host}:{port}"
    client_host = "THIS-MACHINE" if host == "0.0.0.0" else host

    def say(line: str) -> None:
        stream = out or sys.stdout
        stream.write(line + "\n")
        stream.flush()

    def on_event(event) -> None:
        stamp = time.strftime("%H:%M:%S")
        if event.kind == "listening":
            reported, _ = rpc.cpu_memory()
            available = available_memory()
            now = f"; {format_memory(available)} available now" if available is not None else ""
            say(
                f"ossrun worker listening on {endpoint} (llama.cpp RPC protocol {'.'.join(map(str, rpc.PROTOCOL))}, "
                f"{threads} thread{'s' if threads > 1 else ''})"
            )
            say(
                f"memory: {format_memory(reported)} reported to clients (this machine's RAM{now}); "
                f"a client says how much it may use: --rpc {client_host}:{port}=MEMORY"
            )
            if cache_dir is None:
                say("weight cache: off (every load sends all the weights)")
            else:
                say(f"weight cache: {cache_contents(cache_dir).describe()} (`ossrun worker --clear-cache` empties it)")
            say("serving one client at a time; Ctrl-C stops the worker")
        elif event.kind == "connected":
            if sessions.connected():
                say(f"[{stamp}] client connected")
        elif event.kind == "left":
            sessions.left()
        elif event.kind == "stopped":
            say(f"[{stamp}] worker stopped")

    def client_left() -> None:
        cache = f"; weight cache {cache_contents(cache_dir).describe().split(', ', 1)[1]}" if cache_dir else ""
        say(f"[{time.strftime('%H:%M:%S')}] client left{cache}")

    sessions = _Sessions(client_left)

    rpc_server.serve(
        host, port, threads=threads, cache_dir=str(cache_dir) if cache_dir else None, on_event=on_event, verbose=verbose
    )
    # llama.cpp's server thread cannot be stopped: end the process without waiting for it.
    for stream in (sys.stdout, sys.stderr, out):
        if stream is not None:
            stream.flush()
    os._exit(0)


class _Sessions:
    """One client session from llama.cpp's many connections.

    A client connects, says hello and disconnects several times while it loads a model (each
    query it makes before its buffers exist is a connection of its own): a client counts as
    gone when no new connection follows within a moment.
    """

    GRACE_SECONDS = 2.0

    def __init__(self, on_gone: Callable[[], None]):
        self._on_gone = on_gone
        self._lock = threading.Lock()
        self._active = False
        self._timer: threading.Timer | None = None

    def connected(self) -> bool:
        """Record a connection; True if it starts a new session."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            new, self._active = not self._active, True
            return new

    def left(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            timer = self._timer = threading.Timer(self.GRACE_SECONDS, lambda: self._gone(timer))
            timer.daemon = True
            timer.start()

    def _gone(self, timer: threading.Timer) -> None:
        with self._lock:
            if self._timer is not timer:  # a connection came after all
                return
            self._timer, self._active = None, False
        self._on_gone()
