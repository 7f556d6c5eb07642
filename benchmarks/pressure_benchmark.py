"""A 16 GiB machine simulated on a larger one: decode speed beside another process's memory.

Another process (the *hog*) allocates and touches ``--hog`` GiB of anonymous memory (8 GiB on
a 24 GiB host leaves what a 16 GiB laptop has; on a host that other work shares, ``--leave
14.5`` holds all but 14.5 GiB of what is available instead) and holds it until the benchmark ends (it
reads its stdin, which closes when the benchmark exits, and the kernel kills it if the
benchmark dies). Then:

1. ``ossrun chat`` and ``ossrun serve`` with ``--ctx auto`` load, say which context they
   chose (chat's banner, serve's start line), and decode ``--tokens`` tokens (serve: two
   replies, the first after the load and the next; the ratio is the next's); their speed is
   compared with the same commands without the hog (target: at least 0.9x).
2. Which pages the kernel drops: a bare llama.cpp loop decodes with the weights memory-mapped
   (llama-server's default), mapped with the ranges every token reads locked (what ossrun does,
   ``ossrun.engine.resident``) and read into memory (what ossrun does where it may not lock),
   each alone and beside the hog; ``mincore`` says how much of the file's pages of the
   non-expert tensors (read by every token) and of the expert tensors (copied by the MXFP4
   repack, never read again) are resident after the run.

    python benchmarks/pressure_benchmark.py --model ~/ossrun-bench/gpt-oss-20b-random.gguf --hog 8
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

GiB = 2**30
QUESTION = "Explain, step by step, how a bicycle stays upright when it moves."
HOG = """
import ctypes, mmap, sys
libc = ctypes.CDLL(None)
libc.prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL: dies with the benchmark
size = int(sys.argv[1])
block = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for offset in range(0, size, 4096):
    block[offset] = 1  # touch every page: anonymous memory the kernel cannot drop (no swap)
print("ready", flush=True)
sys.stdin.read()  # until the benchmark ends
"""


class Hog:
    """Another process holding ``gib`` GiB of anonymous memory until closed."""

    def __init__(self, gib: float):
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOG, str(int(gib * GiB))], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the memory hog did not start")

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(60)

    def __enter__(self) -> Hog:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable")


# -- ossrun chat and ossrun serve ------------------------------------------------------------------------------


def chat_run(model: Path, tokens: int, threads: int) -> dict:
    """One question through ``ossrun chat --ctx auto`` on a pipe: the context its banner names, the decode speed
    its stats line gives."""
    command = [
        sys.executable,
        "-m",
        "ossrun",
        "chat",
        str(model),
        "--ctx",
        "auto",
        "--threads",
        str(threads),
        "--temperature",
        "0",
        "--max-tokens",
        str(tokens),
        "-r",
        "low",
    ]
    result = subprocess.run(command, input=QUESTION + "\n", capture_output=True, text=True, timeout=1800)
    banner = re.search(r"ctx (\d+) \(auto\)", result.stderr)
    speed = re.search(r"decode (\d+) tokens at ([\d.]+) tok/s", result.stderr)
    if result.returncode or not banner or not speed:
        return {"error": f"exit {result.returncode}: {result.stderr.strip()[-500:]}"}
    return {"ctx": int(banner.group(1)), "tokens": int(speed.group(1)), "tokens_per_second": float(speed.group(2))}


def serve_run(model: Path, tokens: int, threads: int) -> dict:
    """``ossrun serve --ctx auto``: the context its start line names, and the decode speed of two replies, the
    first after the load and the next (the server's own figures: /metrics' generated tokens over decode seconds)."""
    from parallel_benchmark import free_port

    port = free_port()
    command = [
        sys.executable,
        "-m",
        "ossrun",
        "serve",
        str(model),
        "--ctx",
        "auto",
        "--threads",
        str(threads),
        "--parallel",
        "1",
        "--port",
        str(port),
    ]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    listening = threading.Event()

    def read() -> None:
        for line in server.stderr:
            lines.append(line)
            if "listening on" in line:
                listening.set()

    threading.Thread(target=read, daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    try:
        if not listening.wait(900):
            return {"error": "".join(lines)[-500:]}
        chosen = re.search(r"ctx (\d+) \(auto\)", "".join(lines))
        with urllib.request.urlopen(f"{base}/v1/models", timeout=60) as response:
            name = json.loads(response.read())["data"][0]["id"]
        speeds = []
        for question in (QUESTION, QUESTION + " Keep it short."):
            before = server_metrics(base)
            body = {
                "model": name,
                "messages": [{"role": "user", "content": question}],
                "max_tokens": tokens,
                "temperature": 0,
                "reasoning_effort": "low",
            }
            request = urllib.request.Request(
                f"{base}/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=1800) as response:
                json.loads(response.read())
            after = server_metrics(base)
            generated = after["generated_tokens_total"] - before["generated_tokens_total"]
            speeds.append(generated / (after["decode_seconds_total"] - before["decode_seconds_total"]))
        if not chosen:
            return {"error": "".join(lines)[-500:]}
        return {
            "ctx": int(chosen.group(1)),
            "tokens": tokens,
            "first_tokens_per_second": speeds[0],
            "tokens_per_second": speeds[1],
        }
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()


def server_metrics(base: str) -> dict[str, float]:
    """The unlabelled counters of ``/metrics`` by name, without the ``ossrun_`` prefix."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=60) as response:
        text = response.read().decode()
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            key, value = line.rsplit(" ", 1)
            found[key.removeprefix("ossrun_")] = float(value)
    return found


