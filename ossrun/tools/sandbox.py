"""The python tool: the model's code in a separate, limited, isolated process.

Each run is a fresh interpreter. ``sandbox_child.py`` puts it in a jail
(``sandbox_jail.py``: user, mount, PID, IPC and network namespaces; no privileges,
root's code runs as nobody) that sees only the Python installation and the system's
libraries read-only, the working directory and an empty /tmp (``sandbox_mounts.py``),
then sets the limits and runs the code. Around it: a wall-clock timeout, a memory
limit (RLIMIT_AS), a CPU-time limit, a file-size limit, a bound on processes, a
temporary working directory kept for the session, and output bounded in size. When
the code ends, or is killed, every process it started goes with it (the PID
namespace dies with its init). The model is told exactly that
(:meth:`PythonSandbox.description`), not the stateful notebook harmony's stock
description promises; where the system refuses the namespaces, the user and the
model are told the code is not isolated.
"""

from __future__ import annotations

import json
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ossrun.errors import ToolError

DEFAULT_TIMEOUT = 120.0  # seconds of wall-clock time per run, the figure gpt-oss was trained with
DEFAULT_MEMORY_BYTES = 1 << 30
DEFAULT_OUTPUT_BYTES = 16 * 1024  # what the model reads, stdout and stderr together
DEFAULT_FILE_BYTES = 1 << 30  # the largest file the code may write (and the size of its /tmp)
DEFAULT_PROCESSES = 64  # processes and threads at once, the code's own included
# Numerical libraries start a thread per core: these keep them inside the bound on processes.
NUM_THREADS_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                         "VECLIB_MAXIMUM_THREADS")
# Past this much output the process is killed: printing forever would otherwise
# keep the reader busy until the timeout.
OUTPUT_KILL_FACTOR = 256
CHILD = Path(__file__).with_name("sandbox_child.py")
ISOLATION_UNAVAILABLE_EXIT = 111  # sandbox_child's exit code when it could not isolate the code,
REFUSED = "cannot isolate the code: "  # and how its message starts

# The first paragraph is harmony's stock python-tool text, which gpt-oss was trained on and which holds here.
TRAINED_INTRO = (
    "Use this tool to execute Python code in your chain of thought. The code will not be shown to the user. "
    "This tool should be used for internal reasoning, but not for code that is intended to be visible to the user "
    "(e.g. when creating plots, tables, or files)."
)


@dataclass(frozen=True)
class SandboxLimits:
    timeout: float = DEFAULT_TIMEOUT
    memory_bytes: Optional[int] = DEFAULT_MEMORY_BYTES
    cpu_seconds: Optional[int] = None  # None: the timeout, rounded up
    output_bytes: int = DEFAULT_OUTPUT_BYTES
    file_bytes: Optional[int] = DEFAULT_FILE_BYTES
    processes: Optional[int] = DEFAULT_PROCESSES  # applies where the code is isolated

    @property
    def cpu_limit(self) -> Optional[int]:
        return self.cpu_seconds if self.cpu_seconds is not None else max(1, math.ceil(self.timeout))


@dataclass(frozen=True)
class SandboxResult:
    """One run: what the code printed (already bounded) and how it ended."""

    stdout: str
    stderr: str
    exit_status: Optional[int]  # the exit code; a negative signal number when killed; None when not run
    status: str  # how it ended, in words: "exit status 0", "killed: timed out after 120 seconds", ...
    truncated_bytes: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    def text(self) -> str:
        """What the model reads: stdout, then stderr, then how the process ended."""
        parts = [self.stdout.rstrip("\n")] if self.stdout else []
        if self.stderr:
            parts.append("[stderr]\n" + self.stderr.rstrip("\n"))
        parts.append(f"[{self.status}]")
        return "\n".join(parts)


def _status(limits: SandboxLimits, exit_status: int, ending: Optional[str]) -> str:
    if ending == "timeout":
        return f"killed: timed out after {limits.timeout:g} seconds"
    if ending == "output":
        return f"killed: printed more than {OUTPUT_KILL_FACTOR * limits.output_bytes} bytes"
    if ending == "cancel":
        return "killed: interrupted by the user"
    if exit_status >= 0:
        return f"exit status {exit_status}"
    number = -exit_status
    name = signal.Signals(number).name if number in signal.valid_signals() else f"signal {number}"
    if number == signal.SIGXCPU:
        return f"killed by {name}: CPU time limit of {limits.cpu_limit} seconds"
    return f"killed by {name}"


