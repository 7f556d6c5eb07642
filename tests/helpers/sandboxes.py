"""Helpers for the python tool's tests: a local server to connect to, the host's processes, and
interpreters that run the sandbox as another kind of user or on a system that refuses namespaces."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ossrun.tools import PythonSandbox, SandboxLimits
from ossrun.tools import sandbox as sandbox_module
from ossrun.tools.sandbox import CHILD

ORDINARY_UID = 1000  # the user root's tests run the sandbox as

CONNECT = textwrap.dedent("""
    import socket
    try:
        socket.create_connection(("127.0.0.1", {port}), timeout=5).close()
        print("connected")
    except OSError as exc:
        print("blocked:", exc)
    """)

# For code run in the sandbox: what an action comes to, "ok" or the error's name ("ENOENT"...).
ATTEMPT = textwrap.dedent("""
    import errno

    def attempt(action):
        try:
            action()
            return "ok"
        except OSError as exc:
            return errno.errorcode[exc.errno]
    """)

# What the code can see and do from inside, as JSON: who it is, its processes, its file system,
# how many processes and threads it may start, whether it reaches the server on {port}.
REPORT = ATTEMPT + textwrap.dedent("""
    import json, os, socket, sys, threading

    def write(path):
        return attempt(lambda: open(path, "w").close())

    def forks():
        children, refused = [], None
        r, w = os.pipe()
        try:
            while len(children) < 200:
                pid = os.fork()
                if pid == 0:
                    os.close(w)
                    os.read(r, 1)
                    os._exit(0)
                children.append(pid)
        except OSError as exc:
            refused = errno.errorcode[exc.errno]
        os.close(w)
        for pid in children:
            os.waitpid(pid, 0)
        return len(children), refused

    def threads():
        started, stop = [], threading.Event()
        try:
            while len(started) < 200:
                thread = threading.Thread(target=stop.wait)
                thread.start()
                started.append(thread)
        except RuntimeError:
            pass
        stop.set()
        for thread in started:
            thread.join()
        return len(started)

    def network():
        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=5).close()
            return "connected"
        except OSError as exc:
            return errno.errorcode[exc.errno]

    status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\\t" in line)
    open("written", "w").close()
    print(json.dumps({{
        "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "pid": os.getpid(),
        "capabilities": status["CapEff"], "no_new_privs": status["NoNewPrivs"],
        "processes": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "root": sorted(os.listdir("/")), "dev": sorted(os.listdir("/dev")), "tmp": sorted(os.listdir("/tmp")),
        "python": [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix,
                   os.path.dirname(os.path.realpath(sys.executable)), *sys.path[1:]],
        "cwd": os.getcwd(), "fds": sorted(os.listdir("/proc/self/fd")),
        "write": {{path: write(path)
                   for path in ("tmp-file", "/tmp/file", "/dev/shm/file", "/file", "/etc/file", sys.prefix + "/file")}},
        "forks": forks(), "threads": threads(), "network": network(),
    }}))
    """)


def files_in(box) -> dict[str, str]:
    """What the working directory holds, seen from a run (on the host it is an empty folder)."""
    code = (
        "import os, stat, json\n"
        "kinds = {stat.S_IFREG: 'regular file', stat.S_IFDIR: 'folder', stat.S_IFLNK: 'link'}\n"
        "print(json.dumps({n: kinds.get(stat.S_IFMT(os.lstat(n).st_mode), 'other') for n in os.listdir('.')}))"
    )
    result = box.run(code)
    assert result.ok, result.text()
    return json.loads(result.stdout)


def owner_in(box, name: str) -> int:
    result = box.run(f"import os\nprint(os.lstat({name!r}).st_uid)")
    assert result.ok, result.text()
    return int(result.stdout)


def report(box, port: int) -> dict:
    result = box.run(REPORT.format(port=port))
    assert result.ok, result.text()
    return json.loads(result.stdout)


@pytest.fixture
def local_server():
    """A TCP server on 127.0.0.1 outside the sandbox, counting the connections it accepts."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    accepted = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            accepted.append(conn)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join()
    server.close()


@pytest.fixture
def marker() -> str:
    """A word to find the code's processes by, among the host's."""
    return f"ossrun-test-{uuid.uuid4().hex}"


def host_processes(marker: str) -> list[int]:
    """The host's processes whose command line holds ``marker`` (waiting briefly for them to go)."""
    for _ in range(50):
        found = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass  # gone meanwhile
        if not found:
            return []
        time.sleep(0.05)
    return found


def util_linux() -> bool:
    return bool(shutil.which("unshare") and shutil.which("setpriv"))


