"""The demo model: build time from the packaged checkpoint, speed, and its figures on held-out prompts.

    python benchmarks/demo_benchmark.py [--builds 3] [--per-task 8]

Each build starts from an empty ossrun home (expand the compact checkpoint into the HF layout,
convert it, cache the GGUF); the target is under a minute. Then decode speed over a few replies,
and the evaluation of ``demo/evaluate.py`` (well-formed harmony, correct answers, analysis length
per effort; greedy and at temperature 1.0) on held-out prompts and on phrasings never trained on.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from demo import evaluate  # noqa: E402


def build_seconds() -> tuple[float, Path]:
    from ossrun.store import demo

    with tempfile.TemporaryDirectory() as home:
        os.environ["OSSRUN_HOME"] = home
        started = time.perf_counter()
        path = demo.demo_gguf()
        seconds = time.perf_counter() - started
        size = path.stat().st_size
    return seconds, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--builds", type=int, default=3)
    parser.add_argument("--per-task", type=int, default=evaluate.DEFAULT_PER_TASK_AND_EFFORT)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} at start")
    builds = [build_seconds() for _ in range(args.builds)]
    times = [seconds for seconds, _ in builds]
    print(
        f"demo build from the compact checkpoint: median {statistics.median(times):.1f} s "
        f"(runs: {', '.join(f'{t:.1f}' for t in times)}), GGUF {builds[0][1] / 2**20:.0f} MiB"
    )

    home = tempfile.mkdtemp()
    os.environ["OSSRUN_HOME"] = home
    import ossrun

    model = ossrun.load("demo", ctx=4096)
    speeds = []
    for question in ("What is 47 + 38?", "What is the capital of Peru?", "Hello there."):
        reply = model.chat([{"role": "user", "content": question}], reasoning_effort="high", temperature=1.0, seed=1)
        speeds.append(reply.timings.decode_tps)
    print(f"decode {statistics.median(speeds):.0f} tokens/s (median of {len(speeds)} replies at high effort)")
    model.close()
    evaluate.main(["--per-task", str(args.per_task), "--unseen"])


if __name__ == "__main__":
    main()
