"""Which layers each machine holds when workers take part, and whether each can hold them.

llama.cpp keeps the embeddings and the first layers on this machine and offloads the last
ones, in the order the workers are given. A machine's share is its layers' weights, their KV
cache and a compute buffer; this machine also holds the embeddings and the output matrix.
The memory check counts every machine against what it may use: for a worker, the memory
given with ``--rpc HOST:PORT=MEMORY`` (a worker reports its machine's whole RAM, whatever else
runs there), for this machine what is available now.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ossrun.errors import ModelError, WorkerError
from ossrun.units import format_memory

HERE = "this machine"
# Compute buffers, logits and allocator slack on this machine when the caller has no memory plan
# (ossrun.engine.memory plans it: rpc.place passes its figure).
DEFAULT_LOCAL_OVERHEAD = 512 * 2**20
# A worker's compute buffer: the activations of its layers for one batch, no logits.
DEFAULT_WORKER_OVERHEAD = 256 * 2**20

_LAYER_TENSOR = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class WorkerAsk:
    """One worker as the placement sees it: its name, the memory it may use, what it reports."""

    name: str  # HOST:PORT
    memory: int | None  # --rpc HOST:PORT=MEMORY, or None
    reported: int | None = None  # the free memory the worker reports


@dataclass(frozen=True)
class Share:
    """What one machine holds: layers ``first .. first+count-1`` and the bytes they take."""

    machine: str
    first: int
    count: int
    weights: int
    kv: int
    overhead: int

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.overhead

    @property
    def layers(self) -> str:
        if self.count == 0:
            return "no layers"
        if self.count == 1:
            return f"layer {self.first}"
        return f"layers {self.first}-{self.first + self.count - 1}"

    def describe(self) -> str:
        extra = ", embeddings and output" if self.machine == HERE else ""
        return f"{self.machine} {format_memory(self.total)} ({self.layers}{extra})"


@dataclass(frozen=True)
class Placement:
    """The layers of a model over this machine and its workers."""

    model: str
    n_ctx: int
    n_layers: int
    local: Share
    workers: tuple[Share, ...]

    @property
    def offloaded(self) -> int:
        """Layers the workers hold (the last ones)."""
        return sum(w.count for w in self.workers)

    @property
    def total(self) -> int:
        return self.local.total + sum(w.total for w in self.workers)

    def describe(self) -> str:
        shares = ", ".join(s.describe() for s in (self.local, *self.workers))
        return f"{self.model} over {1 + len(self.workers)} machines: {shares}"


def layer_sizes(tensors: Iterable, n_layers: int) -> tuple[list[int], int]:
    """Bytes of each layer's weights, and of the rest (embeddings, output), from a tensor table."""
    per_layer, other = [0] * n_layers, 0
    for tensor in tensors:
        match = _LAYER_TENSOR.match(tensor.name)
        if match and int(match.group(1)) < n_layers:
            per_layer[int(match.group(1))] += tensor.n_bytes
        else:
            other += tensor.n_bytes
    return per_layer, other


def plan(
    model: str,
    per_layer: Sequence[int],
    other: int,
    kv_per_layer: int | Sequence[int],
    workers: Sequence[WorkerAsk],
    *,
    n_ctx: int,
    local_available: int | None,
    local_overhead: int = DEFAULT_LOCAL_OVERHEAD,
) -> Placement:
    """Give each worker its layers and check that every machine can hold its share.

    With a memory for every worker, each holds as many layers as fit in it, in the order
    given, and this machine holds the rest. With none, the layers are split evenly over all
    the machines (the workers take the odd ones: this machine also holds the embeddings).
    ModelError names each machine's share when one of them cannot hold it.
    """
    n_layers = len(per_layer)
    # A layer's KV cache: the same for every layer, or per layer (sliding-window layers hold fewer cells).
    kv = [kv_per_layer] * n_layers if isinstance(kv_per_layer, int) else list(kv_per_layer)
    given = [w.memory is not None for w in workers]
    if any(given) and not all(given):
        raise WorkerError("give a memory for every worker (--rpc HOST:PORT=MEMORY,...) or for none of them")
    biggest = max((size + cells for size, cells in zip(per_layer, kv, strict=True)), default=0)
    counts: list[int] = []
    if all(given) and workers:
        left = n_layers
        for worker in workers:
            memory = worker.memory or 0  # given for every worker here
            fits = max(0, (memory - DEFAULT_WORKER_OVERHEAD) // biggest) if biggest else left
            if fits == 0:
                raise ModelError(
                    f"{worker.name}={format_memory(memory)} cannot hold one layer of {model} "
                    f"({format_memory(biggest + DEFAULT_WORKER_OVERHEAD)} with its KV cache for {n_ctx} tokens "
                    f"and a compute buffer): give it more memory or a smaller --ctx"
                )
            if left == 0:
                raise ModelError(
                    f"{worker.name} would hold no layer of {model}: the workers before it hold all "
                    f"{n_layers}; give them less memory or leave {worker.name} out"
                )
            counts.append(min(fits, left))
            left -= counts[-1]
    else:
        machines = len(workers) + 1
        base, extra = divmod(n_layers, machines)
        counts = [base + (1 if i < extra else 0) for i in range(len(workers))]
        if workers and min(counts) == 0:
            raise ModelError(f"{model} has {n_layers} layers, too few for {machines} machines: use fewer workers")

    local_count = n_layers - sum(counts)
    shares, first = [], local_count
    for worker, count in zip(workers, counts, strict=True):
        layers = range(first, first + count)
        shares.append(
            Share(
                worker.name, first, count, sum(per_layer[i] for i in layers), sum(kv[i] for i in layers), DEFAULT_WORKER_OVERHEAD
            )
        )
        first += count
    local = Share(HERE, 0, local_count, other + sum(per_layer[:local_count]), sum(kv[:local_count]), local_overhead)
    placement = Placement(model, n_ctx, n_layers, local, tuple(shares))
    _check(placement, workers, local_available)
    return placement


def _check(placement: Placement, workers: Sequence[WorkerAsk], local_available: int | None) -> None:
    needs = (
        f"{placement.model} needs about {format_memory(placement.total)} at --ctx {placement.n_ctx} "
        f"({'; '.join(s.describe() for s in (placement.local, *placement.workers))})"
    )
    for share, worker in zip(placement.workers, workers, strict=True):
        limit = worker.memory if worker.memory is not None else worker.reported
        if limit is not None and share.total > limit:
            said = "it may use" if worker.memory is not None else "it reports"
            raise ModelError(
                f"{needs} but {share.machine} holds {format_memory(share.total)} and {said} only "
                f"{format_memory(limit)}: give the workers memory to hold more (--rpc HOST:PORT=MEMORY), "
                f"add a worker, or use a smaller --ctx"
            )
        if worker.memory is not None and worker.reported is not None and worker.memory > worker.reported:
            raise ModelError(
                f"{worker.name}={format_memory(worker.memory)} is more than the "
                f"{format_memory(worker.reported)} that worker reports: give it at most that"
            )
    if local_available is not None and placement.local.total > local_available:
        raise ModelError(
            f"{needs} but {HERE} has only {format_memory(local_available)} available: "
            f"give the workers more (--rpc HOST:PORT=MEMORY), add a worker, use a smaller --ctx, or close other programs"
        )
