"""The python tool's jail against a second round of attempts, as root and as an ordinary user:
host paths through the code's own files, keyrings, system calls, totals of memory, CPU time and
disk for the run as a whole, and removal of whatever the code leaves behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helpers.sandboxes import ATTEMPT, ORDINARY_UID, host_processes
from ossrun.tools import PythonSandbox, SandboxLimits
from ossrun.tools.workdir import private_folder, remove_tree

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="namespaces are Linux's")

MiB = 1 << 20


class Jailer:
    """Sandboxes whose code runs as root's (then as nobody) or as an ordinary user's."""

    def __init__(self, who: str, ordinary=None):
        self.who = who
        self.ordinary = ordinary

    def sandbox(self, limits: SandboxLimits | None = None, python: str | None = None) -> PythonSandbox:
        limits = limits or SandboxLimits()
        if self.ordinary is None:
            return PythonSandbox(limits, python=python)
        return self.ordinary.sandbox(limits, **({"python": self.ordinary.wrap(python)} if python else {}))

    @property
    def interpreter(self) -> str:
        return self.ordinary.interpreter if self.ordinary is not None else sys.executable


@pytest.fixture(params=["root", "an ordinary user"])
def jailer(request) -> Jailer:
    if request.param == "root":
        if os.geteuid() != 0:
            pytest.skip("root's own path: run the tests as root to see it")
        return Jailer("root")
    return Jailer("user", request.getfixturevalue("ordinary_user"))


def run_json(box: PythonSandbox, code: str) -> dict:
    result = box.run(code)
    assert result.ok, result.text()
    return json.loads(result.stdout.splitlines()[-1])


# -- 1. host paths through the code's own files ---------------------------------------------


def installation_with_a_project(folder: Path, interpreter: str) -> tuple[str, Path, Path]:
    """A venv whose site-packages puts on sys.path a project root (with a .env, a .git and a key
    beside its package), a relative entry (as setuptools' editable finders do) and a finder that
    maps a flat-layout package to its folder; returns its python, the project and a host secret."""
    secret = folder / "secret-folder"
    secret.mkdir()
    (secret / "secret.txt").write_text("the host's secret")
    project = folder / "project"
    (project / ".git").mkdir(parents=True)
    (project / ".git" / "config").write_text("[remote]\n")
    (project / ".env").write_text("OPENAI_API_KEY=sk-not-for-the-code\n")
    (project / "id_ed25519").write_text("an ssh key\n")
    (project / "notes").mkdir()
    (project / "notes" / "todo.txt").write_text("private\n")
    (project / "mypkg").mkdir()
    (project / "mypkg" / "__init__.py").write_text("VALUE = 42\n")
    (project / "tool.py").write_text("def seven():\n    return 7\n")
    flat = folder / "flat"
    (flat / "flatpkg").mkdir(parents=True)
    (flat / "flatpkg" / "__init__.py").write_text("NAME = 'flat'\n")
    (flat / ".env").write_text("SECRET=flat\n")
    venv = folder / "venv"
    subprocess.run([interpreter, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python3*/site-packages"))
    (site / "project.pth").write_text(f"{project}\n")
    (site / "planted.pth").write_text("import sys; sys.path.append('__editable__.planted.__path_hook__')\n")
    (site / "flat_finder.py").write_text(
        textwrap.dedent(f"""
        import importlib.util, sys
        MAPPING = {{"flatpkg": {str(flat / "flatpkg")!r}}}
        class Finder:
            @classmethod
            def find_spec(cls, name, path=None, target=None):
                if name in MAPPING:
                    return importlib.util.spec_from_file_location(name, MAPPING[name] + "/__init__.py")
        def install():
            sys.meta_path.append(Finder)
        """)
    )
    (site / "flat_finder.pth").write_text("import flat_finder; flat_finder.install()\n")
    for path in folder.rglob("*"):
        if not path.is_symlink():  # chmod would change what a link leads to: the venv's python
            path.chmod(0o755 if path.is_dir() else 0o644)
    return str(venv / "bin" / "python"), project, secret


def test_the_codes_own_files_bind_nothing_and_a_project_shows_only_what_imports(jailer, shared_folder):
    python, project, secret = installation_with_a_project(shared_folder, jailer.interpreter)
    with jailer.sandbox(python=python) as box:
        assert box.isolation is not None
        # The relative entry names a file in the working directory: the code plants a link there.
        plant = box.run(
            f"import os, sys\nos.symlink({str(secret)!r}, '__editable__.planted.__path_hook__')\n"
            f"print('__editable__.planted.__path_hook__' in sys.path)"
        )
        assert plant.stdout == "True\n", plant.text()
        seen = run_json(
            box,
            ATTEMPT
            + textwrap.dedent(f"""
            import json, os
            import mypkg, tool, flatpkg
            print(json.dumps({{
                "secret": attempt(lambda: open({str(secret / "secret.txt")!r}).read()),
                "through the link": attempt(lambda: os.listdir("__editable__.planted.__path_hook__")),
                "project": sorted(os.listdir({str(project)!r})),
                ".env": attempt(lambda: open({str(project / ".env")!r}).read()),
                "flat": sorted(os.listdir({str(Path(shared_folder) / "flat")!r})),
                "imported": [mypkg.VALUE, tool.seven(), flatpkg.NAME],
                "mounts": [line.split()[4] for line in open("/proc/self/mountinfo")],
            }}))
            """),
        )
    assert seen["secret"] == "ENOENT" and seen["through the link"] == "ENOENT" and seen[".env"] == "ENOENT"
    # Not .env, .git, the key, notes (a project under /tmp sits in the run's own /tmp, where an
    # ordinary user's import may write its bytecode).
    assert [name for name in seen["project"] if name != "__pycache__"] == ["mypkg", "tool.py"]
    assert seen["flat"] == ["flatpkg"] and seen["imported"] == [42, 7, "flat"]
    assert not [m for m in seen["mounts"] if m.startswith((str(secret), str(project / ".git"), str(project / "notes")))]


# -- 2. keyrings ------------------------------------------------------------------------------

KEY = "ossrun-test-secret"


def python_with_a_key(folder: Path, interpreter: str) -> str:
    """``interpreter`` started with a new session keyring holding a secret key, as a shell's would."""
    wrapper = folder / "python-with-a-key"
    wrapper.write_text(
        f"#!{interpreter} -I\n"
        + textwrap.dedent(f"""
        import ctypes, os, sys
        libc = ctypes.CDLL(None, use_errno=True)
        KEYCTL, ADD_KEY = {{"x86_64": (250, 248), "aarch64": (219, 217)}}[os.uname().machine]
        if libc.syscall(KEYCTL, 1, b"ossrun-test") < 0:  # KEYCTL_JOIN_SESSION_KEYRING
            sys.exit("cannot make a session keyring")
        if libc.syscall(ADD_KEY, b"user", {KEY!r}.encode(), b"hunter2", 7, -3) < 0:  # KEY_SPEC_SESSION_KEYRING
            sys.exit("cannot add the key")
        os.execv({interpreter!r}, [{interpreter!r}, *sys.argv[1:]])
        """)
    )
    wrapper.chmod(0o755)
    return str(wrapper)


def keys_of(uid: int) -> int:
    """How many keys ``uid`` owns, from /proc/key-users."""
    for line in Path("/proc/key-users").read_text().splitlines():
        owner, _, rest = line.partition(":")
        if int(owner) == uid:
            return int(rest.split()[2].split("/")[0])
    return 0


KEY_ATTEMPTS = textwrap.dedent("""
    import ctypes, errno, json, os
    libc = ctypes.CDLL(None, use_errno=True)
    KEYCTL, ADD_KEY, REQUEST_KEY = {"x86_64": (250, 248, 249), "aarch64": (219, 217, 218)}[os.uname().machine]
    def call(*args):
        return "ok" if libc.syscall(*args) >= 0 else errno.errorcode[ctypes.get_errno()]
    print(json.dumps({
        "/proc/keys": open("/proc/keys").read().splitlines() if os.path.exists("/proc/keys") else [],
        "search": call(KEYCTL, 10, -3, b"user", b"KEY_NAME", 0),  # KEYCTL_SEARCH in the session keyring
        "request": call(REQUEST_KEY, b"user", b"KEY_NAME", None, 0),
        "add": call(ADD_KEY, b"user", b"left-behind", b"x", 1, -3),
        "user keyring": call(KEYCTL, 0, -4, 0),  # KEYCTL_GET_KEYRING_ID of the user keyring
    }))
    """).replace("KEY_NAME", KEY)


def test_a_key_of_the_callers_keyring_is_out_of_reach_and_none_survives(jailer, shared_folder):
    with jailer.sandbox(python=python_with_a_key(shared_folder, jailer.interpreter)) as box:
        uid = os.geteuid() if jailer.ordinary is None else jailer.ordinary.uid
        assert box.isolation is not None
        before = keys_of(uid)
        seen = run_json(box, KEY_ATTEMPTS)
        after = keys_of(uid)
    assert seen.pop("/proc/keys") == []  # masked: no key of any user is listed
    assert seen == {"search": "EPERM", "request": "EPERM", "add": "EPERM", "user keyring": "EPERM"}
    assert after == before  # nothing the code added is left


# -- 3. system calls --------------------------------------------------------------------------

SYSTEM_CALLS = textwrap.dedent("""
    import ctypes, errno, json, os, signal, socket
    libc = ctypes.CDLL(None, use_errno=True)
    x86 = os.uname().machine == "x86_64"
    N = dict(zip(["clone", "clone3", "setns", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "mount",
                  "umount2", "pivot_root", "ptrace", "kexec_load", "init_module", "open_by_handle_at", "inotify_init1",
                  "process_vm_readv", "fsopen", "keyctl"],
                 [56, 435, 308, 321, 298, 323, 425, 165, 166, 155, 101, 246, 175, 304, 294, 310, 430, 250] if x86 else
                 [220, 435, 268, 280, 241, 282, 425, 40, 39, 41, 117, 104, 105, 265, 26, 270, 430, 219]))
    def call(name, *args):
        result = libc.syscall(N[name], *args)
        if result == 0 and name == "clone":
            os._exit(0)  # the child, had it been made
        return "ok" if result >= 0 else errno.errorcode[ctypes.get_errno()]
    def attempt(action):
        try:
            action()
            return "ok"
        except OSError as exc:
            return errno.errorcode[exc.errno]
    seen = {name: call(name, *args) for name, args in [
        ("clone", (0x10000000 | 17, 0, 0, 0, 0)), ("clone3", (0, 0)), ("setns", (0, 0)), ("bpf", (0, 0, 0)),
        ("perf_event_open", (0, 0, -1, -1, 0)), ("userfaultfd", (0,)), ("io_uring_setup", (1, 0)),
        ("mount", (b"none", b"/tmp", b"tmpfs", 0, 0)), ("umount2", (b"/tmp", 2)), ("pivot_root", (b"/", b"/")),
        ("ptrace", (0, 0, 0, 0)), ("kexec_load", (0, 0, 0, 0)), ("init_module", (0, 0, b"")),
        ("open_by_handle_at", (-100, 0, 0)), ("inotify_init1", (0,)), ("process_vm_readv", (1, 0, 0, 0, 0, 0)),
        ("fsopen", (b"tmpfs", 0)), ("keyctl", (0, -3, 0))]}
    seen["unshare"] = "ok" if libc.unshare(0x10000000) == 0 else errno.errorcode[ctypes.get_errno()]
    seen["vsock"] = attempt(lambda: socket.socket(40, socket.SOCK_STREAM).close())
    seen["memfd"] = attempt(lambda: os.close(os.memfd_create("x")))
    # What ordinary code needs still works.
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    seen["fork"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    seen["ignore SIGCHLD"] = attempt(lambda: signal.signal(signal.SIGCHLD, signal.SIG_IGN))
    seen["tcp socket"] = attempt(lambda: socket.socket().close())
    seen["socketpair"] = attempt(lambda: [s.close() for s in socket.socketpair()])
    print(json.dumps(seen))
    """)


@pytest.mark.skipif(os.uname().machine not in ("x86_64", "aarch64"), reason="the filter's numbers are x86_64's and aarch64's")
def test_system_calls_a_sandbox_never_needs_are_refused(jailer):
    with jailer.sandbox() as box:
        seen = run_json(box, SYSTEM_CALLS)
        totals = box.totals()
    refused = {
        name: "EPERM"
        for name in (
            "clone",
            "setns",
            "bpf",
            "perf_event_open",
            "userfaultfd",
            "io_uring_setup",
            "mount",
            "umount2",
            "pivot_root",
            "ptrace",
            "kexec_load",
            "init_module",
            "open_by_handle_at",
            "inotify_init1",
            "process_vm_readv",
            "fsopen",
            "keyctl",
            "unshare",
        )
    }
    # memfds only where a cgroup bounds memory; SIGCHLD's action only where a cgroup counts CPU time.
    kernel_memory = totals["memory"] == "kernel"
    assert seen == {
        **refused,
        "clone3": "ENOSYS",
        "vsock": "EAFNOSUPPORT",
        "memfd": "ok" if kernel_memory else "ENOSYS",
        "ignore SIGCHLD": "ok" if box_counts_cpu_in_a_cgroup(jailer) else "EPERM",
        "fork": 0,
        "tcp socket": "ok",
        "socketpair": "ok",
    }


def box_counts_cpu_in_a_cgroup(jailer: Jailer) -> bool:
    from ossrun.tools import cgroups

    found = jailer.ordinary.cgroups if jailer.ordinary is not None else cgroups.find()
    return found is not None and "cpu" in found.controllers


# -- 4. totals ------------------------------------------------------------------------------

HOLD = textwrap.dedent("""
    import ctypes, os, subprocess, sys, time
    MiB = 1 << 20
    def hold(way, size):
        if way == "process":
            return subprocess.Popen([sys.executable, "-c", f"b = bytearray({size}); b[::4096] = b'x' * len(b[::4096]); "
                                     "import time; time.sleep(60)"])
        if way == "memfd":
            fd = os.memfd_create("hold")
            for _ in range(size // MiB):
                os.write(fd, b"x" * MiB)
            return fd
        if way == "sysv":
            libc = ctypes.CDLL(None, use_errno=True)
            libc.shmat.restype = ctypes.c_void_p
            segment = libc.shmget(0, size, 0o1600)
            address = libc.shmat(segment, None, 0)
            ctypes.memset(address, 1, size)
            libc.shmdt(ctypes.c_void_p(address))
            return segment
        if way in ("/tmp", "/dev/shm"):
            with open(f"{way}/hold", "wb") as f:
                for _ in range(size // MiB):
                    f.write(b"x" * MiB)
    for way, size in WAYS:
        hold(way, size * MiB)
        print(way, flush=True)
    time.sleep(10)  # long enough for any bound to be seen
    print("all held", flush=True)
    """)


@pytest.mark.parametrize(
    "ways",
    [
        [("process", 150), ("process", 150), ("process", 150)],
        [("process", 150), ("sysv", 150), ("/dev/shm", 150)],
        [("memfd", 150), ("/tmp", 150), ("process", 150)],
    ],
    ids=["three processes", "shared memory and tmpfs", "a memfd"],
)
def test_processes_and_shared_memory_cannot_together_pass_the_memory_bound(jailer, ways):
    limits = SandboxLimits(memory_bytes=384 * MiB, timeout=60)
    with jailer.sandbox(limits) as box:
        refuse_memfd = box.totals()["memory"] != "kernel"
        result = box.run(HOLD.replace("WAYS", repr(ways)))
        within = box.run(
            HOLD.replace("WAYS", repr([(way, 60) for way, _ in ways if way != "memfd"])).replace(
                "time.sleep(10)", "time.sleep(0.3)"
            )
        )
    if refuse_memfd and ways[0][0] == "memfd":
        assert "OSError: [Errno 38] Function not implemented" in result.stderr, result.text()
    else:
        assert result.status == "killed: its processes together used more than 384 MiB of memory", result.text()
        assert "all held" not in result.stdout
    assert within.ok and within.stdout.endswith("all held\n"), within.text()  # under the bound: nothing happens


def test_a_nested_namespace_cannot_get_a_tmpfs_of_its_own(jailer):
    code = textwrap.dedent("""
        import ctypes, errno
        libc = ctypes.CDLL(None, use_errno=True)
        print(errno.errorcode[ctypes.get_errno()] if libc.unshare(0x10000000 | 0x00020000) else "unshared")
        print(errno.errorcode[ctypes.get_errno()] if libc.mount(b"none", b"/tmp", b"tmpfs", 0, b"size=4g") else "mounted")
        """)
    with jailer.sandbox() as box:
        assert box.run(code).stdout == "EPERM\nEPERM\n"


SPIN = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3)]
    try:  # children the kernel reaps alone would take their CPU time along, where a cgroup does not count it
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    except OSError:
        pass
    while True:  # short-lived burners, reaped unseen where that is allowed
        try:
            if os.fork() == 0:
                end = time.process_time() + 0.02
                while time.process_time() < end:
                    pass
                os._exit(0)
        except OSError:
            pass  # at the bound on processes
        try:
            os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.01)
    """)


def test_cpu_time_is_bounded_across_processes(jailer, marker):
    with jailer.sandbox(SandboxLimits(timeout=60, cpu_seconds=2)) as box:
        assert box.totals()["cpu"] == "counted"
        started = time.monotonic()
        result = box.run(SPIN + f"# {marker}")
        elapsed = time.monotonic() - started
    assert result.status == "killed: its processes together used more than 2 seconds of CPU time", result.text()
    assert elapsed < 30  # far from the timeout: more than one core's worth of work was counted
    assert host_processes(marker) == []


def test_the_working_directory_and_tmp_cannot_grow_past_their_bounds(jailer):
    limits = SandboxLimits(disk_bytes=40 * MiB, disk_files=100)
    fill = textwrap.dedent("""
        import errno, json, os
        def fill(folder):
            written = 0
            try:
                with open(os.path.join(folder, "big"), "wb") as f:
                    while written < 100 << 20:
                        f.write(b"x" * (1 << 20))
                        f.flush()
                        written += 1 << 20
            except OSError as exc:
                error = errno.errorcode[exc.errno]
            made = 0
            try:
                while made < 1000:
                    open(os.path.join(folder, f"file-{made}"), "w").close()
                    made += 1
            except OSError as exc:
                files_error = errno.errorcode[exc.errno]
            return [written >> 20, error, made, files_error]
        print(json.dumps({"here": fill("."), "/tmp": fill("/tmp")}))
        """)
    with jailer.sandbox(limits) as box:
        seen = run_json(box, fill)
        on_host = list(box.workdir.iterdir())
        kept = box.run("import os\nprint(os.path.getsize('big') >> 20, len(os.listdir('.')))")
        freed = box.run("import os\nos.remove('big')\nopen('again', 'wb').write(b'x' * (10 << 20))\nprint('written')")
    for place in ("here", "/tmp"):
        written, error, made, files_error = seen[place]
        assert 30 <= written <= 40 and error == "ENOSPC", seen
        assert 90 <= made < 100 and files_error == "ENOSPC", seen
    assert on_host == []  # nothing on the host's disk
    assert kept.stdout.split()[1] == str(seen["here"][2] + 1)  # the files stay for the next run
    assert freed.stdout == "written\n"


# -- 5. cleanup -----------------------------------------------------------------------------

LITTER = textwrap.dedent("""
    import os, socket
    os.makedirs("locked/inner")
    open("locked/inner/file", "w").close()
    os.chmod("locked/inner", 0)
    os.chmod("locked", 0)
    os.symlink("/etc", "link")
    os.mkfifo("fifo")
    socket.socket(socket.AF_UNIX).bind("socket")
    depth = 0
    os.mkdir("deep")
    os.chdir("deep")
    while depth < 3000:
        os.mkdir("d")
        os.chdir("d")
        depth += 1
    os.chdir("/")
    os.chmod(HERE, 0o777)
    print(depth)
    """)


def test_whatever_the_code_leaves_is_removed_and_its_folder_stays_private(jailer):
    with jailer.sandbox(SandboxLimits(disk_files=5000)) as box:
        home = box.workdir.parent
        result = box.run(LITTER.replace("HERE", repr(str(box.workdir))))
        assert result.stdout == "3000\n", result.text()
        assert box.run("import os\nprint(oct(os.stat('.').st_mode & 0o777))").stdout == "0o777\n"
        # On the host: the folder holding the working directory is its user's alone, and untouched.
        assert home.stat().st_mode & 0o777 == 0o700 and box.workdir.stat().st_mode & 0o777 == 0o700
    assert not home.exists()


def test_a_tree_no_recursion_could_remove_is_removed(jailer, shared_folder):
    """The working directory of a sandbox that could not isolate its code is a plain folder on the
    host, removed by ossrun as its user: as deep, locked and strange as the code made it."""
    home = private_folder(Path("/dev/shm") if Path("/dev/shm").is_dir() else None)  # a disk's rmdir can be slow
    workdir = home / "work"
    if jailer.ordinary is not None and os.geteuid() == 0:
        for folder in (home, workdir):
            os.chown(folder, jailer.ordinary.uid, jailer.ordinary.uid)
    litter = shared_folder / "litter.py"
    litter.write_text(LITTER.replace("HERE", repr(str(workdir))))
    litter.chmod(0o644)
    python = jailer.ordinary.wrap(jailer.interpreter) if jailer.ordinary is not None else sys.executable
    made = subprocess.run([python, str(litter)], cwd=workdir, capture_output=True, text=True)
    assert made.stdout == "3000\n", made.stderr
    if jailer.ordinary is not None and os.geteuid() == 0:
        remover = shared_folder / "remove.py"
        remover.write_text(
            f"import sys\nsys.path.insert(0, {str(shared_folder)!r})\nfrom workdir import remove_tree\n"
            f"remove_tree({str(home)!r})\n"
        )
        import ossrun.tools.workdir as module

        (shared_folder / "workdir.py").write_text(Path(module.__file__).read_text())
        for path in (remover, shared_folder / "workdir.py"):
            path.chmod(0o644)
        removed = subprocess.run([python, str(remover)], capture_output=True, text=True)
        assert removed.returncode == 0, removed.stderr
    else:
        remove_tree(home)
    assert not home.exists() and Path("/etc/passwd").exists()


# -- 6. ordinary code keeps working ----------------------------------------------------------


def test_ordinary_code_keeps_working(jailer):
    with jailer.sandbox() as box:
        assert box.run("open('data.txt', 'w').write('kept')").ok
        assert box.run("print(open('data.txt').read())").stdout == "kept\n"
        work = textwrap.dedent("""
            import subprocess, sys
            from concurrent.futures import ProcessPoolExecutor
            with ProcessPoolExecutor(4) as pool:
                print(sum(pool.map(abs, range(-10, 0))))
            print(subprocess.run(["sh", "-c", "ls | wc -l"], capture_output=True, text=True).stdout.strip())
            try:
                import numpy
            except ImportError:
                print("no numpy")
            else:
                print(int(numpy.ones((300, 300)).dot(numpy.ones(300)).sum()))
            """)
        result = box.run(work)
    numpy_line = "no numpy" if jailer.ordinary is not None and jailer.ordinary.interpreter != sys.executable else "90000"
    assert result.stdout == f"55\n1\n{numpy_line}\n", result.text()


@pytest.fixture
def delegated_cgroup():
    """As root: this process moved into a cgroup v2 subtree delegated to ``ORDINARY_UID``, as systemd
    delegates one to each user's session (the folder and its cgroup.procs, cgroup.threads and
    cgroup.subtree_control are theirs); moved back afterwards."""
    from ossrun.tools import cgroups

    mount = next((m for m in cgroups._cgroup_mounts() if m[2] == "cgroup2"), None)
    own = cgroups._memberships().get("")
    if os.geteuid() != 0 or mount is None or own is None:
        pytest.skip("delegating a cgroup takes root and a cgroup v2 hierarchy")
    home = cgroups._folder(mount, own)
    folder = Path(home) / f"ossrun-test-{os.getpid()}"
    folder.mkdir()
    for path in (folder, folder / "cgroup.procs", folder / "cgroup.threads", folder / "cgroup.subtree_control"):
        os.chown(path, ORDINARY_UID, ORDINARY_UID)
    (folder / "cgroup.procs").write_text(str(os.getpid()))
    try:
        yield folder
    finally:
        (Path(home) / "cgroup.procs").write_text(str(os.getpid()))
        for child in folder.iterdir():
            if child.is_dir():
                child.rmdir()
        folder.rmdir()


def test_a_user_with_a_delegated_cgroup_has_the_cpu_time_counted_there(delegated_cgroup, ordinary_user, marker):
    from ossrun.tools import cgroups

    assert ordinary_user.cgroups == cgroups.Cgroups((cgroups.Hierarchy(2, str(delegated_cgroup), frozenset({"cpu"})),))
    with ordinary_user.sandbox(SandboxLimits(timeout=60, cpu_seconds=2)) as box:
        assert box.totals() == {"memory": "sampled", "cpu": "counted", "processes": "kernel"}
        result = box.run(SPIN + f"# {marker}")
        ignored = box.run("import signal\nsignal.signal(signal.SIGCHLD, signal.SIG_IGN)\nprint('ignored')")
    assert result.status == "killed: its processes together used more than 2 seconds of CPU time", result.text()
    assert ignored.stdout == "ignored\n"  # the cgroup counts what the kernel reaps: SIGCHLD is the code's
    assert host_processes(marker) == [] and [p for p in delegated_cgroup.iterdir() if p.is_dir()] == []


def test_a_runs_cgroups_go_whatever_is_left_in_them_and_those_of_a_killed_ossrun_with_the_next():
    from ossrun.tools import cgroups

    found = cgroups.find()
    if found is None:
        pytest.skip("this user may make no cgroup here")
    group = found.make(64 * MiB, 8)
    straggler = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    group.place(straggler.pid)
    cgroups.remove(group)  # a process that would not go: killed, then the cgroups removed
    assert straggler.wait(10) == -9 and not any(os.path.exists(folder) for folder in group.folders)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = [os.path.join(h.parent, f"ossrun-{dead.pid}-0") for h in found.hierarchies]  # as an ossrun killed midway leaves them
    for folder in left:
        os.mkdir(folder)
    cgroups.find()
    assert not any(os.path.exists(folder) for folder in left)
