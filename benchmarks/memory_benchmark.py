"""Memory of a loaded model: ossrun beside llama-server and the memory planner's prediction.

For each context size, KV cache type and cache mode (the small sliding-window cache or
``swa_full``), one process loads the model, answers a short prompt with 16 tokens, and
reports ``RssAnon`` (anonymous memory), ``VmRSS`` and ``VmHWM`` (peak resident) from
``/proc/PID/status``; the planner's figures for the same load are printed beside it: what the
full context takes, and what is resident right after loading (the KV cache's pages are taken as
tokens fill it), which is the one to compare.
llama-server (``benchmarks/llama_tools.py``) runs with the same settings: one model in
memory at a time, ``-np 1``, the same threads, context, cache type and mode; it maps the file
(its default, as ossrun does: ``LlamaEngine``) unless ``--llama-read`` asks it to read the
weights into memory (``--load-mode none``, what ossrun does where it may not lock them).

    python benchmarks/memory_benchmark.py --model ~/ossrun-bench/gpt-oss-20b-random.gguf \\
        --ctx 8192 32768 131072 --kv-type f16 q8_0 --mode small full
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_tools import wait_until_healthy

GiB = 2**30
FIELDS = ("RssAnon", "RssFile", "VmRSS", "VmHWM")
PROMPT = "Why is the sky blue?"
LONG_PROMPT_WORDS = 600  # about 1200 tokens: more than a 512-token batch


def status(pid: int | str = "self") -> dict:
    """RssAnon, RssFile, VmRSS, VmHWM of a process, in bytes."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in FIELDS:
            found[key] = int(value.split()[0]) * 1024
    return found


def child(args) -> None:
    """Load with ossrun, answer PROMPT with 16 tokens, print the process's memory and the plan."""
    import ossrun
    from ossrun.engine import memory
    from ossrun.engine.gguf_header import check_gpt_oss

    cache = memory.CacheSettings.parse(args.kv_type, swa_full=args.mode == "full")
    planned = memory.plan(check_gpt_oss(args.model), args.ctx[0], cache=cache)
    started = time.perf_counter()
    with ossrun.load(
        args.model, ctx=args.ctx[0], kv_type=args.kv_type, swa_full=args.mode == "full", threads=args.threads
    ) as model:
        loaded = time.perf_counter() - started
        after_load = status()
        reply = model.chat([{"role": "user", "content": PROMPT}], max_tokens=16, temperature=0, reasoning_effort="low")
        after = status()
        after_long = None
        if args.long_prompt:  # a prompt longer than a batch: llama.cpp's compute buffer used in full
            long_prompt = " ".join(f"w{i}" for i in range(LONG_PROMPT_WORDS))
            model.chat([{"role": "user", "content": long_prompt}], max_tokens=1, temperature=0, reasoning_effort="low")
            after_long = status()
    print(
        json.dumps(
            {
                "load_seconds": round(loaded, 1),
                "after_load": after_load,
                "after_16_tokens": after,
                "after_long_prompt": after_long,
                "generated": reply.usage.completion_tokens,
                "planned": planned.total,
                "planned_at_load": planned.at_load,
                "planned_parts": {
                    k: getattr(planned, k)
                    for k in ("experts", "weights", "kv_cache", "checkpoints", "compute", "outputs", "runtime")
                },
            }
        )
    )


def ossrun_run(args, ctx: int, kv_type: str, mode: str) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        "--model",
        str(args.model),
        "--ctx",
        str(ctx),
        "--kv-type",
        kv_type,
        "--mode",
        mode,
        "--threads",
        str(args.threads),
        *(["--long-prompt"] if args.long_prompt else []),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if result.returncode:
        return {"error": result.stderr.strip().splitlines()[-1:]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def llama_server_run(args, binary: Path, ctx: int, kv_type: str, mode: str) -> dict:
    from parallel_benchmark import free_port

    port = free_port()
    command = [
        str(binary),
        "-m",
        str(args.model),
        "-t",
        str(args.threads),
        "-tb",
        str(args.threads),
        "-np",
        "1",
        "-c",
        str(ctx),
        "-ctk",
        kv_type,
        "-ctv",
        kv_type,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-webui",
    ]
    if mode == "full":
        command.append("--swa-full")
    if args.llama_read:
        command += ["--load-mode", "none"]  # read into memory
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not wait_until_healthy(server, port):
            return {"error": f"llama-server exited with {server.returncode}"}
        after_load = status(server.pid)
        # A raw completion: a model with random weights writes no harmony its chat parser would take.
        body = {"prompt": PROMPT, "n_predict": 16, "temperature": 0, "ignore_eos": True}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/completion", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=1800) as response:
            answer = json.loads(response.read())
        return {"after_load": after_load, "after_16_tokens": status(server.pid), "generated": answer["tokens_predicted"]}
    finally:
        server.terminate()
        server.wait(60)


def gib(n: int | None) -> str:
    return "-" if n is None else f"{n / GiB:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--ctx", type=int, nargs="+", default=[8192, 32768, 131072])
    parser.add_argument("--kv-type", nargs="+", default=["f16", "q8_0"])
    parser.add_argument("--mode", nargs="+", default=["small", "full"], choices=["small", "full"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--llama-server", type=Path, help="default: build it (benchmarks/llama_tools.py)")
    parser.add_argument(
        "--llama-read", action="store_true", help="llama-server reads the weights into memory instead of mapping the file"
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=["ossrun", "llama-server"])
    parser.add_argument("--configs", nargs="*", help="CTX:TYPE:MODE items, in this order, instead of every combination")
    parser.add_argument("--long-prompt", action="store_true", help="also measure after a 1200-token prompt")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.child:
        args.kv_type, args.mode = args.kv_type[0], args.mode[0]
        child(args)
        return
    binary = args.llama_server
    if binary is None and "llama-server" not in args.skip:
        from llama_tools import llama_server

        binary = llama_server()
    results = []
    print("ctx     type  mode   runner        anon  file  rss   peak  planned (at load)  at load/rss")
    if args.configs:
        configs = [(int(c), t, m) for c, t, m in (item.split(":") for item in args.configs)]
    else:
        configs = [(ctx, kv_type, mode) for ctx in args.ctx for mode in args.mode for kv_type in args.kv_type]
    for ctx, kv_type, mode in configs:
        row = {"ctx": ctx, "kv_type": kv_type, "mode": mode}
        if "ossrun" not in args.skip:
            row["ossrun"] = ossrun_run(args, ctx, kv_type, mode)
        if "llama-server" not in args.skip:
            try:
                row["llama_server"] = llama_server_run(args, binary, ctx, kv_type, mode)
            except OSError as exc:
                row["llama_server"] = {"error": str(exc)}
        results.append(row)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
        for runner in ("ossrun", "llama_server"):
            figures = row.get(runner)
            if figures is None:
                continue
            if "error" in figures:
                print(f"{ctx:<7} {kv_type:<5} {mode:<6} {runner:<12} {figures['error']}")
                continue
            after, planned, at_load = figures["after_16_tokens"], figures.get("planned"), figures.get("planned_at_load")
            ratio = f"{at_load / after['VmRSS']:.3f}" if at_load else "-"
            print(
                f"{ctx:<7} {kv_type:<5} {mode:<6} {runner:<12} {gib(after['RssAnon']):>5} {gib(after['RssFile']):>5} "
                f"{gib(after['VmRSS']):>5} {gib(after['VmHWM']):>5} {gib(planned):>8} ({gib(at_load)}) {ratio:>8}",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
