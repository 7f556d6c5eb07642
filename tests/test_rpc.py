"""One model over several processes through llama.cpp's RPC backend: `ossrun worker` and `--rpc`.

Workers are real `ossrun worker` processes on 127.0.0.1; the client is the real ossrun, in this
process or as a command. Failures (a worker that is unreachable, speaks something else, is
busy, of another version, killed or frozen mid-answer) must each end the client with one line
naming the worker and exit code 1: no traceback, no abort, no core dump, no hang.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import llama_cpp
import pytest

import ossrun
from helpers.rpc_helpers import Relay, Worker, free_port
from ossrun.engine import rpc
from ossrun.engine.gguf_header import check_gpt_oss

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["What is 38 + 47?", "What is the capital of France?", "Hello there.", "What's the weather in Oslo?"]
MiB = 2**20
CLI_SECONDS = 120


@pytest.fixture
def workers(_isolated_home):
    """Start ``ossrun worker`` processes (``workers(n)``); all are stopped at the end of the test."""
    started: list[Worker] = []

    def start(count: int = 1, args: tuple[str, ...] = (), **options) -> list[Worker]:
        new = [Worker(*args, home=_isolated_home, **options) for _ in range(count)]
        started.extend(new)
        return [w.ready() for w in new]

    yield start
    for worker in started:
        worker.stop()


def ossrun_cli(*args: str, env: dict | None = None, timeout: float = CLI_SECONDS) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ossrun", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *expected: str) -> str:
    """Exit code 1 (not a signal: no abort, no core dump) and one line on stderr, naming what it should."""
    assert result.returncode == 1, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr and "core dumped" not in result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


# -- the build ------------------------------------------------------------------------------------------


def test_llama_cpp_is_built_with_the_rpc_backend():
    """Fails, never skips: every other test here needs it, and so does every user of --rpc."""
    assert llama_cpp.llama_supports_rpc(), f"llama-cpp-python has no RPC backend: rebuild it with {rpc.rebuild_command()}"
    lib = Path(llama_cpp.__file__).parent / "lib"
    assert any(p.name.startswith("libggml-rpc") for p in lib.iterdir())


def test_the_readme_install_builds_the_rpc_backend_and_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```sh\n(.*?pip install.*?)\n```", readme)
    install, test = commands[0], commands[1]
    for command in (install, test):
        # pip's wheel cache keys on the sdist, not on CMAKE_ARGS: only --no-cache-dir forces an RPC build.
        assert "-DGGML_RPC=ON" in command and "-DGGML_RPC_RDMA=OFF" in command and "--no-cache-dir" in command, command
    assert install.endswith("&& ossrun chat") and test.endswith(
        "&& ruff check . && ruff format --check . && mypy && pytest --durations=15"
    )
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test in ci


def test_ossrun_worker_without_the_rpc_backend_says_how_to_rebuild(monkeypatch, capsys):
    from ossrun.cli import main

    monkeypatch.setattr(llama_cpp, "llama_supports_rpc", lambda: False)
    with pytest.raises(SystemExit) as exit_code:
        main(["worker", "--port", str(free_port())])
    assert exit_code.value.code == 1
    line = capsys.readouterr().err.strip()
    assert line == (
        "error: this llama-cpp-python was built without llama.cpp's RPC backend: rebuild it with "
        'CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_RPC=ON -DGGML_RPC_RDMA=OFF" pip install --force-reinstall '
        f"--no-cache-dir --no-deps llama-cpp-python=={llama_cpp.__version__}"
    )


# -- ossrun worker --------------------------------------------------------------------------------------------


def test_the_worker_says_where_it_listens_what_it_reports_and_its_cache(workers, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "0123456789abcdef").write_bytes(bytes(3000))
    (worker,) = workers(cache_dir=cache)
    text = "".join(worker.output)
    assert f"ossrun worker listening on {worker.endpoint} (llama.cpp RPC protocol 7.0.0, 1 thread)" in text
    reported, _ = rpc.cpu_memory()
    assert re.search(r"memory: \S+ GiB reported to clients \(this machine's RAM; \S+ GiB available now\)", text), text
    assert f"--rpc {worker.endpoint}=MEMORY" in text
    assert f"weight cache: {cache}, 3.0 KB in 1 tensors" in text
    # It speaks this llama.cpp's protocol and reports its machine's memory (all of it: a CPU device knows no better).
    info = rpc.probe(rpc.WorkerSpec("127.0.0.1", worker.port))
    assert info.version == rpc.PROTOCOL and info.devices == 1 and info.free_memory == reported
    assert worker.stop() == 0  # Ctrl-C
    assert "worker stopped" in "".join(worker.output)


def test_the_cache_defaults_to_the_ossrun_home_and_clears(_isolated_home):
    cache = _isolated_home / "cache" / "rpc"
    cache.mkdir(parents=True)
    for name in ("0123456789abcdef", "fedcba9876543210"):
        (cache / name).write_bytes(bytes(1000))
    (cache / "notes.txt").write_text("not llama.cpp's")
    result = ossrun_cli("worker", "--clear-cache", env={"OSSRUN_HOME": str(_isolated_home)})
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"removed 2 cached tensors (2.0 KB) from {cache}\n"
    assert [p.name for p in cache.iterdir()] == ["notes.txt"]


def test_listening_beyond_loopback_warns_that_the_protocol_is_open(workers):
    (worker,) = workers(args=("--host", "0.0.0.0"))
    worker.stop()
    warning = worker.process.stderr.read()
    assert "no authentication and no encryption" in warning and "SSH tunnel" in warning
    assert f"ssh -N -L {worker.port}:127.0.0.1:{worker.port}" in warning and "private network" in warning


def test_a_worker_that_cannot_listen_is_one_line(workers):
    (first,) = workers()
    taken = ossrun_cli("worker", "--port", str(first.port), "--no-cache")
    assert_one_line_error(taken, f"cannot listen on 127.0.0.1:{first.port}: address already in use")
    assert_one_line_error(ossrun_cli("worker", "--host", "localhost"), "is not an IPv4 address")


# -- one model over the local CPU and two workers ------------------------------------------------------------


@pytest.fixture(scope="module")
def local_answers(demo_build):
    with ossrun.load(demo_build, ctx=2048, threads=1) as model:
        return [model.chat([{"role": "user", "content": p}], temperature=0) for p in PROMPTS]


def test_greedy_answers_over_two_workers_equal_the_local_ones(workers, demo_build, local_answers):
    a, b = workers(2)
    with ossrun.load(demo_build, ctx=2048, threads=1, rpc=[f"{a.endpoint},{b.endpoint}"]) as model:
        assert model.placement == (
            f"{demo_build.stem} over 3 machines: this machine 221 MiB (no layers, embeddings and output), "
            f"{a.endpoint} 257 MiB (layer 0), {b.endpoint} 257 MiB (layer 1)"
        )
        for prompt, local in zip(PROMPTS, local_answers, strict=True):
            reply = model.chat([{"role": "user", "content": prompt}], temperature=0)
            assert (reply.reasoning, reply.final) == (local.reasoning, local.final), prompt
            assert reply.finish_reason == "stop"


def test_run_over_workers_puts_buffers_on_the_rpc_devices(workers, demo_build, local_answers):
    a, b = workers(2)
    result = ossrun_cli(
        "run",
        "-m",
        str(demo_build),
        "--temperature",
        "0",
        "--ctx",
        "2048",
        "--threads",
        "1",
        "--rpc",
        a.endpoint,
        "--rpc",
        b.endpoint,
        "--verbose",
        PROMPTS[0],
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == local_answers[0].final
    log = result.stderr
    assert f"{demo_build.stem} over 3 machines: this machine" in log
    for worker in (a, b):
        assert re.search(rf"RPC0\[{worker.endpoint}\] model buffer size = +0\.\d+ MiB", log), log
        assert re.search(rf"RPC0\[{worker.endpoint}\] KV buffer size", log), log
    # The output matrix stays here: the logits never cross the network.
    assert "tensor output.weight (26 MiB q8_0) buffer type overridden to CPU" in log


# -- the worker's weight cache ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wide_expert_gguf(tmp_path_factory, o200k_tokenizer_dir) -> Path:
    """A small gpt-oss whose expert tensors exceed llama.cpp's 10 MiB cache threshold (12.75 MiB each)."""
    from helpers.checkpoints import TinyConfig, make_weights, write_hf_checkpoint
    from ossrun.convert import convert

    config = TinyConfig(n_experts=64, n_experts_used=4, expert_ff=3072)
    folder = write_hf_checkpoint(tmp_path_factory.mktemp("wide"), make_weights(config), config, o200k_tokenizer_dir)
    return convert(folder, tmp_path_factory.mktemp("wide-gguf") / "wide-experts.gguf")


