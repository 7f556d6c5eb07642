"""A short run of the load test (benchmarks/serve_load.py): concurrent clients on loopback, some
leaving mid-stream, some sending garbage: no 5xx, every well-formed request answered, memory flat."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from helpers.serving import ServerProcess
from test_serve import demo_home

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import serve_load

pytestmark = pytest.mark.slow


def test_a_bounded_load_gives_no_server_error_and_no_growth(tmp_path_factory, demo_build):
    server = ServerProcess("--demo", "--parallel", "4", "--max-queue", "16", home=demo_home(tmp_path_factory, demo_build))
    try:
        result = serve_load.run("127.0.0.1", server.port, server.process.pid, requests=60, clients=8, model="demo", seed=3)
    finally:
        assert server.stop() == 0
    print(result)
    assert result["server_errors"] == 0 and result["unanswered"] == 0, result
    assert result["kinds"].get("garbage", 0) > 0 and result["kinds"].get("leave", 0) > 0
    assert result["statuses"].get("200", 0) >= 40
    assert abs(result["rss_growth_percent"]) < 5, result
