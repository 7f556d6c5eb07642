"""Context checkpoints: the sliding-window layers' state at chosen positions of a sequence.

Half of gpt-oss's layers attend to the last 128 positions only, and llama.cpp's small
sliding-window cache keeps little more than that per sequence: once a sequence has moved on,
those layers no longer hold what an earlier position needs. Keeping a prefix and evaluating
after it is then only right if the sliding-window layers hold the ``window`` positions before
the cut, either still in the cache (the cut is recent) or restored from a checkpoint saved
when the sequence was exactly that long (llama.cpp's partial sequence state, a few MB). The
full-attention layers keep every position, so a checkpoint is all the cut needs.

Where checkpoints go (:func:`prompt_positions`, :func:`ends_with_mark`): the end of the
instructions and of each prompt, after each *mark* (a token sequence the caller names: for
harmony, the start of an assistant message, where a re-rendered history changes once earlier
reasoning is dropped), also inside generated text, and every ``interval`` positions of a long
prompt. Each sequence keeps at most ``limit`` of them (:class:`Checkpoints`); the bytes of a
checkpoint are shared, never copied, between sequences that share the prefix.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

DEFAULT_CHECKPOINT_INTERVAL = 2048  # positions between checkpoints inside a long prompt


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """The sliding-window layers' state of a sequence that held ``length`` positions."""

    length: int
    data: bytes


class Checkpoints:
    """One sequence's checkpoints, by length; at most ``limit`` of them.

    All of them describe prefixes of what the sequence holds: cutting the sequence drops those
    past the cut. When there are too many, the one closest to the checkpoint before it goes
    (never the first, usually the end of the instructions, nor the newest): what is left stays
    spread over the whole sequence.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self._items: list[Checkpoint] = []  # by length

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self):
        return iter(self._items)

    @property
    def lengths(self) -> list[int]:
        return [c.length for c in self._items]

    def add(self, checkpoint: Checkpoint) -> None:
        if self.limit <= 0:
            return
        lengths = self.lengths
        at = bisect.bisect_left(lengths, checkpoint.length)
        if at < len(lengths) and lengths[at] == checkpoint.length:
            self._items[at] = checkpoint
            return
        self._items.insert(at, checkpoint)
        while len(self._items) > self.limit:
            self._thin(keep=checkpoint)

    def _thin(self, keep: Checkpoint) -> None:
        candidates = [i for i in range(1, len(self._items)) if self._items[i] is not keep]
        if not candidates:
            candidates = [i for i in range(len(self._items)) if self._items[i] is not keep]
        gap = {i: self._items[i].length - (self._items[i - 1].length if i else 0) for i in candidates}
        del self._items[min(candidates, key=lambda i: (gap[i], i))]

    def at_or_before(self, n: int) -> Checkpoint | None:
        """The checkpoint of the longest prefix not longer than ``n``."""
        at = bisect.bisect_right(self.lengths, n)
        return self._items[at - 1] if at else None

    def cut(self, n: int) -> None:
        """The sequence now holds ``n`` positions: checkpoints past them describe something else."""
        del self._items[bisect.bisect_right(self.lengths, n) :]

    def clear(self) -> None:
        self._items.clear()

    def adopt(self, other: Checkpoints, n: int) -> None:
        """Take ``other``'s checkpoints of prefixes up to ``n`` (this sequence now holds the same first ``n``)."""
        for checkpoint in other:
            if checkpoint.length <= n:
                self.add(checkpoint)


def reusable(n: int, held_from: int, window: int, checkpoints: Checkpoints) -> tuple[int, Checkpoint | None]:
    """How much of a sequence's first ``n`` positions can be kept to evaluate what follows them.

    ``held_from`` is the first position the sequence's sliding-window cells still hold (-1:
    none), ``window`` the sliding window (0: every layer keeps every position). Returns ``(n,
    None)`` when the cells before ``n`` are all there, else the nearest checkpoint that serves
    and the length to keep after restoring it, else ``(0, None)``: evaluate from the start.

    A checkpoint saved at ``L`` holds the last ``window`` positions before ``L``; evaluating
    position ``p`` needs the ``window - 1`` before it, so it serves a cut at ``L`` and at ``L - 1``
    (a prompt sent again, as a retry does, evaluates its last token from the checkpoint at its end).
    """
    if n <= 0:
        return 0, None
    if window <= 0 or 0 <= held_from <= max(0, n - window + 1):
        return n, None
    checkpoint = checkpoints.at_or_before(n + 1)
    return (min(checkpoint.length, n), checkpoint) if checkpoint is not None else (0, None)


def prompt_positions(
    prompt: Sequence[int],
    start: int,
    *,
    marks: Iterable[Sequence[int]] = (),
    prefix_length: int = 0,
    interval: int = DEFAULT_CHECKPOINT_INTERVAL,
) -> list[int]:
    """The lengths past ``start`` at which to save a checkpoint while reading ``prompt[start:]``: the
    end of the instructions (``prefix_length``), after each mark, every ``interval`` positions,
    and the end of the prompt."""
    end = len(prompt)
    found = {end}
    if start < prefix_length < end:
        found.add(prefix_length)
    if interval > 0:
        found.update(range((start // interval + 1) * interval, end, interval))
    for mark in marks:
        mark = list(mark)
        size = len(mark)
        if not size:
            continue
        first = mark[0]
        for i in range(max(0, start - size + 1), end - size + 1):
            if prompt[i] == first and list(prompt[i : i + size]) == mark and i + size > start:
                found.add(i + size)
    return sorted(p for p in found if p > start)


def first_mark_end(prompt: Sequence[int], start: int, marks: Iterable[Sequence[int]]) -> int | None:
    """Where the first of ``marks`` at or after ``start`` ends in ``prompt`` (None if none is there)."""
    ends = []
    for mark in marks:
        mark = list(mark)
        if not mark:
            continue
        i = start
        while True:
            try:
                i = prompt.index(mark[0], i)
            except ValueError:
                break
            if list(prompt[i : i + len(mark)]) == mark:
                ends.append(i + len(mark))
                break
            i += 1
    return min(ends, default=None)


def ends_with_mark(tokens: Sequence[int], marks: Iterable[Sequence[int]]) -> bool:
    """Whether the last tokens are one of ``marks`` (a checkpoint goes here in generated text)."""
    for mark in marks:
        size = len(mark)
        if size and len(tokens) >= size and list(tokens[-size:]) == list(mark):
            return True
    return False


def total_bytes(sets: Iterable[Checkpoints]) -> int:
    """Bytes of all the checkpoints of these sequences, each shared one counted once."""
    seen: dict[int, int] = {}
    for checkpoints in sets:
        for checkpoint in checkpoints:
            seen[id(checkpoint)] = len(checkpoint.data)
    return sum(seen.values())