def test_a_worker_with_a_cache_receives_fewer_bytes_on_the_second_load(workers, wide_expert_gguf, tmp_path):
    header = check_gpt_oss(wide_expert_gguf)
    cached = {t.name: t.n_bytes for t in header.tensors if t.name.startswith("blk.1.") and t.n_bytes > rpc.CACHED_TENSOR_BYTES}
    assert sorted(cached) == ["blk.1.ffn_down_exps.weight", "blk.1.ffn_gate_exps.weight", "blk.1.ffn_up_exps.weight"]
    cache = tmp_path / "rpc-cache"
    (worker,) = workers(cache_dir=cache)
    relay = Relay(worker.port)
    question = [{"role": "user", "content": "Hello there."}]
    received, answers = [], []
    for _ in range(2):
        relay.reset()
        with ossrun.load(wide_expert_gguf, ctx=1024, threads=1, rpc=relay.endpoint) as model:  # layer 1 on the worker
            received.append(relay.to_worker)
            answers.append(model.chat(question, temperature=0, max_tokens=16).final)
        worker.wait_for("client left")
    relay.close()
    layer_bytes = sum(t.n_bytes for t in header.tensors if t.name.startswith("blk.1."))
    assert received[0] > layer_bytes  # all its weights, then the graphs and activations
    assert received[0] - received[1] > 0.99 * sum(cached.values())  # the expert tensors came from the cache
    assert received[1] < received[0] / 4
    assert answers[0] == answers[1]  # and they are the same weights
    assert sorted(p.stat().st_size for p in cache.iterdir()) == sorted(cached.values())
    assert f"weight cache {format_cache(cached)}" in "".join(worker.output)


