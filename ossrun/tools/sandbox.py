"""The python tool: the model's code in a separate, limited, isolated process.

Each run is a fresh interpreter. ``sandbox_child.py`` puts it in a jail (``sandbox_jail.py``:
user, mount, PID, IPC and network namespaces, a new empty keyring, no privileges, root's code
runs as nobody, and a seccomp filter, ``sandbox_seccomp.py``) that sees only the Python
installation's files and the system's libraries read-only, the working directory and an empty
/tmp (``sandbox_mounts.py``). The working directory is a tmpfs the session holds, bounded in
bytes and files, kept from one run to the next and gone with the session; on the host it is an
empty folder inside a private one (``workdir.py``). Around it: a wall-clock timeout, the memory
and CPU time of all the run's processes together (a cgroup where this user may make one,
``cgroups.py``, else measured by the run's init, ``sandbox_bounds.py``), the size of each file,
a bound on processes, and output bounded in size. When the code ends, or is killed, every
process it started goes with it (the PID namespace dies with its init). The model is told
exactly that (:meth:`PythonSandbox.description`), not the stateful notebook harmony's stock
description promises; where the system refuses the namespaces, or a total is only measured,
the user and the model are told what holds.
"""

from __future__ import annotations

import json
import math
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ossrun.errors import ToolError
from ossrun.tools import cgroups
from ossrun.tools.workdir import private_folder, remove_tree

DEFAULT_TIMEOUT = 120.0  # seconds of wall-clock time per run, the figure gpt-oss was trained with
DEFAULT_MEMORY_BYTES = 1 << 30
DEFAULT_OUTPUT_BYTES = 16 * 1024  # what the model reads, stdout and stderr together
DEFAULT_FILE_BYTES = 1 << 30  # the largest file the code may write
DEFAULT_DISK_BYTES = 1 << 30  # the working directory's bytes, and /tmp's (and /dev/shm's)
DEFAULT_DISK_FILES = 10_000  # files and folders in the working directory, and in /tmp
DEFAULT_PROCESSES = 64  # processes and threads at once, the code's own included
# Numerical libraries start a thread per core: these keep them inside the bound on processes.
NUM_THREADS_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)
# Past this much output the process is killed: printing forever would otherwise
# keep the reader busy until the timeout.
OUTPUT_KILL_FACTOR = 256
CHILD = Path(__file__).with_name("sandbox_child.py")
ISOLATION_UNAVAILABLE_EXIT = 111  # sandbox_child's exit code when it could not isolate the code,
REFUSED = "cannot isolate the code: "  # and how its message starts
SAMPLE_SECONDS = 0.05  # how often a run's init looks at its totals
SESSION_TIMEOUT = 30.0  # seconds for the session's namespaces and the probe of the jail

# The first paragraph is harmony's stock python-tool text, which gpt-oss was trained on and which holds here.
TRAINED_INTRO = (
    "Use this tool to execute Python code in your chain of thought. The code will not be shown to the user. "
    "This tool should be used for internal reasoning, but not for code that is intended to be visible to the user "
    "(e.g. when creating plots, tables, or files)."
)


@dataclass(frozen=True)
class SandboxLimits:
    timeout: float = DEFAULT_TIMEOUT
    memory_bytes: int | None = DEFAULT_MEMORY_BYTES
    cpu_seconds: int | None = None  # None: the timeout, rounded up
    output_bytes: int = DEFAULT_OUTPUT_BYTES
    file_bytes: int | None = DEFAULT_FILE_BYTES
    processes: int | None = DEFAULT_PROCESSES  # applies where the code is isolated
    disk_bytes: int | None = DEFAULT_DISK_BYTES  # these two too
    disk_files: int | None = DEFAULT_DISK_FILES

    @property
    def cpu_limit(self) -> int | None:
        return self.cpu_seconds if self.cpu_seconds is not None else max(1, math.ceil(self.timeout))


