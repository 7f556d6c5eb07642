"""Which layers each machine holds over RPC workers, and the memory check, on the real model shapes.

The tensor tables are gpt-oss-120b's and gpt-oss-20b's (GPT-OSS.md: hidden 2880, 128 or 32
MXFP4 experts, Q8_0 attention, 201088-row embedding and output), so the figures are the
real models' and no 60 GB file is needed.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest

from ossrun.engine.gguf_header import GgufHeader, TensorInfo
from ossrun.engine.placement import DEFAULT_LOCAL_OVERHEAD, DEFAULT_WORKER_OVERHEAD, WorkerAsk, layer_sizes, plan
from ossrun.engine.rpc import parse_workers
from ossrun.errors import ModelError, WorkerError

GiB = 2**30
Q8, F32, MXFP4 = gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.MXFP4
H, VOCAB, HEAD, KV_HEADS = 2880, 201088, 64, 8


def gpt_oss_header(layers: int, experts: int) -> GgufHeader:
    tensors = [TensorInfo("token_embd.weight", (H, VOCAB), Q8, 0)]
    for b in range(layers):
        p = f"blk.{b}."
        tensors += [
            TensorInfo(p + "attn_norm.weight", (H,), F32, 0),
            TensorInfo(p + "attn_q.weight", (H, 64 * HEAD), Q8, 0), TensorInfo(p + "attn_q.bias", (64 * HEAD,), F32, 0),
            TensorInfo(p + "attn_k.weight", (H, KV_HEADS * HEAD), Q8, 0),
            TensorInfo(p + "attn_k.bias", (KV_HEADS * HEAD,), F32, 0),
            TensorInfo(p + "attn_v.weight", (H, KV_HEADS * HEAD), Q8, 0),
            TensorInfo(p + "attn_v.bias", (KV_HEADS * HEAD,), F32, 0),
            TensorInfo(p + "attn_output.weight", (64 * HEAD, H), Q8, 0), TensorInfo(p + "attn_output.bias", (H,), F32, 0),
            TensorInfo(p + "attn_sinks.weight", (64,), F32, 0),
            TensorInfo(p + "post_attention_norm.weight", (H,), F32, 0),
            TensorInfo(p + "ffn_gate_inp.weight", (H, experts), F32, 0), TensorInfo(p + "ffn_gate_inp.bias", (experts,), F32, 0),
        ]  # fmt: skip
        for kind in ("gate", "up", "down"):
            tensors += [
                TensorInfo(p + f"ffn_{kind}_exps.weight", (H, H, experts), MXFP4, 0),
                TensorInfo(p + f"ffn_{kind}_exps.bias", (H, experts), F32, 0),
            ]
    tensors += [TensorInfo("output_norm.weight", (H,), F32, 0), TensorInfo("output.weight", (H, VOCAB), Q8, 0)]
    metadata = {
        "general.architecture": "gpt-oss",
        "gpt-oss.block_count": layers,
        "gpt-oss.attention.head_count_kv": KV_HEADS,
        "gpt-oss.attention.key_length": HEAD,
        "gpt-oss.attention.value_length": HEAD,
        "gpt-oss.attention.sliding_window": 128,
        "gpt-oss.context_length": 131072,
        "gpt-oss.embedding_length": H,
    }
    size = sum(t.n_bytes for t in tensors)
    return GgufHeader(Path(f"gpt-oss-{layers}.gguf"), size, 0, metadata, tuple(tensors), 0)


def placement_of(header: GgufHeader, workers, *, n_ctx: int = 8192, available: int = 22 * GiB):
    layers = int(header.metadata["gpt-oss.block_count"])
    per_layer, other = layer_sizes(header.tensors, layers)
    kv_per_layer = n_ctx * KV_HEADS * (HEAD + HEAD) * 2  # every position in every layer, f16 (swa_full)
    return plan(
        "gpt-oss-120b" if layers == 36 else "gpt-oss-20b",
        per_layer,
        other,
        kv_per_layer,
        workers,
        n_ctx=n_ctx,
        local_available=available,
    )


@pytest.fixture(scope="module")
def big():
    return gpt_oss_header(36, 128)


@pytest.fixture(scope="module")
def small():
    return gpt_oss_header(24, 32)


def test_the_tables_have_the_published_sizes(big, small):
    # 120b: 63.4 GB as ggml-org publishes it; 20b: 12.1 GB.
    assert 63.0e9 < big.file_size < 63.6e9
    assert 11.9e9 < small.file_size < 12.2e9


def test_the_120b_fits_three_24_gib_machines_when_they_hold_it_together(big):
    workers = [WorkerAsk("10.0.0.2:50052", 20 * GiB, 24 * GiB), WorkerAsk("10.0.0.3:50052", 20 * GiB, 24 * GiB)]
    placement = placement_of(big, workers)
    assert [s.count for s in (placement.local, *placement.workers)] == [12, 12, 12]
    assert [(s.first, s.count) for s in placement.workers] == [(12, 12), (24, 12)]
    assert placement.offloaded == 24
    # Everything is counted: all weights, the KV cache of 36 layers at 8192 tokens, three compute buffers.
    kv = 8192 * 36 * KV_HEADS * 2 * HEAD * 2
    assert placement.total == big.file_size + kv + DEFAULT_LOCAL_OVERHEAD + 2 * DEFAULT_WORKER_OVERHEAD
    for share in placement.workers:
        assert 19 * GiB < share.total <= 20 * GiB
    assert 19 * GiB < placement.local.total < 22 * GiB  # 12 layers plus the embeddings and the output matrix
    assert placement.describe() == (
        "gpt-oss-120b over 3 machines: this machine 21 GiB (layers 0-11, embeddings and output), "
        "10.0.0.2:50052 20 GiB (layers 12-23), 10.0.0.3:50052 20 GiB (layers 24-35)"
    )


def test_without_workers_memory_the_layers_are_split_evenly(big, small):
    asks = [WorkerAsk("a:1", None, 24 * GiB), WorkerAsk("b:2", None, 24 * GiB)]
    assert [s.count for s in (placement_of(big, asks).local, *placement_of(big, asks).workers)] == [12, 12, 12]
    # The 20b on two machines too small for it (12 GiB each): 12 layers each.
    twenty = placement_of(small, [WorkerAsk("a:1", None, 12 * GiB)], available=8 * GiB)
    assert (twenty.local.count, twenty.workers[0].count) == (12, 12)
    assert twenty.local.total < 8 * GiB and twenty.workers[0].total < 8 * GiB
    # Uneven: the workers take the extra layers, this machine already holds the embeddings.
    odd = placement_of(gpt_oss_header(25, 32), asks)
    assert [s.count for s in (odd.local, *odd.workers)] == [8, 9, 8]


def test_a_model_too_big_for_the_machines_together_says_what_each_holds(big):
    workers = [WorkerAsk("10.0.0.2:50052", 14 * GiB, 24 * GiB), WorkerAsk("10.0.0.3:50052", 14 * GiB, 24 * GiB)]
    with pytest.raises(ModelError) as failure:
        placement_of(big, workers)
    message = str(failure.value)
    assert message.startswith(
        "gpt-oss-120b needs about 61 GiB at --ctx 8192 (this machine 34 GiB (layers 0-19, "
        "embeddings and output); 10.0.0.2:50052 13 GiB (layers 20-27); 10.0.0.3:50052 13 GiB (layers 28-35))"
    )
    assert "this machine has only 22 GiB available" in message
    assert "\n" not in message


def test_a_worker_that_reports_less_than_its_share(big):
    with pytest.raises(ModelError, match=r"10.0.0.2:50052 holds 20 GiB and it reports only 16 GiB"):
        placement_of(big, [WorkerAsk("10.0.0.2:50052", None, 16 * GiB), WorkerAsk("10.0.0.3:50052", None, 24 * GiB)])
    with pytest.raises(ModelError, match=r"10.0.0.2:50052=20 GiB is more than the 16 GiB that worker reports"):
        placement_of(big, [WorkerAsk("10.0.0.2:50052", 20 * GiB, 16 * GiB), WorkerAsk("10.0.0.3:50052", 20 * GiB, 24 * GiB)])


def test_memory_for_every_worker_or_for_none(big):
    with pytest.raises(WorkerError, match="for every worker"):
        placement_of(big, [WorkerAsk("a:1", 20 * GiB), WorkerAsk("b:2", None)])


def test_a_worker_left_with_no_layer_or_too_little_memory_for_one(small):
    with pytest.raises(ModelError, match=r"b:2 would hold no layer of gpt-oss-20b: the workers before it hold all 24"):
        placement_of(small, [WorkerAsk("a:1", 20 * GiB), WorkerAsk("b:2", 20 * GiB)])
    with pytest.raises(ModelError, match=r"a:1=512 MiB cannot hold one layer of gpt-oss-20b"):
        placement_of(small, [WorkerAsk("a:1", 512 * 2**20)])


def test_each_machine_holds_the_kv_cache_of_its_own_layers_as_the_memory_plan_counts_it(big):
    """The small sliding-window cache: the even layers hold 768 cells, the odd ones the whole context."""
    from ossrun.engine import memory

    shape = memory.ModelShape.of(big)
    kv = memory.kv_bytes_per_layer(shape, 131072)
    assert kv[0] == 768 * KV_HEADS * 2 * HEAD * 2 and kv[1] == 131072 * KV_HEADS * 2 * HEAD * 2
    assert sum(kv) == memory.plan(big, 131072).kv_cache
    layers = int(big.metadata["gpt-oss.block_count"])
    per_layer, other = layer_sizes(big.tensors, layers)
    workers = [WorkerAsk("10.0.0.2:50052", 22 * GiB, 24 * GiB), WorkerAsk("10.0.0.3:50052", 22 * GiB, 24 * GiB)]
    placement = plan("gpt-oss-120b", per_layer, other, kv, workers, n_ctx=131072, local_available=40 * GiB)
    for share in (placement.local, *placement.workers):
        assert share.kv == sum(kv[share.first : share.first + share.count])


def test_parse_workers():
    assert [(w.name, w.memory) for w in parse_workers(["10.0.0.2:50052=20GiB,gpu-box:50053=16 GB", "h:1"])] == [
        ("10.0.0.2:50052", 20 * GiB),
        ("gpu-box:50053", 16 * 10**9),
        ("h:1", None),
    ]
    for bad, reason in [
        ("10.0.0.2", "is not HOST:PORT"),
        ("h:0", "out of range"),
        ("h:1=much", "not a memory size"),
        ("[::1]:50052", "is not HOST:PORT"),
        ("h:1,h:1", "twice"),
        (" , ", "names no worker"),
    ]:
        with pytest.raises(WorkerError, match=reason):
            parse_workers(bad)
