"""Continuous batching: several requests decoded together over one context's sequences.

One thread owns the context. Each step it builds one batch holding the next token of
every sequence that is generating, plus chunks of the prompts being read, decodes it,
and samples each sequence that produced logits with that request's own sampler chain.
Requests wait in arrival order for a free sequence (a *slot*).

- **Placement keeps conversations.** A request goes to a free slot whose conversation it
  continues: it keeps all of the prompt that slot last read (what harmony re-renders of the
  reply after it may differ: an answered turn loses its reasoning), or all the slot holds; or
  it shares that slot's first exchange, the instructions and the message after them (after an
  answer that followed tool calls, harmony drops the reasoning before the calls too: the
  history changes in the middle). Otherwise it takes an empty slot, else the least
  recently used one: a request that shares only the instructions with a conversation (a
  client's title or tag request) never cuts that conversation back to them. If another
  slot (free or busy) holds a longer prefix of the prompt, those cells are shared into the
  chosen slot (``seq_copy``: the unified KV cache stores them once), so the choice of slot
  costs no evaluation.
  A prompt whose system/developer head is in no slot is restored from the disk prefix
  cache, or read up to that head first and saved for the next session.
- **Checkpoints.** With llama.cpp's small sliding-window cache, a kept prefix is only
  usable where the sliding-window layers still hold the window before the cut, or from a
  checkpoint of their state (``checkpoints.py``): the longest usable prefix is kept and the
  rest evaluated, never from a wrong state. Checkpoints are saved while reading a prompt
  and generating, at the positions ``checkpoints.py`` chooses.
- **Steady decoding.** While sequences generate, a prompt is read in chunks sized from
  measured step times so that a step carrying prompt tokens costs about
  ``DEFAULT_DECODE_SLOWDOWN`` decode steps: generating sequences keep going while a
  long prompt is read. With nothing generating, chunks are as large as the batch.
- **A full pool.** ``n_ctx`` cells are shared by every sequence. When a step does not
  fit, idle slots' caches go first (least recently used); then the newest prompt's
  chunk is left out and that request waits until another finishes; a generating
  sequence that still finds no room ends with ``length`` (its context is full).
- **Isolation.** Cancel, errors and context overflow end one request; the others go on.

The scheduler works on a :class:`Backend` (llama.cpp's context in ``llama.py``; a
scripted one in the tests).
"""

from __future__ import annotations

import bisect
import collections
import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ossrun.engine.checkpoints import (
    DEFAULT_CHECKPOINT_INTERVAL,
    Checkpoint,
    Checkpoints,
    ends_with_mark,
    first_mark_end,
    prompt_positions,
    reusable,
    total_bytes,
)
from ossrun.engine.memory import DEFAULT_MAX_CHECKPOINTS
from ossrun.engine.protocol import EngineFinish, GenerationRequest, GenerationStats, Occupancy, Sampling, common_prefix_length
from ossrun.errors import ContextError, ModelError

DEFAULT_DECODE_SLOWDOWN = 4.0  # a step that reads prompt tokens costs about this many decode steps
MIN_PROMPT_CHUNK = 16  # prompt tokens per step at least, whatever the measured costs
MIN_SHARED_PREFIX = 32  # a younger request waits for an older one reading this many more tokens it needs
# Consumers wait in slices: a signal (Ctrl-C) that another thread received is only handled once
# the main thread runs Python again, and a prompt can take minutes before the first token.
WAIT_SLICE_SECONDS = 0.1
_EMA = 0.3  # weight of the newest measurement in the step-time averages

ROOM = 1  # llama_decode: no KV cells for the batch
ABORTED = 2  # llama_decode: the abort callback said stop


@dataclass(frozen=True)
class Entry:
    """One token of a batch."""

    seq: int
    token: int
    pos: int
    logits: bool