@dataclass(frozen=True)
class SandboxResult:
    """One run: what the code printed (already bounded) and how it ended."""

    stdout: str
    stderr: str
    exit_status: int | None  # the exit code; a negative signal number when killed; None when not run
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


def _status(limits: SandboxLimits, exit_status: int, ending: str | None) -> str:
    if ending == "timeout":
        return f"killed: timed out after {limits.timeout:g} seconds"
    if ending == "output":
        return f"killed: printed more than {OUTPUT_KILL_FACTOR * limits.output_bytes} bytes"
    if ending == "cancel":
        return "killed: interrupted by the user"
    if ending == "memory":
        return f"killed: its processes together used more than {_size(limits.memory_bytes or 0)} of memory"
    if ending == "cpu":
        return f"killed: its processes together used more than {limits.cpu_limit} seconds of CPU time"
    if exit_status >= 0:
        return f"exit status {exit_status}"
    number = -exit_status
    name = signal.Signals(number).name if number in signal.valid_signals() else f"signal {number}"
    if number == signal.SIGXCPU:
        return f"killed by {name}: CPU time limit of {limits.cpu_limit} seconds"
    return f"killed by {name}"


@dataclass
class _Held:
    """What a session holds on the host: its private folder and the descriptors of its namespaces."""

    home: Path | None = None
    descriptors: dict[str, int] = field(default_factory=dict)  # "user_fd", "mount_fd"

    def let_go(self) -> None:
        """Close the namespaces' descriptors: the last one closed, the session's tmpfs is gone."""
        for fd in self.descriptors.values():
            os.close(fd)
        self.descriptors = {}

    def release(self) -> None:
        self.let_go()
        if self.home is not None:
            remove_tree(self.home)
        self.home = None


@dataclass(frozen=True)
class _Jail:
    """What the probe found this system allows; shared by the sessions of one sandbox's kind."""

    isolation: str | None  # "user namespaces", "namespaces made by root", None
    error: str | None = None  # why there is no jail
    unfiltered: str | None = None  # why system calls are not filtered, where they are not
    cgroups: cgroups.Cgroups | None = None  # where runs' cgroups go, if anywhere


