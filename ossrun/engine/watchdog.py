"""Bounds on llama.cpp's talk with RPC workers: a worker that dies or hangs ends the process
with one line naming it and exit code 1, never an abort with a core dump, never a hang.

- llama.cpp calls GGML_ABORT when a worker's connection breaks mid-computation. With
  ``ggml_set_abort_callback``, ggml calls :func:`_on_abort` instead of printing its message and
  a backtrace; that names the worker that is gone and ends the process with ``_exit(1)``
  (ggml would call ``abort()`` as soon as the callback returned).
- llama.cpp's sockets have no timeout: a worker that hangs, or a machine cut off the network,
  blocks a call forever. Each call that talks to the workers runs under :meth:`Watchdog.watch`
  with a deadline, and a thread ends the process when one passes.

Which worker: on Linux, the thread llama.cpp blocks in ``recvfrom`` shows the socket it waits
on (``/proc/self/task/*/syscall``), and ``/proc/self/net/tcp`` the worker at its other end; a
worker whose port refuses a new connection is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import platform
import re
import socket
import struct
import sys
import threading
import time
import weakref
from collections.abc import Iterator

from llama_cpp._ggml import libggml

ENV_TIMEOUT = "OSSRUN_RPC_TIMEOUT"
DEFAULT_STALL_SECONDS = 30.0  # a worker may take this long to answer, plus the allowance below
STALL_SECONDS_PER_TOKEN = 0.5  # a prefill batch of 512 tokens may take 4 more minutes
LOAD_STALL_FACTOR = 4  # between two tensors of a load: a big tensor may cross a slow network
PROBE_TIMEOUT = 2.0
ABORT_PROBES, ABORT_PROBE_INTERVAL = 5, 0.2  # how long a broken connection's worker may take to be seen gone
EXIT_CODE = 1
# recvfrom(2), the call llama.cpp's RPC client blocks in while a worker computes.
_RECVFROM = {"x86_64": 45, "aarch64": 207}

_AbortCallback = ctypes.CFUNCTYPE(None, ctypes.c_char_p)
_set_abort_callback = libggml.ggml_set_abort_callback
_set_abort_callback.restype, _set_abort_callback.argtypes = ctypes.c_void_p, [_AbortCallback]
_live: weakref.WeakSet[Watchdog] = weakref.WeakSet()
_ending = threading.Lock()


def stall_seconds() -> float:
    """How long a worker may stay silent: ``$OSSRUN_RPC_TIMEOUT`` seconds, default 30."""
    try:
        value = float(os.environ.get(ENV_TIMEOUT, DEFAULT_STALL_SECONDS))
    except ValueError:
        value = DEFAULT_STALL_SECONDS
    return value if value > 0 else DEFAULT_STALL_SECONDS


def _end(line: str) -> None:
    """Print ``error: line`` (after whatever the answer had shown) and end the process, now."""
    with _ending:  # several threads may fail at once: one line
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        # A fresh line after a half-shown answer on the terminal; one line only, when piped.
        start = "\n" if os.isatty(2) else ""
        os.write(2, f"{start}error: {line}\n".encode(errors="replace"))
        os._exit(EXIT_CODE)


@_AbortCallback
def _on_abort(message: bytes) -> None:
    text = (message or b"").decode(errors="replace").strip()
    text = re.sub(r"^.*?:\d+: ", "", text.splitlines()[0] if text else "")  # drop ggml's "file:line: "
    for watchdog in list(_live):
        line = watchdog.describe_abort(text)
        if line:
            _end(line)
    _end(f"llama.cpp stopped: {text}")


class Watchdog:
    """Deadlines for the llama.cpp calls of one model loaded over ``workers``."""

    def __init__(self, workers: dict[tuple[str, int], str]):
        self._workers = dict(workers)  # (IPv4 address, port) -> HOST:PORT as given
        self._lock = threading.Condition()
        self._watches: dict[int, tuple[float, str, float]] = {}  # id -> (deadline, what, seconds)
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    def install_abort_handler(self) -> None:
        _live.add(self)
        _set_abort_callback(_on_abort)

    @contextlib.contextmanager
    def watch(self, what: str, tokens: int = 0, *, ticking: bool = False) -> Iterator[_Ticker]:
        """Run a llama.cpp call that may wait on the workers; the process ends if it outlasts its deadline.

        ``what`` completes "while ...". The deadline is the stall time plus an allowance per
        token evaluated; for a ``ticking`` call (a load, whose progress callback calls
        ``tick()``) it is a longer stall between two ticks.
        """
        stall = stall_seconds()
        seconds = stall * LOAD_STALL_FACTOR if ticking else stall + STALL_SECONDS_PER_TOKEN * tokens
        key = next(self._ids)
        ticker = _Ticker(self, key, what, seconds)
        ticker.tick()
        self._start()
        try:
            yield ticker
        finally:
            with self._lock:
                self._watches.pop(key, None)
                self._lock.notify_all()

    def _arm(self, key: int, what: str, seconds: float) -> None:
        with self._lock:
            self._watches[key] = (time.monotonic() + seconds, what, seconds)
            self._lock.notify_all()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ossrun-rpc-watchdog", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        with self._lock:
            while True:
                if not self._watches:
                    self._lock.wait()
                    continue
                deadline, what, seconds = min(self._watches.values())
                left = deadline - time.monotonic()
                if left > 0:
                    self._lock.wait(left)
                    continue
                break
        _end(self.describe_stall(what, seconds))

    # -- naming the worker at fault ------------------------------------------------------------------

    def describe_stall(self, what: str, seconds: float) -> str:
        gone = self._gone()
        if gone:
            name, reason = gone[0]
            return f"worker {name} {reason} and llama.cpp was waiting for it while {what}: restart it and run again"
        waiting = self._waited_on() or list(self._workers.values())
        names = " and ".join(waiting)
        subject = f"worker {names} has" if len(waiting) == 1 else f"workers {names} have"
        return (
            f"{subject} not answered for {seconds:g} s while {what}: it hangs, or its machine is overloaded or "
            f"cut off; check it and run again (set {ENV_TIMEOUT}=SECONDS to wait longer)"
        )

    def describe_abort(self, message: str) -> str | None:
        # A worker's connection may close a moment before its listening socket does (the
        # kernel closes a dying process's descriptors one by one): look again, briefly.
        for _ in range(ABORT_PROBES):
            gone = self._gone()
            if gone:
                break
            time.sleep(ABORT_PROBE_INTERVAL)
        activity = min(self._watches.values())[1] if self._watches else None
        during = f" while {activity}" if activity else ""
        if gone:
            name, reason = gone[0]
            return f"worker {name} {reason}: llama.cpp lost its connection{during} ({message}); restart it and run again"
        named = [name for name in self._workers.values() if name in message]
        if named:
            return f"worker {named[0]} failed{during} ({message}): check it and run again"
        return None

    def _gone(self) -> list[tuple[str, str]]:
        """Workers that no longer accept connections, with why."""
        gone = []
        for (address, port), name in self._workers.items():
            try:
                socket.create_connection((address, port), timeout=PROBE_TIMEOUT).close()
            except ConnectionRefusedError:
                gone.append((name, "is gone (its port refuses connections)"))
            except TimeoutError:
                gone.append((name, f"does not answer (no connection within {PROBE_TIMEOUT:g} s: its machine is down or cut off)"))
            except OSError as exc:
                gone.append((name, f"cannot be reached ({exc.strerror or exc})"))
        return gone

    def _waited_on(self) -> list[str]:
        """The workers whose sockets a thread of this process is blocked reading (Linux only)."""
        number = _RECVFROM.get(platform.machine())
        if number is None or not os.path.isdir("/proc/self/task"):
            return []
        peers = _tcp_peers()
        found = []
        for task in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{task}/syscall") as file:
                    fields = file.read().split()
                if len(fields) < 2 or fields[0] != str(number):
                    continue
                link = os.readlink(f"/proc/self/fd/{int(fields[1], 16)}")
            except (OSError, ValueError):
                continue
            match = re.fullmatch(r"socket:\[(\d+)\]", link)
            peer = peers.get(int(match[1])) if match else None
            name = self._workers.get(peer) if peer else None
            if name and name not in found:
                found.append(name)
        return found


class _Ticker:
    def __init__(self, watchdog: Watchdog, key: int, what: str, seconds: float):
        self._watchdog, self._key, self._what, self._seconds = watchdog, key, what, seconds

    def tick(self) -> None:
        self._watchdog._arm(self._key, self._what, self._seconds)


def _tcp_peers() -> dict[int, tuple[str, int]]:
    """Socket inode -> (remote IPv4 address, port) for this network namespace's TCP sockets."""
    peers = {}
    try:
        with open("/proc/self/net/tcp") as file:
            next(file)
            for line in file:
                fields = line.split()
                address, port = fields[2].split(":")
                ip = socket.inet_ntoa(struct.pack("<I", int(address, 16)))
                peers[int(fields[9])] = (ip, int(port, 16))
    except (OSError, ValueError, IndexError, StopIteration):
        pass
    return peers