def python_without_namespaces(tmp_path: Path) -> str:
    """An interpreter that is root in a user namespace that may create no more user namespaces,
    without capabilities: what a container that forbids namespaces looks like (no root needed)."""
    wrapper = tmp_path / "python-without-namespaces"
    drop = "setpriv --bounding-set -all --inh-caps -all --securebits +noroot,+noroot_locked --"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"exec unshare --user --map-root-user -- sh -c 'echo 0 > /proc/sys/user/max_user_namespaces && "
        f'exec {drop} "$0" "$@"\' {sys.executable} "$@"\n'
    )
    wrapper.chmod(0o755)
    return str(wrapper)


UNSHARE_SYSCALL = {"x86_64": 272, "aarch64": 97}.get(os.uname().machine)


def python_under_seccomp(tmp_path: Path) -> str:
    """An interpreter whose unshare() a seccomp filter refuses with EPERM, as Docker's default
    profile does (no root needed: no_new_privs allows the filter)."""
    wrapper = tmp_path / "python-under-seccomp"
    wrapper.write_text(
        f"#!{sys.executable} -I\n"
        + textwrap.dedent(f"""
        import ctypes, os, sys
        class Instruction(ctypes.Structure):
            _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]
        class Program(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Instruction))]
        load_nr, jump_if, answer = 0x20, 0x15, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K
        code = (Instruction * 4)(Instruction(load_nr, 0, 0, 0), Instruction(jump_if, 0, 1, {UNSHARE_SYSCALL}),
                                 Instruction(answer, 0, 0, 0x00050000 | 1),  # SECCOMP_RET_ERRNO | EPERM
                                 Instruction(answer, 0, 0, 0x7FFF0000))  # SECCOMP_RET_ALLOW
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
        if libc.prctl(22, 2, ctypes.byref(Program(4, code)), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
            sys.exit("cannot install the seccomp filter")
        os.execv({sys.executable!r}, [{sys.executable!r}, *sys.argv[1:]])
        """)
    )
    wrapper.chmod(0o755)
    return str(wrapper)


