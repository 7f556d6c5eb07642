"""The scheduler on a scripted backend: what goes into each batch, who waits, who ends, and why.

The backend keeps a pool of KV cells like llama.cpp's unified cache (sequences that share a
prefix share its cells), answers ROOM when a batch does not fit, and "samples" each request's
scripted tokens (the script is chosen by the request's seed). With a ``window``, it also plays
llama.cpp's small sliding-window cache: each sequence's sliding-window layers hold only its
last ``window + SWA_SLACK`` positions, checkpoints put them back, and a decode that would start
without the window before it fails the test (that is the wrong state that gives wrong logits).
"""

from __future__ import annotations

import ast
import itertools
import threading
import time
from dataclasses import dataclass, field

import pytest

from ossrun.engine.protocol import GenerationRequest, Sampling
from ossrun.engine.scheduler import ABORTED, ROOM, Entry, Scheduler
from ossrun.errors import ContextError

STOP = 9
SWA_SLACK = 4  # positions the scripted sliding-window cache keeps beyond the window


@dataclass
class ScriptedSampler:
    tokens: list[int]
    drawn: int = 0

    def next(self) -> int:
        token = self.tokens[self.drawn] if self.drawn < len(self.tokens) else 1
        self.drawn += 1
        return token


@dataclass
class ScriptedBackend:
    n_ctx: int = 64
    n_batch: int = 16
    n_seq: int = 2
    scripts: dict = field(default_factory=dict)  # seed -> sampled tokens
    seconds_per_token: float = 0.0
    fail_code: int = 0  # returned once by the next decode
    batches: list = field(default_factory=list)  # the entries of every successful decode
    cells: dict = field(default_factory=dict)  # seq -> list of cell ids, one per position
    window: int = 0
    held: dict = field(default_factory=dict)  # seq -> the tokens it holds, one per position
    swa_from: dict = field(default_factory=dict)  # seq -> first position its sliding-window cells hold (-1: none)
    restores: list = field(default_factory=list)  # (seq, length) of every checkpoint put back
    _ids = itertools.count()
    _last: list = field(default_factory=list)

    def used(self) -> int:
        return len({cell for cells in self.cells.values() for cell in cells})

    def decode(self, entries, abort):
        for entry in entries:
            assert entry.pos == len(self.cells.get(entry.seq, [])) + sum(
                1 for e in entries[: entries.index(entry)] if e.seq == entry.seq
            ), "positions must follow the cache"
        if self.window:
            for seq in {e.seq for e in entries}:
                start = len(self.cells.get(seq, []))
                held_from = self.swa_from.get(seq, -1)
                assert start == 0 or 0 <= held_from <= max(0, start - self.window + 1), (
                    f"sequence {seq} goes on at {start} without its window (held from {held_from})"
                )
        if self.fail_code:
            code, self.fail_code = self.fail_code, 0
            return code
        if self.used() + len(entries) > self.n_ctx:
            return ROOM
        for _ in entries:
            if self.seconds_per_token:
                time.sleep(self.seconds_per_token)
            if abort is not None and abort():
                return ABORTED
        for entry in entries:
            self.cells.setdefault(entry.seq, []).append(next(self._ids))
            self.held.setdefault(entry.seq, []).append(entry.token)
        for seq in {e.seq for e in entries}:
            self.swa_from[seq] = max(0, len(self.cells[seq]) - self.window - SWA_SLACK)
        self.batches.append(list(entries))
        self._last = list(entries)
        return 0

    def sample(self, sampler, index):
        assert self._last[index].logits
        return sampler.next()

    def logits(self, index):
        return [index]

    def new_sampler(self, sampling: Sampling):
        return ScriptedSampler(list(self.scripts.get(sampling.seed, [STOP])))

    def free_sampler(self, sampler):
        pass

    def seq_keep(self, seq, n):
        del self.cells.setdefault(seq, [])[n:]
        del self.held.setdefault(seq, [])[n:]
        if self.swa_from.get(seq, -1) >= n:
            self.swa_from[seq] = -1  # the window's cells were all past the cut

    def seq_copy(self, src, dst, n):
        assert not self.cells.get(dst)
        self.cells[dst] = list(self.cells.get(src, [])[:n])
        self.held[dst] = list(self.held.get(src, [])[:n])
        first = self.swa_from.get(src, -1)
        self.swa_from[dst] = first if 0 <= first < n else -1

    def seq_length(self, seq):
        return len(self.cells.get(seq, []))

    def seq_min(self, seq):
        return self.swa_from.get(seq, -1) if self.cells.get(seq) else -1

    def save_state(self, seq):
        return None

    def load_state(self, seq, data):
        return False

    def save_checkpoint(self, seq):
        held = self.held.get(seq, [])
        assert self.window and held and 0 <= self.swa_from[seq] <= max(0, len(held) - self.window)
        return repr(held).encode()

    def load_checkpoint(self, seq, data):
        saved = ast.literal_eval(data.decode())
        assert self.held.get(seq, []) == saved, "a checkpoint restored onto other tokens"
        self.swa_from[seq] = max(0, len(saved) - self.window)
        self.restores.append((seq, len(saved)))
        return True