class PythonSandbox:
    """Runs the model's Python code; one working directory for the whole session.

    Use it as a context manager (or call :meth:`close`) to remove the directory.
    ``isolate_network=False`` lets the code use the network (the rest of the jail stays).
    """

    def __init__(self, limits: SandboxLimits = SandboxLimits(), *, isolate_network: bool = True, python: str | None = None):
        if sys.platform == "win32":
            raise ToolError("the python tool needs Linux or macOS: it relies on POSIX resource limits")
        self.limits = limits
        self.python = python or sys.executable
        self.isolate_network = isolate_network
        self._held = _Held()
        self._cleanup: weakref.finalize | None = None
        self._jail: _Jail | None = None
        self._lock = threading.Lock()

    def new_session(self) -> PythonSandbox:
        """Another sandbox like this one, with a working directory of its own (no new probe)."""
        other = PythonSandbox(self.limits, isolate_network=self.isolate_network, python=self.python)
        other._jail = self._jail
        return other

    # -- the session ------------------------------------------------------

    @property
    def workdir(self) -> Path:
        """The code's working directory, created on first use and removed by :meth:`close`.

        Where the code is isolated, its files live in the session's tmpfs: on the host this
        folder stays empty."""
        if self._held.home is None:
            self._held.home = private_folder()
            if self._cleanup is None:
                self._cleanup = weakref.finalize(self, self._held.release)
        return self._held.home / "work"

    def close(self) -> None:
        with self._lock:
            self._held.release()

    def __enter__(self) -> PythonSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def isolation(self) -> str | None:
        """How the code is jailed ("user namespaces", or "namespaces made by root" where user
        namespaces are off), None when this system allows no jail."""
        return self._probed().isolation

    def totals(self) -> dict[str, str]:
        """How each bound on the run as a whole holds here: "kernel" (a cgroup enforces it),
        "counted" (init ends the run at the bound, from a complete count), "sampled" (init
        checks it every SAMPLE_SECONDS), or "per process" (no jail: each process alone)."""
        jail = self._probed()
        if jail.isolation is None:
            return {"memory": "per process", "cpu": "per process", "processes": "per process"}
        controllers = jail.cgroups.controllers if jail.cgroups else frozenset()
        return {
            "memory": "kernel" if "memory" in controllers else "sampled",
            "cpu": "counted",
            "processes": "kernel" if "pids" in controllers or jail.isolation == "user namespaces" else "per user",
        }

    def notices(self) -> list[str]:
        """What the user should know before the first run (shown at start)."""
        jail = self._probed()
        if jail.isolation is None:
            return [
                f"the python tool's code is not isolated: {jail.error}; it can use the network, "
                "read and write your files, and leave processes running"
            ]
        notices = []
        if not self.isolate_network:
            notices.append("the python tool's code can use the network (network isolation is off)")
        if self.limits.memory_bytes and self.totals()["memory"] == "sampled":
            notices.append(
                f"the python tool's memory bound of {_size(self.limits.memory_bytes)} holds for each process; "
                f"for all of a run's processes together it is checked every {SAMPLE_SECONDS:g} s, not "
                "enforced by the kernel (no cgroup memory controller is delegated to this user here)"
            )
        if jail.unfiltered:
            notices.append(f"the python tool's {jail.unfiltered}")
        return notices

    def description(self) -> str:
        """The python tool's description for the model: the trained wording where it holds, the real sandbox elsewhere."""
        limits = self.limits
        version = ".".join(map(str, sys.version_info[:2])) if self.python == sys.executable else "3"
        isolated = self.isolation is not None
        memory = ""
        if limits.memory_bytes and not isolated:
            memory = f" Memory is limited to {_size(limits.memory_bytes)} per process."
        elif limits.memory_bytes:
            checked = f" (checked every {SAMPLE_SECONDS:g} seconds)" if self.totals()["memory"] == "sampled" else ""
            memory = (
                f" Memory is limited to {_size(limits.memory_bytes)} for all its processes together{checked}, "
                f"/tmp included, and CPU time to {limits.cpu_limit} seconds."
            )
        if not isolated:
            files = " The code is not isolated: it runs as the user, with the user's files."
        else:
            processes = f" It can run at most {limits.processes} processes and threads." if limits.processes else ""
            bounds = ([_size(limits.disk_bytes)] if limits.disk_bytes else []) + (
                [f"{limits.disk_files} files"] if limits.disk_files else []
            )
            disk = f" The current directory and /tmp each hold at most {' and '.join(bounds)}." if bounds else ""
            files = (
                " The file system is read-only but for the current directory and an empty /tmp: the code sees only "
                f"the system's programs and libraries and the Python installation.{disk}{processes}"
            )
        internet = "disabled" if isolated and self.isolate_network else "enabled"
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

    def run(self, code: str, cancel: threading.Event | None = None) -> SandboxResult:
        """Run ``code`` in a fresh process and return its bounded output and status.

        Setting ``cancel`` kills the process within a tenth of a second. Where this system
        allows no jail (said at start by :meth:`notices`) the code runs with the limits alone.
        """
        started = time.monotonic()
        jail = self._probed()
        group = None
        with self._lock:
            if jail.isolation is not None and not self._held.descriptors:
                held = self._hold(probe=False)
                if held.isolation is None:
                    return SandboxResult("", "", None, f"not run: {REFUSED}{held.error}")
            if jail.isolation is not None and jail.cgroups is not None:
                try:
                    group = jail.cgroups.make(self.limits.memory_bytes, _with_jail(self.limits.processes))
                except OSError as exc:
                    return SandboxResult("", "", None, f"not run: {REFUSED}cannot make the run's cgroup ({exc.strerror})")
            report_r, report_w = os.pipe() if jail.isolation is not None else (None, None)
            config = self._config(report_fd=report_w, cgroup=group)
            try:
                process = self._spawn(
                    config, pass_fds=(*([report_w] if report_w else []), *self._held.descriptors.values()), group=group
                )
            except BaseException:
                _read_report(report_r)
                if group is not None:
                    cgroups.remove(group)
                raise
            finally:
                if report_w is not None:
                    os.close(report_w)
            if process is None:
                _read_report(report_r)
                if group is not None:
                    cgroups.remove(group)
                return SandboxResult("", "", None, f"not run: {REFUSED}cannot place the run in its cgroup")
        try:
            try:
                stdin = process.stdin
                assert stdin is not None  # started with stdin=PIPE
                stdin.write(code.encode("utf-8", "surrogateescape"))
                stdin.close()
            except BrokenPipeError:
                pass  # the process died early; its stderr says why
            reader = _BoundedReader(process, self.limits.output_bytes)
            ending = reader.read_until(started + self.limits.timeout, cancel)
        finally:
            _kill_group(process)  # on a timeout, cancel or flood: the keeper and init, so the whole jail
            exit_status = process.wait()
            bound = _read_report(report_r)
            if group is not None:
                cgroups.remove(group)
        stdout, stderr, dropped = reader.texts()
        if exit_status == ISOLATION_UNAVAILABLE_EXIT and stderr.startswith(REFUSED):
            return SandboxResult("", "", None, "not run: " + stderr.strip())
        status = _status(self.limits, exit_status, ending or (bound[0] if bound else None))
        return SandboxResult(stdout, stderr, exit_status, status, dropped, time.monotonic() - started)

    def _config(
        self, *, probe: bool = False, hold: bool = False, report_fd: int | None = None, cgroup: cgroups.RunCgroup | None = None
    ) -> dict[str, Any]:
        """What sandbox_child.py is to do: hold a session, probe the jail or run code; where, with which limits."""
        jail = self._jail
        isolate = hold or (jail is not None and jail.isolation is not None)
        limits = self.limits
        config: dict[str, Any] = {
            "isolate": isolate,
            "hold": hold,
            "probe": probe,
            "isolation": jail.isolation if jail else None,
            "seccomp": bool(jail and jail.isolation and not jail.unfiltered),
            "network": not self.isolate_network,
            "workdir": str(self.workdir),
            "memory_bytes": limits.memory_bytes,
            "cpu_seconds": limits.cpu_limit,
            "file_bytes": limits.file_bytes,
            "disk_bytes": limits.disk_bytes,
            "disk_files": limits.disk_files,
            "processes": limits.processes if isolate else None,  # counted alone only in the jail
            "report_fd": report_fd,
            "cgroup": cgroup.spec if cgroup else None,
            "sample_seconds": SAMPLE_SECONDS,
        }
        if not hold:
            config.update(self._held.descriptors)
        return config

    def _environment(self) -> dict[str, str]:
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
        return env

    def _spawn(
        self, config: dict[str, Any], pass_fds: tuple[int, ...] = (), group: cgroups.RunCgroup | None = None
    ) -> subprocess.Popen | None:
        """Start sandbox_child.py; with ``group``, put it in the run's cgroups before it reads its
        stdin (None if that fails: then it is killed)."""
        process = subprocess.Popen(
            [self.python, "-I", str(CHILD), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd="/",  # never a folder the code can write: the jail is prepared from here
            env=self._environment(),
            pass_fds=pass_fds,
            start_new_session=True,  # its own process group, killed as a whole
        )
        if group is not None:
            try:
                group.place(process.pid)
            except OSError:
                _kill_group(process)
                process.communicate()
                return None
        return process

    def _probed(self) -> _Jail:
        """Find out once whether the jail can be made here, and how; the probe holds this session's namespaces."""
        with self._lock:
            if self._jail is None:
                self._jail = self._probe()
            return self._jail

    def _probe(self) -> _Jail:
        if not sys.platform.startswith("linux"):
            system = "macOS" if sys.platform == "darwin" else sys.platform
            return _Jail(None, f"the jail needs Linux's namespaces, and on {system} only the limits hold")
        places = cgroups.find()
        jail = self._hold(probe=True, places=places)
        if jail.isolation is None and places is not None and "cgroup" in (jail.error or ""):
            jail = self._hold(probe=True, places=None)  # this system's cgroups are not what they seemed
        return jail

    def _hold(self, *, probe: bool, places: cgroups.Cgroups | None = None) -> _Jail:
        """Start a session: its namespaces, held by descriptors; with ``probe``, try a whole run too."""
        try:
            group = places.make(self.limits.memory_bytes, _with_jail(self.limits.processes)) if probe and places else None
        except OSError as exc:
            return _Jail(None, f"cannot make the run's cgroup ({exc.strerror})")
        try:
            process = self._spawn(self._config(hold=True, probe=probe, cgroup=group), group=group)
        except BaseException:
            if group is not None:
                cgroups.remove(group)
            raise
        if process is None:
            if group is not None:
                cgroups.remove(group)
            return _Jail(None, "cannot place the run in its cgroup")
        timer = threading.Timer(SESSION_TIMEOUT, _kill_group, (process,))
        timer.start()
        assert process.stdout is not None
        try:
            held = process.stdout.readline()
            if held:
                how = json.loads(held)["held"]
                namespaces = (("user_fd", "user"),) if how == "user namespaces" else ()
                for key, name in (*namespaces, ("mount_fd", "mnt")):
                    self._held.descriptors[key] = os.open(f"/proc/{process.pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)
            out, err = process.communicate(b"go\n")
        except (OSError, ValueError, KeyError) as exc:
            _kill_group(process)
            process.wait()
            out, err = b"", f"{REFUSED}{exc}".encode()
        finally:
            timer.cancel()
            if group is not None:
                cgroups.remove(group)
        if process.returncode == 0 and (out or not probe) and self._held.descriptors:
            if not probe:
                return _Jail(self._jail.isolation if self._jail else None)
            found = json.loads(out)
            return _Jail(found["isolation"], unfiltered=found["unfiltered"], cgroups=places)
        self._held.let_go()  # no jail: the working directory is a plain folder
        lines = err.decode(errors="replace").strip().splitlines()
        reason = lines[-1].removeprefix(REFUSED) if lines else f"exit status {process.returncode}"
        return _Jail(None, reason)


class _BoundedReader:
    """Reads a process's stdout and stderr, keeping the head and tail of each within a budget."""

    def __init__(self, process: subprocess.Popen, limit: int):
        self.process = process
        self.limit = limit
        # keyed by the pipes (stdout=stderr=PIPE), found again through the selector's keys
        self.streams: dict[Any, _Capture] = {process.stdout: _Capture(limit), process.stderr: _Capture(limit)}
        self.selector = selectors.DefaultSelector()
        for stream in self.streams:
            self.selector.register(stream, selectors.EVENT_READ)

    def read_until(self, deadline: float, cancel: threading.Event | None = None) -> str | None:
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


def _with_jail(processes: int | None) -> int | None:
    """A run's cgroup holds the keeper and init beside the code's processes."""
    return processes + 2 if processes else None


def _read_report(fd: int | None) -> list[str]:
    """What the keeper reported (the bound that ended the run, if one did); never waits."""
    if fd is None:
        return []
    try:
        os.set_blocking(fd, False)
        return os.read(fd, 256).decode(errors="replace").split()
    except BlockingIOError:
        return []
    finally:
        os.close(fd)


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