def format_cache(cached: dict[str, int]) -> str:
    from ossrun.units import format_size

    return f"{format_size(sum(cached.values()))} in {len(cached)} tensors"


# -- failures: one line, exit code 1 -----------------------------------------------------------------------------


def serve_in_thread(handle) -> int:
    """A TCP server on 127.0.0.1 that is not a worker; ``handle(connection)`` for each client."""
    listener = socket.create_server(("127.0.0.1", 0))

    def accept() -> None:
        while True:
            connection, _ = listener.accept()
            with connection:
                handle(connection)

    threading.Thread(target=accept, daemon=True).start()
    return listener.getsockname()[1]


def http_server(connection: socket.socket) -> None:
    connection.recv(1024)
    connection.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")


def old_worker(connection: socket.socket) -> None:
    """A worker of RPC protocol 6.1.0 answering the hello, as an older llama.cpp would."""
    connection.recv(1024)
    connection.sendall(struct.pack("<Q", 28) + bytes([6, 1, 0, 0]) + bytes(24))
    connection.recv(1024)


def test_an_unreachable_worker(demo_build):
    port = free_port()
    result = ossrun_cli("run", "-m", str(demo_build), "--rpc", f"127.0.0.1:{port}", "Hi")
    assert_one_line_error(result, f"worker 127.0.0.1:{port} refuses connections", "ossrun worker")


