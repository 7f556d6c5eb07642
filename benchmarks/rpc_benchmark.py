"""Benchmark one model split over this process and two loopback workers (llama.cpp's RPC backend).

On a full-size gpt-oss GGUF (by default the random-weight gpt-oss-20b of
``benchmarks/convert_benchmark.py``, written and converted here if it is missing), all on this
machine, each figure the median of ``--runs``:

1. local: the whole model in this process (MXFP4 experts repacked for the CPU, as ossrun loads it);
2. local, plain kernels: the same with llama.cpp's repack off, which is how a worker computes
   (workers receive weights in the CPU's default buffer type): the cost of a layer on a worker;
3. split over this process and two ``ossrun worker`` processes on 127.0.0.1 (the layers evenly:
   8 + 8 + 8 for the 20b), first with empty worker caches, then with the caches the first load
   filled (tensors over 10 MiB are then not sent again);
4. the bytes that cross the "network": the same split through byte-counting relays in front of
   the workers, at load (without and with the cache) and per token (prefill and decode).

For each: load time, prefill tokens/s (``--prompt`` random tokens, one batch), decode tokens/s
(``--tokens`` tokens, greedy). Loopback has no bandwidth limit and sub-millisecond latency: the
figures for real networks are worked out from the bytes, on paper.

    python benchmarks/rpc_benchmark.py --dir ~/ossrun-bench               # the random 20b (needs ~24 GB of RAM)
    python benchmarks/rpc_benchmark.py --model PATH.gguf
    python benchmarks/rpc_benchmark.py --layers 4 --experts 8          # a 20b-shaped model cut short, to try it out

Workers and this process share the machine's cores: they compute one after another (one
sequence has no overlap between machines), each with ``--threads`` threads.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the workers and the byte-counting relay of the RPC tests
sys.path.insert(0, str(ROOT / "benchmarks"))

import convert_benchmark  # noqa: E402
import ossrun  # noqa: E402
from helpers.rpc_helpers import Relay, Worker  # noqa: E402
from ossrun.engine import ggml  # noqa: E402
from ossrun.engine.protocol import GenerationRequest, Sampling  # noqa: E402
from ossrun.machine import physical_cores  # noqa: E402

DEFAULT_DIR = Path.home() / "ossrun-bench"
GREEDY = Sampling(temperature=0.0)


def full_size_gguf(folder: Path) -> Path:
    """The random gpt-oss-20b of convert_benchmark.py, written and converted if missing."""
    from ossrun.convert import convert

    output = folder / convert_benchmark.OUTPUT_NAME
    if not output.is_file():
        checkpoint = folder / convert_benchmark.CHECKPOINT_NAME
        if not (checkpoint / "model.safetensors.index.json").is_file():
            convert_benchmark.write_checkpoint(checkpoint)
        convert(checkpoint, output)
    return output


def cut_short_gguf(folder: Path, layers: int, experts: int) -> Path:
    """A gpt-oss-20b-shaped model (hidden 2880, real vocabulary) with fewer layers and experts."""
    from ossrun.convert import convert
    from ossrun.harmony.vocab import write_tokenizer_files

    output = folder / f"gpt-oss-20b-random-{layers}l-{experts}e.gguf"
    if output.is_file():
        return output
    config = json.loads((convert_benchmark.REFERENCE / "config.json").read_text())
    config.update(
        num_hidden_layers=layers,
        num_local_experts=experts,
        num_experts_per_tok=min(4, experts),
        experts_per_token=min(4, experts),
        layer_types=config["layer_types"][:layers],
    )
    checkpoint = Path(tempfile.mkdtemp(prefix="checkpoint-", dir=folder))
    try:
        (checkpoint / "config.json").write_text(json.dumps(config))
        for name in ("generation_config.json", "chat_template.jinja"):
            shutil.copyfile(convert_benchmark.REFERENCE / name, checkpoint / name)
        write_tokenizer_files(convert_benchmark.TIKTOKEN, checkpoint)
        convert_benchmark.write_shard(
            checkpoint / "model.safetensors", convert_benchmark.tensor_specs(config), np.random.default_rng(0)
        )
        convert(checkpoint, output)
    finally:
        shutil.rmtree(checkpoint)
    return output


@contextmanager
def plain_cpu_kernels():
    """Load without llama.cpp's extra CPU buffer types (no MXFP4 repack): as a worker computes."""
    original = ggml.place_weights
    ggml.place_weights = lambda params: setattr(params, "use_extra_bufts", False)
    from ossrun.engine import llama

    llama.place_weights = ggml.place_weights
    try:
        yield
    finally:
        ggml.place_weights = llama.place_weights = original


