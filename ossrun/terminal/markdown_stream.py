"""Markdown streamed to a terminal at a cost that does not grow with the answer.

Re-rendering the whole answer for every token makes long answers crawl. Instead,
as soon as a block can no longer change (a paragraph followed by a blank line, a
finished list item, a closed code fence, the older lines of a long fence) it is
rendered once and printed above a short live region; only the unfinished tail is
repainted, at most every ``refresh_seconds``. Scrollback stays intact.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from rich.console import Console, Group
from rich.live import Live
from rich.markdown import ListElement, Markdown
from rich.segment import Segment, Segments
from rich.syntax import Syntax
from rich.text import Text

DEFAULT_REFRESH_SECONDS = 1 / 15
DEFAULT_CODE_THEME = "monokai"
# A fence longer than this is printed in pieces, keeping the last CODE_LIVE_KEEP lines live.
CODE_LIVE_MAX = 40
CODE_LIVE_KEEP = 10

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)")
_LIST_ITEM = re.compile(r"^([*+-]|\d{1,9}[.)])(\s|$)")
_HEADING = re.compile(r"^#{1,6}(\s|$)")


@dataclass(frozen=True)
class _Fence:
    marker: str  # the opening run of backticks or tildes
    lexer: str

    def closed_by(self, line: str) -> bool:
        stripped = line.strip()
        return stripped.startswith(self.marker) and set(stripped) == {self.marker[0]}


def _opening_fence(line: str) -> _Fence | None:
    match = _FENCE.match(line)
    return _Fence(match.group(1), match.group(2) or "text") if match else None


def _last_boundary(lines: list[str], partial: str = "") -> tuple[int, bool]:
    """The last safe block start among complete ``lines``: (line index or 0 for none, separated).

    A block starts: after a blank line, at a non-indented line (the unfinished
    ``partial`` line too: its first character tells); at a fence; after a closed
    fence or a heading; at the next item of a tight top-level list. Lines inside a
    fence never start a block. ``separated`` is False only between tight list
    items, which print with no blank line between them.
    """
    boundary, separated = 0, True
    fence: _Fence | None = None
    in_list = False
    previous = ""
    for index, line in enumerate(lines):
        if fence is not None:
            if fence.closed_by(line):
                fence, previous = None, ""
                if index + 1 < len(lines):
                    boundary, separated, in_list = index + 1, True, False
            continue
        opening = _opening_fence(line)
        item = bool(_LIST_ITEM.match(line))
        if index > 0 and line.strip() and line[:1] not in (" ", "\t"):
            if not previous.strip() or opening or _HEADING.match(line) or _HEADING.match(previous):
                boundary, separated, in_list = index, True, item
            elif in_list and item:
                boundary, separated = index, False
        elif index == 0:
            in_list = item
        if opening:
            fence = opening
        previous = line
    if fence is None and lines and not previous.strip() and partial.strip() and partial[:1] not in (" ", "\t"):
        boundary, separated = len(lines), True
    return boundary, separated


class _AlignedList(ListElement):
    """Numbers at least two digits wide, so a tight list printed item by item stays aligned past 9."""

    def __rich_console__(self, console, options):
        if self.list_type == "bullet_list_open":
            yield from super().__rich_console__(console, options)
            return
        number = 1 if self.list_start is None else self.list_start
        last_number = max(number + len(self.items), 10)
        for index, item in enumerate(self.items):
            yield from item.render_number(console, options, number + index, last_number)


class AlignedMarkdown(Markdown):
    """rich's Markdown with ordered-list numbers that line up however the list is split into prints."""

    elements = {**Markdown.elements, "ordered_list_open": _AlignedList, "bullet_list_open": _AlignedList}


