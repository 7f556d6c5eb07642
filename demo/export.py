"""Export a trained demo model as the compact checkpoint ossrun ships (``ossrun/data/demo``).

The compact checkpoint is the HF layout's tensors under their HF names, except that the embedding
and unembedding hold only the rows of the tokens the data uses (``used_ids``) plus one ``fill`` row
each for every other token; ``ossrun.store.demo`` scatters them into the full 201088 rows. Dense tensors
are BF16 (as raw 16-bit patterns), the experts MXFP4 blocks and scales, exactly as published
gpt-oss checkpoints store them.

Unused tokens can never be sampled: their unembedding row is -S·e0, and residual dimension 0 is a
positive constant c (see ``demo.model``), so their logit is -S·g0·c/rms(x), thousands below any
used token's. ``g0``, the final norm's weight on that dimension, is raised to a power of two G (and
the used rows' column 0 divided by G, which leaves their logits unchanged) so that dimension
dominates its Q8_0 block of activations in llama.cpp and never rounds to zero.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from . import mxfp4
from .model import GptOss

VOCAB_ROWS = 201088
UNUSED_LOGIT_SCALE = 2.0**17  # S
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.npz"


def to_bf16(values: np.ndarray) -> np.ndarray:
    """float32 -> raw BF16 bits, rounding to nearest even."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    return ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)


def hf_config(model: GptOss) -> dict:
    """config.json of the expanded checkpoint, with the keys and values a published gpt-oss has."""
    c = model.config
    return {
        "architectures": ["GptOssForCausalLM"],
        "attention_bias": True,
        "attention_dropout": 0.0,
        "eos_token_id": 200002,
        "experts_per_token": c.experts_used,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "hidden_size": c.hidden,
        "initial_context_length": c.rope_original_context,
        "initializer_range": 0.02,
        "intermediate_size": c.expert_ff,
        "layer_types": ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(c.layers)],
        "max_position_embeddings": int(c.rope_original_context * c.rope_factor),
        "model_type": "gpt_oss",
        "num_attention_heads": c.heads,
        "num_experts_per_tok": c.experts_used,
        "num_hidden_layers": c.layers,
        "num_key_value_heads": c.kv_heads,
        "num_local_experts": c.experts,
        "output_router_logits": False,
        "pad_token_id": 199999,
        "quantization_config": {
            "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"],
            "quant_method": "mxfp4",
        },
        "rms_norm_eps": c.rms_eps,
        "rope_scaling": {
            "beta_fast": c.rope_beta_fast,
            "beta_slow": c.rope_beta_slow,
            "factor": c.rope_factor,
            "original_max_position_embeddings": c.rope_original_context,
            "rope_type": "yarn",
            "truncate": False,
        },
        "rope_theta": c.rope_theta,
        "router_aux_loss_coef": 0.9,
        "sliding_window": c.sliding_window,
        "swiglu_limit": c.swiglu_limit,
        "tie_word_embeddings": False,
        "use_cache": True,
        "vocab_size": VOCAB_ROWS,
    }


@torch.no_grad()
def constant_gain(model: GptOss, samples: list[torch.Tensor]) -> float:
    """G: a power of two that makes g0·c/rms(x) the largest of its 32-value block at 99.9% of positions."""
    ratios = []
    for ids in samples:
        h = model.hidden_states(ids[None])[0]
        ratios.append((h[:, 1:32].abs().amax(-1) / h[:, 0]).numpy())
    ratio = float(np.quantile(np.concatenate(ratios), 0.999))
    return float(2.0 ** max(0, int(np.ceil(np.log2(ratio)))))


def _padded_rows(weight: torch.Tensor) -> np.ndarray:
    """A weight that writes to residual dims 1.. only, with its zero row 0 put back."""
    w = weight.detach().float().numpy()
    return np.concatenate([np.zeros_like(w[..., :1, :]), w], axis=-2)