class Backend(Protocol):
    """The context operations the scheduler needs, all called from its thread."""

    n_ctx: int
    n_batch: int  # most tokens one decode takes
    n_seq: int
    # Positions a sequence must still hold before its end for its sliding-window layers to go on
    # (the window); 0 when every layer keeps every position (no sliding window, or swa_full).
    window: int

    def decode(self, entries: Sequence[Entry], abort: Callable[[], bool] | None) -> int:
        """0, ROOM, ABORTED, or a negative error code (llama_decode's codes)."""

    def sample(self, sampler: Any, index: int) -> int: ...
    def logits(self, index: int) -> Any: ...
    def new_sampler(self, sampling: Sampling) -> Any:
        """A sampler chain; called in the submitting thread, so a bad grammar fails that request alone."""

    def free_sampler(self, sampler: Any) -> None: ...
    def seq_keep(self, seq: int, n: int) -> None:
        """Drop the sequence's positions from ``n`` on."""

    def seq_copy(self, src: int, dst: int, n: int) -> None:
        """Let ``dst`` (empty) hold ``src``'s first ``n`` positions."""

    def seq_length(self, seq: int) -> int: ...
    def seq_min(self, seq: int) -> int:
        """The first position the sequence's sliding-window cells hold (-1: none)."""

    def save_state(self, seq: int) -> bytes | None: ...
    def load_state(self, seq: int, data: bytes) -> bool: ...
    def save_checkpoint(self, seq: int) -> bytes | None:
        """The sliding-window layers' state of the sequence (its last ``window`` positions)."""

    def load_checkpoint(self, seq: int, data: bytes) -> bool:
        """Put a checkpoint back; the sequence must hold exactly the positions it was saved at."""


class PrefixStore(Protocol):
    def load(self, tokens: Sequence[int]) -> bytes | None: ...
    def save(self, tokens: Sequence[int], state: bytes) -> Any: ...
    def discard(self, tokens: Sequence[int]) -> None: ...
    def path_for(self, tokens: Sequence[int]) -> Any: ...


@dataclass
class _Slot:
    seq: int
    checkpoints: Checkpoints
    tokens: list[int] = field(default_factory=list)  # what the cache holds for this sequence, in order
    prompt_length: int = 0  # the length of the prompt its last request read (where its reply began)
    held_from: int = 0  # the first position its sliding-window cells hold (-1: none)
    job: _Job | None = None
    last_used: float = 0.0


@dataclass(frozen=True)
class _End:
    pass


class _Job:
    """One request's life: waiting, then reading its prompt on a slot, then generating."""

    def __init__(self, request: GenerationRequest, order: int):
        self.request = request
        self.prompt = list(request.prompt)
        self.order = order
        self.out: queue.SimpleQueue = queue.SimpleQueue()
        self.placed = threading.Event()
        self.pending = 0
        self.slot: _Slot | None = None
        self.sampler: Any = None
        self.save_prefix_at: int | None = None
        self.checkpoint_at: list[int] = []  # prompt lengths at which to save a checkpoint, in order
        self.next_token: int | None = None  # sampled, evaluated by the next step
        self.blocked = False  # its prompt chunk found no room: waits for another request to end
        self.abandoned = False
        self.done = False
        self.stats = GenerationStats()
        self.placed_at = self.first_token_at = 0.0

    @property
    def placed_slot(self) -> _Slot:
        """The slot of a placed job: the scheduler plans, steps and samples placed jobs only."""
        assert self.slot is not None, "the job has not been placed on a slot"
        return self.slot

    @property
    def reading(self) -> bool:
        return self.slot is not None and self.next_token is None and not self.done

    def cancelled(self) -> bool:
        cancel = self.request.cancel
        return self.abandoned or (cancel is not None and cancel.is_set())


class Generation:
    """The consumer's side of a request (see :class:`ossrun.engine.protocol.Generation`)."""

    def __init__(self, job: _Job, wake: Callable[[], None]):
        self._job = job
        self._wake = wake

    def pending(self) -> int:
        while not self._job.placed.wait(WAIT_SLICE_SECONDS):
            pass
        return self._job.pending

    def __iter__(self) -> Iterator[int]:
        job = self._job
        while True:
            try:
                item = job.out.get(timeout=WAIT_SLICE_SECONDS)
            except queue.Empty:
                continue
            if isinstance(item, int):
                yield item
            elif isinstance(item, _End):
                return
            else:
                raise item

    @property
    def stats(self) -> GenerationStats:
        return self._job.stats

    def close(self) -> None:
        if not self._job.done:
            self._job.abandoned = True
            self._wake()