def measure(model_path: Path, args, rpc=None, relays=()) -> dict:
    """Load, prefill ``--prompt`` tokens, decode ``--tokens``; seconds, speeds, and bytes through ``relays``."""
    for relay in relays:
        relay.reset()
    start = time.perf_counter()
    model = ossrun.load(model_path, ctx=args.ctx, threads=args.threads, rpc=rpc)
    figures = {"load_s": time.perf_counter() - start, "placement": model.placement}
    figures["load_bytes"] = [relay.to_worker for relay in relays]
    engine = model.engine
    prompt = np.random.default_rng(1).integers(0, 199998, args.prompt).tolist()

    def generate(tokens: list[int], count: int):
        generation = engine.generate(GenerationRequest(prompt=tuple(tokens), sampling=GREEDY, max_tokens=count))
        assert len(list(generation)) == count
        return generation.stats

    prefill, decode = [], []
    for run in range(args.runs):
        tokens = [run] + prompt[1:]  # a new first token: nothing is reused
        for relay in relays:
            relay.reset()
        stats = generate(tokens, 1)  # the prompt in one batch, then one sample
        assert stats.evaluated == len(tokens)
        prefill.append(stats.evaluated / stats.prefill_seconds)
        if run == 0:
            figures["prefill_bytes"] = [(r.to_worker / len(tokens), r.from_worker / len(tokens)) for r in relays]
        for relay in relays:
            relay.reset()
        stats = generate(tokens, args.tokens + 1)  # the cached prompt (its last token again), then one token at a time
        decode.append((stats.generated - 1) / stats.decode_seconds)
        if run == 0:
            steps = stats.evaluated + stats.generated - 1
            figures["decode_bytes"] = [(r.to_worker / steps, r.from_worker / steps) for r in relays]
    model.close()
    figures.update(
        prefill_tps=statistics.median(prefill), decode_tps=statistics.median(decode), prefill_runs=prefill, decode_runs=decode
    )
    return figures


