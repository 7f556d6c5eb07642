"""``ossrun batch`` over 64 requests of the demo model: wall time with several lines decoded
together, against the same file with one line at a time, and against running the requests one by
one as ``ossrun run`` commands.

Each measurement is a whole command from start to exit (loading the demo model included), in an
ossrun home where the demo GGUF is already built; the three ways take turns ``--runs`` times and
the figures are medians. The requests mix Chat Completions and Responses lines: additions,
capitals, the weather (a function call) and greetings, at the three reasoning efforts.

    python benchmarks/batch_benchmark.py --requests 64 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CAPITALS = ["France", "Kenya", "Peru", "Japan", "Norway", "Chile", "Egypt", "Canada"]
CITIES = ["Oslo", "Lima", "Tokyo", "Cairo"]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def question(i: int) -> tuple[str, bool]:
    kind = i % 4
    if kind == 0:
        return f"What is {10 + i % 80} + {11 + (i * 7) % 80}?", False
    if kind == 1:
        return f"What is the capital of {CAPITALS[i % len(CAPITALS)]}?", False
    if kind == 2:
        return f"What's the weather in {CITIES[i % len(CITIES)]}?", True
    return "Hello there!", False


def lines(count: int) -> list[dict]:
    out = []
    for i in range(count):
        text, tools = question(i)
        effort = ("low", "medium", "high")[i % 3]
        if i % 2:
            body = {"model": "demo", "input": text, "reasoning": {"effort": effort}}
            if tools:
                body["tools"] = [{"type": "function", **WEATHER_TOOL["function"]}]
            url = "/v1/responses"
        else:
            body = {"model": "demo", "messages": [{"role": "user", "content": text}], "reasoning_effort": effort}
            if tools:
                body["tools"] = [WEATHER_TOOL]
            url = "/v1/chat/completions"
        out.append({"custom_id": f"request-{i}", "method": "POST", "url": url, "body": body})
    return out


def batch_seconds(requests: Path, output: Path, parallel: int, threads: int, env: dict) -> tuple[float, dict]:
    output.unlink(missing_ok=True)
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "ossrun",
            "batch",
            str(requests),
            "-o",
            str(output),
            "--demo",
            "--parallel",
            str(parallel),
            "--threads",
            str(threads),
        ],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seconds = time.perf_counter() - started
    answers = [json.loads(line) for line in output.read_text().splitlines()]
    ok = sum(1 for a in answers if a["response"] and a["response"]["status_code"] == 200)
    tokens = sum(
        a["response"]["body"]["usage"].get("completion_tokens", a["response"]["body"]["usage"].get("output_tokens", 0))
        for a in answers
        if a["response"]
    )
    return seconds, {"answered": ok, "lines": len(answers), "completion_tokens": tokens}


def one_by_one_seconds(requests: list[dict], threads: int, env: dict) -> float:
    started = time.perf_counter()
    for line in requests:
        body = line["body"]
        text = body["input"] if "input" in body else body["messages"][0]["content"]
        effort = body.get("reasoning_effort") or body["reasoning"]["effort"]
        subprocess.run(
            [sys.executable, "-m", "ossrun", "run", "--demo", "-r", effort, "--threads", str(threads), text],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--parallel", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-run", action="store_true", help="leave out the ossrun run commands")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} at start", flush=True)

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        env = {**os.environ, "OSSRUN_HOME": str(folder / "home")}
        subprocess.run(
            [sys.executable, "-m", "ossrun", "run", "--demo", "Hello"],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # builds the demo GGUF once
        requests = lines(args.requests)
        path = folder / "requests.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in requests))
        ways = [1, *args.parallel]
        times: dict[str, list[float]] = {}
        counts: dict[str, dict] = {}
        for run in range(args.runs):
            for parallel in ways:
                seconds, count = batch_seconds(path, folder / "out.jsonl", parallel, args.threads, env)
                times.setdefault(f"batch --parallel {parallel}", []).append(seconds)
                counts[f"batch --parallel {parallel}"] = count
                print(f"  run {run + 1}: batch --parallel {parallel}: {seconds:.1f} s {count}", flush=True)
            if not args.skip_run:
                seconds = one_by_one_seconds(requests, args.threads, env)
                times.setdefault("ossrun run, one by one", []).append(seconds)
                print(f"  run {run + 1}: {len(requests)} x ossrun run: {seconds:.1f} s", flush=True)

    serial = statistics.median(times["batch --parallel 1"])
    report = {}
    for way, values in times.items():
        median = statistics.median(values)
        report[way] = {
            "median_s": round(median, 1),
            "runs": [round(v, 1) for v in values],
            "speedup_over_batch_parallel_1": round(serial / median, 2),
            **counts.get(way, {}),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
