"""Benchmark the python tool: the wall time of one trivial run, from the call to its result.

Runs ``print(1)`` ``--runs`` times in one ``PythonSandbox`` (after a first run that also
probes the isolation and starts the session, timed apart) and prints the median, the fastest
and the slowest run, with the isolation the runs had, how each bound on a run as a whole holds
on this machine (a cgroup, init's count, init's samples) and the load average.

``--bounds`` then tries the totals the way the code could: three processes that each take
memory, three that spin, files written until the disk bound; and says how each run ended, how
far it got and how long it took. ``--without-cgroups`` shows what a user who may make no cgroup
gets: totals measured by the run's init.

    python benchmarks/sandbox_benchmark.py --runs 20
    python benchmarks/sandbox_benchmark.py --runs 0 --bounds [--without-cgroups]
"""

from __future__ import annotations

import argparse
import os
import statistics
import textwrap
import time

from ossrun.tools import PythonSandbox, SandboxLimits, cgroups

MiB = 1 << 20
# Three processes each take 10 MiB at a time, printing the total they hold together.
MEMORY = textwrap.dedent("""
    import os, sys, time
    pipes = []
    for _ in range(3):
        r, w = os.pipe()
        if os.fork() == 0:
            held = []
            while True:
                held.append(bytearray(10 << 20))
                os.write(w, b"1")
                time.sleep(0.005)
        pipes.append(r)
    total = 0
    while True:
        total += 10 * sum(len(os.read(r, 64)) for r in pipes)
        print(total, flush=True)
    """)
SPIN = (
    "import subprocess, sys\nfor p in [subprocess.Popen([sys.executable, '-c', 'while True: pass']) for _ in range(3)]: p.wait()"
)
DISK = textwrap.dedent("""
    written = 0
    with open("big", "wb") as f:
        while True:
            f.write(b"x" * (1 << 20))
            f.flush()
            written += 1
            print(written, flush=True)
    """)


def try_bounds() -> None:
    """Run each attempt on the totals; print how it ended."""
    limits = SandboxLimits(memory_bytes=512 * MiB, cpu_seconds=2, timeout=60, disk_bytes=256 * MiB)
    with PythonSandbox(limits) as box:
        print("bounds for a run as a whole: " + ", ".join(f"{name} {how}" for name, how in box.totals().items()))
        for name, code, unit in (
            ("memory, 3 processes, bound 512 MiB", MEMORY, "MiB held"),
            ("CPU time, 3 processes, bound 2 s", SPIN, ""),
            ("disk, one file, bound 256 MiB", DISK, "MiB written"),
        ):
            started = time.perf_counter()
            result = box.run(code)
            seconds = time.perf_counter() - started
            last = result.stdout.split()[-1] if result.stdout.split() else "0"
            reached = f", last said {last} {unit}" if unit else ""
            ending = result.status if result.status != "exit status 1" else result.stderr.strip().splitlines()[-1]
            print(f"{name}: {ending}{reached}, after {seconds:.2f} s")


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
    parser.add_argument("--bounds", action="store_true", help="also try the bounds on a run as a whole")
    parser.add_argument("--without-cgroups", action="store_true", help="as if this user could make no cgroup")
    args = parser.parse_args()
    if args.without_cgroups:
        cgroups.find = lambda: None
    if args.runs:
        report_runs(args.runs)
    if args.bounds:
        try_bounds()


def report_runs(runs: int) -> None:
    times, isolation = time_runs(runs)
    ms = sorted(t * 1000 for t in times)
    print(f"python tool, {runs} runs of print(1), isolation: {isolation}, load average {os.getloadavg()[0]:.1f}")
    print(f"median {statistics.median(ms):.1f} ms, fastest {ms[0]:.1f} ms, slowest {ms[-1]:.1f} ms")


if __name__ == "__main__":
    main()
