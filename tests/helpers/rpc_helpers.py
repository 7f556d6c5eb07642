"""Workers and a byte-counting relay for the RPC tests: real processes and sockets on 127.0.0.1 only."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

READY_SECONDS = 60
STOP_SECONDS = 60


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Worker:
    """``ossrun worker`` in a subprocess on 127.0.0.1; its stdout lines are collected as they come."""

    def __init__(
        self,
        *args: str,
        home: Path,
        cache_dir: Path | None = None,
        port: int | None = None,
        threads: int = 1,
        env: dict | None = None,
    ):
        self.port = port or free_port()
        cache = ["--cache-dir", str(cache_dir)] if cache_dir else ["--no-cache"]
        command = [sys.executable, "-m", "ossrun", "worker", "--port", str(self.port), "--threads", str(threads), *cache, *args]
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "OSSRUN_HOME": str(home), **(env or {})},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _read(self) -> None:
        for line in self.process.stdout:
            self.output.append(line)
            self.lines.put(line)
        self.lines.put("")

    def wait_for(self, text: str, seconds: float = READY_SECONDS) -> str:
        """The first line from now on that contains ``text``."""
        while True:
            line = self.lines.get(timeout=seconds)
            if not line:
                raise AssertionError(f"worker ended before {text!r}: {''.join(self.output)}{self.process.stderr.read()}")
            if text in line:
                return line

    def ready(self) -> Worker:
        self.wait_for("serving one client at a time")  # the last line it prints when it starts
        return self

    def stop(self) -> int:
        """Ctrl-C, as a person would; the exit code (-9 if it had not ended a minute later)."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.send_signal(signal.SIGINT)
            try:
                # A worker ends at once on an idle machine; on a busy one, ten seconds were once too few.
                self.process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


class Relay:
    """A TCP relay from a port of its own to ``target``, counting the bytes each way."""

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.to_worker = 0
        self.from_worker = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for source, sink, up in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(source, sink, up), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, up: bool) -> None:
        try:
            while True:
                data = source.recv(1 << 20)
                if not data:
                    break
                sink.sendall(data)
                with self._lock:
                    if up:
                        self.to_worker += len(data)
                    else:
                        self.from_worker += len(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def reset(self) -> None:
        with self._lock:
            self.to_worker = self.from_worker = 0

    def close(self) -> None:
        self.listener.close()
