"""llama.cpp through llama-cpp-python's C bindings.

:class:`LlamaEngine` implements :class:`ossrun.engine.protocol.Engine` on a memory-mapped
GGUF: one llama.cpp context with ``parallel`` sequences over a unified KV cache, run by
:class:`ossrun.engine.scheduler.Scheduler`; :class:`LlamaBackend` is the context as the
scheduler sees it. The C API is used directly rather than ``llama_cpp.Llama``: it gives
the abort callback, the sliding-window cache setting, sequences that share cells,
per-sequence state for the disk prefix cache and the sliding-window layers' state alone
for context checkpoints, and a decode step with no per-token copies.

The file is mapped, as llama-server maps it: llama.cpp copies the MXFP4 experts into
anonymous memory (repacked) and uses the other tensors in place; the ones every token reads
are then locked in memory (:mod:`ossrun.engine.resident`), so that memory pressure cannot
make each token read them from disk again. Where this process may not lock that much, or
the weights go to RPC workers, the weights are read into memory instead. What a load takes
is planned by :mod:`ossrun.engine.memory`.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import llama_cpp

from ossrun import home
from ossrun.engine import resident
from ossrun.engine.ggml import place_weights
from ossrun.engine.gguf_header import GgufHeader
from ossrun.engine.memory import DEFAULT_BATCH, DEFAULT_CACHE, KV_TYPES, CacheSettings
from ossrun.engine.prefix_cache import PrefixCache
from ossrun.engine.protocol import Generation, GenerationRequest, Occupancy, Sampling
from ossrun.engine.sampler import ConstrainedSampler
from ossrun.engine.scheduler import Entry, Scheduler
from ossrun.errors import ModelError
from ossrun.machine import available_memory, physical_cores
from ossrun.units import format_memory

if TYPE_CHECKING:
    import numpy as np

    from ossrun.engine.rpc import Workers

DEFAULT_CTX = 8192
# The sliding-window layers' state alone, for checkpoints (llama.h: LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY)
_PARTIAL_STATE = llama_cpp.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY

_NO_ABORT = llama_cpp.ggml_abort_callback()  # a NULL callback pointer
_log_to_stderr = False
# Contexts of this process that are in use: the cleared KV cache's pages are given back only when a
# context is created beside no other, whose decoding could write to memory it has just mapped.
_contexts: set[int] = set()


@llama_cpp.llama_log_callback
def _log(level: int, text: bytes, user_data: Any) -> None:
    # llama.cpp logs to stderr on its own until a callback replaces its default one.
    if _log_to_stderr:
        sys.stderr.write(text.decode("utf-8", errors="replace"))
        sys.stderr.flush()


def _note(text: str) -> None:
    """One of ossrun's own lines among llama.cpp's (``--verbose``)."""
    if _log_to_stderr:
        sys.stderr.write(text)
        sys.stderr.flush()


def set_verbose(verbose: bool) -> None:
    """Show llama.cpp's own log lines on stderr (``--verbose``) or keep them off the terminal."""
    global _log_to_stderr
    _log_to_stderr = verbose
    llama_cpp.llama_log_set(_log, None)


set_verbose(False)
llama_cpp.llama_backend_init()


def llama_cpp_version() -> str:
    """The bindings' version and llama.cpp's own: KV states are only valid within one build."""
    return f"{llama_cpp.__version__}/{llama_cpp.llama_version().decode()}"


def read_token_bytes(path: Path, count: int) -> list[bytes]:
    """The bytes of tokens ``0..count-1`` from a vocabulary-only load (no weights, ~2 s)."""
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise ModelError(f"llama.cpp cannot read the vocabulary of {path}: convert the checkpoint again")
    try:
        vocab = llama_cpp.llama_model_get_vocab(model)
        count = min(count, llama_cpp.llama_vocab_n_tokens(vocab))
        size = 256
        buffer = ctypes.create_string_buffer(size)
        pieces = []
        for token in range(count):
            n = llama_cpp.llama_token_to_piece(vocab, token, buffer, size, 0, False)
            if n < 0:  # a longer token than the buffer: grow it and ask again
                size = -n
                buffer = ctypes.create_string_buffer(size)
                n = llama_cpp.llama_token_to_piece(vocab, token, buffer, size, 0, False)
            pieces.append(buffer.raw[:n])
        return pieces
    finally:
        llama_cpp.llama_model_free(model)