def request(prompt, seed=0, **options):
    return GenerationRequest(tuple(prompt), Sampling(seed=seed), stop_tokens=frozenset({STOP}), **options)


def finish(generation):
    tokens = list(generation)
    return tokens, generation.stats


@pytest.fixture
def make():
    schedulers = []

    def build(max_checkpoints: int = 32, **kwargs):
        backend = ScriptedBackend(**kwargs)
        scheduler = Scheduler(backend, max_checkpoints=max_checkpoints)
        schedulers.append(scheduler)
        return backend, scheduler

    yield build
    for scheduler in schedulers:
        scheduler.close()


def test_one_request_reads_its_prompt_in_batch_sized_chunks_then_decodes(make):
    backend, scheduler = make(scripts={1: [5, 6, STOP]})
    tokens, stats = finish(scheduler.submit(request(range(100, 140), seed=1)))
    assert tokens == [5, 6, STOP]
    assert (stats.cached, stats.evaluated, stats.generated, stats.finish_reason) == (0, 40, 3, "stop")
    assert [len(batch) for batch in backend.batches] == [16, 16, 8, 1, 1]  # 40 prompt tokens, then 5 and 6
    assert stats.context_used == 42  # the stop token is not evaluated


def test_requests_decode_together_and_wait_in_arrival_order_for_a_free_sequence(make):
    backend, scheduler = make(n_seq=2, n_ctx=256, scripts={s: [s * 10 + i for i in range(5)] + [STOP] for s in (1, 2, 3)})
    backend.seconds_per_token = 0.001
    first = scheduler.submit(request([1] * 4, seed=1))
    second = scheduler.submit(request([2] * 4, seed=2))
    third = scheduler.submit(request([3] * 4, seed=3))  # no free sequence: waits
    results = [finish(g) for g in (first, second, third)]
    assert [tokens for tokens, _ in results] == [[s * 10 + i for i in range(5)] + [STOP] for s in (1, 2, 3)]
    # The first two share batches; the third starts only once a sequence is free.
    shared = [batch for batch in backend.batches if {e.seq for e in batch} == {0, 1}]
    assert len(shared) >= 5
    third_seq_tokens = [e.token for batch in backend.batches for e in batch if e.token in (3, 30, 31)]
    first_done = max(i for i, batch in enumerate(backend.batches) if any(e.token == 14 for e in batch))
    first_third = min(i for i, batch in enumerate(backend.batches) if any(e.token == 3 for e in batch))
    assert third_seq_tokens and first_third > first_done - 1


def test_generating_sequences_keep_going_while_a_long_prompt_is_read(make):
    backend, scheduler = make(n_seq=2, n_ctx=4096, n_batch=256, scripts={1: list(range(500, 560)) + [STOP], 2: [STOP]})
    backend.seconds_per_token = 0.0002
    talker = scheduler.submit(request([1] * 8, seed=1))
    talker_tokens = iter(talker)
    for _ in range(5):
        next(talker_tokens)  # it is generating now
    reader = scheduler.submit(request(range(1000, 3000), seed=2))
    finish(reader)
    rest = list(talker_tokens)
    assert rest[-1] == STOP
    reading = [i for i, batch in enumerate(backend.batches) if any(e.seq == 1 for e in batch)]
    assert len(reading) > 8  # the 2000-token prompt took many steps...
    # ...and the generating sequence had its token in every one of them while it lasted.
    last_talk = max(i for i, batch in enumerate(backend.batches) if any(e.seq == 0 for e in batch))
    while_talking = [i for i in reading if i <= last_talk]
    assert len(while_talking) > 8
    assert all(any(e.seq == 0 for e in backend.batches[i]) for i in while_talking)
    assert max(sum(e.seq == 1 for e in backend.batches[i]) for i in while_talking) < 255  # chunks left room for it


