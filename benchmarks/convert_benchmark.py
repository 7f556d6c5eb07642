"""Benchmark `ossrun convert` on a full-size random-weight gpt-oss-20b checkpoint.

Writes a gpt-oss-20b checkpoint in the HF layout with the real tensor names, shapes, dtypes and
shard assignment (3 shards, about 13.8 GB; random BF16 weights and random MXFP4 experts), then,
for each run, from a cold page cache:

  1. copies the shards with `cp` and `sync` (the disk's own speed for this data), deletes the copy;
  2. converts the checkpoint with `ossrun convert` (default Q8_0 layout).

It prints wall time, MB/s (checkpoint bytes / wall time) and peak RSS of both, and their ratio.
Targets: conversion peak RSS below 2.5 GB, wall time within 2x of the copy.

    python benchmarks/convert_benchmark.py --dir ~/ossrun-bench --runs 2

The page cache is dropped through /proc/sys/vm/drop_caches when writable (root), otherwise file
by file with posix_fadvise(DONTNEED) after an fsync. The converted GGUF is kept (--keep-output,
on by default) for the decode benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "data" / "gpt-oss-20b"
TIKTOKEN = ROOT / "ossrun" / "data" / "o200k_base.tiktoken"
DEFAULT_DIR = Path.home() / "ossrun-bench"
CHECKPOINT_NAME = "gpt-oss-20b-random-hf"
OUTPUT_NAME = "gpt-oss-20b-random.gguf"
WRITE_CHUNK = 64 << 20
MXFP4_BLOCK = 32


def tensor_specs(config: dict) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (safetensors dtype, shape) of every gpt-oss tensor in the HF layout."""
    H, F, E = config["hidden_size"], config["intermediate_size"], config["num_local_experts"]
    V, hd = config["vocab_size"], config["head_dim"]
    q, kv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
    specs = {
        "model.embed_tokens.weight": ("BF16", (V, H)),
        "model.norm.weight": ("BF16", (H,)),
        "lm_head.weight": ("BF16", (V, H)),
    }
    for b in range(config["num_hidden_layers"]):
        p = f"model.layers.{b}."
        specs.update({
            p + "input_layernorm.weight": ("BF16", (H,)),
            p + "post_attention_layernorm.weight": ("BF16", (H,)),
            p + "self_attn.q_proj.weight": ("BF16", (q, H)), p + "self_attn.q_proj.bias": ("BF16", (q,)),
            p + "self_attn.k_proj.weight": ("BF16", (kv, H)), p + "self_attn.k_proj.bias": ("BF16", (kv,)),
            p + "self_attn.v_proj.weight": ("BF16", (kv, H)), p + "self_attn.v_proj.bias": ("BF16", (kv,)),
            p + "self_attn.o_proj.weight": ("BF16", (H, q)), p + "self_attn.o_proj.bias": ("BF16", (H,)),
            p + "self_attn.sinks": ("BF16", (config["num_attention_heads"],)),
            p + "mlp.router.weight": ("BF16", (E, H)), p + "mlp.router.bias": ("BF16", (E,)),
            p + "mlp.experts.gate_up_proj_blocks": ("U8", (E, 2 * F, H // MXFP4_BLOCK, 16)),
            p + "mlp.experts.gate_up_proj_scales": ("U8", (E, 2 * F, H // MXFP4_BLOCK)),
            p + "mlp.experts.gate_up_proj_bias": ("BF16", (E, 2 * F)),
            p + "mlp.experts.down_proj_blocks": ("U8", (E, H, F // MXFP4_BLOCK, 16)),
            p + "mlp.experts.down_proj_scales": ("U8", (E, H, F // MXFP4_BLOCK)),
            p + "mlp.experts.down_proj_bias": ("BF16", (E, H)),
        })  # fmt: skip
    return specs


def random_bytes(rng: np.random.Generator, name: str, dtype: str, count: int) -> np.ndarray:
    """``count`` elements of plausible random data: BF16 normals, E8M0 scales near 2^-6, any nibbles."""
    if dtype == "BF16":
        values = rng.standard_normal(count, dtype=np.float32) * np.float32(0.02)
        return (values.view(np.uint32) >> 16).astype(np.uint16)
    if name.endswith("_scales"):
        return rng.integers(118, 125, count, dtype=np.uint8)
    return np.frombuffer(rng.bytes(count), dtype=np.uint8)


def write_shard(path: Path, specs: dict[str, tuple[str, tuple[int, ...]]], rng: np.random.Generator) -> int:
    itemsize = {"BF16": 2, "U8": 1}
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, (dtype, shape) in specs.items():
        nbytes = int(np.prod(shape)) * itemsize[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for name, (dtype, shape) in specs.items():
            left = int(np.prod(shape))
            while left:
                count = min(left, WRITE_CHUNK // itemsize[dtype])
                f.write(random_bytes(rng, name, dtype, count).tobytes())
                left -= count
    return offset


def write_checkpoint(folder: Path, seed: int = 0) -> None:
    """The full-size random checkpoint, shards as in the published index."""
    from ossrun.harmony.vocab import write_tokenizer_files

    config = json.loads((REFERENCE / "config.json").read_text())
    index = json.loads((REFERENCE / "model.safetensors.index.json").read_text())
    specs = tensor_specs(config)
    assert set(specs) == set(index["weight_map"]), "tensor list differs from the published index"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    total = 0
    for shard in sorted(set(index["weight_map"].values())):
        names = [n for n, s in index["weight_map"].items() if s == shard]
        print(f"writing {shard} ({len(names)} tensors)", file=sys.stderr, flush=True)
        total += write_shard(folder / shard, {n: specs[n] for n in names}, rng)
    index["metadata"]["total_size"] = total
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    for name in ("config.json", "generation_config.json", "chat_template.jinja"):
        shutil.copyfile(REFERENCE / name, folder / name)
    write_tokenizer_files(TIKTOKEN, folder)
    os.sync()


def drop_page_cache(paths: list[Path]) -> str:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "drop_caches"
    except OSError:
        pass
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return "posix_fadvise"


def timed(command: list[str]) -> tuple[float, float]:
    """Run ``command``; (wall seconds, peak RSS in bytes) of that process alone."""
    started = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{command[0]} failed with exit code {process.returncode}")
    return seconds, usage.ru_maxrss * 1024  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="work folder (needs about 40 GB free)")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--outtype", default="q8_0")
    parser.add_argument("--rewrite", action="store_true", help="write the checkpoint even if it exists")
    args = parser.parse_args()

    checkpoint = args.dir / CHECKPOINT_NAME
    output = args.dir / (OUTPUT_NAME if args.outtype == "q8_0" else f"gpt-oss-20b-random-{args.outtype}.gguf")
    if args.rewrite or not (checkpoint / "model.safetensors.index.json").is_file():
        started = time.perf_counter()
        write_checkpoint(checkpoint)
        print(f"checkpoint written in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    shards = sorted(checkpoint.glob("*.safetensors"))
    size = sum(p.stat().st_size for p in shards)

    copies, conversions = [], []
    for run in range(1, args.runs + 1):
        copy_dir = Path(tempfile.mkdtemp(prefix="copy-", dir=args.dir))
        how = drop_page_cache(shards)
        load = os.getloadavg()[0]
        copies.append(timed(["sh", "-c", 'cp "$@" && sync', "cp", *map(str, shards), str(copy_dir)]))
        shutil.rmtree(copy_dir)
        drop_page_cache(shards)
        # --force: a reader of the previous GGUF keeps it until the new one is renamed into place.
        command = [
            sys.executable,
            "-m",
            "ossrun",
            "convert",
            str(checkpoint),
            "-o",
            str(output),
            "--outtype",
            args.outtype,
            "--force",
        ]
        conversions.append(timed(command))
        print(
            f"run {run}: cp+sync {copies[-1][0]:.1f} s, convert {conversions[-1][0]:.1f} s, "
            f"peak RSS {conversions[-1][1] / 1e9:.2f} GB (load {load:.2f}, cache dropped by {how})",
            file=sys.stderr,
        )

    def row(label: str, runs: list[tuple[float, float]]) -> str:
        wall = statistics.median(s for s, _ in runs)
        rss = max(r for _, r in runs)
        each = ", ".join(f"{s:.1f}" for s, _ in runs)
        return f"{label:<16} {wall:8.1f} s {size / wall / 1e6:8.0f} MB/s {rss / 1e9:8.2f} GB   (runs: {each})"

    print(f"checkpoint: {size / 1e9:.2f} GB in {len(shards)} shards; output {output} {output.stat().st_size / 1e9:.2f} GB")
    print(f"{'':<16} {'wall (median)':>10} {'rate':>13} {'peak RSS':>11}")
    print(row("cp + sync", copies))
    print(row(f"convert {args.outtype}", conversions))
    ratio = statistics.median(s for s, _ in conversions) / statistics.median(s for s, _ in copies)
    print(f"convert / copy wall-time ratio: {ratio:.2f} (target <= 2.0); load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