# -- which pages: a bare loop, the weights mapped or read ----------------------------------------------------------


def tensor_ranges(model: Path) -> dict[str, list[tuple[int, int]]]:
    from ossrun.engine.gguf_header import read_header
    from ossrun.engine.memory import EXPERT_TENSORS

    header = read_header(model)
    ranges: dict[str, list[tuple[int, int]]] = {"experts": [], "other": []}
    for tensor in header.tensors:
        start = header.data_offset + tensor.offset
        ranges["experts" if EXPERT_TENSORS.search(tensor.name) else "other"].append((start, start + tensor.n_bytes))
    return ranges


def resident_share(model: Path, ranges: list[tuple[int, int]]) -> float:
    """The share of these byte ranges of the file that are in the page cache now (``mincore`` over a fresh
    read-only mapping: mapping a file reads nothing)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    page = os.sysconf("SC_PAGE_SIZE")
    size = model.stat().st_size
    vector = (ctypes.c_ubyte * (-(-size // page)))()
    with open(model, "rb") as file:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, file.fileno(), 0)
        if address in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap failed")
        try:
            if libc.mincore(address, size, vector) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
        finally:
            libc.munmap(address, size)
    resident = total = 0
    for start, end in ranges:
        pages = range(start // page, -(-end // page))
        total += len(pages)
        resident += sum(vector[i] & 1 for i in pages)
    return resident / max(total, 1)


BARE = """
import json, sys, time
import llama_cpp
from ossrun.engine.ggml import place_weights
model_path, mode, tokens, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
quiet = llama_cpp.llama_log_callback(lambda *a: None)  # kept referenced: llama.cpp calls it
llama_cpp.llama_log_set(quiet, None)
llama_cpp.llama_backend_init()
params = llama_cpp.llama_model_default_params()
params.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE if mode == "read" else llama_cpp.LLAMA_LOAD_MODE_MMAP
place_weights(params)
model = llama_cpp.llama_model_load_from_file(model_path.encode(), params)
if mode == "locked":
    from ossrun.engine import resident
    from ossrun.engine.gguf_header import read_header
    header = read_header(model_path)
    assert resident.lock_mapped(model_path, resident.hot_ranges(header), resident.cold_ranges(header))
cp = llama_cpp.llama_context_default_params()
cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_threads, cp.n_threads_batch = 4096, 512, 512, threads, threads
ctx = llama_cpp.llama_init_from_model(model, cp)
batch = llama_cpp.llama_batch_init(1, 0, 1)
times = []
for pos in range(tokens + 4):
    batch.token[0], batch.pos[0], batch.n_seq_id[0], batch.logits[0], batch.n_tokens = 1000 + pos, pos, 1, True, 1
    batch.seq_id[0][0] = 0
    start = time.perf_counter()
    assert llama_cpp.llama_decode(ctx, batch) == 0
    times.append(time.perf_counter() - start)
status = {l.split(":")[0]: int(l.split()[1]) * 1024 for l in open("/proc/self/status")
          if l.startswith(("RssAnon", "RssFile", "VmLck"))}
print(json.dumps({"tokens_per_second": 1 / sorted(times[4:])[len(times[4:]) // 2], **status}), flush=True)
"""


def bare_run(model: Path, mode: str, tokens: int, threads: int, ranges: dict) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", BARE, str(model), mode, str(tokens), str(threads)], capture_output=True, text=True, timeout=1800
    )
    if result.returncode:
        return {"error": f"exit {result.returncode}: {result.stderr.strip()[-500:]}"}
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    figures.update({f"resident_{kind}": round(resident_share(model, spans), 3) for kind, spans in ranges.items()})
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--hog", type=float, default=8.0, help="GiB the other process holds")
    parser.add_argument(
        "--leave",
        type=float,
        help="instead of --hog: hold all but this many GiB of what is available "
        "(on a host other work shares, what a 16 GiB machine leaves: 14.5)",
    )
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip", nargs="*", default=[], choices=["chat", "serve", "pages"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.leave is not None:
        args.hog = max(0.0, (mem_available() - args.leave * GiB) / GiB)
    report: dict = {"model": str(args.model), "hog_gib": round(args.hog, 2), "tokens": args.tokens}
    runners = {"chat": chat_run, "serve": serve_run}
    for name, runner in runners.items():
        if name in args.skip:
            continue
        alone = runner(args.model, args.tokens, args.threads)
        with Hog(args.hog):
            available = mem_available()
            beside = runner(args.model, args.tokens, args.threads)
        ratio = beside.get("tokens_per_second", 0) / alone["tokens_per_second"] if "tokens_per_second" in alone else None
        report[name] = {"alone": alone, "beside_hog": beside, "mem_available_beside_hog": available, "ratio": ratio}
        print(name, json.dumps(report[name]), flush=True)
    if "pages" not in args.skip:
        ranges = tensor_ranges(args.model)
        report["pages"] = {}
        for label in ("mmap", "locked", "read"):
            alone = bare_run(args.model, label, args.tokens, args.threads, ranges)
            with Hog(args.hog):
                beside = bare_run(args.model, label, args.tokens, args.threads, ranges)
            measured = "error" not in alone and "error" not in beside
            ratio = beside["tokens_per_second"] / alone["tokens_per_second"] if measured else None
            report["pages"][label] = {"alone": alone, "beside_hog": beside, "ratio": ratio}
            print("pages", label, json.dumps(report["pages"][label]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v.get("ratio") if isinstance(v, dict) and "ratio" in v else v for k, v in report.items()}))


if __name__ == "__main__":
    main()