def test_a_port_that_speaks_something_else(demo_build):
    port = serve_in_thread(http_server)
    result = ossrun_cli("run", "-m", str(demo_build), "--rpc", f"127.0.0.1:{port}", "Hi")
    assert_one_line_error(result, f"127.0.0.1:{port} answered llama.cpp's RPC hello with something else")


def test_a_worker_of_another_protocol_version(demo_build):
    port = serve_in_thread(old_worker)
    result = ossrun_cli("run", "-m", str(demo_build), "--rpc", f"127.0.0.1:{port}", "Hi")
    assert_one_line_error(
        result,
        f"worker 127.0.0.1:{port} speaks llama.cpp's RPC protocol 6.1.0 and this ossrun 7.0.0",
        f"llama-cpp-python ({llama_cpp.__version__})",
    )


def test_a_busy_worker(workers, demo_build):
    (worker,) = workers()
    with socket.create_connection(("127.0.0.1", worker.port)) as other_client:
        other_client.sendall(bytes([rpc.RPC_CMD_HELLO]) + struct.pack("<Q", 24) + bytes(24))
        reply = b""
        while len(reply) < 36:  # size (8 bytes) and hello (28): it is that client's now
            reply += other_client.recv(64)
        assert reply[8:11] == bytes(rpc.PROTOCOL)
        started = time.monotonic()
        result = ossrun_cli("run", "-m", str(demo_build), "--rpc", worker.endpoint, "Hi")
        assert time.monotonic() - started < 60
    assert_one_line_error(
        result, f"worker {worker.endpoint} accepted the connection but did not answer", "serves one client at a time"
    )


def test_memory_a_worker_cannot_fit_a_layer_in(workers, demo_build):
    (worker,) = workers()
    result = ossrun_cli("run", "-m", str(demo_build), "--rpc", f"{worker.endpoint}=1MiB", "Hi")
    assert_one_line_error(result, f"{worker.endpoint}=1.0 MiB cannot hold one layer of {demo_build.stem}")


# A client that says when its answer has begun, then reads the rest once told to go on.
MID_ANSWER = textwrap.dedent("""
    import sys
    import ossrun
    from ossrun.events import FinalDelta, ReasoningDelta

    model = ossrun.load(sys.argv[1], ctx=2048, threads=1, rpc=sys.argv[2:])
    stream = model.stream([{"role": "user", "content": "What is 38 + 47?"}], temperature=0, reasoning_effort="high")
    for event in stream:
        if isinstance(event, (ReasoningDelta, FinalDelta)):
            print("answering", flush=True)
            break
    sys.stdin.readline()
    for event in stream:
        pass
    print("finished", flush=True)
""")


@pytest.mark.parametrize("failure", ["killed", "frozen"])
def test_a_worker_that_fails_mid_answer_ends_the_client_with_one_line(workers, demo_build, failure):
    a, b = workers(2)
    client = subprocess.Popen(
        [sys.executable, "-c", MID_ANSWER, str(demo_build), a.endpoint, b.endpoint],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OSSRUN_RPC_TIMEOUT": "3"},
    )
    try:
        assert client.stdout.readline() == "answering\n"
        # The engine goes on generating whatever its consumer does: freeze the worker at once,
        # so that the answer cannot end first (alive, holding the connection, answering nothing).
        os.kill(b.process.pid, signal.SIGSTOP)
        if failure == "killed":
            b.process.kill()
            b.process.wait()
        started = time.monotonic()
        client.stdin.write("go\n")
        client.stdin.flush()
        out, err = client.communicate(timeout=60)
        elapsed = time.monotonic() - started
    finally:
        if client.poll() is None:
            client.kill()
    result = subprocess.CompletedProcess(client.args, client.returncode, out, err)
    if failure == "killed":
        line = assert_one_line_error(result, f"worker {b.endpoint} is gone (its port refuses connections)", "while generating")
        assert elapsed < 10, line
    else:
        line = assert_one_line_error(
            result, f"worker {b.endpoint} has not answered for 3.5 s while generating", "OSSRUN_RPC_TIMEOUT"
        )
        assert 3 <= elapsed < 20, line
    assert a.endpoint not in line
    assert "finished" not in out
