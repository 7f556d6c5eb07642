"""Benchmark the python tool: the wall time of one trivial run, from the call to its result.

Runs ``print(1)`` ``--runs`` times in one ``PythonSandbox`` (after a first run that also
probes the isolation and starts the session, timed apart) and prints the median, the fastest
and the slowest run, with the isolation the runs had, how each bound on a run as a whole holds
on this machine (a cgroup, init's count, init's samples) and the load average.

    python benchmarks/sandbox_benchmark.py --runs 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from ossrun.tools import PythonSandbox


def time_runs(runs: int) -> tuple[list[float], str]:
    with PythonSandbox() as box:
        started = time.perf_counter()
        first = box.run("print(1)")
        assert first.stdout == "1\n", first.text()
        print(f"first run (probe and session) {1000 * (time.perf_counter() - started):.1f} ms")
        isolation = box.isolation or "none"
        print("bounds for a run as a whole: " + ", ".join(f"{name} {how}" for name, how in box.totals().items()))
        for notice in box.notices():
            print(f"notice: {notice}")
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            result = box.run("print(1)")
            times.append(time.perf_counter() - started)
            assert result.stdout == "1\n", result.text()
    return times, isolation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    times, isolation = time_runs(args.runs)
    ms = sorted(t * 1000 for t in times)
    print(f"python tool, {args.runs} runs of print(1), isolation: {isolation}, load average {os.getloadavg()[0]:.1f}")
    print(f"median {statistics.median(ms):.1f} ms, fastest {ms[0]:.1f} ms, slowest {ms[-1]:.1f} ms")


if __name__ == "__main__":
    main()