def test_prompts_are_read_oldest_first(make):
    backend, scheduler = make(n_seq=3, n_ctx=4096, n_batch=16, scripts={1: [STOP], 2: [STOP], 3: [STOP]})
    generations = [scheduler.submit(request([seed] * 40, seed=seed)) for seed in (1, 2, 3)]
    for generation in generations:
        finish(generation)
    first_batch_of = {seq: min(i for i, b in enumerate(backend.batches) if any(e.seq == seq for e in b)) for seq in range(3)}
    assert first_batch_of[0] <= first_batch_of[1] <= first_batch_of[2]


def test_a_prefix_held_by_another_sequence_is_shared_not_evaluated(make):
    backend, scheduler = make(n_seq=2, n_ctx=512, scripts={1: [STOP], 2: [STOP]})
    instructions = list(range(200, 260))
    finish(scheduler.submit(request(instructions + [1, 1], seed=1)))
    busy = scheduler.submit(request(instructions + [1, 1, 5, 5], seed=1))  # reuses its own slot
    tokens, stats = finish(scheduler.submit(request(instructions + [7, 7, 7], seed=2)))
    finish(busy)
    assert (stats.cached, stats.evaluated) == (60, 3)
    assert scheduler.cached_prefix(instructions + [7, 7, 7, 8]) == 63
    assert backend.cells[0][:60] == backend.cells[1][:60]  # the same cells, held once


def test_cancel_ends_one_request_and_the_others_go_on(make):
    backend, scheduler = make(n_seq=2, n_ctx=4096, n_batch=32, scripts={1: list(range(500, 540)) + [STOP], 2: [STOP]})
    backend.seconds_per_token = 0.0005
    # Cancelled once its second chunk is being read: the first is evaluated, most of the prompt is not.
    chunks_read, reading = [], threading.Event()
    real_decode = backend.decode

    def decode(entries, abort):
        if any(1000 <= entry.token < 3000 for entry in entries):
            chunks_read.append(len(entries))
            if len(chunks_read) == 2:
                reading.set()
        return real_decode(entries, abort)

    backend.decode = decode
    talker = scheduler.submit(request([1] * 8, seed=1))
    cancel = threading.Event()
    reader = scheduler.submit(request(range(1000, 3000), seed=2, cancel=cancel))
    assert reader.pending() == 2000
    assert reading.wait(30)
    cancel.set()
    tokens, stats = finish(reader)
    assert tokens == [] and stats.finish_reason == "interrupted" and 0 < stats.evaluated < 2000
    talked, talker_stats = finish(talker)
    assert talked == list(range(500, 540)) + [STOP] and talker_stats.finish_reason == "stop"


def test_a_consumer_that_walks_away_frees_its_sequence(make):
    backend, scheduler = make(n_seq=1, scripts={1: list(range(20, 60)), 2: [STOP]})
    backend.seconds_per_token = 0.002  # 60 tokens would take 0.12 s
    walker = scheduler.submit(request([1] * 4, seed=1))
    next(iter(walker))
    walker.close()
    tokens, stats = finish(scheduler.submit(request([2] * 4, seed=2)))
    assert tokens == [STOP]
    assert walker.stats.finish_reason == "interrupted"


def test_a_prompt_too_long_for_the_context_is_refused_and_a_full_context_ends_only_its_own_request(make):
    backend, scheduler = make(n_seq=2, n_ctx=64, scripts={1: list(range(20, 80)), 2: [3, 4, STOP]})
    with pytest.raises(ContextError, match="the prompt is 65 tokens but the context holds 64"):
        scheduler.submit(request([1] * 65))
    long = scheduler.submit(request([1] * 40, seed=1))  # generates until the pool is full
    short = scheduler.submit(request([2] * 4, seed=2))
    assert finish(short)[0] == [3, 4, STOP]
    tokens, stats = finish(long)
    assert stats.finish_reason == "length" and backend.used() <= 64


def test_a_full_pool_drops_idle_caches_first(make):
    backend, scheduler = make(n_seq=2, n_ctx=64, scripts={1: [STOP], 2: [STOP], 3: [STOP]})
    finish(scheduler.submit(request([1] * 40, seed=1)))  # leaves 40 cells cached on its sequence
    tokens, stats = finish(scheduler.submit(request([2] * 50, seed=2)))  # needs 50 of 64
    assert stats.finish_reason == "stop" and stats.evaluated == 50
    assert sorted(len(c) for c in backend.cells.values()) == [0, 50]


