"""llama.cpp through llama-cpp-python's C bindings.

:class:`LlamaEngine` implements :class:`ossrun.engine.protocol.Engine` on a memory-mapped
GGUF: token ids in (prefill with prefix reuse), token ids out (llama.cpp's
sampler chain). The C API is used directly rather than ``llama_cpp.Llama``: it
gives the abort callback, the sliding-window cache setting, per-sequence state
for the disk prefix cache, and a decode step with no per-token copies.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence

import llama_cpp

from ossrun import home
from ossrun.engine.ggml import place_weights
from ossrun.engine.gguf_header import GgufHeader
from ossrun.engine.prefix_cache import PrefixCache
from ossrun.engine.protocol import Interrupted, PrefillStats, Sampling, common_prefix_length
from ossrun.errors import ContextError, ModelError
from ossrun.machine import available_memory, physical_cores
from ossrun.units import format_memory

if TYPE_CHECKING:
    import numpy as np

DEFAULT_CTX = 8192
DEFAULT_BATCH = 512  # tokens per llama_decode call while prefilling
# Compute buffers, logits and allocator slack on top of weights and KV cache (llama.cpp
# reserves 420 MiB of compute buffer for gpt-oss-20b at the default batch).
DEFAULT_MEMORY_OVERHEAD = 512 * 2**20
SEQ = 0  # the one sequence ossrun uses

_NO_ABORT = llama_cpp.ggml_abort_callback()  # a NULL callback pointer
_log_to_stderr = False


@llama_cpp.llama_log_callback
def _log(level: int, text: bytes, user_data: Any) -> None:
    # llama.cpp logs to stderr on its own until a callback replaces its default one.
    if _log_to_stderr:
        sys.stderr.write(text.decode("utf-8", errors="replace"))
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


def check_memory(header: GgufHeader, n_ctx: int, *, weights: Optional[int] = None, available: Optional[int] = None) -> int:
    """Bytes the model needs at ``n_ctx``; ModelError with the numbers when memory is short.

    ``weights`` is the size of all the model's files (several for a split GGUF).
    """
    weights = header.file_size if weights is None else weights
    kv_bytes = header.kv_cache_bytes(n_ctx)
    needed = weights + kv_bytes + DEFAULT_MEMORY_OVERHEAD
    available = available_memory() if available is None else available
    if available is not None and needed > available:
        raise ModelError(
            f"{header.path.name} needs about {format_memory(needed)} of memory "
            f"(weights {format_memory(weights)} + KV cache for {n_ctx} tokens {format_memory(kv_bytes)}) "
            f"but only {format_memory(available)} is available: use a smaller --ctx or a smaller model, or close other programs"
        )
    return needed


def check_context_size(header: GgufHeader, n_ctx: int) -> int:
    limit = header.context_length
    if n_ctx < 1 or (limit and n_ctx > limit):
        raise ModelError(f"context size {n_ctx} is out of range: use a --ctx between 1 and {limit or 'the model limit'}")
    return n_ctx


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
    """One llama.cpp model and context holding one sequence of evaluated tokens."""

    def __init__(
        self,
        header: GgufHeader,
        *,
        n_ctx: int = DEFAULT_CTX,
        threads: Optional[int] = None,
        batch_size: int = DEFAULT_BATCH,
        on_progress: Optional[Callable[[float], None]] = None,
        cache_dir: Optional[Path] = None,
        swa_full: bool = True,
    ):
        self.path = header.path
        self.threads = threads or physical_cores()
        self._model = self._ctx = self._batch = None
        self._samplers: dict[Sampling, Any] = {}
        self._last_sampling: Optional[Sampling] = None
        self._last_chain: Any = None
        self._evaluated: list[int] = []
        self._logits_ready = False  # the last decode produced logits for the last evaluated token
        self._abort_flags: tuple[threading.Event, ...] = ()
        self._abort = llama_cpp.ggml_abort_callback(self._should_abort)  # kept referenced for llama.cpp

        params = llama_cpp.llama_model_default_params()
        params.load_mode = llama_cpp.LLAMA_LOAD_MODE_MMAP
        place_weights(params)
        with _keyboard_interrupt_caught() as interrupted:

            def progress(fraction: float, _data: Any) -> bool:
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
            raise ModelError(f"llama.cpp could not load {self.path}: run with --verbose to see why, or convert the checkpoint again")

        n_batch = min(batch_size, n_ctx)
        ctx_params = llama_cpp.llama_context_default_params()
        ctx_params.n_ctx = n_ctx
        ctx_params.n_batch = ctx_params.n_ubatch = n_batch
        ctx_params.n_threads = ctx_params.n_threads_batch = self.threads
        # With the small sliding-window cache, positions that slid out are gone, so
        # keeping a prefix and re-evaluating after it gives wrong logits: keep them all
        # (``swa_full=False`` exists only to show that).
        ctx_params.swa_full = swa_full
        ctx_params.no_perf = True
        self._ctx = llama_cpp.llama_init_from_model(self._model, ctx_params)
        if not self._ctx:
            self.close()
            raise ModelError(f"llama.cpp could not create a context of {n_ctx} tokens for {self.path.name}: try a smaller --ctx")
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._n_ctx = llama_cpp.llama_n_ctx(self._ctx)
        self._batch_size = n_batch
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        for i in range(n_batch):
            self._batch.n_seq_id[i] = 1
            self._batch.seq_id[i][0] = SEQ
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self._model))
        identity = dict(header.identity, n_ctx=self._n_ctx, swa_full=swa_full, llama_cpp=llama_cpp_version())
        self._prefix_cache = PrefixCache(Path(cache_dir or home.cache_dir()) / "prefix", identity)

    # -- the Engine protocol ------------------------------------------------

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    @property
    def evaluated(self) -> Sequence[int]:
        return tuple(self._evaluated)

    def prefill(self, tokens: Sequence[int], cancel: Optional[threading.Event] = None) -> PrefillStats:
        start = time.perf_counter()
        tokens = list(tokens)
        if not tokens:
            raise ValueError("prefill needs at least one token")
        if len(tokens) > self._n_ctx:
            raise ContextError(f"the prompt is {len(tokens)} tokens but the context holds {self._n_ctx}: use a larger --ctx")
        keep = common_prefix_length(self._evaluated, tokens)
        if keep == len(tokens) and not (keep == len(self._evaluated) and self._logits_ready):
            keep -= 1  # everything is cached but the logits are not: evaluate the last token again
        self._truncate(keep)
        self._reset_samplers()
        self._evaluate(tokens[keep:], cancel)
        return PrefillStats(reused=keep, evaluated=len(tokens) - keep, seconds=time.perf_counter() - start)

    def sample(self, sampling: Sampling) -> int:
        if not self._logits_ready:
            raise RuntimeError("sample() needs logits: prefill or append first")
        if sampling is not self._last_sampling:  # the same object every token of a reply: skip hashing it
            chain = self._samplers.get(sampling)
            if chain is None:
                chain = self._samplers[sampling] = build_sampler_chain(sampling)
            self._last_sampling, self._last_chain = sampling, chain
        return llama_cpp.llama_sampler_sample(self._last_chain, self._ctx, -1)

    def append(self, token: int, cancel: Optional[threading.Event] = None) -> None:
        # One decode step is short (a fraction of a second even for 20b), so cancel is
        # checked between steps; the abort callback is only armed for prefills.
        if cancel is not None and cancel.is_set():
            raise Interrupted()
        if len(self._evaluated) >= self._n_ctx:
            raise ContextError(f"the context of {self._n_ctx} tokens is full")
        batch = self._batch
        batch.token[0] = token
        batch.pos[0] = len(self._evaluated)
        batch.logits[0] = True
        batch.n_tokens = 1
        self._logits_ready = False
        code = llama_cpp.llama_decode(self._ctx, batch)
        if code != 0:
            self._resync([token])
            raise ModelError(f"llama.cpp failed to evaluate a token (llama_decode returned {code})")
        self._evaluated.append(token)
        self._logits_ready = True

    def logits(self) -> "np.ndarray":
        """A copy of the logits after the last evaluated token."""
        import numpy as np

        if not self._logits_ready:
            raise RuntimeError("no logits: prefill or append first")
        pointer = llama_cpp.llama_get_logits_ith(self._ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()

    def close(self) -> None:
        for chain in self._samplers.values():
            llama_cpp.llama_sampler_free(chain)
        self._samplers.clear()
        self._last_sampling = self._last_chain = None
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    # -- the disk prefix cache ----------------------------------------------

    def prefix_saved(self, tokens: Sequence[int]) -> bool:
        return self._prefix_cache.path_for(tokens).is_file()

    def restore_prefix(self, tokens: Sequence[int]) -> bool:
        """Make the cache hold exactly ``tokens`` from a saved state; False if none is usable."""
        state = self._prefix_cache.load(tokens)
        if state is None:
            return False
        self._truncate(0)
        buffer = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        loaded = llama_cpp.llama_state_seq_set_data(self._ctx, buffer, len(state), SEQ)
        if not loaded or llama_cpp.llama_memory_seq_pos_max(self._memory, SEQ) != len(tokens) - 1:
            llama_cpp.llama_memory_seq_rm(self._memory, SEQ, -1, -1)
            self._prefix_cache.discard(tokens)
            return False
        self._evaluated = list(tokens)
        self._logits_ready = False  # a state holds keys and values, not logits
        return True

    def save_prefix(self, tokens: Sequence[int]) -> bool:
        """Save the cache to disk if it holds exactly ``tokens`` (KV only, no logits)."""
        if list(tokens) != self._evaluated:
            return False
        size = llama_cpp.llama_state_seq_get_size(self._ctx, SEQ)
        buffer = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(self._ctx, buffer, size, SEQ)
        if not written:
            return False
        return self._prefix_cache.save(tokens, bytes(buffer)[:written]) is not None

    # -- internals -----------------------------------------------------------

    def _truncate(self, n: int) -> None:
        if n < len(self._evaluated):
            llama_cpp.llama_memory_seq_rm(self._memory, SEQ, n, -1)
            del self._evaluated[n:]
            self._logits_ready = False

    def _reset_samplers(self) -> None:
        # A new generation starts each sampler's random stream afresh, so a seed repeats.
        for chain in self._samplers.values():
            llama_cpp.llama_sampler_reset(chain)

    def _evaluate(self, tokens: Sequence[int], cancel: Optional[threading.Event]) -> None:
        batch, size = self._batch, self._batch_size
        aborted = False
        with self._abortable(cancel) as keyboard_interrupt:
            for start in range(0, len(tokens), size):
                chunk = tokens[start : start + size]
                if self._should_abort(None):
                    aborted = True
                    break
                pos = len(self._evaluated)
                for i, token in enumerate(chunk):
                    batch.token[i] = token
                    batch.pos[i] = pos + i
                    batch.logits[i] = False
                batch.logits[len(chunk) - 1] = True
                batch.n_tokens = len(chunk)
                self._logits_ready = False
                code = llama_cpp.llama_decode(self._ctx, batch)
                if code != 0:
                    self._resync(chunk)
                    if code == 2:  # the abort callback said stop
                        aborted = True
                        break
                    raise ModelError(f"llama.cpp failed to evaluate the prompt (llama_decode returned {code})")
                self._evaluated.extend(chunk)
                self._logits_ready = True
        if keyboard_interrupt.is_set():
            raise KeyboardInterrupt
        if aborted:
            raise Interrupted()

    def _resync(self, attempted: Sequence[int]) -> None:
        """After a failed or aborted decode: record what llama.cpp kept, drop anything half-done."""
        kept = llama_cpp.llama_memory_seq_pos_max(self._memory, SEQ) + 1
        candidates = self._evaluated + list(attempted)
        kept = max(0, min(kept, len(candidates)))
        llama_cpp.llama_memory_seq_rm(self._memory, SEQ, kept, -1)
        self._evaluated = candidates[:kept]
        self._logits_ready = False

    def _should_abort(self, _data: Any) -> bool:
        # Called by llama.cpp between graph nodes while a prefill runs.
        return any(flag.is_set() for flag in self._abort_flags)

    @contextlib.contextmanager
    def _abortable(self, cancel: Optional[threading.Event]) -> Iterator[threading.Event]:
        """Arm llama.cpp's abort callback for ``cancel`` and for Ctrl-C (see :func:`_keyboard_interrupt_caught`)."""
        with _keyboard_interrupt_caught() as interrupted:
            self._abort_flags = (interrupted,) if cancel is None else (interrupted, cancel)
            llama_cpp.llama_set_abort_callback(self._ctx, self._abort, None)
            try:
                yield interrupted
            finally:
                llama_cpp.llama_set_abort_callback(self._ctx, _NO_ABORT, None)
                self._abort_flags = ()


@contextlib.contextmanager
def _keyboard_interrupt_caught() -> Iterator[threading.Event]:
    """An event set when Ctrl-C arrives while llama.cpp runs one of our Python callbacks.

    The callbacks (abort, load progress) run Python, so SIGINT handlers get to run
    inside them. A KeyboardInterrupt raised there cannot propagate through C (ctypes
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


def build_sampler_chain(sampling: Sampling) -> Any:
    """llama.cpp's sampler chain for OpenAI's gpt-oss settings: temperature and top_p, nothing else.

    No top-k or min-p stage (llama-cpp-python's own defaults add top_k 40 and min_p 0.05);
    temperature 0 is greedy decoding.
    """
    params = llama_cpp.llama_sampler_chain_default_params()
    params.no_perf = True
    chain = llama_cpp.llama_sampler_chain_init(params)
    if sampling.temperature <= 0:
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        return chain
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_temp(sampling.temperature))
    if sampling.top_p < 1.0:
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_p(sampling.top_p, 1))
    seed = llama_cpp.LLAMA_DEFAULT_SEED if sampling.seed is None else sampling.seed % 2**32
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(seed))
    return chain