class MarkdownStream:
    """Renders streamed markdown on ``console`` (a terminal): stable blocks once, the tail live."""

    def __init__(
        self, console: Console, *, refresh_seconds: float = DEFAULT_REFRESH_SECONDS, code_theme: str = DEFAULT_CODE_THEME
    ):
        self.console = console
        self.refresh_seconds = refresh_seconds
        self.code_theme = code_theme
        self._text = ""  # source not printed yet; starts at a block start (or inside _code)
        self._code: _Fence | None = None  # a long fence whose head is already printed
        self._blank_due = False  # a blank line separates the last printed block from the next
        self._live: Live | None = None
        self._last_paint = 0.0
        self._dirty = False

    # -- public -----------------------------------------------------------

    def feed(self, text: str) -> None:
        if not text:
            return
        # A block can end when a line does, or when the next line's first character shows.
        line_started = self._text.endswith("\n")
        self._text += text
        self._dirty = True
        if line_started or "\n" in text:
            self._commit_stable()
        if time.monotonic() - self._last_paint >= self.refresh_seconds:
            self._paint()

    def suspend(self) -> None:
        """Take the live tail off the screen (to print something else); the next feed brings it back."""
        if self._live is not None:
            self._live.update(Text(""), refresh=True)
            self._live.stop()
            self._live = None
            self._dirty = True

    def close(self) -> None:
        """Print whatever is left, for good."""
        self.suspend()
        if self._code is not None:
            self._emit(self._code_lines(self._text.rstrip("\n"), last=True))
            self._code = None
        else:
            self._emit(self._markdown_lines(self._text))
        self._text = ""

    # -- committing -------------------------------------------------------

    def _commit_stable(self) -> None:
        while True:
            *complete, partial = self._text.split("\n")
            if self._code is not None:
                if not self._commit_code(complete):
                    return
                continue
            boundary, separated = _last_boundary(complete, partial)
            if boundary > 0:
                chunk = "\n".join(complete[:boundary]) + "\n"
                self._text = self._text[len(chunk) :]
                self._emit(self._markdown_lines(chunk), blank_after=separated)
                continue
            fence = _opening_fence(complete[0]) if complete else None
            if fence is not None and len(complete) - 1 > CODE_LIVE_MAX:
                # A long fence: print its head now and stream its lines in pieces.
                self._text = self._text[len(complete[0]) + 1 :]
                self._code = fence
                self._emit(self._code_lines(None, first=True))
                continue
            return

    def _commit_code(self, complete: list[str]) -> bool:
        """Print settled lines of the open long fence; True if the fence closed."""
        assert self._code is not None
        for index, line in enumerate(complete):
            if self._code.closed_by(line):
                self._emit(self._code_lines("\n".join(complete[:index]) if index else None, last=True), blank_after=True)
                self._code = None
                self._text = "\n".join(self._text.split("\n")[index + 1 :])
                return True
        if len(complete) > CODE_LIVE_MAX:
            settled = complete[: len(complete) - CODE_LIVE_KEEP]
            self._emit(self._code_lines("\n".join(settled)))
            self._text = "\n".join(self._text.split("\n")[len(settled) :])
        return False

    def _emit(self, lines: list[list[Segment]], *, blank_after: bool = False) -> None:
        """Print rendered lines for good, after the blank line the previous block asked for."""
        if not lines:
            return
        if self._blank_due:
            lines = [[]] + lines
        self._blank_due = blank_after
        self.console.print(_segments(lines))

    # -- rendering --------------------------------------------------------

    def _markdown_lines(self, source: str) -> list[list[Segment]]:
        if not source.strip():
            return []
        return _trim_blank(self.console.render_lines(AlignedMarkdown(source, code_theme=self.code_theme), pad=False))

    def _syntax(self, code: str, lexer: str) -> Syntax:
        return Syntax(code, lexer, theme=self.code_theme, word_wrap=True, padding=(0, 1))

    def _code_lines(self, code: str | None, *, first: bool = False, last: bool = False) -> list[list[Segment]]:
        # Markdown pads a code block with a line above and below: the same here, piece by piece.
        assert self._code is not None
        parts = []
        if first:
            parts.append(self._syntax("", "text"))
        if code is not None:
            parts.append(self._syntax(code, self._code.lexer))
        if last:
            parts.append(self._syntax("", "text"))
        return self.console.render_lines(Group(*parts), pad=False)

    def _paint(self) -> None:
        self._last_paint = time.monotonic()
        if not self._dirty:
            return
        self._dirty = False
        if self._code is not None:
            lines = self._code_lines(self._text.rstrip("\n"))
        else:
            lines = self._markdown_lines(self._text)
        if lines and self._blank_due:
            lines = [[]] + lines
        height = max(1, self.console.size.height - 2)
        view = _segments(lines[-height:])
        if self._live is None:
            if not lines:
                return
            self._live = Live(
                view, console=self.console, auto_refresh=False, transient=True, redirect_stdout=False, redirect_stderr=False
            )
            self._live.start(refresh=True)
        else:
            self._live.update(view, refresh=True)


def _is_blank(line: list[Segment]) -> bool:
    return all(not seg.text.strip() and not (seg.style and seg.style.bgcolor) for seg in line)


def _trim_blank(lines: list[list[Segment]]) -> list[list[Segment]]:
    start, end = 0, len(lines)
    while start < end and _is_blank(lines[start]):
        start += 1
    while end > start and _is_blank(lines[end - 1]):
        end -= 1
    return [list(line) for line in lines[start:end]]


def _segments(lines: list[list[Segment]]) -> Segments:
    out: list[Segment] = []
    for line in lines:
        out.extend(line)
        out.append(Segment.line())
    return Segments(out)