def start_workers(home: Path, args, caches) -> list[Worker]:
    threads = args.threads or physical_cores()
    workers = [Worker(home=home, cache_dir=cache, threads=threads) for cache in caches]
    for worker in workers:
        worker.ready()
    return workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="work folder: the model, worker caches")
    parser.add_argument("--model", type=Path, help="a gpt-oss GGUF [default: the random 20b in --dir]")
    parser.add_argument("--layers", type=int, help="instead: a 20b-shaped random model with this many layers")
    parser.add_argument("--experts", type=int, default=32, help="experts per layer of that model")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--prompt", type=int, default=256, help="prompt tokens (one prefill batch)")
    parser.add_argument("--tokens", type=int, default=32, help="tokens decoded per run")
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=None, help="threads of this process and of each worker")
    args = parser.parse_args()

    args.dir.mkdir(parents=True, exist_ok=True)
    model_path = args.model or (cut_short_gguf(args.dir, args.layers, args.experts) if args.layers else full_size_gguf(args.dir))
    home = Path(tempfile.mkdtemp(prefix="ossrun-rpc-bench-", dir=args.dir))
    os.environ["OSSRUN_HOME"] = str(home)
    os.environ.setdefault("OSSRUN_RPC_TIMEOUT", "600")
    caches = [home / "cache-a", home / "cache-b"]
    size = model_path.stat().st_size
    print(
        f"{model_path.name}: {size / 1e9:.2f} GB; {args.threads or 'default'} threads; context {args.ctx}; "
        f"prompt {args.prompt} tokens; {args.tokens} decoded tokens; {args.runs} runs",
        flush=True,
    )

    results = {}
    ossrun.load(model_path, ctx=args.ctx, threads=args.threads).close()  # page cache warm for every load below
    results["local"] = measure(model_path, args)
    print(f"local: {results['local']}", flush=True)
    with plain_cpu_kernels():
        results["plain"] = measure(model_path, args)
    print(f"local, plain kernels: {results['plain']}", flush=True)

    workers = start_workers(home, args, caches)
    endpoints = [w.endpoint for w in workers]
    try:
        results["cold"] = measure(model_path, args, rpc=endpoints)
        print(f"2 workers, empty caches: {results['cold']}", flush=True)
        for w in workers:
            w.wait_for("client left")
        results["warm"] = measure(model_path, args, rpc=endpoints)
        print(f"2 workers, caches filled: {results['warm']}", flush=True)
        for w in workers:
            w.wait_for("client left")
        relays = [Relay(w.port) for w in workers]
        results["bytes_warm"] = measure(model_path, args, rpc=[r.endpoint for r in relays], relays=relays)
        for w in workers:
            w.wait_for("client left")
    finally:
        for w in workers:
            w.stop()
    uncached = start_workers(home, args, [None, None])
    try:
        relays = [Relay(w.port) for w in uncached]
        results["bytes_cold"] = measure(model_path, args, rpc=[r.endpoint for r in relays], relays=relays)
    finally:
        for w in uncached:
            w.stop()
    cache_bytes = [sum(p.stat().st_size for p in c.iterdir()) for c in caches]

    report(results, args, cache_bytes)
    shutil.rmtree(home, ignore_errors=True)


def report(results: dict, args, cache_bytes: list[int]) -> None:
    print()
    print(results["cold"]["placement"])
    print(f"{'':34s} {'load':>9s} {'prefill':>13s} {'decode':>13s}")
    for key, label in [
        ("local", "local (MXFP4 repack)"),
        ("plain", "local, plain kernels (as a worker)"),
        ("cold", "2 workers, empty caches"),
        ("warm", "2 workers, caches filled"),
    ]:
        r = results[key]
        runs = ", ".join(f"{t:.2f}" for t in r["decode_runs"])
        print(
            f"{label:34s} {r['load_s']:7.1f} s {r['prefill_tps']:7.2f} tok/s {r['decode_tps']:7.2f} tok/s  (decode runs: {runs})"
        )
    local, plain, warm = results["local"], results["plain"], results["warm"]
    print(
        f"decode: split / local {warm['decode_tps'] / local['decode_tps']:.2f}; plain / repack kernels "
        f"{plain['decode_tps'] / local['decode_tps']:.2f}; prefill split / local {warm['prefill_tps'] / local['prefill_tps']:.2f}"
    )
    cold, hot = results["bytes_cold"], results["bytes_warm"]
    print(
        f"bytes sent to the workers at load: empty caches {', '.join(f'{b / 1e9:.2f} GB' for b in cold['load_bytes'])}; "
        f"caches filled {', '.join(f'{b / 1e6:.1f} MB' for b in hot['load_bytes'])} (caches hold "
        f"{', '.join(f'{b / 1e9:.2f} GB' for b in cache_bytes)})"
    )
    for phase in ("prefill", "decode"):
        per_worker = hot[f"{phase}_bytes"]
        text = "; ".join(
            f"worker {i + 1}: {up / 1e3:.1f} KB in, {down / 1e3:.1f} KB out" for i, (up, down) in enumerate(per_worker)
        )
        total = sum(up + down for up, down in per_worker)
        print(f"{phase} bytes per token: {text}; {total / 1e3:.1f} KB per token in all")


if __name__ == "__main__":
    main()
