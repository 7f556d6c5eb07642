"""``ossrun serve`` for the tests: a real server process on 127.0.0.1, or one in this process
(over any Model, a scripted one included) run by uvicorn in a thread."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

LISTENING = re.compile(r"listening on http://(\S+):(\d+)/v1")
START_SECONDS = 120


class ServerProcess:
    """``ossrun serve ARGS --port 0`` in a subprocess; its stderr lines are collected."""

    def __init__(self, *args: str, home: Path, env: dict | None = None, open_files: int | None = None):
        environment = {**os.environ, "OSSRUN_HOME": str(home), "OSSRUN_DATE": "2025-08-05", **(env or {})}

        def lower_open_files() -> None:  # a soft limit as low as many systems have, for the server to raise
            import resource

            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

        self.process = subprocess.Popen(
            [sys.executable, "-m", "ossrun", "serve", *args, "--port", "0", "--threads", "1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
            preexec_fn=lower_open_files if open_files else None,
        )
        self.lines: list[str] = []
        self._listening: re.Match | None = None
        self._started = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = self._wait_for_listening()
        self.base_url = self.url + "/v1"

    def _wait_for_listening(self) -> str:
        # One thread reads stderr line by line; a select() on the pipe beside a buffered
        # readline() would miss lines already sitting in the buffer.
        self._started.wait(START_SECONDS)
        if self._listening is None:
            self.process.kill()
            self._reader.join(5)
            raise AssertionError("the server did not start:\n" + "\n".join(self.lines))
        self.host = self._listening.group(1)
        return f"http://127.0.0.1:{self._listening.group(2)}"  # the tests talk to loopback only

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))
            if self._listening is None:
                self._listening = LISTENING.search(line)
                if self._listening:
                    self._started.set()
        self._started.set()

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def log_lines(self, prefix: str) -> list[str]:
        return [line for line in self.lines if line.startswith(prefix)]

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(5)
        return self.process.returncode


class ServerThread:
    """A Server over ``model`` in this process, on a free port of 127.0.0.1."""

    def __init__(self, model, name: str = "scripted", python_tool=None, **options):
        import uvicorn

        from ossrun.server.app import Server
        from ossrun.server.served import ServedModel

        self.log = _Lines()
        self.server = Server(model, ServedModel(name=name, python_tool=python_tool), log=self.log, **options)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.base_url = self.url + "/v1"
        self.uvicorn = uvicorn.Server(self.server.uvicorn_config())
        self.thread = threading.Thread(target=self.uvicorn.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.uvicorn.started and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.runner.cancel_all()
        self.uvicorn.should_exit = True
        self.thread.join(10)
        self.server.runner.close()
        self.server.served.close()
        self.sock.close()


class _Lines:
    def __init__(self):
        self.lines: list[str] = []

    def write(self, text: str) -> None:
        self.lines.extend(line for line in text.splitlines() if line)

    def flush(self) -> None:
        pass


def interrupt(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGINT)