class _NoUserNamespaces:
    """A system where user namespaces are turned off, simulated (needs root): a user namespace
    mapping ids 0-65535 to themselves (nobody among them) whose limit of further user namespaces
    is 0, held by a process for the test's length, so every interpreter started in it shares it
    (and the mount namespaces root makes there), as on such a system."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.holder = subprocess.Popen(
            [
                sys.executable,
                "-I",
                "-c",
                textwrap.dedent("""
            import ctypes, os, sys
            ready, go = os.pipe()
            mapper = os.fork()
            if mapper == 0:  # stays outside and maps the ids of the namespace its parent makes
                os.close(go)
                os.read(ready, 1)
                for name in ("uid_map", "gid_map"):
                    with open(f"/proc/{os.getppid()}/{name}", "w") as f:
                        f.write("0 0 65536")
                os._exit(0)
            os.close(ready)
            if ctypes.CDLL(None, use_errno=True).unshare(0x10000000) != 0:  # CLONE_NEWUSER
                sys.exit("cannot make a user namespace")
            os.write(go, b"1")
            os.waitpid(mapper, 0)
            with open("/proc/sys/user/max_user_namespaces", "w") as f:
                f.write("0")
            print("ready", flush=True)
            sys.stdin.read()
            """),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.holder.stdout.readline() == "ready\n"

    def python(self, python: str = sys.executable, uid: int = 0) -> str:
        """``python`` run in that namespace as ``uid`` (root keeps root's capabilities there)."""
        wrapper = self.folder / f"python-without-user-namespaces-{uid}"
        wrapper.write_text(
            f"#!{sys.executable} -I\n"
            + textwrap.dedent(f"""
            import ctypes, os, sys
            fd = os.open("/proc/{self.holder.pid}/ns/user", os.O_RDONLY)
            if ctypes.CDLL(None, use_errno=True).setns(fd, 0x10000000) != 0:  # CLONE_NEWUSER
                sys.exit("cannot enter the user namespace")
            os.close(fd)
            if {uid}:
                os.setgroups([])
                os.setresgid({uid}, {uid}, {uid})
                os.setresuid({uid}, {uid}, {uid})
            os.execv({python!r}, [{python!r}, *sys.argv[1:]])
            """)
        )
        wrapper.chmod(0o755)
        return str(wrapper)

    def close(self) -> None:
        self.holder.stdin.close()
        self.holder.wait()


@pytest.fixture
def without_user_namespaces(tmp_path):
    system = _NoUserNamespaces(tmp_path)
    yield system
    system.close()


BECOME_ORDINARY = ["setpriv", f"--reuid={ORDINARY_UID}", f"--regid={ORDINARY_UID}", "--clear-groups", "--"]
JAIL_MODULES = ("sandbox_child.py", "sandbox_jail.py", "sandbox_mounts.py", "sandbox_bounds.py", "sandbox_seccomp.py")


@dataclass
class OrdinaryUser:
    """Who runs the code in the tests of an ordinary user: as root, uid ``ORDINARY_UID`` through
    ``setpriv`` (``python`` is then the interpreter that runs as them); as anyone else, themselves."""

    uid: int
    python: str | None = None
    interpreter: str = sys.executable  # what ``python`` runs
    cgroups: Any | None = None  # what ossrun.tools.cgroups.find() gives that user

    def wrap(self, python: str) -> str:
        """``python`` (which that user may run) as run by them."""
        if self.python is None:
            return python
        wrapper = Path(self.python).with_name(f"as-an-ordinary-user-{uuid.uuid4().hex}")
        wrapper.write_text(f'#!/bin/sh\nexec {" ".join(BECOME_ORDINARY)} {python} "$@"\n')
        wrapper.chmod(0o755)
        return str(wrapper)

    def sandbox(self, limits: SandboxLimits | None = None, **options: Any) -> PythonSandbox:
        box = PythonSandbox(limits or SandboxLimits(), python=options.pop("python", self.python), **options)
        if os.geteuid() == 0 and self.uid != 0:
            for folder in (box.workdir.parent, box.workdir):  # where root made them for that user
                os.chown(folder, self.uid, self.uid)
        return box


def cgroups_of(uid: int) -> Any:
    """What ``cgroups.find()`` gives ``uid`` (root only: the real and effective ids, for a moment)."""
    from ossrun.tools import cgroups

    os.setresgid(uid, uid, 0)
    os.setresuid(uid, uid, 0)
    try:
        return cgroups.find()
    finally:
        os.setresuid(0, 0, 0)
        os.setresgid(0, 0, 0)


@pytest.fixture
def ordinary_user(monkeypatch) -> Iterator[OrdinaryUser]:
    """As root: uid ``ORDINARY_UID`` runs the code, with this interpreter where they may run it,
    else the system's, and a copy of the jail's modules they may read (ossrun's own folder may be
    out of their reach); ossrun finds the cgroups that user would find."""
    if os.geteuid() != 0:
        yield OrdinaryUser(os.geteuid())
        return
    shared = Path(tempfile.mkdtemp(prefix="ossrun-test-jail-"))
    shared.chmod(0o755)
    try:
        for name in JAIL_MODULES:
            shutil.copy(CHILD.with_name(name), shared / name)
            (shared / name).chmod(0o644)
        monkeypatch.setattr(sandbox_module, "CHILD", shared / CHILD.name)
        python = next(
            (
                p
                for p in (sys.executable, shutil.which("python3", path="/usr/bin:/bin"))
                if p
                and subprocess.run(
                    [*BECOME_ORDINARY, "/bin/sh", "-c", 'exec "$0" "$@"', p, "-I", "-c", "import ctypes"],  # a plain execve
                    capture_output=True,
                ).returncode
                == 0
            ),
            None,
        )
        if python is None:
            pytest.fail(f"no Python here that uid {ORDINARY_UID} may run")
        wrapper = shared / "python-as-an-ordinary-user"
        wrapper.write_text(f'#!/bin/sh\nexec {" ".join(BECOME_ORDINARY)} {python} "$@"\n')
        wrapper.chmod(0o755)
        found = cgroups_of(ORDINARY_UID)
        monkeypatch.setattr(sandbox_module.cgroups, "find", lambda: found)
        yield OrdinaryUser(ORDINARY_UID, str(wrapper), python, found)
    finally:
        shutil.rmtree(shared)


@pytest.fixture
def shared_folder() -> Iterator[Path]:
    """A folder anyone may read (pytest's own are root's alone), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="ossrun-test-shared-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def names_on_the_way(folder: str, paths: list[str]) -> set[str]:
    """The names in ``folder`` that lead to one of ``paths`` (as written, or resolved on the host)."""
    names = set()
    for path in paths:
        if os.path.exists(path):
            for form in (os.path.abspath(path), os.path.realpath(path)):
                if form.startswith(folder.rstrip("/") + "/"):
                    names.add(form[len(folder.rstrip("/")) + 1 :].split("/")[0])
    return names


def expected_root(python_paths: list[str], workdir: str) -> list[str]:
    """The names the jail's / should hold: system folders, the fresh ones, and the way to each
    path the code's Python needs, and to its working directory."""
    from ossrun.tools.sandbox_mounts import SYSTEM_PATHS

    names = {"dev", "proc", "tmp"} | {path[1:] for path in SYSTEM_PATHS if os.path.lexists(path)}
    return sorted(names | names_on_the_way("/", [*python_paths, workdir]))
