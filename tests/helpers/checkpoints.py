"""Tiny gpt-oss checkpoints with the real structure, in both published layouts, for tests.

The weights are made once as a layout-neutral dict (HF tensor names; dense tensors as float32
values that are exactly BF16, expert weights as MXFP4 ``blocks`` + E8M0 ``scales`` bytes) and then
written in either layout: the HF one (``model-*.safetensors`` shards + index, config.json adapted
from the published gpt-oss-20b one, tokenizer files) or OpenAI's ``original/`` one (one
``model.safetensors`` with ``qkv`` and ``block.N`` names, tokenizer files in the parent folder).
The embedding keeps the real 201088 rows (the padded o200k_harmony vocabulary).

Functions at the end damage a written checkpoint in the ways users meet: missing shards,
truncated files, wrong shapes, and so on.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REFERENCE = Path(__file__).parents[1] / "data" / "gpt-oss-20b"
VOCAB_ROWS = 201088
MXFP4_BLOCK = 32


@dataclass(frozen=True)
class TinyConfig:
    """A small gpt-oss: real vocabulary, attention and MoE structure, tiny widths."""

    n_layers: int = 2
    n_experts: int = 4
    n_experts_used: int = 2
    hidden: int = 128
    expert_ff: int = 128
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int = 64
    vocab_rows: int = VOCAB_ROWS
    sliding_window: int = 128
    rope_theta: float = 150000.0
    rope_factor: float = 32.0
    rope_original_context: int = 4096
    rope_beta_fast: float = 32.0
    rope_beta_slow: float = 1.0
    swiglu_limit: float = 7.0
    rms_norm_eps: float = 1e-5

    @property
    def context_length(self) -> int:
        return int(self.rope_original_context * self.rope_factor)


@dataclass(frozen=True)
class WeightScales:
    """Standard deviations of the random weights (and the E8M0 exponents of the experts).

    The defaults give a model whose every part (attention, sinks, routing, experts) moves the
    residual stream by about as much as the embedding does.
    """

    embedding: float = 1.0
    qkv: float = 0.1
    out: float = 0.05
    sinks: float = 1.0
    router: float = 0.2
    router_bias: float = 0.1
    bias: float = 0.1
    norm: float = 0.1  # norm weights are 1 + N(0, norm)
    unembedding: float = 0.1
    gate_up_exponent: int = 123  # E8M0 scale byte around which the expert block scales spread
    down_exponent: int = 119


def to_bf16(values: np.ndarray) -> np.ndarray:
    """Round float32 values to the nearest BF16 (ties to even); returns the raw 16-bit patterns."""
    bits = np.asarray(values, dtype=np.float32).view(np.uint32)
    rounded = bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def from_bf16(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << np.uint32(16)).view(np.float32)


def bf16_values(values: np.ndarray) -> np.ndarray:
    """``values`` rounded to BF16 and back: what a BF16 checkpoint holds."""
    return from_bf16(to_bf16(values))


def make_weights(
    config: TinyConfig = TinyConfig(), seed: int = 0, scales: WeightScales = WeightScales()
) -> dict[str, np.ndarray]:
    """Random weights under HF names: dense float32 (exactly BF16), experts as uint8 blocks/scales."""
    rng = np.random.default_rng(seed)
    c, s = config, scales
    H, E, F = c.hidden, c.n_experts, c.expert_ff
    q_dim, kv_dim = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim

    def normal(shape, std, mean=0.0):
        return bf16_values(rng.standard_normal(shape, dtype=np.float32) * np.float32(std) + np.float32(mean))

    def mxfp4(rows, cols, exponent):
        blocks = rng.integers(0, 256, (E, rows, cols // MXFP4_BLOCK, 16), dtype=np.uint8)
        scale = rng.integers(exponent - 1, exponent + 2, (E, rows, cols // MXFP4_BLOCK), dtype=np.uint8)
        return blocks, scale

    w = {"model.embed_tokens.weight": normal((c.vocab_rows, H), s.embedding)}
    for b in range(c.n_layers):
        p = f"model.layers.{b}."
        w[p + "input_layernorm.weight"] = normal((H,), s.norm, 1.0)
        for proj, rows in (("q", q_dim), ("k", kv_dim), ("v", kv_dim)):
            w[f"{p}self_attn.{proj}_proj.weight"] = normal((rows, H), s.qkv)
            w[f"{p}self_attn.{proj}_proj.bias"] = normal((rows,), s.bias)
        w[p + "self_attn.o_proj.weight"] = normal((H, q_dim), s.out)
        w[p + "self_attn.o_proj.bias"] = normal((H,), s.bias)
        w[p + "self_attn.sinks"] = normal((c.n_heads,), s.sinks)
        w[p + "post_attention_layernorm.weight"] = normal((H,), s.norm, 1.0)
        w[p + "mlp.router.weight"] = normal((E, H), s.router)
        w[p + "mlp.router.bias"] = normal((E,), s.router_bias)
        e = p + "mlp.experts."
        w[e + "gate_up_proj_blocks"], w[e + "gate_up_proj_scales"] = mxfp4(2 * F, H, s.gate_up_exponent)
        w[e + "gate_up_proj_bias"] = normal((E, 2 * F), s.bias)
        w[e + "down_proj_blocks"], w[e + "down_proj_scales"] = mxfp4(H, F, s.down_exponent)
        w[e + "down_proj_bias"] = normal((E, H), s.bias)
    w["model.norm.weight"] = normal((H,), s.norm, 1.0)
    w["lm_head.weight"] = normal((c.vocab_rows, H), s.unembedding)
    return w


def make_clear_margin_weights(config: TinyConfig = TinyConfig(), seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights shaped so that every decision has a margin far above quantization noise.

    llama.cpp quantizes activations too (to Q8_0 before MXFP4 and Q8_0 matmuls, to BF16 before
    BF16 ones), so its logits differ from an exact forward pass by a fraction of a percent. With
    plain random weights that is enough to flip near-tied router choices and near-tied top-1
    tokens. Here:

    - routing: the first ``n_experts`` embedding dims carry a +-4 code per token (``n_experts_used``
      of them +4) and expert e's router row reads dim e (weight 1, the random part shrunk 10x), so
      the chosen and the rejected experts differ by ~5 router logits, while the gate weights among
      the chosen still vary with the context;
    - top-1: the unembedding adds 3x each token's unit embedding to its row, so the residual's
      embedding part makes the current token the clear winner (margins of several logits);
    - sinks ~ N(3, 1), so that the sink takes a real share of every head's attention.

    Everything else (attention, experts, norms, biases) stays random and moves the residual by as
    much as the embedding does, so the logits' cosine still measures the whole network.
    """
    rng = np.random.default_rng(seed + 1)
    weights = make_weights(config, seed)
    E, k = config.n_experts, config.n_experts_used
    codes = np.array(
        [[4.0 if e in chosen else -4.0 for e in range(E)] for chosen in itertools.combinations(range(E), k)], dtype=np.float32
    )
    embedding = weights["model.embed_tokens.weight"].copy()
    embedding[:, :E] = codes[np.arange(embedding.shape[0]) % len(codes)]
    weights["model.embed_tokens.weight"] = bf16_values(embedding)
    for b in range(config.n_layers):
        router = weights[f"model.layers.{b}.mlp.router.weight"] * np.float32(0.1)
        router[:, :E] += np.eye(E, dtype=np.float32)
        weights[f"model.layers.{b}.mlp.router.weight"] = bf16_values(router)
        weights[f"model.layers.{b}.self_attn.sinks"] = bf16_values(rng.standard_normal(config.n_heads, dtype=np.float32) + 3)
    unit = embedding / np.linalg.norm(embedding, axis=1, keepdims=True)
    weights["lm_head.weight"] = bf16_values(weights["lm_head.weight"] + 3 * unit)
    return weights


