"""What hostile requests cost ``ossrun serve``: memory for schemas past the grammar bounds and for the
largest schema allowed, and the time a good request waits during a flood of idle connections.

    python benchmarks/serve_hostile.py                       # starts ossrun serve --demo itself
    python benchmarks/serve_hostile.py --idle 1100 --rounds 3

Each figure is the server's own: ``VmHWM`` (peak resident memory) from /proc before and after,
and wall times measured by this client on loopback.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

BOMBS = {  # schemas that once took the server down (a SIGSEGV) or took gigabytes
    "maxItems 20,000": {"type": "array", "items": {"type": "integer"}, "maxItems": 20000},
    "minItems 10^7": {"type": "array", "items": {"type": "integer"}, "minItems": 10**7},
    "minLength 10^9": {"type": "string", "minLength": 10**9},
}
LARGEST = {
    "type": "object",
    "required": ["a"],
    "properties": {  # every bound at once (see tests/test_formats.py)
        "a": {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 1000},
        "b": {"type": "array", "items": {"type": "string", "maxLength": 1000}, "maxItems": 1000},
        "c": {"type": "string", "minLength": 1000, "maxLength": 1000},
        "d": {"type": "string", "maxLength": 1000},
        "e": {"type": "string", "pattern": "^[a-z]{0,1000}-[0-9]{1000}$"},
        "f": {"type": "string", "pattern": "[a-z]{2,1000}"},
        "g": {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(256)}},
    },
}
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def vm_hwm(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", text).group(1)) << 10  # type: ignore[union-attr]


def post(port: int, body: dict) -> tuple[int, float]:
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    connection.request("POST", "/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response.status, time.perf_counter() - started


def with_format(schema: dict, **extra) -> dict:
    return {
        "model": "demo",
        "messages": QUESTION,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        **extra,
    }


def health_seconds(port: int) -> float:
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    connection.request("GET", "/health")
    assert connection.getresponse().read()
    connection.close()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=int, default=1100, help="idle connections in the flood")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this client holds the idle sockets
    server = subprocess.Popen(
        [sys.executable, "-m", "ossrun", "serve", "--demo", "--port", "0", "--threads", "2"], stderr=subprocess.PIPE, text=True
    )
    try:
        line = ""
        while "listening on" not in line:
            line = server.stderr.readline()
            if not line:
                raise SystemExit("the server did not start")
        port = int(re.search(r"127\.0\.0\.1:(\d+)/v1", line).group(1))  # type: ignore[union-attr]
        post(port, {"model": "demo", "messages": QUESTION, "max_tokens": 8})  # warm up
        raised = Path(f"/proc/{server.pid}/limits").read_text().split("Max open files")[1].split()[0]
        print(
            f"load average {Path('/proc/loadavg').read_text().split()[0]}, server soft limit of open files raised "
            f"from {soft} (this shell's) to {raised}"
        )
        for name, schema in BOMBS.items():
            before = vm_hwm(server.pid)
            status, seconds = post(port, with_format({"type": "object", "properties": {"x": schema}}))
            print(f"{name}: {status} in {seconds * 1000:.0f} ms, peak memory +{(vm_hwm(server.pid) - before) >> 20} MiB")
        before = vm_hwm(server.pid)
        times = [post(port, with_format(LARGEST, max_tokens=16))[1] for _ in range(args.rounds)]
        plain = [post(port, {"model": "demo", "messages": QUESTION, "max_tokens": 16})[1] for _ in range(args.rounds)]
        print(
            f"largest allowed schema: {statistics.median(times):.2f} s for 16 tokens (median of {args.rounds}; "
            f"{statistics.median(plain):.2f} s without), peak memory +{(vm_hwm(server.pid) - before) >> 20} MiB"
        )
        quiet = statistics.median(health_seconds(port) for _ in range(args.rounds))
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(args.idle)]
        try:
            flooded = statistics.median(health_seconds(port) for _ in range(args.rounds))
            answered = post(port, {"model": "demo", "messages": QUESTION, "max_tokens": 8})
        finally:
            for sock in idle:
                sock.close()
        print(
            f"/health: {quiet * 1000:.1f} ms alone, {flooded * 1000:.1f} ms beside {args.idle} idle connections "
            f"(medians of {args.rounds}); a chat request then: {answered[0]} in {answered[1]:.2f} s"
        )
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
