"""A bounded load test of ``ossrun serve``: many clients on loopback, some leaving mid-stream,
some sending garbage, for a fixed number of requests.

It counts every status, checks that no request got a 5xx and that every well-formed one was
answered, and compares the server's RSS after the run with its RSS after a warm-up.

    python benchmarks/serve_load.py --requests 200 --clients 16           # starts ossrun serve --demo itself
    python benchmarks/serve_load.py --url http://127.0.0.1:8080 --pid PID  # an ossrun serve already running
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

QUESTIONS = [
    "What is 23 + 45?",
    "What is the capital of France?",
    "Hello!",
    "What's the weather in Oslo?",
    "What is 71 + 18?",
    "What is the capital of Kenya?",
    "Write me a poem about the sea.",
]
GARBAGE = [
    b"not json",
    b"[]",
    b'{"model": "demo"}',
    b'{"model": "demo", "messages": "x"}',
    b'{"model": "demo", "messages": [{"role": "user", "content": "\\udcff"}]}',
    b'{"model": "nope", "messages": [{"role": "user", "content": "hi"}]}',
    b'{"model": "demo", "input": 7}',
    b'{"model": "demo", "messages": [{"role": "user", "content": "hi"}], "temperature": "warm"}',
]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class Load:
    def __init__(self, host: str, port: int, model: str, seed: int):
        self.host, self.port, self.model = host, port, model
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.statuses: Counter = Counter()
        self.kinds: Counter = Counter()
        self.unanswered = 0  # well-formed requests that got no answer (a dropped connection, a 429...)
        self.latencies: list[float] = []

    def one(self, number: int) -> None:
        with self.lock:
            kind = self.random.choices(
                ["chat", "chat-stream", "responses", "responses-stream", "leave", "garbage"], [3, 3, 2, 2, 2, 2]
            )[0]
            question = self.random.choice(QUESTIONS)
            garbage = self.random.choice(GARBAGE)
        started = time.perf_counter()
        status: int | None = None
        try:
            if kind == "garbage":
                status = self.post("/v1/chat/completions" if number % 2 else "/v1/responses", garbage)
            elif kind == "leave":
                status = self.leave(question)
            elif kind.startswith("chat"):
                body = {
                    "model": self.model,
                    "messages": [{"role": "user", "content": question}],
                    "max_tokens": 120,
                    "stream": kind.endswith("stream"),
                }
                status = self.post("/v1/chat/completions", json.dumps(body).encode(), stream=body["stream"])
            else:
                body = {"model": self.model, "input": question, "max_output_tokens": 120, "stream": kind.endswith("stream")}
                status = self.post("/v1/responses", json.dumps(body).encode(), stream=body["stream"])
        except OSError:
            status = None
        with self.lock:
            self.kinds[kind] += 1
            self.statuses[status] += 1
            if kind not in ("garbage", "leave") and status != 200:
                self.unanswered += 1
            if kind not in ("garbage", "leave") and status == 200:
                self.latencies.append(time.perf_counter() - started)

    def post(self, path: str, payload: bytes, stream: bool = False) -> int:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=600)
        try:
            connection.request("POST", path, payload, {"Content-Type": "application/json"})
            response = connection.getresponse()
            data = response.read()
            if response.status == 200 and stream and b"[DONE]" not in data and b"response.completed" not in data:
                return -1  # a stream that ended without its last event
            return response.status
        finally:
            connection.close()

    def leave(self, question: str) -> int:
        """A streaming client that reads a little, then goes away."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=600)
        try:
            body = {"model": self.model, "stream": True, "messages": [{"role": "user", "content": question}]}
            connection.request("POST", "/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.readline()
            return response.status
        finally:
            connection.close()


def run(host: str, port: int, pid: int, *, requests: int, clients: int, model: str, seed: int, warmup: int = 8) -> dict:
    warm = Load(host, port, model, seed + 1)
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(warm.one, range(warmup)))
    time.sleep(1)
    rss_warm = rss_bytes(pid)
    load = Load(host, port, model, seed)
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(load.one, range(requests)))
    seconds = time.perf_counter() - started
    time.sleep(2)  # replies of clients that left are cancelled by now
    rss_after = rss_bytes(pid)
    answered = sum(load.kinds[k] for k in load.kinds if k not in ("garbage", "leave")) - load.unanswered
    return {
        "requests": requests,
        "clients": clients,
        "seconds": round(seconds, 1),
        "requests_per_second": round(requests / seconds, 2),
        "answered_per_second": round(answered / seconds, 2),
        "statuses": {str(k): v for k, v in sorted(load.statuses.items(), key=lambda kv: str(kv[0]))},
        "kinds": dict(load.kinds),
        "server_errors": sum(v for k, v in load.statuses.items() if k is not None and k >= 500),
        "unanswered": load.unanswered,
        "median_latency_s": round(statistics.median(load.latencies), 2) if load.latencies else None,
        "rss_after_warmup_mb": round(rss_warm / 2**20, 1),
        "rss_after_run_mb": round(rss_after / 2**20, 1),
        "rss_growth_percent": round(100 * (rss_after - rss_warm) / rss_warm, 2),
    }


def start_demo_server(parallel: int, max_queue: int, threads: int) -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ossrun",
            "serve",
            "--demo",
            "--port",
            "0",
            "--parallel",
            str(parallel),
            "--max-queue",
            str(max_queue),
            "--threads",
            str(threads),
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    for line in process.stderr:
        if "listening on http://" in line:
            port = int(line.split("listening on http://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
            threading.Thread(target=lambda: [None for _ in process.stderr], daemon=True).start()
            return process, port
    raise RuntimeError("ossrun serve did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server (default: start ossrun serve --demo)")
    parser.add_argument("--pid", type=int, help="the running server's process id (for its RSS)")
    parser.add_argument("--model", default="demo")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    process = None
    if args.url:
        host, port = args.url.split("//", 1)[1].split(":")
        port, pid = int(port.split("/")[0]), args.pid
    else:
        process, port = start_demo_server(args.parallel, max(args.clients, 16), args.threads)
        host, pid = "127.0.0.1", process.pid
    try:
        print(
            json.dumps(
                run(host, port, pid, requests=args.requests, clients=args.clients, model=args.model, seed=args.seed), indent=2
            )
        )
    finally:
        if process is not None:
            process.terminate()
            process.wait(30)


if __name__ == "__main__":
    main()