class PythonSandbox:
    """Runs the model's Python code; one working directory for the whole session.

    Use it as a context manager (or call :meth:`close`) to remove the directory.
    ``isolate_network=False`` lets the code use the network (the rest of the jail stays).
    """

    def __init__(self, limits: SandboxLimits = SandboxLimits(), *, isolate_network: bool = True, python: Optional[str] = None):
        if sys.platform == "win32":
            raise ToolError("the python tool needs Linux or macOS: it relies on POSIX resource limits")
        self.limits = limits
        self.python = python or sys.executable
        self.isolate_network = isolate_network
        self._workdir: Optional[Path] = None
        self._cleanup: Optional[weakref.finalize] = None
        self._isolation: Optional[str] = None
        self._isolation_error: Optional[str] = None  # why there is no jail, once probed

    # -- the session ------------------------------------------------------

    @property
    def workdir(self) -> Path:
        """The code's working directory, created on first use and removed by :meth:`close`."""
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="ossrun-python-"))
            self._cleanup = weakref.finalize(self, shutil.rmtree, self._workdir, True)
        return self._workdir

    def close(self) -> None:
        if self._cleanup is not None:
            self._cleanup()
        self._workdir, self._cleanup = None, None

    def __enter__(self) -> "PythonSandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def isolation(self) -> Optional[str]:
        """How the code is jailed ("user namespaces", or "namespaces made by root" where user
        namespaces are off), None when this system allows no jail."""
        if self._isolation is None and self._isolation_error is None:
            self._probe()
        return self._isolation

    def notices(self) -> list[str]:
        """What the user should know before the first run (shown at start)."""
        if self.isolation is None:
            return [f"the python tool's code is not isolated: {self._isolation_error}; it can use the network, "
                    "read and write your files, and leave processes running"]
        if not self.isolate_network:
            return ["the python tool's code can use the network (network isolation is off)"]
        return []

    def description(self) -> str:
        """The python tool's description for the model: the trained wording where it holds, the real sandbox elsewhere."""
        limits = self.limits
        version = ".".join(map(str, sys.version_info[:2])) if self.python == sys.executable else "3"
        memory = f" Memory is limited to {_size(limits.memory_bytes)}." if limits.memory_bytes else ""
        if self.isolation is None:
            files = " The code is not isolated: it runs as the user, with the user's files."
        else:
            processes = f" It can run at most {limits.processes} processes and threads." if limits.processes else ""
            files = (" The file system is read-only but for the current directory and an empty /tmp: the code sees only "
                     f"the system's programs and libraries and the Python installation.{processes}")
        internet = "disabled" if self.isolation and self.isolate_network else "enabled"
        return (
            f"{TRAINED_INTRO}\n\n"
            f"When you send a message containing Python code to python, it will be executed in a new Python {version} "
            f"process, not in a notebook: nothing is kept in memory between messages, so each message must be a complete "
            f"program with its own imports. The value of the last expression is printed, as in a notebook. "
            f"python will respond with the output of the execution (stdout, stderr and the exit status, "
            f"at most {limits.output_bytes} bytes) or time out after {limits.timeout:.1f} seconds.{memory} "
            f"The current directory can be used to save files for later messages in this session; "
            f"it is deleted when the session ends.{files} Internet access for this session is {internet}."
        )

    # -- running code -----------------------------------------------------

    def run(self, code: str, cancel: Optional[threading.Event] = None) -> SandboxResult:
        """Run ``code`` in a fresh process and return its bounded output and status.

        Setting ``cancel`` kills the process within a tenth of a second. Where this system
        allows no jail (said at start by :meth:`notices`) the code runs with the limits alone.
        """
        started = time.monotonic()
        process = self._spawn(self._config())
        try:
            try:
                process.stdin.write(code.encode("utf-8", "surrogateescape"))
                process.stdin.close()
            except BrokenPipeError:
                pass  # the process died early; its stderr says why
            reader = _BoundedReader(process, self.limits.output_bytes)
            ending = reader.read_until(started + self.limits.timeout, cancel)
        finally:
            _kill_group(process)  # on a timeout, cancel or flood: the keeper and init, so the whole jail
            exit_status = process.wait()
        stdout, stderr, dropped = reader.texts()
        if exit_status == ISOLATION_UNAVAILABLE_EXIT and stderr.startswith(REFUSED):
            return SandboxResult("", "", None, "not run: " + stderr.strip())
        status = _status(self.limits, exit_status, ending)
        return SandboxResult(stdout, stderr, exit_status, status, dropped, time.monotonic() - started)

    def _config(self, *, probe: bool = False) -> dict:
        """What sandbox_child.py is to do: isolate or not, where, with which limits; or only probe the jail."""
        isolate = probe or self.isolation is not None
        return {
            "isolate": isolate,
            "probe": probe,
            "network": not self.isolate_network,
            "workdir": str(self.workdir),
            "memory_bytes": self.limits.memory_bytes,
            "cpu_seconds": self.limits.cpu_limit,
            "file_bytes": self.limits.file_bytes,
            "processes": self.limits.processes if isolate else None,  # counted alone only in the jail
        }

    def _spawn(self, config: dict) -> subprocess.Popen:
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": str(self.workdir),
            "TMPDIR": str(self.workdir),
            "LANG": "C.UTF-8",
            "PYTHONIOENCODING": "utf-8",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        if self.limits.processes:
            threads = max(1, min(os.cpu_count() or 1, self.limits.processes // 4))
            env.update(dict.fromkeys(NUM_THREADS_VARIABLES, str(threads)))
        return subprocess.Popen(
            [self.python, "-I", str(CHILD), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=self.workdir,
            env=env,
            start_new_session=True,  # its own process group, killed as a whole
        )

    def _probe(self) -> None:
        """Find out once whether the jail can be made here: set how, or why not."""
        if not sys.platform.startswith("linux"):
            system = "macOS" if sys.platform == "darwin" else sys.platform
            self._isolation_error = f"the jail needs Linux's namespaces, and on {system} only the limits hold"
            return
        try:
            done = subprocess.run(
                [self.python, "-I", str(CHILD), json.dumps(self._config(probe=True))],
                capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, cwd=self.workdir,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            self._isolation_error = str(exc)
            return
        if done.returncode == 0 and done.stdout:
            self._isolation = done.stdout.strip()
        elif done.stderr.strip():
            self._isolation_error = done.stderr.strip().splitlines()[-1].removeprefix(REFUSED)
        else:
            self._isolation_error = f"exit status {done.returncode}"


class _BoundedReader:
    """Reads a process's stdout and stderr, keeping the head and tail of each within a budget."""

    def __init__(self, process: subprocess.Popen, limit: int):
        self.process = process
        self.limit = limit
        self.streams = {process.stdout: _Capture(limit), process.stderr: _Capture(limit)}
        self.selector = selectors.DefaultSelector()
        for stream in self.streams:
            self.selector.register(stream, selectors.EVENT_READ)

    def read_until(self, deadline: float, cancel: Optional[threading.Event] = None) -> Optional[str]:
        """Read until the process ends and its pipes are drained; else say why it must be killed:
        "timeout", "output" (printed too much) or "cancel".

        Once the process has exited, pipes a leftover child still holds open are not waited for.
        """
        try:
            while self.selector.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return "timeout"
                if cancel is not None and cancel.is_set():
                    return "cancel"
                exited = self.process.poll() is not None
                ready = self.selector.select(0 if exited else min(remaining, 0.1))
                if exited and not ready:
                    break
                for key, _ in ready:
                    chunk = os.read(key.fd, 65536)
                    if chunk:
                        self.streams[key.fileobj].add(chunk)
                    else:
                        self.selector.unregister(key.fileobj)
                if sum(c.total for c in self.streams.values()) > OUTPUT_KILL_FACTOR * self.limit:
                    return "output"
            return None
        finally:
            self.selector.close()

    def texts(self) -> tuple[str, str, int]:
        """(stdout, stderr, bytes left out), together at most ``limit`` bytes plus the markers."""
        out, err = self.streams.values()
        budget_err = min(err.total, max(self.limit - out.total, self.limit // 2))
        budget_out = min(out.total, self.limit - budget_err)
        dropped = (out.total - budget_out) + (err.total - budget_err)
        return out.text(budget_out), err.text(budget_err), dropped


class _Capture:
    """The first and last ``limit`` bytes of a stream, and how long it was."""

    def __init__(self, limit: int):
        self.limit = limit
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.limit - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail = (self.tail + chunk)[-self.limit :]

    def text(self, budget: int) -> str:
        data = bytes(self.head + self.tail)  # complete while total <= 2 * limit, else head + last bytes
        if self.total <= budget:
            return data.decode("utf-8", "replace")
        head, tail = budget - budget // 2, budget // 2
        marker = f"\n[... {self.total - budget} bytes of output left out ...]\n"
        return data[:head].decode("utf-8", "replace") + marker + (data[-tail:] if tail else b"").decode("utf-8", "replace")


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:g} {unit}"
    return f"{n} bytes"