# --- safetensors ---------------------------------------------------------------------------------


# Weights made here are float32 holding BF16 values (stored as BF16) or uint8 (MXFP4); the other
# dtypes let tests write a tensor of the wrong dtype.
_STORAGE = {np.dtype(np.uint8): "U8", np.dtype(np.float16): "F16", np.dtype(np.int64): "I64", np.dtype(np.int32): "I32"}


def _storage(array: np.ndarray) -> tuple[str, np.ndarray]:
    """The safetensors dtype and bytes of a weight: float32 weights are stored as BF16."""
    if array.dtype == np.float32:
        return "BF16", to_bf16(array)
    return _STORAGE[array.dtype], array


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """A safetensors file (header padded to 8 bytes, tensors in the given order)."""
    header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
    offset, payloads = 0, []
    for name, array in tensors.items():
        dtype, data = _storage(array)
        data = np.ascontiguousarray(data)
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + data.nbytes]}
        payloads.append(data)
        offset += data.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for data in payloads:
            f.write(memoryview(data).cast("B"))


# --- HF layout -------------------------------------------------------------------------------------


def hf_config(config: TinyConfig) -> dict:
    """The published gpt-oss-20b config.json with the tiny sizes."""
    document = json.loads((REFERENCE / "config.json").read_text())
    document.update(
        num_hidden_layers=config.n_layers,
        num_local_experts=config.n_experts,
        num_experts_per_tok=config.n_experts_used,
        experts_per_token=config.n_experts_used,
        hidden_size=config.hidden,
        intermediate_size=config.expert_ff,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads,
        head_dim=config.head_dim,
        vocab_size=config.vocab_rows,
        sliding_window=config.sliding_window,
        rope_theta=config.rope_theta,
        swiglu_limit=config.swiglu_limit,
        rms_norm_eps=config.rms_norm_eps,
        max_position_embeddings=config.context_length,
        layer_types=["sliding_attention" if b % 2 == 0 else "full_attention" for b in range(config.n_layers)],
    )
    document["rope_scaling"] = dict(
        document["rope_scaling"],
        factor=config.rope_factor,
        beta_fast=config.rope_beta_fast,
        beta_slow=config.rope_beta_slow,
        original_max_position_embeddings=config.rope_original_context,
    )
    return document


