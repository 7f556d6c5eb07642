"""The python tool's sandbox, with real processes: limits, isolation, bounded output, what the model reads."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest

from helpers.sandboxes import CONNECT, host_processes
from ossrun.tools import PythonSandbox, SandboxLimits

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="network namespaces are Linux's")


@pytest.fixture
def sandbox():
    with PythonSandbox() as box:
        yield box


def test_output_stderr_and_exit_status(sandbox):
    result = sandbox.run("import sys\nprint('out')\nprint('err', file=sys.stderr)\nsys.exit(3)")
    assert (result.stdout, result.stderr, result.exit_status) == ("out\n", "err\n", 3)
    assert result.text() == "out\n[stderr]\nerr\n[exit status 3]"


def test_an_exception_shows_the_models_code_only(sandbox):
    result = sandbox.run("def f(x):\n    return 1 / x\n\nf(0)")
    assert result.exit_status == 1
    assert result.stderr.startswith('Traceback (most recent call last):\n  File "<python>", line 4, in <module>\n    f(0)\n')
    assert "return 1 / x" in result.stderr and result.stderr.rstrip().endswith("ZeroDivisionError: division by zero")
    assert "sandbox_child" not in result.stderr
    syntax = sandbox.run("print(1")
    assert syntax.exit_status == 1 and "Traceback" not in syntax.stderr and "SyntaxError" in syntax.stderr


def test_each_run_is_a_fresh_interpreter_sharing_the_working_directory(sandbox):
    first = sandbox.run("x = 41\nopen('note.txt', 'w').write('kept')\nimport os\nos.getcwd()")
    assert first.ok and first.stdout == repr(str(sandbox.workdir)) + "\n"  # the last expression is shown
    second = sandbox.run("print(open('note.txt').read())\nx")
    assert second.stdout == "kept\n" and "NameError: name 'x' is not defined" in second.stderr
    workdir = sandbox.workdir
    sandbox.close()
    assert not workdir.exists()


def test_the_environment_is_not_passed_on(sandbox, monkeypatch):
    monkeypatch.setenv("OSSRUN_TEST_SECRET", "hunter2")
    result = sandbox.run("import os\nprint(os.environ.get('OSSRUN_TEST_SECRET'), os.environ['HOME'] == os.getcwd())")
    assert result.stdout == "None True\n"


def test_timeout_kills_every_process_the_code_started(marker):
    code = textwrap.dedent(f"""
        import subprocess, sys, time
        sleeper = [sys.executable, "-c", "import time; time.sleep(60)", "{marker}"]
        subprocess.Popen(sleeper)
        subprocess.Popen(sleeper, start_new_session=True)  # out of the process group ossrun kills
        print("started", flush=True)
        time.sleep(60)
        """)
    with PythonSandbox(SandboxLimits(timeout=1.5)) as box:
        started = time.monotonic()
        result = box.run(code)
        elapsed = time.monotonic() - started
    assert 1.4 < elapsed < 5, elapsed
    assert result.stdout == "started\n"
    assert result.exit_status == -9 and result.status == "killed: timed out after 1.5 seconds"
    assert result.text().endswith("[killed: timed out after 1.5 seconds]")
    assert host_processes(marker) == []


def test_memory_limit():
    with PythonSandbox(SandboxLimits(memory_bytes=256 << 20)) as box:
        small = box.run("b = bytearray(64 << 20)\nprint(len(b))")
        big = box.run("b = bytearray(512 << 20)\nprint(len(b))")
    assert small.ok and small.stdout == f"{64 << 20}\n"
    assert big.exit_status == 1 and big.stderr.rstrip().endswith("MemoryError")


def test_default_memory_limit_is_one_gib(sandbox):
    assert sandbox.limits.memory_bytes == 1 << 30
    assert sandbox.run("import resource\nresource.getrlimit(resource.RLIMIT_AS)").stdout == f"({1 << 30}, {1 << 30})\n"
    assert "MemoryError" in sandbox.run("b = bytearray(3 << 29)").stderr


def test_cpu_time_limit():
    with PythonSandbox(SandboxLimits(timeout=30, cpu_seconds=1)) as box:
        started = time.monotonic()
        result = box.run("while True:\n    pass")
    assert time.monotonic() - started < 10
    assert result.status == "killed: its processes together used more than 1 seconds of CPU time"


def test_output_is_truncated_with_a_marker():
    limits = SandboxLimits(output_bytes=1000)
    with PythonSandbox(limits) as box:
        result = box.run("import sys\nprint('A' * 600 + 'B' * 99_400)\nprint('oops' * 500, file=sys.stderr)")
        flood = box.run("while True:\n    print('x' * 1000)")
    out, err = result.stdout, result.stderr
    assert out.startswith("A" * 250 + "\n[...") and out.endswith("]\n" + "B" * 249 + "\n")  # 250 bytes each side
    assert "[... 99501 bytes of output left out ...]" in out
    assert "[... 1501 bytes of output left out ...]" in err
    assert len(out.encode()) + len(err.encode()) < 1000 + 2 * 60  # the budget plus two markers
    assert result.truncated_bytes == 100_001 + 2001 - 1000 and result.ok
    # Printing forever is stopped long before the timeout.
    assert flood.status == f"killed: printed more than {256 * 1000} bytes" and flood.seconds < 10


def test_cancel_kills_the_run(sandbox):
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    started = time.monotonic()
    result = sandbox.run("import time\ntime.sleep(30)", cancel=cancel)
    assert time.monotonic() - started < 3
    assert result.status == "killed: interrupted by the user"


def test_sandboxed_code_cannot_reach_a_server_the_same_code_outside_can(sandbox, local_server):
    port, accepted = local_server
    code = CONNECT.format(port=port)
    outside = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert outside.stdout == "connected\n" and len(accepted) == 1
    assert sandbox.isolation == "user namespaces"
    assert sandbox.notices() == []
    inside = sandbox.run(code)
    assert inside.stdout == "blocked: [Errno 101] Network is unreachable\n"
    time.sleep(0.3)
    assert len(accepted) == 1
    assert "Internet access for this session is disabled." in sandbox.description()


ESCAPE = textwrap.dedent("""
    import ctypes, os, resource
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        fd = os.open("/proc/1/ns/net", os.O_RDONLY)
        if libc.setns(fd, 0x40000000) == 0:  # CLONE_NEWNET
            print("rejoined the host network")
    except OSError:
        pass
    try:
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        print("lifted the memory limit")
    except (ValueError, OSError):
        print("limits kept")
    """)


def test_the_code_cannot_rejoin_the_network_or_lift_its_limits_even_as_root(sandbox, local_server):
    port, accepted = local_server
    result = sandbox.run(ESCAPE + CONNECT.format(port=port))
    assert result.stdout == "limits kept\nblocked: [Errno 101] Network is unreachable\n", result.text()
    assert accepted == []


def test_network_isolation_can_be_turned_off(local_server):
    port, accepted = local_server
    with PythonSandbox(isolate_network=False) as box:
        assert box.isolation == "user namespaces"  # the rest of the jail stays
        assert box.notices() == ["the python tool's code can use the network (network isolation is off)"]
        assert box.run(CONNECT.format(port=port)).stdout == "connected\n"
        assert "Internet access for this session is enabled." in box.description()
    assert len(accepted) == 1


def test_the_model_is_told_about_the_real_sandbox(sandbox):
    text = sandbox.description()
    assert text.startswith(
        "Use this tool to execute Python code in your chain of thought. The code will not be shown to the user."
    )
    assert "stateful" not in text and "/mnt/data" not in text and "Jupyter" not in text
    assert "new Python" in text and "nothing is kept in memory between messages" in text
    assert "time out after 120.0 seconds" in text
    assert f"at most {16 * 1024} bytes" in text
    assert (
        "The file system is read-only but for the current directory and an empty /tmp: the code sees only the "
        "system's programs and libraries and the Python installation. The current directory and /tmp each hold at "
        "most 1 GiB and 10000 files. It can run at most 64 processes and threads. "
        "Internet access for this session is disabled."
    ) in text
    together = "Memory is limited to 1 GiB for all its processes together"
    checked = " (checked every 0.05 seconds)" if sandbox.totals()["memory"] == "sampled" else ""
    assert f"{together}{checked}, /tmp included, and CPU time to 120 seconds." in text