def test_a_full_pool_makes_the_newest_prompt_wait_for_room(make):
    backend, scheduler = make(n_seq=2, n_ctx=64, n_batch=16, scripts={1: list(range(20, 30)) + [STOP], 2: [STOP]})
    first = scheduler.submit(request([1] * 30, seed=1))
    second = scheduler.submit(request([2] * 30, seed=2))  # 30 + 30 + 10 generated do not fit in 64
    assert finish(first)[0] == list(range(20, 30)) + [STOP]
    tokens, stats = finish(second)
    assert tokens == [STOP] and stats.finish_reason == "stop"


def test_a_failed_decode_fails_its_requests_and_the_engine_goes_on(make):
    backend, scheduler = make(n_seq=1, scripts={1: [5, STOP], 2: [STOP]})
    backend.fail_code = -3
    with pytest.raises(Exception, match="llama_decode returned -3"):
        finish(scheduler.submit(request([1] * 4, seed=1)))
    assert finish(scheduler.submit(request([2] * 4, seed=2)))[0] == [STOP]
    assert all(len(batch) > 0 for batch in backend.batches)
    assert [e for batch in backend.batches for e in batch][0] == Entry(0, 2, 0, False)


# -- the small sliding-window cache: checkpoints ------------------------------------------------------

WINDOW = 16
MARK = (7, 8)  # where a later prompt may part from this one (harmony: <|start|>assistant)


def marked(prompt, seed=1, **options):
    return request(prompt, seed=seed, checkpoint_after=(MARK,), **options)


def test_a_cut_far_back_restores_the_nearest_checkpoint_and_a_recent_one_needs_none(make):
    # One sequence, so that each prompt cuts it (with a free one, a prompt that parts from the
    # conversation takes that one instead: see the placement tests below).
    backend, scheduler = make(n_seq=1, n_ctx=1024, window=WINDOW, scripts={1: [STOP]})
    a = list(range(100, 140)) + list(MARK) + list(range(200, 260))  # the mark ends at 42
    assert finish(scheduler.submit(marked(a)))[1].evaluated == 102
    assert scheduler.slots[0].checkpoints.lengths == [42, 102]  # after the mark, the end of the prompt
    # Parting at 80: the sliding-window cells hold 82 on, not the window before 80.
    b = a[:80] + [5] * 10
    stats = finish(scheduler.submit(marked(b)))[1]
    assert (stats.cached, stats.evaluated, stats.restored) == (42, 48, 42)
    assert backend.restores == [(0, 42)]
    assert scheduler.slots[0].checkpoints.lengths == [42, 90]  # the one at 102 described other tokens
    # Parting two tokens before the end: the window is still held, nothing to restore.
    c = b[:88] + [6] * 4
    stats = finish(scheduler.submit(marked(c)))[1]
    assert (stats.cached, stats.evaluated, stats.restored) == (88, 4, 0)
    assert scheduler.cached_prefix(c[:60] + [1]) == 42
    # The same prompt again (a retry): its last token alone, from the checkpoint at its end.
    finish(scheduler.submit(request(c + list(range(300, 340)), seed=1)))  # the window moves on past c
    stats = finish(scheduler.submit(marked(c)))[1]
    assert (stats.cached, stats.evaluated, stats.restored) == (91, 1, 92)
    # No checkpoint at or before the part: read again from the start, never from a wrong state.
    d = c[:30] + [4] * 3
    stats = finish(scheduler.submit(marked(d)))[1]
    assert (stats.cached, stats.evaluated) == (0, 33)


def test_without_a_window_any_prefix_is_kept(make):
    backend, scheduler = make(n_ctx=1024, scripts={1: [STOP]})
    a = list(range(100, 200))
    finish(scheduler.submit(marked(a)))
    stats = finish(scheduler.submit(marked(a[:30] + [5])))[1]
    assert (stats.cached, stats.evaluated) == (30, 1)
    assert not scheduler.slots[0].checkpoints and scheduler.checkpoint_bytes() == 0