class LlamaEngine:
    """One llama.cpp model and context, its sequences run by a :class:`Scheduler`."""

    def __init__(
        self,
        header: GgufHeader,
        *,
        n_ctx: int = DEFAULT_CTX,
        parallel: int = 1,
        threads: int | None = None,
        batch_size: int = DEFAULT_BATCH,
        on_progress: Callable[[float], None] | None = None,
        cache_dir: Path | None = None,
        cache: CacheSettings = DEFAULT_CACHE,
        rpc: Workers | None = None,
    ):
        if parallel < 1:
            raise ModelError(f"parallel {parallel} is less than 1: decode at least one sequence")
        self.path = header.path
        self._watch = rpc.watch if rpc is not None else _unwatched  # bounds every call that waits on a worker
        self.threads = threads or physical_cores()
        self._model = self._ctx = None
        self._backend: LlamaBackend | None = None
        self._scheduler: Scheduler | None = None

        self._locked: resident.Locked | None = None
        hot = resident.hot_ranges(header)
        mapped = rpc is None and resident.lockable(resident.size(hot))
        params = llama_cpp.llama_model_default_params()
        # mapped with what every token reads locked, else read into memory: see the module docstring
        params.load_mode = llama_cpp.LLAMA_LOAD_MODE_MMAP if mapped else llama_cpp.LLAMA_LOAD_MODE_NONE
        place_weights(params)
        if rpc is not None:
            rpc.apply(params)  # the workers' devices and layers; this CPU keeps the rest
        with _keyboard_interrupt_caught() as interrupted, self._watch("loading the model", ticking=True) as watched:

            def progress(fraction: float, _data: Any) -> bool:
                watched.tick()
                if on_progress is not None:
                    on_progress(fraction)
                return not interrupted.is_set()  # False stops the load

            params.progress_callback = llama_cpp.llama_progress_callback(progress)
            self._model = llama_cpp.llama_model_load_from_file(str(self.path).encode(), params)
        if interrupted.is_set():
            if self._model:
                llama_cpp.llama_model_free(self._model)
            raise KeyboardInterrupt
        if not self._model:
            raise ModelError(
                f"llama.cpp could not load {self.path}: run with --verbose to see why, or convert the checkpoint again"
            )
        if mapped:
            self._locked = resident.lock_mapped(self.path, hot, resident.cold_ranges(header))
            if self._locked is None:
                _note(
                    f"ossrun: could not lock {format_memory(resident.size(hot))} of {self.path.name}'s weights in memory; "
                    "under memory pressure decoding may slow down\n"
                )
            experts = resident.expert_ranges(header)
            available = available_memory()
            if available is not None and available < resident.size(experts):
                resident.drop_cached(self.path, experts)

        n_batch = min(max(batch_size, parallel), n_ctx)
        ctx_params = llama_cpp.llama_context_default_params()
        ctx_params.n_ctx = n_ctx
        ctx_params.n_batch = ctx_params.n_ubatch = n_batch  # one ubatch per decode: a failed one rolls back whole
        ctx_params.n_seq_max = parallel
        ctx_params.kv_unified = True  # one pool of cells; sequences with a common prefix share its cells
        ctx_params.n_threads = ctx_params.n_threads_batch = self.threads
        # The small sliding-window cache by default: the scheduler keeps prefixes usable with
        # checkpoints. A quantized V cache needs flash attention, which "auto" then turns on.
        ctx_params.swa_full = cache.swa_full
        ctx_params.type_k, ctx_params.type_v = int(KV_TYPES[cache.type_k]), int(KV_TYPES[cache.type_v])
        ctx_params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
        ctx_params.no_perf = True
        alone = not _contexts
        anonymous = resident.anonymous_mappings()
        with self._watch("creating the context"):
            self._ctx = llama_cpp.llama_init_from_model(self._model, ctx_params)
        if not self._ctx:
            self.close()
            raise ModelError(f"llama.cpp could not create a context of {n_ctx} tokens for {self.path.name}: try a smaller --ctx")
        _contexts.add(id(self))
        if alone:
            resident.release_zero_pages(anonymous)  # the cleared KV cache: held as it fills
        window = 0 if cache.swa_full else max(0, llama_cpp.llama_model_n_swa(self._model))
        self._backend = LlamaBackend(self._model, self._ctx, n_batch=n_batch, n_seq=parallel, window=window, watch=self._watch)
        self._n_ctx, self._parallel, self.cache = self._backend.n_ctx, parallel, cache
        identity = dict(header.identity, n_ctx=self._backend.n_ctx, kv_cache=cache.name, llama_cpp=llama_cpp_version())
        prefix_cache = PrefixCache(Path(cache_dir or home.cache_dir()) / "prefix", identity)
        self._scheduler = Scheduler(self._backend, prefix_cache, max_checkpoints=cache.max_checkpoints)
        self.n_vocab = self._backend.n_vocab

    # -- the Engine protocol ------------------------------------------------

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    @property
    def parallel(self) -> int:
        return self._parallel

    @property
    def scheduler(self) -> Scheduler:
        if self._scheduler is None:
            raise ModelError("the model is closed: load it again")
        return self._scheduler

    def generate(self, request: GenerationRequest) -> Generation:
        return self.scheduler.submit(request)

    def cached_prefix(self, prompt: Sequence[int], prefix_length: int = 0) -> int:
        return self.scheduler.cached_prefix(prompt, prefix_length)

    def occupancy(self) -> Occupancy:
        return self._scheduler.occupancy() if self._scheduler is not None else Occupancy()

    def close(self) -> None:
        if self._scheduler is not None:
            self._scheduler.close()
            self._scheduler = None
        with self._watch("freeing the model"):
            self._free()

    def _free(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None
        if self._ctx:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
            _contexts.discard(id(self))
        if self._locked is not None:
            self._locked.release()
            self._locked = None
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None


class LlamaBackend:
    """A llama.cpp context as :class:`Scheduler` uses it: batches over sequences, samplers, state."""

    def __init__(
        self,
        model: Any,
        ctx: Any,
        *,
        n_batch: int,
        n_seq: int,
        window: int = 0,
        watch: Callable[..., AbstractContextManager[Any]] | None = None,
    ):
        self._watch = watch or _unwatched
        self._ctx = ctx
        self._memory = llama_cpp.llama_get_memory(ctx)
        self.n_ctx = llama_cpp.llama_n_ctx(ctx)
        self.n_batch = n_batch
        self.n_seq = n_seq
        self.window = window
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        for i in range(n_batch):
            self._batch.n_seq_id[i] = 1
        self._abort_check: Callable[[], bool] | None = None
        self._abort = llama_cpp.ggml_abort_callback(self._should_abort)  # kept referenced for llama.cpp

    def decode(self, entries: Sequence[Entry], abort: Callable[[], bool] | None) -> int:
        batch = self._batch
        token, pos, seq_id, logits = batch.token, batch.pos, batch.seq_id, batch.logits
        for i, entry in enumerate(entries):
            token[i] = entry.token
            pos[i] = entry.pos
            seq_id[i][0] = entry.seq
            logits[i] = entry.logits
        batch.n_tokens = len(entries)
        if abort is None:  # a decode step is short: cancel is checked between steps
            with self._watch("generating", len(entries)):
                return llama_cpp.llama_decode(self._ctx, batch)
        # Reading a prompt can take minutes: llama.cpp asks between graph nodes whether to stop.
        self._abort_check = abort
        llama_cpp.llama_set_abort_callback(self._ctx, self._abort, None)
        try:
            with self._watch("evaluating the prompt", len(entries)):
                return llama_cpp.llama_decode(self._ctx, batch)
        finally:
            llama_cpp.llama_set_abort_callback(self._ctx, _NO_ABORT, None)
            self._abort_check = None

    def _should_abort(self, _data: Any) -> bool:
        check = self._abort_check
        return check is not None and check()

    def sample(self, sampler: ConstrainedSampler, index: int) -> int:
        return sampler.sample(self._ctx, index, self.n_vocab)

    def logits(self, index: int) -> np.ndarray:
        """A copy of the logits of batch entry ``index`` of the last decode."""
        import numpy as np

        pointer = llama_cpp.llama_get_logits_ith(self._ctx, index)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()

    def new_sampler(self, sampling: Sampling) -> ConstrainedSampler:
        return ConstrainedSampler(sampling, self._vocab)

    def free_sampler(self, sampler: ConstrainedSampler) -> None:
        sampler.free()

    def seq_keep(self, seq: int, n: int) -> None:
        llama_cpp.llama_memory_seq_rm(self._memory, seq, n, -1)

    def seq_copy(self, src: int, dst: int, n: int) -> None:
        llama_cpp.llama_memory_seq_cp(self._memory, src, dst, 0, n)

    def seq_length(self, seq: int) -> int:
        return llama_cpp.llama_memory_seq_pos_max(self._memory, seq) + 1

    def seq_min(self, seq: int) -> int:
        # With the sliding-window cache, the smallest position its cells hold for this sequence.
        return llama_cpp.llama_memory_seq_pos_min(self._memory, seq)

    def save_state(self, seq: int) -> bytes | None:
        return self._get_state(seq, llama_cpp.LLAMA_STATE_SEQ_FLAGS_NONE, "saving the prompt cache")

    def load_state(self, seq: int, data: bytes) -> bool:
        return self._set_state(seq, data, llama_cpp.LLAMA_STATE_SEQ_FLAGS_NONE, "restoring the prompt cache")

    def save_checkpoint(self, seq: int) -> bytes | None:
        return self._get_state(seq, _PARTIAL_STATE, "saving a context checkpoint")

    def load_checkpoint(self, seq: int, data: bytes) -> bool:
        return self._set_state(seq, data, _PARTIAL_STATE, "restoring a context checkpoint")

    def _get_state(self, seq: int, flags: int, what: str) -> bytes | None:
        size = llama_cpp.llama_state_seq_get_size_ext(self._ctx, seq, flags)
        buffer = (ctypes.c_uint8 * size)()
        with self._watch(what):
            written = llama_cpp.llama_state_seq_get_data_ext(self._ctx, buffer, size, seq, flags)
        return bytes(buffer)[:written] if written else None

    def _set_state(self, seq: int, data: bytes, flags: int, what: str) -> bool:
        buffer = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        with self._watch(what):
            return bool(llama_cpp.llama_state_seq_set_data_ext(self._ctx, buffer, len(data), seq, flags))

    def close(self) -> None:
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None


class _Unwatched:
    """The watch of a model with no workers: llama.cpp's calls need no deadline."""

    def __enter__(self) -> _Unwatched:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        pass

    def tick(self) -> None:
        pass


def _unwatched(what: str, tokens: int = 0, *, ticking: bool = False) -> AbstractContextManager[_Unwatched]:
    return _Unwatched()


@contextlib.contextmanager
def _keyboard_interrupt_caught() -> Iterator[threading.Event]:
    """An event set when Ctrl-C arrives while llama.cpp runs one of our Python callbacks.

    The load-progress callback runs Python in the loading thread, so SIGINT handlers get
    to run inside it. A KeyboardInterrupt raised there cannot propagate through C (ctypes
    reports it as unraisable): it is caught here, the callback tells llama.cpp to
    stop, and the caller raises it again once llama.cpp has returned.
    """
    interrupted = threading.Event()
    previous_hook = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            interrupted.set()
        else:
            previous_hook(unraisable)

    sys.unraisablehook = hook
    try:
        yield interrupted
    finally:
        sys.unraisablehook = previous_hook
