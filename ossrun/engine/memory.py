"""The memory planner: what loading a gpt-oss model takes, before llama.cpp is asked.

One place knows what a load needs, from the GGUF header and the context settings:

- the MXFP4 expert weights, which llama.cpp's CPU backend repacks into anonymous memory;
- the other tensors (embeddings, attention, router, output), which every token reads: the
  file's pages, locked in memory (see :mod:`ossrun.engine.resident`), or a copy in anonymous
  memory where the process may not lock them;
- the KV cache: the full-attention layers hold every position, the sliding-window layers
  only ``window x sequences + batch`` cells (all positions with ``swa_full``), in the cache type;
- the context checkpoints (the sliding-window layers' state at chosen positions, per sequence);
- llama.cpp's compute buffer, each sequence's row of logits, and the process itself.

:func:`largest_context` inverts the plan for ``--ctx auto``. Nothing here imports llama.cpp:
``ossrun plan`` and the checks before a load stay fast.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import gguf

from ossrun.defaults import DEFAULT_KV_TYPE
from ossrun.engine.gguf_header import GgufHeader, TensorInfo
from ossrun.errors import ModelError
from ossrun.units import format_memory

DEFAULT_BATCH = 512  # tokens per llama_decode call (llama.py): prompt chunks and every sequence's next token
# What the cache may hold, by the name llama.cpp gives the type; q8_0 halves it (see the README's figures).
KV_TYPES = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0}
# Checkpoints kept per sequence: llama-server keeps 32 a slot by default.
DEFAULT_MAX_CHECKPOINTS = 32
# Contexts --ctx auto chooses between are multiples of this.
CONTEXT_STEP = 1024
# --ctx auto leaves this much of the available memory to the page cache and other programs.
AUTO_HEADROOM = 512 * 2**20
# The process itself besides llama.cpp's buffers: Python, numpy, openai-harmony, the libraries.
RUNTIME_BYTES = 160 * 2**20
# What llama.cpp's compute buffer holds once a whole batch is evaluated: per token, a few float32
# rows of the hidden size (activations of attention and the experts). It reserves more (logits for
# every token of a batch) but ossrun asks for one row of logits per sequence, so the rest is never
# touched; measured on gpt-oss-20b, 0.29 GiB for this and the process after a 1200-token prompt.
COMPUTE_ROWS_PER_TOKEN = 24
LOGIT_BYTES = 4  # float32: each sequence decoded together keeps a row of n_vocab logits
EXPERT_TENSORS = re.compile(r"_exps\.weight$")
_PAD = 256  # llama.cpp pads the context and the sliding-window cache to this many cells


@dataclass(frozen=True)
class CacheSettings:
    """How the KV cache is kept: the type of its keys and of its values, and whether the
    sliding-window layers keep every position (``swa_full``) or only their window."""

    type_k: str = DEFAULT_KV_TYPE
    type_v: str = DEFAULT_KV_TYPE
    swa_full: bool = False
    max_checkpoints: int = DEFAULT_MAX_CHECKPOINTS

    @classmethod
    def parse(cls, kv_type: str | Sequence[str] | None = None, *, swa_full: bool = False) -> CacheSettings:
        """From ``"f16"``, ``"q8_0"``, ``"KEY,VALUE"`` or a (key, value) pair; ModelError naming the choices."""
        if kv_type is None:
            kv_type = DEFAULT_KV_TYPE
        parts = [p.strip() for p in kv_type.split(",")] if isinstance(kv_type, str) else [str(p).strip() for p in kv_type]
        if len(parts) == 1:
            parts = parts * 2
        choices = "|".join(KV_TYPES)
        if len(parts) != 2:
            raise ModelError(
                f"KV cache type {kv_type!r} is not TYPE or KEY,VALUE: use {choices}, or two of them separated by a comma"
            )
        for part in parts:
            if part not in KV_TYPES:
                raise ModelError(f"unknown KV cache type {part!r}: use {choices} (or KEY,VALUE, e.g. q8_0,f16)")
        return cls(parts[0], parts[1], swa_full)

    @property
    def name(self) -> str:
        types = self.type_k if self.type_k == self.type_v else f"{self.type_k},{self.type_v}"
        return f"{types}{' swa-full' if self.swa_full else ''}"

    @property
    def checkpointed(self) -> bool:
        """Whether prefix reuse needs checkpoints: only the small sliding-window cache loses positions."""
        return not self.swa_full


DEFAULT_CACHE = CacheSettings()


@dataclass(frozen=True)
class ModelShape:
    """What the plan reads from a GGUF header."""

    n_layers: int
    n_swa_layers: int  # layers that attend to a sliding window (gpt-oss: the even ones)
    window: int  # the sliding window, in positions (0: none)
    kv_heads: int
    key_dim: int
    value_dim: int
    n_embd: int
    n_vocab: int
    context_length: int
    experts: int  # bytes of the MXFP4 expert tensors
    other: int  # bytes of every other tensor

    @classmethod
    def of(cls, header: GgufHeader, tensors: Iterable[TensorInfo] | None = None) -> ModelShape:
        """``tensors``: every tensor of the model, for a GGUF split over several files."""
        layers = int(header.arch_value(gguf.Keys.LLM.BLOCK_COUNT) or 0)
        window = int(header.arch_value(gguf.Keys.Attention.SLIDING_WINDOW) or 0)
        key_dim = int(header.arch_value(gguf.Keys.Attention.KEY_LENGTH) or 0)
        experts = other = 0
        for tensor in header.tensors if tensors is None else tensors:
            if EXPERT_TENSORS.search(tensor.name):
                experts += tensor.n_bytes
            else:
                other += tensor.n_bytes
        return cls(
            n_layers=layers,
            n_swa_layers=(layers + 1) // 2 if window else 0,  # llama.cpp's gpt-oss pattern: layer i slides when i is even
            window=window,
            kv_heads=int(header.arch_value(gguf.Keys.Attention.HEAD_COUNT_KV) or 0),
            key_dim=key_dim,
            value_dim=int(header.arch_value(gguf.Keys.Attention.VALUE_LENGTH) or key_dim),
            n_embd=int(header.arch_value(gguf.Keys.LLM.EMBEDDING_LENGTH) or 0),
            n_vocab=header.vocab_size,
            context_length=header.context_length,
            experts=experts,
            other=other,
        )

    def kv_cell_bytes(self, cache: CacheSettings) -> int:
        """Keys and values of one position in one layer."""
        return _row_bytes(cache.type_k, self.kv_heads * self.key_dim) + _row_bytes(cache.type_v, self.kv_heads * self.value_dim)

    def swa_cells(self, n_ctx: int, parallel: int, cache: CacheSettings, n_batch: int = DEFAULT_BATCH) -> int:
        """Cells of the sliding-window layers' cache (llama.cpp's ``llama_kv_cache_iswa``)."""
        n_ctx = _pad(n_ctx)
        if not self.window or cache.swa_full:
            return n_ctx
        return _pad(min(n_ctx, self.window * parallel + min(n_batch, n_ctx)))

    def checkpoint_bytes(self, cache: CacheSettings) -> int:
        """One checkpoint: the sliding-window layers' keys and values of the last ``window`` positions."""
        return self.n_swa_layers * self.window * self.kv_cell_bytes(cache)