class Scheduler:
    """Runs requests on ``backend``'s sequences (see the module docstring)."""

    def __init__(
        self,
        backend: Backend,
        prefix_store: PrefixStore | None = None,
        *,
        decode_slowdown: float = DEFAULT_DECODE_SLOWDOWN,
        min_prompt_chunk: int = MIN_PROMPT_CHUNK,
        max_checkpoints: int = DEFAULT_MAX_CHECKPOINTS,
        checkpoint_interval: int = DEFAULT_CHECKPOINT_INTERVAL,
    ):
        self.backend = backend
        self.prefix_store = prefix_store
        self.decode_slowdown = decode_slowdown
        self.min_prompt_chunk = min_prompt_chunk
        self.checkpoint_interval = checkpoint_interval
        self.slots = [_Slot(seq, Checkpoints(max_checkpoints)) for seq in range(backend.n_seq)]
        self._waiting: collections.deque[_Job] = collections.deque()
        self._cond = threading.Condition()
        self._orders = itertools.count()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._decode_step = 0.0  # seconds of a step without prompt tokens (EMA)
        self._prompt_token = 0.0  # seconds per prompt token on top of that (EMA)
        self.steps = 0

    # -- the consumers' side ------------------------------------------------

    def submit(self, request: GenerationRequest) -> Generation:
        if not request.prompt:
            raise ValueError("a generation needs at least one prompt token")
        if len(request.prompt) > self.backend.n_ctx:
            raise ContextError(
                f"the prompt is {len(request.prompt)} tokens but the context holds {self.backend.n_ctx}: use a larger --ctx"
            )
        sampler = self.backend.new_sampler(request.sampling)
        with self._cond:
            if self._stopping:
                self.backend.free_sampler(sampler)
                raise ModelError("the model was closed")
            job = _Job(request, next(self._orders))
            job.sampler = sampler
            self._waiting.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ossrun-scheduler", daemon=True)
                self._thread.start()
            self._cond.notify()
        return Generation(job, self._wake)

    def cached_prefix(self, prompt: Sequence[int], prefix_length: int = 0) -> int:
        prompt = list(prompt)
        with self._cond:
            held = max((self._reusable(slot, prompt)[0] for slot in self.slots), default=0)
        if held < prefix_length <= len(prompt) and self.prefix_store is not None:
            if self.prefix_store.path_for(prompt[:prefix_length]).is_file():
                held = prefix_length
        return held

    def held_tokens(self) -> list[list[int]]:
        """What each sequence's cache holds now, by sequence."""
        with self._cond:
            return [list(slot.tokens) for slot in self.slots]

    def checkpoint_bytes(self) -> int:
        """Memory the sequences' checkpoints take now (shared ones counted once)."""
        with self._cond:
            return total_bytes(slot.checkpoints for slot in self.slots)

    def occupancy(self) -> Occupancy:
        """Busy slots, waiting requests, and the cells the slots hold: the distinct prefixes of
        their tokens (cells shared through ``seq_copy`` are stored once)."""
        with self._cond:
            held = sorted(list(slot.tokens) for slot in self.slots)
            busy = sum(slot.job is not None for slot in self.slots)
            waiting = len(self._waiting)
        shared = sum(common_prefix_length(a, b) for a, b in itertools.pairwise(held))
        return Occupancy(busy=busy, waiting=waiting, cells_used=sum(map(len, held)) - shared)

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    # -- the scheduler's thread ---------------------------------------------

    def _active(self) -> list[_Job]:
        return [slot.job for slot in self.slots if slot.job is not None]

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._waiting and not self._active():
                    self._cond.wait()
                if self._stopping:
                    for job in [*self._waiting, *self._active()]:
                        self._finish(job, "interrupted")
                    self._waiting.clear()
                    return
                try:
                    self._end_cancelled()
                    self._place_waiting()
                    entries, chunks, decoders = self._plan()
                except Exception as exc:  # a bug must not leave consumers waiting forever
                    self._fail_all(exc)
                    continue
                if not entries:
                    if self._active() and not self._unblock():
                        self._cond.wait(0.05)  # nothing can run until a request ends or arrives
                    continue
            try:
                self._step(entries, chunks, decoders)
            except Exception as exc:
                with self._cond:
                    self._fail_all(exc)

    def _end_cancelled(self) -> None:
        for job in list(self._waiting):
            if job.cancelled():
                self._waiting.remove(job)
                self._finish(job, "interrupted")
        for job in self._active():
            if job.cancelled():
                self._finish(job, "interrupted")

    def _place_waiting(self) -> None:
        while self._waiting:
            free = [slot for slot in self.slots if slot.job is None]
            if not free:
                return
            self._place(self._waiting.popleft(), free)

    def _place(self, job: _Job, free: list[_Slot]) -> None:
        prompt, head = job.prompt, job.request.prefix_length
        reuse = {slot.seq: self._reusable(slot, prompt) for slot in self.slots}
        # A slot holds this request's conversation when the request keeps all of the prompt it last
        # read, or shares its first exchange: the instructions and the first message after them, up
        # to the first mark (harmony's <|start|>assistant). A title or tag request shares only the
        # instructions; the next question after tool calls parts later (harmony drops the reasoning
        # before the calls once they are answered), but after that mark.
        exchange = first_mark_end(prompt, head, job.request.checkpoint_after) or head + 1
        common = {s.seq: common_prefix_length(s.tokens, prompt) for s in free}
        own = [
            s for s in free if s.tokens and (common[s.seq] >= min(s.prompt_length, len(s.tokens)) or common[s.seq] >= exchange)
        ]
        empty = [s for s in free if not s.tokens]
        if own:
            slot = max(own, key=lambda s: (reuse[s.seq][0], -s.last_used))
        elif empty:
            slot = empty[0]
        else:  # the least recently used conversation makes room
            slot = min(free, key=lambda s: s.last_used)
        donor = max(self.slots, key=lambda s: reuse[s.seq][0])
        kept, lent = reuse[slot.seq], reuse[donor.seq]
        if lent[0] > kept[0]:
            keep, checkpoint = self._take(slot, donor, *lent), lent[1]
        else:
            keep, checkpoint = self._cut(slot, *kept), kept[1]
        job.stats.restored = checkpoint.length if checkpoint is not None and keep else 0
        store = self.prefix_store
        if keep < head < len(prompt) and store is not None:
            if self._restore(slot, store, prompt[:head]):
                keep = head
                job.stats.restored = 0
            else:
                job.save_prefix_at = head
        if self.backend.window:
            job.checkpoint_at = prompt_positions(
                prompt, keep, marks=job.request.checkpoint_after, prefix_length=head, interval=self.checkpoint_interval
            )
        slot.job, job.slot = job, slot
        slot.prompt_length = len(prompt)
        job.stats.cached = keep
        job.pending = len(prompt) - keep
        job.placed_at = time.perf_counter()
        job.placed.set()

    def _reusable(self, slot: _Slot, prompt: Sequence[int]) -> tuple[int, Checkpoint | None]:
        """How much of ``prompt`` ``slot`` can serve, and the checkpoint that needs restoring for it.

        At least the prompt's last token is evaluated: a reply starts from its logits.
        """
        n = min(common_prefix_length(slot.tokens, prompt), len(prompt) - 1)
        return reusable(n, slot.held_from, self.backend.window, slot.checkpoints)

    def _cut(self, slot: _Slot, keep: int, checkpoint: Checkpoint | None) -> int:
        """Cut ``slot`` back to ``keep`` positions, restoring ``checkpoint`` (saved at ``keep`` or one
        position later) on the way: what it now holds."""
        at = keep if checkpoint is None else checkpoint.length
        self.backend.seq_keep(slot.seq, at)
        del slot.tokens[at:]
        slot.checkpoints.cut(at)
        if checkpoint is not None:
            if not self.backend.load_checkpoint(slot.seq, checkpoint.data):
                return self._cut(slot, 0, None)
            if keep < at:
                return self._cut(slot, keep, None)
        self._held(slot)
        return keep

    def _take(self, slot: _Slot, donor: _Slot, keep: int, checkpoint: Checkpoint | None) -> int:
        """Let ``slot`` hold ``donor``'s first ``keep`` positions (the unified cache stores them once)."""
        backend = self.backend
        at = keep if checkpoint is None else checkpoint.length
        backend.seq_keep(slot.seq, 0)
        backend.seq_copy(donor.seq, slot.seq, at)
        slot.tokens = donor.tokens[:at]
        slot.checkpoints.clear()
        slot.checkpoints.adopt(donor.checkpoints, at)
        if checkpoint is not None:
            if not backend.load_checkpoint(slot.seq, checkpoint.data):
                return self._cut(slot, 0, None)
            if keep < at:
                return self._cut(slot, keep, None)
        elif backend.window:
            # The sliding-window cells the copy shares with the donor: give the sequence its own
            # (a cell held by several sequences is freed only once all have moved on), and keep
            # them as a checkpoint of this prefix.
            own = backend.save_checkpoint(slot.seq)
            if own is not None and backend.load_checkpoint(slot.seq, own):
                slot.checkpoints.add(Checkpoint(keep, own))
            elif own is not None:
                return self._cut(slot, 0, None)
        self._held(slot)
        return keep

    def _held(self, slot: _Slot) -> None:
        slot.held_from = self.backend.seq_min(slot.seq) if self.backend.window else 0

    def _checkpoint(self, slot: _Slot) -> None:
        data = self.backend.save_checkpoint(slot.seq)
        if data is not None:
            slot.checkpoints.add(Checkpoint(len(slot.tokens), data))

    def _restore(self, slot: _Slot, store: PrefixStore, head: list[int]) -> bool:
        state = store.load(head)
        if state is None:
            return False
        self._cut(slot, 0, None)
        if not self.backend.load_state(slot.seq, state) or self.backend.seq_length(slot.seq) != len(head):
            self._cut(slot, 0, None)
            store.discard(head)
            return False
        slot.tokens = list(head)
        self._held(slot)
        if self.backend.window:  # the state holds the window before the head: a checkpoint of it
            self._checkpoint(slot)
        return True

    def _prompt_budget(self, decoders: int) -> int:
        room = self.backend.n_batch - decoders
        if not decoders:
            return room
        if self._prompt_token <= 0:
            return min(room, self.min_prompt_chunk)
        budget = int(self._decode_step * (self.decode_slowdown - 1) / self._prompt_token)
        return max(min(room, self.min_prompt_chunk), min(room, budget))

    def _plan(self) -> tuple[list[Entry], dict[int, tuple[_Job, int]], list[tuple[_Job, int]]]:
        """The next step's batch: every generating sequence's token, then prompt chunks, oldest first.

        Returns the entries, the prompt chunks (job, tokens taken) by the index of their
        first entry, and the decoding jobs with the index of their entry.
        """
        entries: list[Entry] = []
        decoders: list[tuple[_Job, int]] = []
        for job in sorted(self._active(), key=lambda j: j.order):
            if job.next_token is not None:
                decoders.append((job, len(entries)))
                entries.append(Entry(job.placed_slot.seq, job.next_token, len(job.placed_slot.tokens), True))
        budget = self._prompt_budget(len(decoders))
        chunks: dict[int, tuple[_Job, int]] = {}
        for job in sorted(self._active(), key=lambda j: j.order):
            if not job.reading or job.blocked or self._follows(job) or budget <= 0:
                continue
            slot = job.placed_slot
            start = len(slot.tokens)
            end = len(job.prompt)
            if job.save_prefix_at is not None and start < job.save_prefix_at:
                end = job.save_prefix_at
            for position in job.checkpoint_at:  # a checkpoint needs the state after exactly that many
                if position > start:
                    end = min(end, position)
                    break
            take = min(budget, end - start)
            chunks[len(entries)] = (job, take)
            for offset, token in enumerate(job.prompt[start : start + take]):
                entries.append(Entry(slot.seq, token, start + offset, start + offset == len(job.prompt) - 1))
            budget -= take
        return entries, chunks, decoders

    def _follows(self, job: _Job) -> bool:
        """Take cells of ``job``'s prompt another sequence holds now, or wait for an older request
        that is reading them.

        Requests that arrive together with the same long instructions would each evaluate them;
        the younger ones wait instead, and take the cells once the oldest holds them (the older
        one keeps a checkpoint where the prompts part, for the small sliding-window cache).
        """
        slot = job.placed_slot
        best: _Slot | None = None
        ahead: _Job | None = None  # the older request still reading the cells ``best`` is to share
        shared = len(slot.tokens) + MIN_SHARED_PREFIX
        for other in self.slots:
            if other is slot:
                continue
            held = common_prefix_length(other.tokens, job.prompt)
            leader = other.job
            coming = held
            if leader is not None and leader.reading and leader.order < job.order:
                coming = common_prefix_length(leader.prompt, job.prompt)
            if max(held, coming) > shared:
                best, shared = other, max(held, coming)
                ahead = leader if coming > held else None
        if best is None:
            return False
        if ahead is not None:
            part = min(shared, len(job.prompt) - 1)
            if self.backend.window and part > len(best.tokens) and part not in ahead.checkpoint_at:
                bisect.insort(ahead.checkpoint_at, part)
            return True  # the older request has not read that far yet
        keep, checkpoint = self._reusable(best, job.prompt)
        before = len(slot.tokens)
        if keep <= before:
            return False
        keep = self._take(slot, best, keep, checkpoint)
        job.stats.cached += keep - before
        if checkpoint is not None:
            job.stats.restored = checkpoint.length
        job.checkpoint_at = [p for p in job.checkpoint_at if p > keep]
        if job.save_prefix_at is not None and keep >= job.save_prefix_at:
            job.save_prefix_at = None
        return False

    def _step(self, entries: list[Entry], chunks: dict[int, tuple[_Job, int]], decoders: list[tuple[_Job, int]]) -> None:
        readers = [job for job, _ in chunks.values()]

        def abort() -> bool:
            return self._stopping or any(job.cancelled() for job in readers)

        started = time.perf_counter()
        code = self.backend.decode(entries, abort if readers else None)
        seconds = time.perf_counter() - started
        with self._cond:
            self.steps += 1
            if code == 0:
                self._measure(seconds, len(decoders), len(entries) - len(decoders))
                self._advance(entries, chunks, decoders)
            elif code == ABORTED:
                self._resync(entries)
            elif code == ROOM:
                self._make_room(chunks, decoders)
            else:
                self._resync(entries)
                error = ModelError(f"llama.cpp failed to evaluate a batch (llama_decode returned {code})")
                for job in {id(j): j for j in readers + [j for j, _ in decoders]}.values():
                    self._fail(job, error)

    def _measure(self, seconds: float, decoders: int, prompt_tokens: int) -> None:
        if not prompt_tokens:
            self._decode_step = seconds if not self._decode_step else (1 - _EMA) * self._decode_step + _EMA * seconds
            return
        per_token = max(seconds - (self._decode_step if decoders else 0.0), 0.0) / prompt_tokens
        self._prompt_token = per_token if not self._prompt_token else (1 - _EMA) * self._prompt_token + _EMA * per_token

    def _advance(self, entries: list[Entry], chunks: dict[int, tuple[_Job, int]], decoders: list[tuple[_Job, int]]) -> None:
        now = time.perf_counter()
        window = self.backend.window
        for job, index in decoders:
            slot = job.placed_slot
            slot.tokens.append(entries[index].token)
            job.next_token = None
            if window:
                self._held(slot)
                if ends_with_mark(slot.tokens, job.request.checkpoint_after):
                    self._checkpoint(slot)
            self._sampled(job, index, now)
        for index, (job, take) in chunks.items():
            slot = job.placed_slot
            slot.tokens.extend(job.prompt[len(slot.tokens) : len(slot.tokens) + take])
            job.stats.evaluated += take
            if window:
                self._held(slot)
                while job.checkpoint_at and job.checkpoint_at[0] <= len(slot.tokens):
                    if job.checkpoint_at.pop(0) == len(slot.tokens):
                        self._checkpoint(slot)
            if job.save_prefix_at is not None and len(slot.tokens) == job.save_prefix_at:
                self._save_prefix(job)
            if len(slot.tokens) == len(job.prompt):
                self._sampled(job, index + take - 1, now)

    def _save_prefix(self, job: _Job) -> None:
        store, slot = self.prefix_store, job.placed_slot
        assert store is not None, "a prefix is saved only where there is a store"
        job.save_prefix_at = None
        state = self.backend.save_state(slot.seq)
        if state is not None:
            store.save(slot.tokens, state)

    def _sampled(self, job: _Job, index: int, now: float) -> None:
        if job.cancelled():
            self._finish(job, "interrupted")
            return
        stats, forced = job.stats, job.request.forced
        token = forced[stats.generated] if stats.generated < len(forced) else self.backend.sample(job.sampler, index)
        if job.request.record_logits:
            job.stats.logits.append(self.backend.logits(index))
        if not stats.generated:
            job.first_token_at = now
            stats.prefill_seconds = now - job.placed_at
        stats.generated += 1
        job.out.put(token)
        limit = job.request.max_tokens
        if token in job.request.stop_tokens:
            self._finish(job, "stop")
        elif (limit is not None and stats.generated >= limit) or len(job.placed_slot.tokens) >= self.backend.n_ctx:
            self._finish(job, "length")
        else:
            job.next_token = token

    def _resync(self, entries: Sequence[Entry]) -> None:
        """After a decode that failed or was aborted: llama.cpp dropped the batch's positions."""
        for seq in {entry.seq for entry in entries}:
            slot = self.slots[seq]
            self._cut(slot, min(self.backend.seq_length(seq), len(slot.tokens)), None)

    def _make_room(self, chunks: dict[int, tuple[_Job, int]], decoders: list[tuple[_Job, int]]) -> None:
        """The batch found no KV cells: free some, or take the newest work out of the next step.

        Older requests come first: idle caches go, then the newest prompt chunk waits for
        another request to end, then a newer prompt's cells are taken back (it is read again
        later); a generating sequence that still finds no room has a full context.
        """
        idle = [slot for slot in self.slots if slot.job is None and slot.tokens]
        if idle:
            self._cut(min(idle, key=lambda s: s.last_used), 0, None)
            return
        readers = sorted((job for job, _ in chunks.values()), key=lambda j: j.order)
        if readers and len(readers) + len(decoders) > 1:
            readers[-1].blocked = True
            return
        holding = [job for job in self._active() if job.reading and job.placed_slot.tokens and job not in readers]
        if readers:
            reader = readers[0]
            newer = [job for job in holding if job.order > reader.order]
            if newer:
                self._preempt(max(newer, key=lambda j: j.order))
            elif holding:
                reader.blocked = True  # older prompts hold the cells: they go first
            else:
                self._fail(
                    reader,
                    ContextError(
                        f"the prompt ({len(reader.prompt)} tokens) does not fit in what the context of "
                        f"{self.backend.n_ctx} tokens has left: use a larger --ctx"
                    ),
                )
            return
        if holding:
            self._preempt(max(holding, key=lambda j: j.order))
            return
        self._finish(max((job for job, _ in decoders), key=lambda j: j.order), "length")

    def _preempt(self, job: _Job) -> None:
        """Take a prompt's cells back; it is read again from the start once another request ends."""
        self._cut(job.placed_slot, 0, None)
        job.stats.cached = job.stats.restored = 0
        job.blocked = True
        job.checkpoint_at = (
            prompt_positions(
                job.prompt,
                0,
                marks=job.request.checkpoint_after,
                prefix_length=job.request.prefix_length,
                interval=self.checkpoint_interval,
            )
            if self.backend.window
            else []
        )
        head = job.request.prefix_length
        job.save_prefix_at = head if head and self.prefix_store is not None else None

    def _unblock(self) -> bool:
        blocked = [job for job in self._active() if job.blocked]
        for job in blocked:
            job.blocked = False
        return bool(blocked)

    def _finish(self, job: _Job, reason: EngineFinish) -> None:
        if job.done:
            return
        job.done = True
        stats = job.stats
        stats.finish_reason = reason
        if job.first_token_at:
            stats.decode_seconds = time.perf_counter() - job.first_token_at
        elif job.placed_at:
            stats.prefill_seconds = time.perf_counter() - job.placed_at
        self._release(job)
        job.out.put(_End())

    def _fail(self, job: _Job, error: BaseException) -> None:
        if job.done:
            return
        job.done = True
        self._release(job)
        job.out.put(error)

    def _release(self, job: _Job) -> None:
        if job.sampler is not None:
            self.backend.free_sampler(job.sampler)
            job.sampler = None
        slot = job.slot
        if slot is not None:
            job.stats.context_used = len(slot.tokens)
            slot.job = None
            slot.last_used = time.monotonic()
        for other in self._active():
            other.blocked = False  # cells may have been freed
        job.placed.set()

    def _fail_all(self, error: BaseException) -> None:
        for job in [*self._waiting, *self._active()]:
            self._fail(job, error)
        self._waiting.clear()