def _copy_tokenizer(tokenizer_dir: Path, folder: Path) -> None:
    """The tokenizer files, plus the published chat template and generation config."""
    from ossrun.harmony.vocab import TOKENIZER_FILES

    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_dir / name, folder / name)
    for name in ("chat_template.jinja", "generation_config.json"):
        shutil.copyfile(REFERENCE / name, folder / name)


def _shard_name(index: int, count: int) -> str:
    # The published checkpoint numbers its shards from 0: model-00000-of-00002 ... model-00002-of-00002.
    return f"model-{index:05d}-of-{count - 1:05d}.safetensors"


def write_hf_checkpoint(
    folder: Path,
    weights: dict[str, np.ndarray],
    config: TinyConfig,
    tokenizer_dir: Path | None,
    *,
    shards: int = 2,
) -> Path:
    """An HF-layout checkpoint in ``folder``: ``shards`` files with an index, or one model.safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf_config(config), indent=2))
    if tokenizer_dir is not None:
        _copy_tokenizer(tokenizer_dir, folder)
    if shards <= 1:
        write_safetensors(folder / "model.safetensors", weights)
        return folder
    names = list(weights)
    per_shard = math.ceil(len(names) / shards)
    weight_map, total = {}, 0
    for i in range(shards):
        part = {n: weights[n] for n in names[i * per_shard : (i + 1) * per_shard]}
        write_safetensors(folder / _shard_name(i, shards), part)
        weight_map.update({n: _shard_name(i, shards) for n in part})
        total += sum(_storage(a)[1].nbytes for a in part.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return folder


def write_byte_tokenizer(folder: Path) -> Path:
    """A minimal byte-level BPE tokenizer (256 bytes, one merge, bos/eos/pad at 257..259) for tests
    about tensors, where reading o200k's 200k tokens back would only cost time. Fits 320 rows."""
    from ossrun.harmony.vocab import token_to_text

    vocab = {token_to_text(bytes([b])): b for b in range(256)}
    vocab[token_to_text(b" t")] = 256
    specials = {257: "<|startoftext|>", 258: "<|return|>", 259: "<|endoftext|>"}
    added = [{"id": i, "content": c, "special": True, "normalized": False} for i, c in specials.items()]
    tokenizer = {"model": {"type": "BPE", "vocab": vocab, "merges": [[token_to_text(b" "), "t"]]}, "added_tokens": added}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    config = {"bos_token": specials[257], "eos_token": specials[258], "pad_token": specials[259]}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "special_tokens_map.json").write_text(json.dumps(config))
    return folder


# --- original layout -------------------------------------------------------------------------------