def test_a_checkpoint_is_kept_where_a_mark_is_generated(make):
    reply = [50, *MARK] + list(range(300, 340)) + [STOP]
    backend, scheduler = make(n_ctx=1024, window=WINDOW, scripts={1: reply})
    prompt = list(range(100, 130))
    tokens, stats = finish(scheduler.submit(marked(prompt)))
    assert scheduler.slots[0].checkpoints.lengths == [30, 33]
    # The history re-rendered differently after the generated mark: evaluated from there.
    follow = prompt + reply[:3] + [60] * 40
    stats = finish(scheduler.submit(marked(follow, seed=2)))[1]
    assert (stats.cached, stats.evaluated, stats.restored) == (33, 40, 33)


def test_an_agent_loop_evaluates_only_what_changed_in_every_turn(make):
    """Each turn re-sends the whole history: the previous prompt, the reply written again (its
    reasoning as generated, its tool call's header written another way after the mark), a tool
    result. Only the tokens past the common prefix with what the sequence held are evaluated,
    however far the sliding window moved on."""
    scripts = {
        turn: [1000 + 100 * turn + i for i in range(10)] + [*MARK] + [3000 + i for i in range(20)] + [STOP]
        for turn in range(1, 9)
    }
    backend, scheduler = make(n_ctx=4096, window=WINDOW, scripts=scripts)
    history = list(range(100, 160)) + list(MARK)
    for turn in range(1, 9):
        held_before = list(scheduler.slots[0].tokens)
        stats = finish(scheduler.submit(marked(history, seed=turn)))[1]
        changed = len(history) - min(common_prefix(held_before, history), len(history) - 1)
        assert stats.evaluated == changed, turn
        assert turn == 1 or changed == 5 + 25 + 2  # the rewritten call, the tool result, the mark
        assert turn == 1 or stats.restored == len(history) - changed  # the window had moved on: a checkpoint served
        history = history + scripts[turn][:12] + [4000 + turn] * 5 + [2000 + turn] * 25 + list(MARK)
    assert len(scheduler.slots[0].checkpoints) <= 32