def _interleave(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """gate_up as HF stores it: along the expert's output axis (axis 1), even = gate, odd = up."""
    shape = list(gate.shape)
    shape[1] *= 2
    return np.stack([gate, up], axis=2).reshape(shape)


def _packed_experts(weight: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """MXFP4 blocks and scales of ``weight``; they must decode to exactly what training saw."""
    blocks, scales = mxfp4.pack(weight.detach().float())
    seen = mxfp4.fake_quantize(weight.detach().float()).numpy()
    if not np.array_equal(mxfp4.unpack(blocks, scales), seen):
        raise AssertionError("packed MXFP4 experts do not decode to the trained values")
    return blocks, scales


def compact_tensors(model: GptOss, vocab: np.ndarray, gain: float) -> dict[str, np.ndarray]:
    c = model.config

    def f32(t):
        return t.detach().float().numpy()

    embedding = np.concatenate([np.full((c.vocab, 1), c.constant, np.float32), f32(model.embedding)], axis=1)
    unembedding = f32(model.unembedding).copy()
    unembedding[:, 0] /= gain
    unembedding_fill = np.zeros(c.hidden, np.float32)
    unembedding_fill[0] = -UNUSED_LOGIT_SCALE
    norm = f32(model.norm.weight).copy()
    norm[0] = gain
    dense: dict[str, np.ndarray] = {
        "embedding_rows": embedding[1:],
        "embedding_fill": embedding[0],  # the UNK row
        "unembedding_rows": unembedding[1:],
        "unembedding_fill": unembedding_fill,
        "model.norm.weight": norm,
    }
    packed: dict[str, np.ndarray] = {"used_ids": vocab.astype(np.int32)}
    for i, block in enumerate(model.blocks):
        p = f"model.layers.{i}."
        attn, mlp = block.attn, block.mlp
        dense[p + "input_layernorm.weight"] = f32(block.attn_norm.weight)
        dense[p + "post_attention_layernorm.weight"] = f32(block.mlp_norm.weight)
        for name in ("q", "k", "v"):
            dense[f"{p}self_attn.{name}_proj.weight"] = f32(getattr(attn, name).weight)
            dense[f"{p}self_attn.{name}_proj.bias"] = f32(getattr(attn, name).bias)
        dense[p + "self_attn.o_proj.weight"] = _padded_rows(attn.o.weight)
        dense[p + "self_attn.o_proj.bias"] = np.concatenate([[0.0], f32(attn.o.bias)]).astype(np.float32)
        dense[p + "self_attn.sinks"] = f32(attn.sinks)
        dense[p + "mlp.router.weight"] = f32(mlp.router.weight)
        dense[p + "mlp.router.bias"] = f32(mlp.router.bias)
        e = p + "mlp.experts."
        gate_up = torch.from_numpy(_interleave(f32(mlp.gate), f32(mlp.up)))
        packed[e + "gate_up_proj_blocks"], packed[e + "gate_up_proj_scales"] = _packed_experts(gate_up)
        dense[e + "gate_up_proj_bias"] = _interleave(f32(mlp.gate_bias), f32(mlp.up_bias))
        packed[e + "down_proj_blocks"], packed[e + "down_proj_scales"] = _packed_experts(torch.from_numpy(_padded_rows(mlp.down)))
        down_bias = f32(mlp.down_bias)
        dense[e + "down_proj_bias"] = np.concatenate([np.zeros_like(down_bias[:, :1]), down_bias], axis=1)
    return {**{name: to_bf16(value) for name, value in dense.items()}, **packed}


def write_compact(model: GptOss, vocab: np.ndarray, out_dir: Path, samples: list[torch.Tensor]) -> dict:
    """Write config.json and weights.npz into ``out_dir``; returns export facts for the report."""
    model.eval()
    gain = constant_gain(model, samples)
    tensors = compact_tensors(model, vocab, gain)
    out_dir.mkdir(parents=True, exist_ok=True)
    part = out_dir / (WEIGHTS_FILE + ".part.npz")
    np.savez_compressed(part, **tensors)
    part.replace(out_dir / WEIGHTS_FILE)
    (out_dir / CONFIG_FILE).write_text(json.dumps(hf_config(model), indent=2) + "\n")
    return {"constant_gain": gain, "unused_logit_scale": UNUSED_LOGIT_SCALE, "used_ids": len(vocab)}