def original_config(config: TinyConfig) -> dict:
    document = json.loads((REFERENCE / "original" / "config.json").read_text())
    document.update(
        num_hidden_layers=config.n_layers,
        num_experts=config.n_experts,
        experts_per_token=config.n_experts_used,
        vocab_size=config.vocab_rows,
        hidden_size=config.hidden,
        intermediate_size=config.expert_ff,
        swiglu_limit=config.swiglu_limit,
        head_dim=config.head_dim,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads,
        sliding_window=config.sliding_window,
        initial_context_length=config.rope_original_context,
        rope_theta=config.rope_theta,
        rope_scaling_factor=config.rope_factor,
        rope_ntk_alpha=config.rope_beta_slow,
        rope_ntk_beta=config.rope_beta_fast,
    )
    return document


def original_weights(weights: dict[str, np.ndarray], config: TinyConfig) -> dict[str, np.ndarray]:
    """The same weights under the original layout's names (q, k, v joined into qkv)."""
    w = {"embedding.weight": weights["model.embed_tokens.weight"]}
    for b in range(config.n_layers):
        p, o = f"model.layers.{b}.", f"block.{b}."
        a = p + "self_attn."
        w[o + "attn.norm.scale"] = weights[p + "input_layernorm.weight"]
        w[o + "attn.qkv.weight"] = np.concatenate([weights[f"{a}{x}_proj.weight"] for x in "qkv"])
        w[o + "attn.qkv.bias"] = np.concatenate([weights[f"{a}{x}_proj.bias"] for x in "qkv"])
        w[o + "attn.sinks"] = weights[a + "sinks"]
        w[o + "attn.out.weight"] = weights[a + "o_proj.weight"]
        w[o + "attn.out.bias"] = weights[a + "o_proj.bias"]
        w[o + "mlp.norm.scale"] = weights[p + "post_attention_layernorm.weight"]
        w[o + "mlp.gate.weight"] = weights[p + "mlp.router.weight"]
        w[o + "mlp.gate.bias"] = weights[p + "mlp.router.bias"]
        e = p + "mlp.experts."
        w[o + "mlp.mlp1_weight.blocks"] = weights[e + "gate_up_proj_blocks"]
        w[o + "mlp.mlp1_weight.scales"] = weights[e + "gate_up_proj_scales"]
        w[o + "mlp.mlp1_bias"] = weights[e + "gate_up_proj_bias"]
        w[o + "mlp.mlp2_weight.blocks"] = weights[e + "down_proj_blocks"]
        w[o + "mlp.mlp2_weight.scales"] = weights[e + "down_proj_scales"]
        w[o + "mlp.mlp2_bias"] = weights[e + "down_proj_bias"]
    w["norm.scale"] = weights["model.norm.weight"]
    w["unembedding.weight"] = weights["lm_head.weight"]
    return w


def write_original_checkpoint(repo: Path, weights: dict[str, np.ndarray], config: TinyConfig, tokenizer_dir: Path | None) -> Path:
    """``repo/original/`` in OpenAI's layout; the tokenizer files (if given) go to ``repo``, as published."""
    folder = repo / "original"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(original_config(config)))
    write_safetensors(folder / "model.safetensors", original_weights(weights, config))
    if tokenizer_dir is not None:
        _copy_tokenizer(tokenizer_dir, repo)
    return folder


# --- Broken checkpoints ----------------------------------------------------------------------------


def shard_paths(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def remove_shard(folder: Path) -> Path:
    """Delete the last shard the index names; returns its path."""
    victim = shard_paths(folder)[-1]
    victim.unlink()
    return victim


def truncate_file(path: Path, keep: int) -> Path:
    with open(path, "r+b") as f:
        f.truncate(keep)
    return path


def corrupt_header(path: Path) -> Path:
    """Overwrite the start of the JSON header with bytes that are not JSON."""
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(b"\x00garbage{")
    return path


def set_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def rewrite_shard_without(
    folder: Path, name: str, replacement: np.ndarray | None = None, add: dict[str, np.ndarray] | None = None
) -> Path:
    """Rewrite the shard holding ``name`` with it removed (or replaced by ``replacement``), plus ``add``."""
    from ossrun.convert.safetensors import TensorReader, read_header

    for path in shard_paths(folder):
        entries = read_header(path)
        if name not in entries:
            continue
        with TensorReader() as reader:
            tensors = {}
            for n, entry in entries.items():
                array = reader.read_all(entry)
                tensors[n] = from_bf16(array) if entry.dtype == "BF16" else array
        if replacement is None:
            del tensors[name]
        else:
            tensors[name] = replacement
        write_safetensors(path, {**tensors, **(add or {})})
        return path
    raise KeyError(name)