def common_prefix(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_checkpoints_per_sequence_are_bounded_and_spread(make):
    backend, scheduler = make(n_ctx=4096, window=WINDOW, max_checkpoints=4, scripts={1: [STOP]})
    prompt = []
    for i in range(10):
        prompt += list(range(100 + 20 * i, 118 + 20 * i)) + list(MARK)
    finish(scheduler.submit(marked(prompt)))
    lengths = scheduler.slots[0].checkpoints.lengths
    assert len(lengths) == 4 and lengths[0] == 20 and lengths[-1] == 200
    assert scheduler.checkpoint_bytes() == sum(len(c.data) for c in scheduler.slots[0].checkpoints)


def test_a_follower_takes_the_leaders_cells_where_their_prompts_part(make):
    backend, scheduler = make(n_seq=2, n_ctx=1024, n_batch=16, window=WINDOW, scripts={1: [STOP], 2: [STOP]})
    backend.seconds_per_token = 0.002  # the leader is still reading when the follower arrives
    instructions = list(range(200, 260))
    leader = scheduler.submit(marked(instructions + [1] * 60, seed=1))
    follower = scheduler.submit(marked(instructions + [2] * 5, seed=2))
    finish(leader)
    tokens, stats = finish(follower)
    assert (stats.cached, stats.evaluated) == (60, 5)
    assert 60 in scheduler.slots[0].checkpoints.lengths  # the leader kept one where they part
    assert backend.cells[0][:60] == backend.cells[1][:60]  # the same cells, held once


def test_the_small_window_survives_a_full_pool_and_preemption(make):
    backend, scheduler = make(n_seq=2, n_ctx=64, n_batch=16, window=WINDOW, scripts={1: list(range(20, 30)) + [STOP], 2: [STOP]})
    first = scheduler.submit(marked([1] * 30, seed=1))
    second = scheduler.submit(marked([2] * 30, seed=2))
    assert finish(first)[0] == list(range(20, 30)) + [STOP]
    assert finish(second)[0] == [STOP]
    again = finish(scheduler.submit(marked([2] * 30 + [3], seed=2)))[1]
    assert again.evaluated + again.cached == 31


def test_a_conversation_keeps_its_sequence_against_requests_that_share_only_its_instructions(make):
    """Open WebUI's pattern: an answer, then title, tag and follow-up requests that share only the
    instructions with the conversation, then the next turn. The side requests take the empty
    sequences (copying the instructions from the conversation's), so the next turn, which keeps
    all of the previous prompt but not the reply's reasoning, evaluates only what it added. Once
    every sequence holds something, the least recently used one makes room."""
    analysis, final = list(range(1500, 1540)), list(range(1600, 1620))
    scripts = {1: analysis + [*MARK] + final + [STOP], 2: analysis[:3] + final[:5] + [STOP]}
    scripts.update({seed: [4000 + seed, STOP] for seed in range(10, 20)})
    backend, scheduler = make(n_seq=4, n_ctx=4096, n_batch=16, window=WINDOW, scripts=scripts)
    instructions = list(range(200, 260))

    def ask(prompt, seed):
        return finish(scheduler.submit(marked(prompt, seed=seed, prefix_length=len(instructions))))[1]

    def side(seed):  # a task prompt with the chat quoted in it: only the instructions are shared
        return instructions + [3000 + 10 * seed + i for i in range(30)] + list(MARK)

    first = instructions + list(range(1000, 1200)) + list(MARK)
    assert ask(first, 1).evaluated == len(first)
    for seed in (10, 11, 12):  # title, tags, follow-ups, one after the other
        stats = ask(side(seed), seed)
        assert (stats.cached, stats.evaluated, stats.restored) == (60, 32, 60)  # the instructions copied
    held = scheduler.held_tokens()
    assert held[0][: len(first)] == first and [tokens[:92] for tokens in held[1:]] == [side(s) for s in (10, 11, 12)]

    # The next turn: the answer written again without its reasoning, and the new message.
    second = first + [5] + final + [6] + list(range(1200, 1230)) + list(MARK)
    stats = ask(second, 2)
    assert (stats.cached, stats.evaluated, stats.restored) == (len(first), len(second) - len(first), len(first))
    assert scheduler.held_tokens()[0][: len(second)] == second

    # Every sequence holds something: a new side request evicts the least recently used (the title's).
    stats = ask(side(13), 13)
    assert stats.cached == 60 and scheduler.held_tokens()[1][:92] == side(13)
    third = second + [5] + final[:5] + [6] + list(range(1300, 1310)) + list(MARK)
    assert ask(third, 2).evaluated == len(third) - len(second)  # the conversation is still whole
    assert scheduler.held_tokens()[0][: len(third)] == third
    # A retry of the same turn (a regenerate) keeps its sequence too: its last token alone is read.
    assert ask(third, 2).evaluated == 1 and scheduler.held_tokens()[0][: len(third)] == third


def test_a_conversation_changed_in_the_middle_keeps_its_sequence_and_the_others_keep_theirs(make):
    """After an answer that followed tool calls, harmony drops the reasoning before the calls: the
    next prompt parts from the conversation's last one in the middle. It still goes to that
    conversation's sequence (restored from the checkpoint before the reasoning), not to the least
    recently used one, which holds another conversation that would then be read again."""
    scripts = {seed: [4000 + seed, STOP] for seed in range(1, 8)}
    backend, scheduler = make(n_seq=2, n_ctx=4096, n_batch=16, window=WINDOW, scripts=scripts)
    instructions = list(range(200, 260))

    def ask(prompt, seed):
        return finish(scheduler.submit(marked(prompt, seed=seed, prefix_length=len(instructions))))[1]

    a1 = instructions + list(range(1000, 1200)) + list(MARK)
    b1 = instructions + list(range(2000, 2200)) + list(MARK)
    assert ask(a1, 1).evaluated == len(a1) and ask(b1, 2).cached == len(instructions)
    reasoning, call, result = list(range(1500, 1540)), [3, 1501, 3], list(range(1600, 1610))
    a2 = a1 + reasoning + call + result + list(MARK)  # the tool's result, for the answer
    assert ask(a2, 3).evaluated == len(a2) - len(a1)
    # The answer is final: the next question's history has the call and result but not the reasoning.
    a3 = a1 + call + result + [5] + list(range(1700, 1720)) + [6] + list(range(1800, 1830)) + list(MARK)
    stats = ask(a3, 4)
    assert (stats.cached, stats.evaluated, stats.restored) == (len(a1), len(a3) - len(a1), len(a1))
    b2 = b1 + [5] + list(range(2300, 2320)) + [6] + list(range(2400, 2420)) + list(MARK)
    assert ask(b2, 5).evaluated == len(b2) - len(b1)  # its sequence still holds it
    held = scheduler.held_tokens()
    assert held[0][: len(a3)] == a3 and held[1][: len(b2)] == b2