@dataclass(frozen=True)
class MemoryPlan:
    """The bytes one load takes, by part (all of it resident: anonymous memory and locked file pages)."""

    model: str
    n_ctx: int
    parallel: int
    cache: CacheSettings
    experts: int
    weights: int
    kv_cache: int
    checkpoints: int
    compute: int
    outputs: int
    runtime: int

    @property
    def total(self) -> int:
        return self.experts + self.weights + self.kv_cache + self.checkpoints + self.compute + self.outputs + self.runtime

    @property
    def at_load(self) -> int:
        """What is resident right after the load: the KV cache's pages are taken as tokens fill it
        (see engine/resident.py), the rest at once. ``total`` is what the full context takes."""
        return self.total - self.kv_cache

    def describe(self) -> str:
        parts = [
            f"experts {format_memory(self.experts)}",
            f"other weights {format_memory(self.weights)}",
            f"KV cache ({self.cache.name}) {format_memory(self.kv_cache)}",
        ]
        if self.checkpoints:
            parts.append(f"checkpoints {format_memory(self.checkpoints)}")
        parts.append(f"buffers {format_memory(self.compute + self.outputs + self.runtime)}")
        return " + ".join(parts)


def plan(
    header: GgufHeader,
    n_ctx: int,
    *,
    parallel: int = 1,
    cache: CacheSettings = DEFAULT_CACHE,
    tensors: Iterable[TensorInfo] | None = None,
    n_batch: int = DEFAULT_BATCH,
    model: str | None = None,
) -> MemoryPlan:
    """What loading ``header``'s model with a context of ``n_ctx`` cells takes."""
    shape = ModelShape.of(header, tensors)
    return plan_shape(shape, n_ctx, parallel=parallel, cache=cache, n_batch=n_batch, model=model or header.path.name)


def plan_shape(
    shape: ModelShape,
    n_ctx: int,
    *,
    parallel: int = 1,
    cache: CacheSettings = DEFAULT_CACHE,
    n_batch: int = DEFAULT_BATCH,
    model: str = "the model",
) -> MemoryPlan:
    full_layers = shape.n_layers - shape.n_swa_layers
    cell = shape.kv_cell_bytes(cache)
    kv = (_pad(n_ctx) * full_layers + shape.swa_cells(n_ctx, parallel, cache, n_batch) * shape.n_swa_layers) * cell
    checkpoints = parallel * cache.max_checkpoints * shape.checkpoint_bytes(cache) if cache.checkpointed else 0
    ubatch = min(max(n_batch, parallel), n_ctx)
    compute = ubatch * COMPUTE_ROWS_PER_TOKEN * shape.n_embd * 4
    return MemoryPlan(
        model=model,
        n_ctx=n_ctx,
        parallel=parallel,
        cache=cache,
        experts=shape.experts,
        weights=shape.other,
        kv_cache=kv,
        checkpoints=checkpoints,
        compute=compute,
        outputs=parallel * shape.n_vocab * LOGIT_BYTES,
        runtime=RUNTIME_BYTES,
    )


