"""What an operator's scrape and a browser's Stop cost on ``ossrun serve``.

1. ``GET /metrics`` latency (the client's clock) after a few replies, the engine idle.
2. How soon a reply whose client leaves in the middle of reading a long prompt frees its sequence:
   from closing the connection (once the stream said ``: prefill N/M`` with N > 0) until
   ``ossrun_sequences_busy`` is 0 again.

    python benchmarks/metrics_benchmark.py                 # the demo model
    python benchmarks/metrics_benchmark.py --model PATH    # any model ossrun serve takes
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import statistics
import subprocess
import sys
import threading
import time

STORY = "Please read this story to the end. " + "The fox ran over the hill and back again. " * 1200


def start(model: list[str]) -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "ossrun", "serve", *model, "--port", "0", "--parallel", "2"], stderr=subprocess.PIPE, text=True
    )
    for line in process.stderr:
        match = re.search(r"listening on http://\S+:(\d+)/v1", line)
        if match:
            threading.Thread(target=process.stderr.read, daemon=True).start()  # its log must not fill the pipe
            return process, int(match.group(1))
    raise SystemExit("the server did not start")


def get(port: int, path: str) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("GET", path)
    body = connection.getresponse().read().decode()
    connection.close()
    return body


def busy(port: int) -> float:
    sample = next(line for line in get(port, "/metrics").splitlines() if line.startswith("ossrun_sequences_busy "))
    return float(sample.split()[1])


def read_until_the_prompt_is_being_read(port: int, model: str, content: str) -> http.client.HTTPConnection:
    """A streamed request, read until a ``: prefill N/M`` comment with N > 0."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    connection.request(
        "POST",
        "/v1/chat/completions",
        json.dumps({"model": model, "stream": True, "messages": [{"role": "user", "content": content}]}),
        {"Content-Type": "application/json"},
    )
    response = connection.getresponse()
    if response.status != 200:
        raise SystemExit(f"the server answered {response.status}: {response.read().decode()}")
    while not re.match(r": prefill [1-9]", line := response.readline().decode()):
        if not line:
            raise SystemExit("the stream ended before the prompt was being read: use a slower model or a longer prompt")
    return connection


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a model for ossrun serve (default: the demo model)")
    parser.add_argument("--scrapes", type=int, default=50)
    parser.add_argument("--cancels", type=int, default=3)
    args = parser.parse_args()
    process, port = start([args.model] if args.model else ["--demo"])
    try:
        model = json.loads(get(port, "/v1/models"))["data"][0]["id"]
        for number in range(3):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            connection.request(
                "POST",
                "/v1/chat/completions",
                json.dumps(
                    {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": f"What is {10 + number} + 20?"}]}
                ),
                {"Content-Type": "application/json"},
            )
            connection.getresponse().read()
            connection.close()
        scrapes = []
        for _ in range(args.scrapes):
            started = time.perf_counter()
            get(port, "/metrics")
            scrapes.append((time.perf_counter() - started) * 1000)
        print(f"/metrics: median {statistics.median(scrapes):.2f} ms, max {max(scrapes):.2f} ms ({args.scrapes} scrapes)")
        freed = []
        for number in range(args.cancels):
            connection = read_until_the_prompt_is_being_read(port, model, f"Round {number}. {STORY}")
            started = time.perf_counter()
            connection.close()
            while busy(port) != 0:
                time.sleep(0.01)
            freed.append((time.perf_counter() - started) * 1000)
        print(
            "sequence free after the client left mid-prefill: "
            + ", ".join(f"{ms:.0f} ms" for ms in freed)
            + f" (median {statistics.median(freed):.0f} ms)"
        )
    finally:
        process.terminate()
        process.wait(30)


if __name__ == "__main__":
    main()
