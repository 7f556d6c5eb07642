"""Benchmark what `ossrun pull` adds to a download: the hash check of every file.

Writes a file of ``--size-gb`` random bytes, then for each run:

  1. hashes it with sha256 as `ossrun pull` verifies a GGUF (``ossrun.store.integrity.file_digest``),
     once from a cold page cache (as right after a download that did not fit in RAM) and once warm;
  2. serves it from a local hub on 127.0.0.1 (tests/hubserver.py) and times, in subprocesses, the
     whole `ossrun pull` (download + verification + cache placement) and a plain
     `huggingface_hub.hf_hub_download` of the same file (no verification): their ratio is what
     ossrun adds.

It prints medians, in GB/s, and the projected verification time of the 12.1 GB gpt-oss-20b GGUF.

    python benchmarks/pull_benchmark.py --dir ~/ossrun-bench --size-gb 2 --runs 3

The page cache is dropped file by file with posix_fadvise(DONTNEED) after an fsync.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers.hubserver import HubServer  # noqa: E402
from ossrun.store.integrity import SHA256, file_digest  # noqa: E402

GGUF_20B_BYTES = 12_100_000_000
CHUNK = 64 << 20


def write_random(path: Path, n_bytes: int) -> None:
    with path.open("wb") as f:
        left = n_bytes
        while left:
            block = os.urandom(min(CHUNK, left))
            f.write(block)
            left -= len(block)
        f.flush()
        os.fsync(f.fileno())


def drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def time_hash(path: Path, cold: bool) -> float:
    if cold:
        drop_cache(path)
    start = time.perf_counter()
    file_digest(path, SHA256)
    return time.perf_counter() - start


BENCH_REPO, BENCH_FILE = "bench/bench-GGUF", "bench.gguf"
BENCH_ENTRY = f"""
[models.bench]
description = "benchmark file"
parameters = {{ total = "1M", active = "1M" }}
context_length = 4096
memory_required = "1 MiB"
reasoning_effort = "low"
sampling = {{ temperature = 1.0, top_p = 1.0 }}
gguf = {{ repo = "{BENCH_REPO}", files = ["{BENCH_FILE}"], download_size = "1 GB" }}
"""
# The same download with huggingface_hub alone: what ossrun's checks add is the difference.
PLAIN_DOWNLOAD = f"import huggingface_hub as h; h.hf_hub_download({BENCH_REPO!r}, {BENCH_FILE!r})"


def time_downloads(data: bytes, work: Path) -> tuple[float, float]:
    """Seconds for `ossrun pull` and for a plain hf_hub_download of the same file, each into a fresh cache."""
    times = []
    with HubServer() as hub:
        hub.add_repo(BENCH_REPO, {BENCH_FILE: data})
        for command in ([sys.executable, "-m", "ossrun", "pull", "bench"], [sys.executable, "-c", PLAIN_DOWNLOAD]):
            home, hf_home = Path(tempfile.mkdtemp(dir=work)), Path(tempfile.mkdtemp(dir=work))
            (home / "models.toml").write_text(BENCH_ENTRY)
            env = {
                **os.environ,
                "HF_ENDPOINT": hub.url,
                "HF_HOME": str(hf_home),
                "OSSRUN_HOME": str(home),
                "HF_HUB_DISABLE_XET": "1",
            }
            env.pop("HF_HUB_OFFLINE", None)
            start = time.perf_counter()
            subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times.append(time.perf_counter() - start)
            shutil.rmtree(home)
            shutil.rmtree(hf_home)
    return times[0], times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--size-gb", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    n_bytes = int(args.size_gb * 1e9)
    args.dir.mkdir(parents=True, exist_ok=True)
    path = args.dir / "pull-benchmark.bin"
    write_random(path, n_bytes)
    try:
        cold = [time_hash(path, cold=True) for _ in range(args.runs)]
        warm = [time_hash(path, cold=False) for _ in range(args.runs)]
        data = path.read_bytes() if n_bytes <= 4e9 else None  # the local hub serves from memory
        downloads = [time_downloads(data, args.dir) for _ in range(args.runs)] if data else []
    finally:
        path.unlink()

    def rate(seconds: list[float]) -> float:
        return n_bytes / statistics.median(seconds) / 1e9

    print(f"file: {n_bytes / 1e9:.2f} GB, {args.runs} runs, medians")
    print(f"sha256, cold cache: {rate(cold):.2f} GB/s -> {GGUF_20B_BYTES / 1e9 / rate(cold):.1f} s for the 12.1 GB GGUF")
    print(f"sha256, warm cache: {rate(warm):.2f} GB/s -> {GGUF_20B_BYTES / 1e9 / rate(warm):.1f} s for the 12.1 GB GGUF")
    if downloads:
        ossrun_pull, plain = zip(*downloads, strict=True)
        ratios = [a / b for a, b in downloads]
        print(
            f"over loopback: ossrun pull {statistics.median(ossrun_pull):.1f} s (download + sha256 + cache), "
            f"plain hf_hub_download {statistics.median(plain):.1f} s, ratio {statistics.median(ratios):.2f}"
        )


if __name__ == "__main__":
    main()