def kv_bytes_per_layer(
    shape: ModelShape, n_ctx: int, *, parallel: int = 1, cache: CacheSettings = DEFAULT_CACHE, n_batch: int = DEFAULT_BATCH
) -> list[int]:
    """The KV cache each layer holds (for splitting layers over machines)."""
    cell = shape.kv_cell_bytes(cache)
    swa = shape.swa_cells(n_ctx, parallel, cache, n_batch) * cell
    full = _pad(n_ctx) * cell
    return [swa if shape.window and i % 2 == 0 else full for i in range(shape.n_layers)]


def largest_context(
    shape: ModelShape,
    available: int,
    *,
    parallel: int = 1,
    cache: CacheSettings = DEFAULT_CACHE,
    n_batch: int = DEFAULT_BATCH,
    headroom: int = AUTO_HEADROOM,
) -> int | None:
    """The largest context (a multiple of CONTEXT_STEP, up to the model's limit) whose plan fits in
    ``available`` bytes less the headroom; None when not even CONTEXT_STEP does."""
    budget = available - headroom
    limit = shape.context_length or 131072
    best = None
    low, high = 1, limit // CONTEXT_STEP  # the plan grows with the context: bisect on steps
    while low <= high:
        middle = (low + high) // 2
        if plan_shape(shape, middle * CONTEXT_STEP, parallel=parallel, cache=cache, n_batch=n_batch).total <= budget:
            best, low = middle * CONTEXT_STEP, middle + 1
        else:
            high = middle - 1
    return best


def check_context_size(header: GgufHeader, n_ctx: int) -> int:
    """``n_ctx`` if the model takes it; ModelError with the range otherwise."""
    limit = header.context_length
    if n_ctx < 1 or (limit and n_ctx > limit):
        raise ModelError(f"context size {n_ctx} is out of range: use a --ctx between 1 and {limit or 'the model limit'}")
    return n_ctx


def check(plan_: MemoryPlan, available: int | None, shape: ModelShape | None = None) -> None:
    """ModelError with the numbers when ``plan_`` does not fit in ``available`` bytes (None: unknown, passes)."""
    if available is None or plan_.total <= available:
        return
    needs = (
        f"{plan_.model} needs about {format_memory(plan_.total)} at --ctx {plan_.n_ctx} ({plan_.describe()}) "
        f"but only {format_memory(available)} is available"
    )
    largest = None
    if shape is not None:
        largest = largest_context(shape, available, parallel=plan_.parallel, cache=plan_.cache, headroom=0)
    if largest:
        raise ModelError(
            f"{needs}: the largest context that fits is {largest} (--ctx {largest}, or --ctx auto), or close other programs"
        )
    raise ModelError(f"{needs}: not even --ctx {CONTEXT_STEP} fits; use a smaller model, or close other programs")


@dataclass(frozen=True)
class MemoryReport:
    """What each context size needs on this machine, per cache setting (``ossrun plan``)."""

    model: str
    available: int | None  # what a load may use now (MemAvailable, or the container's room if less)
    container: int | None  # the memory cgroup's room alone, where it has a limit
    parallel: int
    caches: tuple[CacheSettings, ...]
    rows: tuple[tuple[int, tuple[MemoryPlan, ...]], ...]  # (n_ctx, one plan per cache setting)
    auto: tuple[int | None, ...]  # what --ctx auto chooses, per cache setting
    headroom: int = AUTO_HEADROOM  # what --ctx auto leaves free

    def fits(self, plan_: MemoryPlan) -> bool | None:
        return None if self.available is None else plan_.total <= self.available


def report(
    header: GgufHeader,
    *,
    model: str,
    contexts: Sequence[int],
    caches: Sequence[CacheSettings],
    parallel: int = 1,
    available: int | None,
    container: int | None = None,
    tensors: Iterable[TensorInfo] | None = None,
) -> MemoryReport:
    shape = ModelShape.of(header, tensors)
    rows = tuple((n, tuple(plan_shape(shape, n, parallel=parallel, cache=c, model=model) for c in caches)) for n in contexts)
    auto = tuple(largest_context(shape, available, parallel=parallel, cache=c) if available is not None else None for c in caches)
    return MemoryReport(model, available, container, parallel, tuple(caches), rows, auto)


def _row_bytes(type_name: str, n_values: int) -> int:
    block, size = gguf.GGML_QUANT_SIZES[KV_TYPES[type_name]]
    return n_values // block * size


def _pad(n: int) -> int:
    return -(-n // _PAD) * _PAD
