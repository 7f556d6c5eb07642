"""The python tool's jail, with real processes: what the code sees of the file system and of the
processes, the bound on what it starts, who it runs as, and what systems without namespaces get."""

from __future__ import annotations

import json
import os
import pwd
import resource
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from helpers.sandboxes import (
    ATTEMPT,
    CONNECT,
    ORDINARY_UID,
    UNSHARE_SYSCALL,
    expected_root,
    files_in,
    host_processes,
    names_on_the_way,
    owner_in,
    python_under_seccomp,
    python_without_namespaces,
    report,
    util_linux,
)
from ossrun.tools import PythonSandbox, SandboxLimits

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="namespaces are Linux's")

TESTS = Path(__file__).resolve().parent
DEVICES = ["fd", "full", "null", "random", "shm", "stderr", "stdin", "stdout", "urandom", "zero"]
NOBODY = 65534


@pytest.fixture
def sandbox():
    with PythonSandbox() as box:
        yield box


def test_the_code_sees_only_python_the_system_and_its_working_directory(sandbox, local_server, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2")
    port, _ = local_server
    seen = report(sandbox, port)
    assert seen["root"] == expected_root(seen["python"], str(sandbox.workdir))
    assert "home" not in seen["root"] and "run" not in seen["root"] and "var" not in seen["root"]
    in_tmp = sorted({sandbox.workdir.parent.name} | names_on_the_way("/tmp", seen["python"]))  # a venv in /tmp is seen too
    assert seen["dev"] == DEVICES and seen["tmp"] == in_tmp
    # The pipes to ossrun, sys.stdin (/dev/null) and the one listing them: no descriptor of the jail's.
    assert seen["fds"] == ["0", "1", "2", "3", "4"]
    assert seen["cwd"] == str(sandbox.workdir) and files_in(sandbox) == {"written": "regular file", "tmp-file": "regular file"}
    assert list(sandbox.workdir.iterdir()) == []  # on the host: the session's tmpfs is not there
    # Writable: the working directory, /tmp and /dev/shm; the rest is read-only.
    assert seen["write"] == {
        "tmp-file": "ok",
        "/tmp/file": "ok",
        "/dev/shm/file": "ok",
        "/file": "EROFS",
        "/etc/file": "EROFS",
        seen["python"][0] + "/file": "EROFS",
    }
    assert sandbox.run(f"import os\nos.path.exists({str(secret)!r})").stdout == "False\n"
    # The modules of this Python are there, wherever it lives (here: numpy, one of ossrun's dependencies).
    assert sandbox.run("import numpy, json\nprint(numpy.arange(4).sum())").stdout == "6\n"
    # /tmp starts empty at each run; the working directory is kept.
    assert (
        sandbox.run("import os\nsorted(os.listdir('/tmp')), os.path.exists('/tmp/file'), os.path.exists('tmp-file')").stdout
        == f"({in_tmp!r}, False, True)\n"
    )


def test_the_users_files_are_out_of_reach(monkeypatch, tmp_path):
    home = tmp_path / "home"  # a temporary home, with a secret in it
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("secret key")
    monkeypatch.setenv("HOME", str(home))
    passwd_home = pwd.getpwuid(os.getuid()).pw_dir  # the home the password database gives, too
    on_host_tmp = Path("/tmp") / f"ossrun-test-{uuid.uuid4().hex}"
    targets = {
        "read secret": str(home / ".ssh" / "id_ed25519"),
        "write home": str(home / "planted"),
        "write tests": str(TESTS / "planted"),
        "write /tmp": str(on_host_tmp),
    }
    code = ATTEMPT + textwrap.dedent(f"""
        import json, os, sys
        targets = {targets!r}
        seen = {{name: attempt(lambda path=path, name=name: open(path, "r" if name.startswith("read") else "w").close())
                for name, path in targets.items()}}
        seen["passwd home"] = sorted(os.listdir({passwd_home!r})) if os.path.isdir({passwd_home!r}) else None
        seen["python"] = [sys.prefix, sys.base_prefix, os.path.realpath(sys.executable), *sys.path[1:]]
        print(json.dumps(seen))
        """)
    with PythonSandbox() as box:
        seen = json.loads(box.run(code).stdout)
    assert {name: seen[name] for name in targets} == {
        "read secret": "ENOENT",
        "write home": "ENOENT",
        "write tests": "ENOENT",
        "write /tmp": "ok",
    }
    assert not (home / "planted").exists() and not (TESTS / "planted").exists() and not on_host_tmp.exists()
    # Of the password database's home, only the way to the Python that runs the code (pyenv, a venv), if there.
    needed = names_on_the_way(passwd_home, seen["python"])
    assert seen["passwd home"] == (sorted(needed) if needed else None)


def test_ordinary_code_works_as_a_model_expects(sandbox):
    assert sandbox.run("2 ** 100").stdout == f"{2**100}\n"
    assert sandbox.run("open('helpers.py', 'w').write('def double(x):\\n    return 2 * x\\n')").ok
    assert sandbox.run("from helpers import double\ndouble(21)").stdout == "42\n"  # written in one run, imported in the next
    assert sandbox.run("import numpy\nprint(numpy.linalg.inv(numpy.eye(3) * 2).trace())").stdout == "1.5\n"
    commands = textwrap.dedent("""
        import subprocess, sys
        print("helpers.py" in subprocess.run(["ls"], capture_output=True, text=True).stdout.split())
        print(subprocess.run(["sh", "-c", "echo $HOME | wc -c"], capture_output=True, text=True).stdout.strip())
        print(subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True).stdout.strip())
        """)
    assert sandbox.run(commands).stdout == f"True\n{len(str(sandbox.workdir)) + 1}\n42\n"


def test_numerical_libraries_stay_inside_the_bound(sandbox):
    threads = max(1, min(os.cpu_count() or 1, 64 // 4))
    code = textwrap.dedent("""
        import os, numpy
        numpy.ones((400, 400)) @ numpy.ones((400, 400))
        names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
        print([os.environ[name] for name in names])
        print(int(open("/proc/self/status").read().split("Threads:")[1].split()[0]))
        """)
    environ, running = sandbox.run(code).stdout.splitlines()
    assert environ == str([str(threads)] * 4) and int(running) <= threads


@pytest.mark.skipif(UNSHARE_SYSCALL is None, reason="the filter knows unshare's number on x86_64 and aarch64 only")
def test_a_seccomp_filter_that_refuses_namespaces_is_named(tmp_path, local_server):
    with PythonSandbox(python=python_under_seccomp(tmp_path)) as box:
        seccomp = "a seccomp filter refuses them, as a container's default profile does"
        reason = f"user namespaces are not allowed here ({seccomp})"
        if os.geteuid() == 0:
            reason += f", nor other namespaces to root ({seccomp})"
        assert_not_isolated(box, reason, *local_server, visible=tmp_path)


def test_macos_is_told_what_holds(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    with PythonSandbox() as box:
        assert box.isolation is None
        assert box.notices() == [NOT_ISOLATED.format("the jail needs Linux's namespaces, and on macOS only the limits hold")]
        assert "The code is not isolated" in box.description()


def test_the_code_cannot_make_its_view_writable(sandbox):
    code = textwrap.dedent("""
        import ctypes, errno, sys
        libc = ctypes.CDLL(None, use_errno=True)
        MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
        def attempt(name, result):
            print(name, "ok" if result == 0 else errno.errorcode[ctypes.get_errno()])
        target = sys.prefix.encode()
        attempt("remount", libc.mount(None, target, None, MS_REMOUNT | MS_BIND, None))
        attempt("unmount", libc.umount2(b"/usr", 2))
        attempt("unshare", libc.unshare(0x10000000 | 0x00020000))  # a user and mount namespace of its own: refused
        attempt("private", libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None))
        attempt("remount", libc.mount(None, target, None, MS_REMOUNT | MS_BIND, None))
        try:
            open(sys.prefix + "/file", "w")
        except OSError as exc:
            print("write", errno.errorcode[exc.errno])
        """)
    result = sandbox.run(code)
    # No namespace of its own (the seccomp filter), and no mount call at all.
    assert result.stdout == "remount EPERM\nunmount EPERM\nunshare EPERM\nprivate EPERM\nremount EPERM\nwrite EROFS\n", (
        result.text()
    )


def test_the_code_sees_only_its_own_processes(sandbox, local_server):
    seen = report(sandbox, local_server[0])
    assert seen["pid"] == 2 and seen["processes"] == [1, 2]  # its init, and itself
    ptrace = sandbox.run("import os\ntry:\n    open('/proc/1/mem', 'rb')\nexcept OSError as exc:\n    print(exc.strerror)")
    assert ptrace.stdout == "Permission denied\n"


LEAVE_PROCESSES = textwrap.dedent("""
    import os, subprocess, sys, time
    def sleeper(name):  # a process that says it started, then sleeps; the marker names it on the host
        return [sys.executable, "-c", "import sys, time; open(sys.argv[1], 'w').close(); time.sleep(60)", name, "{marker}"]
    subprocess.Popen(sleeper("child"))
    subprocess.Popen(sleeper("session"), start_new_session=True)  # out of the process group ossrun kills
    if os.fork() == 0:  # a daemon: forked twice, a session of its own, its parent gone
        os.setsid()
        if os.fork() == 0:
            subprocess.Popen(sleeper("daemon"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os._exit(0)
    os.wait()
    while not all(os.path.exists(name) for name in ("child", "session", "daemon")):
        time.sleep(0.01)
    print("started", flush=True)
    """)


def cancel_when_seen(words: str, cancel: threading.Event) -> None:
    """Set ``cancel`` once a host process's command line holds ``words`` (within 30 seconds)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not cancel.is_set():
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and words.encode() in (entry / "cmdline").read_bytes():
                    cancel.set()
                    return
            except OSError:
                pass
        time.sleep(0.02)


@pytest.mark.parametrize("ending", ["end", "timeout", "cancel", "output limit"])
def test_no_process_outlives_its_run(marker, ending):
    code = (
        LEAVE_PROCESSES.format(marker=marker)
        + {
            "end": "",
            "timeout": "time.sleep(60)",
            "output limit": "while True:\n    print('x' * 1000)",
            "cancel": "subprocess.Popen(sleeper('printed'))\ntime.sleep(60)",  # says it printed "started", then waits
        }[ending]
    )
    cancel = threading.Event()
    with PythonSandbox(SandboxLimits(timeout=3 if ending == "timeout" else 30)) as box:
        if ending == "cancel":
            threading.Thread(target=cancel_when_seen, args=(f"printed\0{marker}", cancel), daemon=True).start()
        result = box.run(code, cancel=cancel)
        assert {"child", "session", "daemon"} <= set(files_in(box)), result.text()
    assert result.stdout.startswith("started\n"), result.text()
    assert (
        result.status
        == {
            "end": "exit status 0",
            "timeout": "killed: timed out after 3 seconds",
            "cancel": "killed: interrupted by the user",
            "output limit": f"killed: printed more than {256 * 16 * 1024} bytes",
        }[ending]
    )
    assert host_processes(marker) == []


def test_processes_and_threads_are_bounded(local_server):
    assert SandboxLimits().processes == 64
    with PythonSandbox(SandboxLimits(processes=12)) as box:
        seen = report(box, local_server[0])
    assert seen["forks"] == [11, "EAGAIN"] and seen["threads"] == 11  # twelve with the code's own process


def test_a_fork_bomb_ends_with_its_run():
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    # CPU time generous enough that the wall clock ends it: with the default (the timeout) the
    # forks' total on a machine of several cores can run out first, which tests its own bound
    with PythonSandbox(SandboxLimits(timeout=2, cpu_seconds=120)) as box:
        assert box.isolation is not None  # never without the bound
        result = box.run(bomb)
        assert result.status == "killed: timed out after 2 seconds"
        assert host_processes(str(box.workdir)) == []  # the forks' command line names the working directory
        assert box.run("print('next')").stdout == "next\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="root's own path: the code then runs as nobody")
def test_roots_code_runs_as_nobody_without_capabilities(sandbox, local_server):
    port, accepted = local_server
    seen = report(sandbox, port)
    assert (seen["uid"], seen["gid"], seen["groups"]) == (NOBODY, NOBODY, [])
    assert seen["capabilities"] == "0000000000000000" and seen["no_new_privs"] == "1"
    assert owner_in(sandbox, "written") == NOBODY  # not root's files
    assert seen["forks"] == [63, "EAGAIN"]  # RLIMIT_NPROC, which root is exempt from, applies
    assert seen["network"] == "ENETUNREACH" and accepted == []


def test_an_ordinary_user_gets_the_same_jail(ordinary_user, local_server):
    port, accepted = local_server
    uid = ordinary_user.uid
    with ordinary_user.sandbox(SandboxLimits(processes=12)) as box:
        assert box.isolation == "user namespaces"
        seen = report(box, port)
        assert owner_in(box, "written") == uid
        # What the user's Python needs, less what the user may not reach (as root runs it: /root).
        assert {"dev", "etc", "proc", "tmp", "usr"} <= set(seen["root"]) <= set(expected_root(seen["python"], str(box.workdir)))
    assert seen["uid"] == uid and seen["capabilities"] == "0000000000000000" and seen["no_new_privs"] == "1"
    assert seen["pid"] == 2 and seen["processes"] == [1, 2]
    assert seen["forks"] == [11, "EAGAIN"] and seen["threads"] == 11
    assert seen["write"]["/etc/file"] == "EROFS" and seen["write"]["tmp-file"] == "ok"
    assert seen["network"] == "ENETUNREACH" and accepted == []


@pytest.mark.skipif(os.geteuid() != 0, reason="mapping nobody in the simulated system takes root")
def test_without_user_namespaces_root_still_jails_the_code(without_user_namespaces, local_server):
    port, accepted = local_server
    with PythonSandbox(SandboxLimits(processes=12), python=without_user_namespaces.python()) as box:
        assert box.isolation == "namespaces made by root"
        assert box.notices() == []
        assert "Internet access for this session is disabled." in box.description()
        seen = report(box, port)
        assert seen["root"] == expected_root(seen["python"], str(box.workdir))
    assert (seen["uid"], seen["capabilities"], seen["no_new_privs"]) == (NOBODY, "0000000000000000", "1")
    assert seen["pid"] == 2 and seen["processes"] == [1, 2]
    assert seen["forks"] == [11, "EAGAIN"] and seen["threads"] == 11
    assert seen["network"] == "ENETUNREACH" and accepted == []


NOT_ISOLATED = (
    "the python tool's code is not isolated: {}; it can use the network, read and write your files, and leave processes running"
)


def assert_not_isolated(box, reason, port, accepted, visible):
    """What the user and the model are told, and that it is true."""
    assert box.isolation is None
    assert box.notices() == [NOT_ISOLATED.format(reason)]
    description = box.description()
    assert (
        "The code is not isolated: it runs as the user, with the user's files. Internet access for this session is enabled."
        in description
    )
    assert "processes" not in description and "/tmp" not in description
    assert box.run("print('still runs')").text() == "still runs\n[exit status 0]"
    seen = box.run(f"import os, resource\nprint(resource.getrlimit(resource.RLIMIT_NPROC), os.path.exists({str(visible)!r}))")
    assert seen.stdout == f"{resource.getrlimit(resource.RLIMIT_NPROC)} True\n"  # no bound on processes, the files seen
    assert box.run(CONNECT.format(port=port)).stdout == "connected\n"
    for _ in range(100):  # the server's thread may not have accepted it yet
        if accepted:
            break
        time.sleep(0.02)
    assert len(accepted) == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="mapping an ordinary user in the simulated system takes root")
def test_an_ordinary_user_without_user_namespaces_is_told(ordinary_user, without_user_namespaces, local_server):
    python = without_user_namespaces.python(ordinary_user.interpreter, uid=ORDINARY_UID)
    with ordinary_user.sandbox(python=python) as box:
        reason = "user namespaces are not allowed here (the sysctl user.max_user_namespaces is 0)"
        assert_not_isolated(box, reason, *local_server, visible="/work" if Path("/work").exists() else "/usr")


@pytest.mark.skipif(not util_linux(), reason="needs util-linux unshare and setpriv")
def test_without_namespaces_the_user_and_the_model_are_told(tmp_path, local_server):
    with PythonSandbox(python=python_without_namespaces(tmp_path)) as box:
        reason = (
            "user namespaces are not allowed here (the sysctl user.max_user_namespaces is 0), "
            "nor other namespaces to root (no CAP_SYS_ADMIN, as in a container)"
        )
        assert_not_isolated(box, reason, *local_server, visible=tmp_path)


def test_links_on_the_way_to_a_path_are_made_again_in_the_view(tmp_path):
    from ossrun.tools.sandbox_mounts import resolve

    (tmp_path / "real" / "dir").mkdir(parents=True)
    (tmp_path / "relative").symlink_to("real")
    (tmp_path / "absolute").symlink_to(tmp_path / "relative")
    links = {}
    assert resolve(str(tmp_path / "absolute" / "dir"), links) == os.path.realpath(tmp_path / "real" / "dir")
    assert links == {str(tmp_path / "absolute"): str(tmp_path / "relative"), str(tmp_path / "relative"): "real"}


def test_the_view_binds_each_path_once_and_parents_first(tmp_path):
    from ossrun.tools.sandbox_mounts import View

    for name in ("ro/sub", "ro/work", "ro/other"):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / "link").symlink_to("ro/other")
    (tmp_path / "ro" / "inner-link").symlink_to("sub")
    view = View(str(tmp_path / "ro" / "work"))
    for path in ("ro", "ro/sub", "link", "ro/inner-link"):
        view.add(str(tmp_path / path), writable=False)
    for path in ("/", "/tmp", "/proc/self", "/dev"):
        view.add(path, writable=False)  # never the host's root, nor over what is made anew
    steps, kept = view.mounts()
    ro = str(tmp_path / "ro")
    assert {path: writable for path, writable in kept.items() if path.startswith(str(tmp_path))} == {
        ro: False,
        ro + "/work": True,
    }
    assert (str(tmp_path / "link"), "link", "ro/other") in steps  # the link made again, its target bound with ro
    assert not any(path == ro + "/inner-link" for path, _, _ in steps)  # inside a bound folder already
    assert not {"/", "/proc/self"} & set(kept) and all(kind == "fresh" for path, kind, _ in steps if path in ("/tmp", "/dev"))
    paths = [path for path, _, _ in steps]
    assert paths == sorted(paths) and len(paths) == len(set(paths))  # a parent before what it holds, each once
