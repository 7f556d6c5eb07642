"""Loading a model: ``ossrun.load()`` and ``ossrun.plan()``.

``load`` turns a name into a file (the store), checks it and plans its memory (the engine's
memory planner), chooses the context for ``ctx="auto"``, and hands the engine and the harmony
encoding to a :class:`ossrun.model.Model`. It draws nothing: a front end that shows the load's
progress passes ``on_progress``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from ossrun.defaults import DEFAULT_CTX, DEFAULT_KV_TYPE, DEFAULT_PARALLEL
from ossrun.errors import ModelError
from ossrun.model import Model
from ossrun.units import format_memory

# Contexts tried, largest first, when --ctx auto loads over RPC workers (each machine's share is checked).
RPC_AUTO_CONTEXTS = (131072, 65536, 32768, 16384, 8192, 4096)
UNKNOWN_MEMORY_CONTEXT = 8192  # --ctx auto where the platform does not say how much memory is free


def load(
    model: str | os.PathLike | None = None,
    *,
    ctx: int | str | Sequence[int] = DEFAULT_CTX,
    threads: int | None = None,
    parallel: int = DEFAULT_PARALLEL,
    kv_type: str | Sequence[str] = DEFAULT_KV_TYPE,
    swa_full: bool = False,
    verbose: bool = False,
    on_progress: Callable[[float], None] | None = None,
    pull: bool = False,
    rpc: str | Sequence[str] | None = None,
    on_file_progress: Callable[[str, int, int], None] | None = None,
) -> Model:
    """Load a gpt-oss model by GGUF path, registry name or alias, or ``"demo"``.

    ``None`` is the registry's default model (gpt-oss-20b unless a user models.toml
    says otherwise); ``pull`` downloads a registry model that is not on disk first.
    The file is checked (a GGUF of architecture gpt-oss, complete) and its memory plan
    compared with the available memory (the container's limit included) before
    llama.cpp reads it. ``threads`` defaults to the physical cores; ``verbose`` shows
    llama.cpp's own log; ``on_progress`` is called with the fraction of the weights read
    (0 to 1) as llama.cpp loads them, and ``on_file_progress`` with each step on a registry
    model's files before that (a ``pull`` download, the hash check of a file's first use) and
    its bytes done of a total: the library draws nothing, front ends show it.

    ``parallel`` is how many replies are decoded together: ``stream`` and ``chat`` may
    then be called from that many threads at once (more wait their turn). ``ctx`` is
    the pool of KV cells they share; a prefix common to several prompts is held once,
    and any one reply may use the whole pool. ``"auto"`` (the default) is the largest
    context up to the model's limit that fits in memory with room for ``parallel``
    sequences; several sizes (largest first) take the largest of them that fits.
    ``Model.n_ctx`` says which.

    ``kv_type`` is the KV cache's type, ``"f16"`` or ``"q8_0"`` (half the memory), or a
    (key, value) pair. ``swa_full`` keeps every position in the sliding-window layers too
    (twice the cache); by default they keep their window, and prefixes stay reusable
    through checkpoints of their state.

    ``rpc`` lists workers (``"HOST:PORT[=MEMORY]"``, see ``ossrun worker``) that hold the
    model's last layers; ``Model.placement`` then says which machine holds what.
    """
    from ossrun.engine import llama, memory
    from ossrun.engine.gguf_header import check_gpt_oss
    from ossrun.harmony.encoding import load_encoding
    from ossrun.harmony.tiktoken_file import O200K_BASE_TOKENS, ensure_o200k
    from ossrun.machine import available_memory
    from ossrun.store.resolve import resolve

    cache = memory.CacheSettings.parse(kv_type, swa_full=swa_full)
    if parallel < 1:
        raise ModelError(f"parallel {parallel} is less than 1: decode at least one sequence")
    resolved = resolve(model, pull=pull, progress=on_file_progress)
    path, name = resolved.path, resolved.name
    header = check_gpt_oss(path)
    tensors = None
    if len(resolved.files) > 1:  # a split GGUF: every file's tensors
        from ossrun.engine.rpc import model_tensors

        tensors = model_tensors(header, resolved.files)
    shape = memory.ModelShape.of(header, tensors)
    if isinstance(ctx, str) and ctx != "auto":
        raise ModelError(f"context size {ctx!r} is not a number of tokens or auto: use --ctx auto or e.g. --ctx 32768")
    infos = workers = None
    if rpc:
        from ossrun.engine import rpc as rpc_engine

        infos = rpc_engine.probe_workers(rpc)
    sizes: list[int]
    if isinstance(ctx, str) and infos is None:
        sizes = [_auto_context(shape, available_memory(), parallel, cache, name)]
    elif isinstance(ctx, str):
        sizes = [size for size in RPC_AUTO_CONTEXTS if size <= (shape.context_length or size)]
    else:
        sizes = [ctx] if isinstance(ctx, int) else sorted(ctx, reverse=True)
    n_ctx = sizes[-1]
    for size in sizes:  # the largest context that fits; the last one's error if none does
        try:
            memory.check_context_size(header, size)
            if infos is None:
                needs = memory.plan_shape(shape, size, parallel=parallel, cache=cache, model=name)
                memory.check(needs, available_memory(), shape)
            else:  # the machines together: each one's share against its memory
                workers = rpc_engine.place(header, size, infos, model=name, files=resolved.files, parallel=parallel, cache=cache)
            n_ctx = size
            break
        except ModelError:
            if size == sizes[-1]:
                raise
    llama.set_verbose(verbose)
    vocab_dir = ensure_o200k(header.identity, lambda: llama.read_token_bytes(path, O200K_BASE_TOKENS), name)
    encoding = load_encoding(vocab_dir)
    engine = llama.LlamaEngine(
        header, n_ctx=n_ctx, parallel=parallel, threads=threads, on_progress=on_progress, cache=cache, rpc=workers
    )
    entry = resolved.entry
    return Model(
        engine,
        encoding,
        name=name,
        path=path,
        placement=workers.describe() if workers else None,
        auto_ctx=isinstance(ctx, str),
        reasoning_effort=entry.reasoning_effort if entry else None,
        sampling=entry.sampling if entry else None,
    )


def _auto_context(shape: Any, available: int | None, parallel: int, cache: Any, name: str) -> int:
    """``--ctx auto``: the largest context that fits (a modest one where the memory is unknown)."""
    from ossrun.engine import memory

    if available is None:
        return min(shape.context_length or UNKNOWN_MEMORY_CONTEXT, UNKNOWN_MEMORY_CONTEXT)
    size = memory.largest_context(shape, available, parallel=parallel, cache=cache)
    if size is None:
        smallest = memory.plan_shape(shape, memory.CONTEXT_STEP, parallel=parallel, cache=cache, model=name)
        raise ModelError(
            f"{name} needs about {format_memory(smallest.total)} even at --ctx {memory.CONTEXT_STEP} "
            f"({smallest.describe()}) but only {format_memory(available)} is available: "
            f"use a smaller model, or close other programs"
        )
    return size


def plan(
    model: str | os.PathLike | None = None,
    *,
    parallel: int = 1,
    kv_types: Sequence[str | Sequence[str]] = ("f16", "q8_0"),
    swa_full: bool = False,
    contexts: Sequence[int] | None = None,
) -> Any:
    """What loading ``model`` takes at each context size (default: 4096 up to the model's limit,
    doubling), per KV cache type, against this machine's available memory; and what
    ``ctx="auto"`` would choose. Returns an ``ossrun.engine.memory.MemoryReport``; reads only the
    GGUF header (the model file must be on disk)."""
    from ossrun.engine import memory
    from ossrun.engine.gguf_header import check_gpt_oss
    from ossrun.machine import available_memory, cgroup_available
    from ossrun.store.resolve import resolve

    caches = [memory.CacheSettings.parse(kind, swa_full=swa_full) for kind in kv_types]
    resolved = resolve(model)
    header = check_gpt_oss(resolved.path)
    tensors = None
    if len(resolved.files) > 1:
        from ossrun.engine.rpc import model_tensors

        tensors = model_tensors(header, resolved.files)
    limit = header.context_length or 131072
    if contexts is None:
        contexts = [n for n in (4096, 8192, 16384, 32768, 65536, 131072) if n < limit] + [limit]
    for n in contexts:
        memory.check_context_size(header, n)
    return memory.report(
        header,
        model=resolved.name,
        contexts=contexts,
        caches=caches,
        parallel=parallel,
        available=available_memory(),
        container=cgroup_available(),
        tensors=tensors,
    )
