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
from .safetensors import TensorEntry

MXFP4_BLOCK = 32  # values per MXFP4 block; a block is 16 bytes of nibbles + 1 scale byte
DENSE_DTYPES = ("BF16", "F16", "F32")
BYTE_DTYPES = ("U8",)


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


def gguf_name(tensor: MODEL_TENSOR, suffix: str, block: int | None = None) -> str:
    return f"{TENSOR_NAMES[tensor].format(bid=block)}.{suffix}"


class _Plan:
    """Collects output tensors and the checkpoint tensors they need."""

    def __init__(self) -> None:
        self.outputs: list[OutputTensor] = []
        self.expected: dict[str, Expected] = {}

    def need(self, name: str, shape: tuple[int, ...], dtypes: tuple[str, ...] = DENSE_DTYPES) -> str:
        self.expected[name] = Expected(shape, dtypes)
        return name

    def add(self, name: str, shape: tuple[int, ...], encoding: Encoding, source: str, **kw: object) -> None:
        self.outputs.append(OutputTensor(name, shape, encoding, source, **kw))  # type: ignore[arg-type]

    def vector(self, name: str, source: str, length: int) -> None:
        self.add(name, (length,), Encoding.F32, self.need(source, (length,)))

    def experts(self, block: int, hp: HyperParams, names: dict[str, str]) -> None:
        """gate/up/down experts from ``names`` = checkpoint names of gate_up and down blocks/scales/bias."""
        E, H, F = hp.n_experts, hp.hidden, hp.expert_ff
        gate_up = self.need(names["gate_up_blocks"], (E, 2 * F, H // MXFP4_BLOCK, 16), BYTE_DTYPES)
        gate_up_scales = self.need(names["gate_up_scales"], (E, 2 * F, H // MXFP4_BLOCK), BYTE_DTYPES)
        gate_up_bias = self.need(names["gate_up_bias"], (E, 2 * F))
        for kind, parity in ((MODEL_TENSOR.FFN_GATE_EXP, 0), (MODEL_TENSOR.FFN_UP_EXP, 1)):
            rows = Rows(parity, 2 * F, 2, axis=1)
            self.add(gguf_name(kind, "weight", block), (E, F, H), Encoding.MXFP4, gate_up, scales=gate_up_scales, rows=rows)
            self.add(gguf_name(kind, "bias", block), (E, F), Encoding.F32, gate_up_bias, rows=rows)
        down = self.need(names["down_blocks"], (E, H, F // MXFP4_BLOCK, 16), BYTE_DTYPES)
        down_scales = self.need(names["down_scales"], (E, H, F // MXFP4_BLOCK), BYTE_DTYPES)
        self.add(gguf_name(MODEL_TENSOR.FFN_DOWN_EXP, "weight", block), (E, H, F), Encoding.MXFP4, down, scales=down_scales)
        self.add(gguf_name(MODEL_TENSOR.FFN_DOWN_EXP, "bias", block), (E, H), Encoding.F32, self.need(names["down_bias"], (E, H)))


def _hf_plan(hp: HyperParams) -> _Plan:
    plan = _Plan()
    H, V, E = hp.hidden, hp.vocab_rows, hp.n_experts
    q_dim, kv_dim = hp.n_heads * hp.head_dim, hp.n_kv_heads * hp.head_dim
    plan.add(gguf_name(MODEL_TENSOR.TOKEN_EMBD, "weight"), (V, H), Encoding.MATRIX, plan.need("model.embed_tokens.weight", (V, H)))
    for b in range(hp.n_layers):
        p = f"model.layers.{b}."
        plan.vector(gguf_name(MODEL_TENSOR.ATTN_NORM, "weight", b), p + "input_layernorm.weight", H)
        for kind, proj, rows in ((MODEL_TENSOR.ATTN_Q, "q", q_dim), (MODEL_TENSOR.ATTN_K, "k", kv_dim), (MODEL_TENSOR.ATTN_V, "v", kv_dim)):
            weight = plan.need(f"{p}self_attn.{proj}_proj.weight", (rows, H))
            plan.add(gguf_name(kind, "weight", b), (rows, H), Encoding.MATRIX, weight)
            plan.vector(gguf_name(kind, "bias", b), f"{p}self_attn.{proj}_proj.bias", rows)
        out = plan.need(p + "self_attn.o_proj.weight", (H, q_dim))
        plan.add(gguf_name(MODEL_TENSOR.ATTN_OUT, "weight", b), (H, q_dim), Encoding.MATRIX, out)
        plan.vector(gguf_name(MODEL_TENSOR.ATTN_OUT, "bias", b), p + "self_attn.o_proj.bias", H)
        plan.vector(gguf_name(MODEL_TENSOR.ATTN_SINKS, "weight", b), p + "self_attn.sinks", hp.n_heads)
        plan.vector(gguf_name(MODEL_TENSOR.ATTN_POST_NORM, "weight", b), p + "post_attention_layernorm.weight", H)
        router = plan.need(p + "mlp.router.weight", (E, H))
        plan.add(gguf_name(MODEL_TENSOR.FFN_GATE_INP, "weight", b), (E, H), Encoding.F32, router)
        plan.vector(gguf_name(MODEL_TENSOR.FFN_GATE_INP, "bias", b), p + "mlp.router.bias", E)
        e = p + "mlp.experts."
        plan.experts(b, hp, {
            "gate_up_blocks": e + "gate_up_proj_blocks", "gate_up_scales": e + "gate_up_proj_scales",
            "gate_up_bias": e + "gate_up_proj_bias", "down_blocks": e + "down_proj_blocks",
            "down_scales": e + "down_proj_scales", "down_bias": e + "down_proj_bias",
        })  # fmt: skip
    plan.vector(gguf_name(MODEL_TENSOR.OUTPUT_NORM, "weight"), "model.norm.weight", H)
    plan.add(gguf_name(MODEL_TENSOR.OUTPUT, "weight"), (V, H), Encoding.MATRIX, plan.need("lm_head.weight", (V, H)))
    return plan


def _original_plan(hp: HyperParams) -> _Plan:
    plan = _Plan()
    H, V, E = hp.hidden, hp.vocab_rows, hp.n_experts
    q_dim, kv_dim = hp.n_heads * hp.head_dim, hp.n_kv_heads * hp.head_dim
    qkv_dim = q_dim + 2 * kv_dim
    plan.add(gguf_name(MODEL_TENSOR.TOKEN_EMBD, "weight"), (V, H), Encoding.MATRIX, plan.need("embedding.weight", (V, H)))
    for b in range(hp.n_layers):
        p = f"block.{b}."
        plan.vector(gguf_name(MODEL_TENSOR.ATTN_NORM, "weight", b), p + "attn.norm.scale", H)
        qkv = plan.need(p + "attn.qkv.weight", (qkv_dim, H))
        qkv_bias = plan.need(p + "attn.qkv.bias", (qkv_dim,))
        starts = {MODEL_TENSOR.ATTN_Q: (0, q_dim), MODEL_TENSOR.ATTN_K: (q_dim, kv_dim), MODEL_TENSOR.ATTN_V: (q_dim + kv_dim, kv_dim)}
        for kind, (start, rows) in starts.items():
            select = Rows(start, start + rows)
            plan.add(gguf_name(kind, "weight", b), (rows, H), Encoding.MATRIX, qkv, rows=select)
            plan.add(gguf_name(kind, "bias", b), (rows,), Encoding.F32, qkv_bias, rows=select)
        out = plan.need(p + "attn.out.weight", (H, q_dim))
        plan.add(gguf_name(MODEL_TENSOR.ATTN_OUT, "weight", b), (H, q_dim), Encoding.MATRIX, out)
        plan.vector(gguf_name(MODEL_TENSOR.ATTN_OUT, "bias", b), p + "attn.out.bias", H)
        plan.vector(gguf_name(MODEL_TENSOR.ATTN_SINKS, "weight", b), p + "attn.sinks", hp.n_heads)
        plan.vector(gguf_name(MODEL_TENSOR.ATTN_POST_NORM, "weight", b), p + "mlp.norm.scale", H)
        router = plan.need(p + "mlp.gate.weight", (E, H))
        plan.add(gguf_name(MODEL_TENSOR.FFN_GATE_INP, "weight", b), (E, H), Encoding.F32, router)
        plan.vector(gguf_name(MODEL_TENSOR.FFN_GATE_INP, "bias", b), p + "mlp.gate.bias", E)
        m = p + "mlp."
        plan.experts(b, hp, {
            "gate_up_blocks": m + "mlp1_weight.blocks", "gate_up_scales": m + "mlp1_weight.scales",
            "gate_up_bias": m + "mlp1_bias", "down_blocks": m + "mlp2_weight.blocks",
            "down_scales": m + "mlp2_weight.scales", "down_bias": m + "mlp2_bias",
        })  # fmt: skip
    plan.vector(gguf_name(MODEL_TENSOR.OUTPUT_NORM, "weight"), "norm.scale", H)
    plan.add(gguf_name(MODEL_TENSOR.OUTPUT, "weight"), (V, H), Encoding.MATRIX, plan.need("unembedding.weight", (V, H)))
    return plan


def _blocks_of(scales_name: str) -> str | None:
    """``X_blocks`` for ``X_scales`` (``X.blocks`` for ``X.scales``), else None."""
    for scales, blocks in (("_scales", "_blocks"), (".scales", ".blocks")):
        if scales_name.endswith(scales):
            return scales_name[: -len(scales)] + blocks
    return None


def check_entries(expected: dict[str, Expected], entries: dict[str, TensorEntry]) -> None:
    """Every needed tensor present with its shape and dtype, and nothing unknown besides."""
    for name in expected:
        if name in entries:
            continue
        blocks = _blocks_of(name)
        if blocks in entries:
            raise ConvertError(f"tensor {blocks} has no matching {name}: MXFP4 blocks need their scales; the checkpoint is incomplete")
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
        raise ConvertError(f"tensor {unknown[0]} in {entries[unknown[0]].path.name} is not part of gpt-oss as ossrun knows it ({len(unknown)} unknown tensors)")


def plan_tensors(layout: Layout, hp: HyperParams, entries: dict[str, TensorEntry]) -> list[OutputTensor]:
    """The GGUF tensors for a checkpoint, in one order for both layouts (so both give the same file)."""
    plan = _hf_plan(hp) if layout is Layout.HF else _original_plan(hp)
    check_entries(plan.expected, entries)
    return plan.outputs
