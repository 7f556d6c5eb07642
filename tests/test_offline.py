"""Once a model is on disk, ossrun needs no network: runs in a network namespace with no way out.

The namespace is shown to cut the network first (a server on 127.0.0.1 outside it
is unreachable from inside), then ossrun answers from inside it with an empty home:
the demo model is built and the harmony vocabulary is derived from the GGUF, never
downloaded (openai-harmony would fetch it from the internet without TIKTOKEN_ENCODINGS_BASE).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CONNECT = (
    "import socket, sys\n"
    "try:\n"
    "    socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=5)\n"
    "    print('connected')\n"
    "except OSError as exc:\n"
    "    print('blocked', exc.errno)\n"
)


def _namespaces_work() -> bool:
    return (
        shutil.which("unshare") is not None
        and subprocess.run(["unshare", "--user", "--map-root-user", "--net", "true"], capture_output=True).returncode == 0
    )


needs_namespace = pytest.mark.skipif(not _namespaces_work(), reason="needs util-linux unshare and user namespaces")


def without_network(*command: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run ``command`` in new user and network namespaces: only a loopback interface, which is down."""
    return subprocess.run(
        ["unshare", "--user", "--map-root-user", "--net", *command], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.fixture
def offline_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TIKTOKEN_ENCODINGS_BASE", "HF_HUB_OFFLINE")}
    env["OSSRUN_HOME"] = str(tmp_path / "empty-home")
    env["HF_HOME"] = str(tmp_path / "hf")
    return env


@pytest.fixture
def outside_server():
    """A TCP server on 127.0.0.1 outside the namespace; the list collects the connections it accepted."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def serve():
        try:
            while True:
                connection, _ = server.accept()
                accepted.append(connection)
        except OSError:
            pass

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1], accepted
    server.close()


@needs_namespace
def test_the_namespace_has_no_network(outside_server, offline_env):
    port, accepted = outside_server
    outside = subprocess.run([sys.executable, "-c", CONNECT, str(port)], capture_output=True, text=True, timeout=30)
    assert outside.stdout == "connected\n"
    inside = without_network(sys.executable, "-c", CONNECT, str(port), env=offline_env)
    assert inside.stdout.startswith("blocked"), inside.stdout + inside.stderr
    assert len(accepted) == 1  # only the connection from outside


@needs_namespace
def test_the_demo_answers_with_no_network_and_an_empty_home(offline_env):
    result = without_network(
        sys.executable, "-m", "ossrun", "run", "--demo", "--json", "--temperature", "0", "What is 38 + 47?", env=offline_env
    )
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["finish_reason"] == "stop" and "85" in reply["final"]


@needs_namespace
def test_a_converted_model_answers_with_no_network(tiny_gguf, offline_env):
    result = without_network(
        sys.executable,
        "-m",
        "ossrun",
        "run",
        "-m",
        str(tiny_gguf),
        "--json",
        "--threads",
        "1",
        "--max-tokens",
        "8",
        "--seed",
        "1",
        "Hello",
        env=offline_env,
    )
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["usage"]["completion_tokens"] >= 1
    derived = list(Path(offline_env["OSSRUN_HOME"]).rglob("o200k_base.tiktoken"))
    assert len(derived) == 1, "the vocabulary was not derived from the model into the ossrun home"
