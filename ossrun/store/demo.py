"""The demo model: a tiny gpt-oss trained in this repository (``demo/``), shipped inside ossrun.

It works offline and loads in a second, so ``ossrun`` is usable before a 12 GB download, and the
tests exercise real harmony behaviour end to end. The package holds a compact checkpoint
(``data/demo``: the rows of the ~700 tokens it uses plus one fill row for every other token, the
MXFP4 experts as blocks and scales) and the o200k vocabulary. :func:`demo_gguf` expands them into
a real Hugging Face checkpoint folder (full 201088-row embedding and unembedding, BF16 dense
tensors, the o200k_harmony tokenizer.json, configs), converts it with ossrun's own converter and
caches the GGUF in the ossrun home, keyed by the checkpoint's hash and ossrun's version (the
converter that made it): the demo goes through the same pipeline a downloaded model does.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import numpy as np

import ossrun
from ossrun import home
from ossrun.errors import ModelError

DEMO_NAME = "gpt-oss-demo"
# Bump when the expansion below changes, so cached builds are made again.
BUILD_VERSION = 1
VOCAB_FILE = "o200k_base.tiktoken"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.npz"
SHARD_FILE = "model-00001-of-00001.safetensors"
INDEX_FILE = "model.safetensors.index.json"
GENERATION_CONFIG = {"bos_token_id": 199998, "do_sample": True, "eos_token_id": [200002, 199999], "pad_token_id": 199999}
# Compact entries that are not HF tensors: they become the embedding and unembedding.
_ROW_ENTRIES = ("used_ids", "embedding_rows", "embedding_fill", "unembedding_rows", "unembedding_fill")


def data_dir() -> Path:
    """ossrun's package data: the o200k vocabulary and ``demo/`` (the compact checkpoint)."""
    return Path(str(resources.files("ossrun") / "data"))


def vocab_file() -> Path:
    """The o200k_base.tiktoken shipped with ossrun."""
    return data_dir() / VOCAB_FILE


def checkpoint_dir() -> Path:
    return data_dir() / "demo"


def checkpoint_digest() -> str:
    """sha256 of everything a demo build is made from, the converter's version included."""
    digest = hashlib.sha256(f"build {BUILD_VERSION}\nossrun {ossrun.__version__}\n".encode())
    for path in (checkpoint_dir() / CONFIG_FILE, checkpoint_dir() / WEIGHTS_FILE, vocab_file()):
        try:
            digest.update(path.read_bytes())
        except OSError as exc:
            raise ModelError(f"the demo model's {path.name} is missing from {path.parent}: reinstall ossrun") from exc
    return digest.hexdigest()


def cache_folder() -> Path:
    return home.cache_dir() / "demo"


def demo_gguf(*, progress: Callable[[int, int], None] | None = None) -> Path:
    """The demo GGUF, built on first use (a few seconds) and cached in the ossrun home."""
    path = cache_folder() / f"{DEMO_NAME}-{checkpoint_digest()[:16]}.gguf"
    if path.is_file():
        return path
    build(path, progress=progress)
    for stale in cache_folder().glob(f"{DEMO_NAME}-*.gguf"):
        if stale != path:
            stale.unlink(missing_ok=True)
    return path


def build(out: Path, *, progress: Callable[[int, int], None] | None = None) -> Path:
    """Expand the compact checkpoint and convert it to ``out`` (atomically: written, then renamed)."""
    from ossrun.convert import convert

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".build-") as tmp:
        checkpoint = expand(Path(tmp) / DEMO_NAME)
        built = convert(checkpoint, Path(tmp) / out.name, progress=progress)
        os.replace(built, out)
    return out


def expand(folder: Path) -> Path:
    """Write the demo as a Hugging Face gpt-oss checkpoint into ``folder``."""
    from ossrun.harmony.vocab import write_tokenizer_files

    folder.mkdir(parents=True, exist_ok=True)
    config = json.loads((checkpoint_dir() / CONFIG_FILE).read_text())
    with np.load(checkpoint_dir() / WEIGHTS_FILE) as compact:
        tensors = full_tensors({name: compact[name] for name in compact.files}, config["vocab_size"])
    write_safetensors(folder / SHARD_FILE, tensors)
    index = {
        "metadata": {"total_size": sum(array.nbytes for _, array in tensors.values())},
        "weight_map": {name: SHARD_FILE for name in tensors},
    }
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2))
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    (folder / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2))
    write_tokenizer_files(vocab_file(), folder)
    return folder


def scatter_rows(used_ids: np.ndarray, rows: np.ndarray, fill: np.ndarray, vocab_rows: int) -> np.ndarray:
    """A full matrix: ``rows`` at ``used_ids``, ``fill`` everywhere else."""
    full = np.tile(fill, (vocab_rows, 1))
    full[used_ids] = rows
    return full


def full_tensors(compact: dict[str, np.ndarray], vocab_rows: int) -> dict[str, tuple[str, np.ndarray]]:
    """HF tensor name -> (safetensors dtype, array). Dense tensors are BF16 bit patterns (uint16)."""
    used = compact["used_ids"].astype(np.int64)
    if used.min() < 0 or used.max() >= vocab_rows or np.any(np.diff(used) <= 0):
        raise ModelError("the demo model's token list is damaged: reinstall ossrun")
    tensors = {
        "model.embed_tokens.weight": (
            "BF16",
            scatter_rows(used, compact["embedding_rows"], compact["embedding_fill"], vocab_rows),
        ),
        "lm_head.weight": ("BF16", scatter_rows(used, compact["unembedding_rows"], compact["unembedding_fill"], vocab_rows)),
    }
    for name, array in compact.items():
        if name not in _ROW_ENTRIES:
            tensors[name] = ("U8" if array.dtype == np.uint8 else "BF16", array)
    return tensors


def write_safetensors(path: Path, tensors: dict[str, tuple[str, np.ndarray]]) -> None:
    """One safetensors file: 8-byte header length, JSON header (padded to 8 bytes), raw data."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, array) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for _, array in tensors.values():
            f.write(np.ascontiguousarray(array).tobytes())
