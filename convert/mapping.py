"""Checkpoint tensor names (both layouts) to GGUF tensors, with the shapes and dtypes they must have.

``gguf``'s own name map knows neither ``gate_up_proj`` nor any ``original/`` name, so the table is
ours; the GGUF names come from ``gguf.TENSOR_NAMES``. Each GGUF tensor says which checkpoint tensor
feeds it and which rows it takes: ``qkv`` is split into q, k and v rows, the interleaved
``gate_up`` into its even (gate) and odd (up) rows.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from gguf import MODEL_TENSOR, TENSOR_NAMES

from ossrun.errors import ConvertError

from .layout import HyperParams, Layout
from .mxfp4 import BLOCK_BYTES, BLOCK_VALUES
from .safetensors import TensorEntry

DENSE_DTYPES = ("BF16", "F16", "F32")
BLOCK_DTYPES = ("U8",)
SCALE_DTYPES = ("U8", "F8_E8M0")  # E8M0 bytes, whichever name the writer gave them


class Encoding(enum.Enum):
    F32 = "f32"  # norms, biases, sinks, the router: always F32
    MATRIX = "matrix"  # attention and embedding matrices: the chosen outtype (Q8_0 by default)
    MXFP4 = "mxfp4"  # expert weights: ggml MXFP4 blocks repacked from the checkpoint's


@dataclass(frozen=True)
class Rows:
    """Rows ``start:stop:step`` of the source along ``axis`` (0 for plain tensors, 1 for experts)."""

    start: int
    stop: int
    step: int = 1
    axis: int = 0


@dataclass(frozen=True)
class OutputTensor:
    """One GGUF tensor: its name, shape (numpy order, in values) and where its data comes from."""

    name: str
    shape: tuple[int, ...]
    encoding: Encoding
    source: str
    scales: str | None = None
    rows: Rows | None = None


@dataclass(frozen=True)
class Expected:
    shape: tuple[int, ...]
    dtypes: tuple[str, ...]


# Checkpoint names by role in each layout; "{b}" is the block number. The HF layout has separate
# q/k/v projections, the original one a single qkv tensor (q rows, then k rows, then v rows).
NAMES: dict[Layout, dict[str, str]] = {
    Layout.HF: {
        "embedding": "model.embed_tokens.weight",
        "output_norm": "model.norm.weight",
        "output": "lm_head.weight",
        "attn_norm": "model.layers.{b}.input_layernorm.weight",
        "q": "model.layers.{b}.self_attn.q_proj.weight",
        "q_bias": "model.layers.{b}.self_attn.q_proj.bias",
        "k": "model.layers.{b}.self_attn.k_proj.weight",
        "k_bias": "model.layers.{b}.self_attn.k_proj.bias",
        "v": "model.layers.{b}.self_attn.v_proj.weight",
        "v_bias": "model.layers.{b}.self_attn.v_proj.bias",
        "attn_out": "model.layers.{b}.self_attn.o_proj.weight",
        "attn_out_bias": "model.layers.{b}.self_attn.o_proj.bias",
        "sinks": "model.layers.{b}.self_attn.sinks",
        "ffn_norm": "model.layers.{b}.post_attention_layernorm.weight",
        "router": "model.layers.{b}.mlp.router.weight",
        "router_bias": "model.layers.{b}.mlp.router.bias",
        "gate_up_blocks": "model.layers.{b}.mlp.experts.gate_up_proj_blocks",
        "gate_up_scales": "model.layers.{b}.mlp.experts.gate_up_proj_scales",
        "gate_up_bias": "model.layers.{b}.mlp.experts.gate_up_proj_bias",
        "down_blocks": "model.layers.{b}.mlp.experts.down_proj_blocks",
        "down_scales": "model.layers.{b}.mlp.experts.down_proj_scales",
        "down_bias": "model.layers.{b}.mlp.experts.down_proj_bias",
    },
    Layout.ORIGINAL: {
        "embedding": "embedding.weight",
        "output_norm": "norm.scale",
        "output": "unembedding.weight",
        "attn_norm": "block.{b}.attn.norm.scale",
        "qkv": "block.{b}.attn.qkv.weight",
        "qkv_bias": "block.{b}.attn.qkv.bias",
        "attn_out": "block.{b}.attn.out.weight",
        "attn_out_bias": "block.{b}.attn.out.bias",
        "sinks": "block.{b}.attn.sinks",
        "ffn_norm": "block.{b}.mlp.norm.scale",
        "router": "block.{b}.mlp.gate.weight",
        "router_bias": "block.{b}.mlp.gate.bias",
        "gate_up_blocks": "block.{b}.mlp.mlp1_weight.blocks",
        "gate_up_scales": "block.{b}.mlp.mlp1_weight.scales",
        "gate_up_bias": "block.{b}.mlp.mlp1_bias",
        "down_blocks": "block.{b}.mlp.mlp2_weight.blocks",
        "down_scales": "block.{b}.mlp.mlp2_weight.scales",
        "down_bias": "block.{b}.mlp.mlp2_bias",
    },
}


def gguf_name(tensor: MODEL_TENSOR, suffix: str, block: int | None = None) -> str:
    return f"{TENSOR_NAMES[tensor].format(bid=block)}.{suffix}"


class _Plan:
    """Collects the output tensors and the checkpoint tensors (with shapes) they need."""

    def __init__(self, names: dict[str, str]) -> None:
        self.names = names
        self.outputs: list[OutputTensor] = []
        self.expected: dict[str, Expected] = {}

    def need(self, role: str, shape: tuple[int, ...], block: int | None = None, dtypes: tuple[str, ...] = DENSE_DTYPES) -> str:
        name = self.names[role].format(b=block)
        self.expected[name] = Expected(shape, dtypes)
        return name

    def add(
        self,
        kind: MODEL_TENSOR,
        suffix: str,
        block: int | None,
        shape: tuple[int, ...],
        encoding: Encoding,
        source: str,
        **kw: object,
    ) -> None:
        self.outputs.append(OutputTensor(gguf_name(kind, suffix, block), shape, encoding, source, **kw))  # type: ignore[arg-type]

    def vector(self, kind: MODEL_TENSOR, role: str, length: int, block: int | None = None, suffix: str = "weight") -> None:
        self.add(kind, suffix, block, (length,), Encoding.F32, self.need(role, (length,), block))


def _attention_inputs(plan: _Plan, hp: HyperParams, b: int) -> None:
    H, q_dim, kv_dim = hp.hidden, hp.n_heads * hp.head_dim, hp.n_kv_heads * hp.head_dim
    projections = (
        (MODEL_TENSOR.ATTN_Q, "q", 0, q_dim),
        (MODEL_TENSOR.ATTN_K, "k", q_dim, kv_dim),
        (MODEL_TENSOR.ATTN_V, "v", q_dim + kv_dim, kv_dim),
    )
    if "qkv" in plan.names:  # one fused tensor: each projection is a range of its rows
        qkv = plan.need("qkv", (q_dim + 2 * kv_dim, H), b)
        qkv_bias = plan.need("qkv_bias", (q_dim + 2 * kv_dim,), b)
        for kind, _, start, rows in projections:
            select = Rows(start, start + rows)
            plan.add(kind, "weight", b, (rows, H), Encoding.MATRIX, qkv, rows=select)
            plan.add(kind, "bias", b, (rows,), Encoding.F32, qkv_bias, rows=select)
        return
    for kind, role, _, rows in projections:
        plan.add(kind, "weight", b, (rows, H), Encoding.MATRIX, plan.need(role, (rows, H), b))
        plan.vector(kind, f"{role}_bias", rows, b, suffix="bias")


def _experts(plan: _Plan, hp: HyperParams, b: int) -> None:
    """gate, up and down experts; gate and up are the even and odd rows of the interleaved gate_up."""
    E, H, F = hp.n_experts, hp.hidden, hp.expert_ff
    gate_up = plan.need("gate_up_blocks", (E, 2 * F, H // BLOCK_VALUES, BLOCK_BYTES), b, BLOCK_DTYPES)
    gate_up_scales = plan.need("gate_up_scales", (E, 2 * F, H // BLOCK_VALUES), b, SCALE_DTYPES)
    gate_up_bias = plan.need("gate_up_bias", (E, 2 * F), b)
    for kind, parity in ((MODEL_TENSOR.FFN_GATE_EXP, 0), (MODEL_TENSOR.FFN_UP_EXP, 1)):
        rows = Rows(parity, 2 * F, 2, axis=1)
        plan.add(kind, "weight", b, (E, F, H), Encoding.MXFP4, gate_up, scales=gate_up_scales, rows=rows)
        plan.add(kind, "bias", b, (E, F), Encoding.F32, gate_up_bias, rows=rows)
    down = plan.need("down_blocks", (E, H, F // BLOCK_VALUES, BLOCK_BYTES), b, BLOCK_DTYPES)
    down_scales = plan.need("down_scales", (E, H, F // BLOCK_VALUES), b, SCALE_DTYPES)
    plan.add(MODEL_TENSOR.FFN_DOWN_EXP, "weight", b, (E, H, F), Encoding.MXFP4, down, scales=down_scales)
    plan.add(MODEL_TENSOR.FFN_DOWN_EXP, "bias", b, (E, H), Encoding.F32, plan.need("down_bias", (E, H), b))


def _plan(layout: Layout, hp: HyperParams) -> _Plan:
    plan = _Plan(NAMES[layout])
    H, V, E = hp.hidden, hp.vocab_rows, hp.n_experts
    plan.add(MODEL_TENSOR.TOKEN_EMBD, "weight", None, (V, H), Encoding.MATRIX, plan.need("embedding", (V, H)))
    for b in range(hp.n_layers):
        plan.vector(MODEL_TENSOR.ATTN_NORM, "attn_norm", H, b)
        _attention_inputs(plan, hp, b)
        q_dim = hp.n_heads * hp.head_dim
        plan.add(MODEL_TENSOR.ATTN_OUT, "weight", b, (H, q_dim), Encoding.MATRIX, plan.need("attn_out", (H, q_dim), b))
        plan.vector(MODEL_TENSOR.ATTN_OUT, "attn_out_bias", H, b, suffix="bias")
        plan.vector(MODEL_TENSOR.ATTN_SINKS, "sinks", hp.n_heads, b)
        plan.vector(MODEL_TENSOR.ATTN_POST_NORM, "ffn_norm", H, b)
        plan.add(MODEL_TENSOR.FFN_GATE_INP, "weight", b, (E, H), Encoding.F32, plan.need("router", (E, H), b))
        plan.vector(MODEL_TENSOR.FFN_GATE_INP, "router_bias", E, b, suffix="bias")
        _experts(plan, hp, b)
    plan.vector(MODEL_TENSOR.OUTPUT_NORM, "output_norm", H)
    plan.add(MODEL_TENSOR.OUTPUT, "weight", None, (V, H), Encoding.MATRIX, plan.need("output", (V, H)))
    return plan


def _mxfp4_parts(name: str) -> tuple[str, str, str] | None:
    """(dequantized name, blocks, scales) for ``X_blocks``/``X_scales`` (or ``X.blocks``/``X.scales``)."""
    for sep in ("_", "."):
        for part in ("blocks", "scales"):
            if name.endswith(sep + part):
                base = name[: -len(sep + part)]
                return base, base + sep + "blocks", base + sep + "scales"
    return None


def check_entries(expected: dict[str, Expected], entries: dict[str, TensorEntry]) -> None:
    """Every needed tensor present with its shape and dtype, and nothing unknown besides."""
    for name in expected:
        if name in entries:
            continue
        parts = _mxfp4_parts(name)
        if parts and parts[0] in entries:
            raise ConvertError(
                f"tensor {parts[0]} in {entries[parts[0]].path.name} is not MXFP4 (no {parts[1]}): "
                "ossrun converts gpt-oss checkpoints with MXFP4 experts, as published"
            )
        if parts and parts[1] in entries and name == parts[2]:
            raise ConvertError(
                f"tensor {parts[1]} has no matching {name}: MXFP4 blocks need their scales; the checkpoint is incomplete"
            )
        raise ConvertError(f"tensor {name} is missing from the checkpoint: download it again or check the layout")
    for name, want in expected.items():
        entry = entries[name]
        where = f"tensor {name} in {entry.path.name}"
        if entry.shape != want.shape:
            raise ConvertError(f"{where} has shape {list(entry.shape)}, config.json implies {list(want.shape)}")
        if entry.dtype not in want.dtypes:
            raise ConvertError(f"{where} has dtype {entry.dtype}, expected {' or '.join(want.dtypes)}")
    unknown = sorted(set(entries) - set(expected))
    if unknown:
        raise ConvertError(
            f"tensor {unknown[0]} in {entries[unknown[0]].path.name} is not part of gpt-oss as ossrun knows it "
            f"({len(unknown)} unknown tensors)"
        )


def plan_tensors(layout: Layout, hp: HyperParams, entries: dict[str, TensorEntry]) -> list[OutputTensor]:
    """The GGUF tensors for a checkpoint, in one order for both layouts (so both give the same file)."""
    plan = _plan(layout, hp)
    check_entries(plan.expected, entries)
    return plan.outputs
