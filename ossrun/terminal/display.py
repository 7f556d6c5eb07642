"""Terminal renderers: typed events from ``ossrun.events`` in, text on two streams out.

The answer goes to stdout; reasoning, preambles, tool activity, notices and stats
go to stderr, so ``ossrun run ... > answer.txt`` holds the answer alone. On a
terminal the answer streams as markdown (see ``ossrun.terminal.markdown_stream``) and the
reasoning is dimmed; elsewhere everything is plain text written as it arrives.
Colour follows rich, which honours ``NO_COLOR``.

What the model wrote or its code printed reaches a terminal with its control characters made
visible (:func:`visible`: ESC as ``\\x1b``), never obeyed: an escape sequence cannot write the
clipboard, move the cursor, or erase the code shown before the user confirms a run. Elsewhere
(a pipe, a file) text stays as it is.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from typing import Literal, TextIO

from rich.console import Console
from rich.text import Text

from ossrun.events import CommentaryDelta, Done, Event, FinalDelta, Notice, Prefill, ReasoningDelta, Reply, ToolCall, ToolResult
from ossrun.terminal.markdown_stream import MarkdownStream

ReasoningMode = Literal["show", "hide", "off"]
DEFAULT_STATUS_SECONDS = 0.25  # how often "thinking… N tokens" is updated when reasoning is hidden
TOOL_OUTPUT_PREVIEW = 200
THINKING_HEADING = "thinking"
# What a terminal obeys rather than shows: C0 controls but newline and tab, DEL, C1 controls;
# and what reorders the text it shows (bidirectional marks and overrides, line separators).
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
ESCAPE_STYLE = "reverse"


def _escape(character: str) -> str:
    code = ord(character)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str) -> str:
    """``text`` with its control characters written out as escapes (ESC as ``\\x1b``)."""
    return CONTROL.sub(lambda match: _escape(match.group()), text)


@dataclass
class Screen:
    """The two output streams and what they can do."""

    out: Console  # the answer
    err: Console  # everything else

    @classmethod
    def create(cls, out: TextIO | None = None, err: TextIO | None = None) -> Screen:
        def console(stream: TextIO) -> Console:
            return Console(file=stream, highlight=False, markup=False, emoji=False, soft_wrap=False)

        return cls(console(out or sys.stdout), console(err or sys.stderr))

    @property
    def rich_answer(self) -> bool:
        """Markdown and a live region only on a terminal."""
        return self.out.is_terminal and not self.out.is_dumb_terminal

    def write(self, console: Console, text: str, style: str | None = None) -> None:
        """Text as is (no wrapping, no markup), styled only where the console has colour."""
        if not text:
            return
        if console.is_terminal and style:
            console.print(Text(text, style=style), end="", soft_wrap=True)
        else:
            console.file.write(text)
            console.file.flush()

    def show(self, console: Console, text: str, style: str | None = None) -> None:
        """Text the model wrote or its code printed: on a terminal its control characters are
        shown as escapes (highlighted where there is colour), elsewhere it is written as it is."""
        if not text:
            return
        if not console.is_terminal:
            self.write(console, text, style)
            return
        shown = Text(style=style or "")
        start = 0
        for match in CONTROL.finditer(text):
            shown.append(text[start : match.start()])
            shown.append(_escape(match.group()), ESCAPE_STYLE)
            start = match.end()
        shown.append(text[start:])
        console.print(shown, end="", soft_wrap=True)
        console.file.flush()

    def info(self, text: str, style: str | None = "dim") -> None:
        """One line on stderr (control characters shown: it may quote the model)."""
        self.show(self.err, text + "\n", style)

    def notice(self, text: str) -> None:
        self.info(f"note: {text}", "yellow")

    def error(self, text: str) -> None:
        self.info(f"error: {text}", "bold red")


def stats_line(reply: Reply) -> str:
    """Prompt tokens, prefill and decode speed, context used: one line after each answer."""
    usage, timings = reply.usage, reply.timings
    parts = [f"prompt {usage.prompt_tokens} tokens ({timings.prefill_tokens} new)"]
    parts.append(f"prefill {timings.prefill_tps:.1f} tok/s" if timings.prefill_tokens else "prefill cached")
    parts.append(f"decode {usage.completion_tokens} tokens at {timings.decode_tps:.1f} tok/s")
    if reply.context_size:
        share = 100 * reply.context_used / reply.context_size
        parts.append(f"context {reply.context_used}/{reply.context_size} ({share:.0f}%)")
    return " · ".join(parts)


def _indent(text: str) -> str:
    """Each line indented; only newlines end lines (splitlines() would also cut at form feeds,
    vertical tabs and separators, which are shown as escapes)."""
    return "\n".join("  " + line for line in text.rstrip("\n").split("\n"))


class TurnView:
    """Shows one assistant turn as its events arrive. Call :meth:`close` at the end, always."""

    def __init__(self, screen: Screen, *, reasoning: ReasoningMode = "show", answer: bool = True, stats: bool = True):
        self.screen = screen
        self.reasoning_mode = reasoning
        self.answer = answer  # False: the caller prints the answer itself (``ossrun run --json``)
        self.stats = stats
        self.reasoning_tokens = 0  # one ReasoningDelta per generated token
        self._section: str | None = None  # "reasoning", "commentary" or "final"
        self._err_at_line_start = True
        self._out_at_line_start = True
        self._markdown: MarkdownStream | None = None
        self._status_time = 0.0
        self._status_shown = False
        self._reading = False  # the status line says the prompt is being read

    def handle(self, event: Event) -> None:
        if isinstance(event, Prefill):
            if event.tokens and self.screen.err.is_terminal:
                self._status(f"reading {event.tokens} prompt tokens…")
                self._reading = True
            return
        if self._reading:  # the prompt is read: the first output replaces the status line
            self._reading = False
            self._clear_status()
        if isinstance(event, ReasoningDelta):
            self._reasoning(event.text)
        elif isinstance(event, FinalDelta):
            if self.answer:
                self._final(event.text)
        elif isinstance(event, CommentaryDelta):
            self._enter("commentary")
            self._err(event.text, "italic")
        elif isinstance(event, ToolCall):
            self._enter(None)
            if event.recipient == "python":  # code reads better as a block than as one call: the whole code, exactly
                self._err_line("→ python\n" + _indent(event.arguments), "dim")
            else:
                self._err_line(f"→ {event.name}({event.arguments})", "dim")
        elif isinstance(event, ToolResult):
            self._enter(None)
            output = event.output if len(event.output) <= TOOL_OUTPUT_PREVIEW else event.output[:TOOL_OUTPUT_PREVIEW] + "…"
            failed = " failed" if event.error else ""
            self._err_line(f"← {event.call.name}{failed}: {_indent(output).lstrip()}", "dim")
        elif isinstance(event, Notice):
            self._interject(lambda: self.screen.notice(event.text))
        elif isinstance(event, Done):
            self.close()
            if self.stats:
                self.screen.info(stats_line(event.reply))

    def close(self) -> None:
        """End the open section: the last lines of the answer are printed for good."""
        self._enter(None)

    def __enter__(self) -> TurnView:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- sections ---------------------------------------------------------

    def _enter(self, section: str | None) -> None:
        if section == self._section:
            return
        previous, self._section = self._section, section
        if previous == "reasoning":
            self._end_reasoning()
        elif previous == "final":
            self._end_final()
        elif previous == "commentary":
            self._err_newline()
        if section == "reasoning" and self.reasoning_mode == "show":
            self._err_line(THINKING_HEADING, "bold dim")

    def _reasoning(self, text: str) -> None:
        self._enter("reasoning")
        self.reasoning_tokens += 1
        if self.reasoning_mode == "show":
            self._err(text, "dim")
        elif self.reasoning_mode == "hide" and self.screen.err.is_terminal:
            now = time.monotonic()
            if now - self._status_time >= DEFAULT_STATUS_SECONDS:
                self._status_time = now
                self._status(f"thinking… {self.reasoning_tokens} tokens")

    def _end_reasoning(self) -> None:
        if self.reasoning_mode == "show":
            self._err_newline()
            self._err("\n")
        elif self.reasoning_mode == "hide":
            self._clear_status()
            self._err_line(f"thought for {self.reasoning_tokens} tokens", "dim")

    def _final(self, text: str) -> None:
        self._enter("final")
        if self.screen.rich_answer:
            if self._markdown is None:
                self._markdown = MarkdownStream(self.screen.out)
            self._markdown.feed(visible(text))
        else:
            self.screen.show(self.screen.out, text)
            self._out_at_line_start = text.endswith("\n")

    def _end_final(self) -> None:
        if self._markdown is not None:
            self._markdown.close()
            self._markdown = None
        elif not self._out_at_line_start:
            self.screen.write(self.screen.out, "\n")
            self._out_at_line_start = True

    def _interject(self, show) -> None:
        """Print a line on stderr without tearing the live answer or a half-written line."""
        if self._markdown is not None:
            self._markdown.suspend()
        self._clear_status()
        self._err_newline()
        if not self._out_at_line_start and self.screen.out.file is self.screen.err.file:
            self.screen.write(self.screen.out, "\n")
            self._out_at_line_start = True
        show()

    # -- stderr helpers ---------------------------------------------------

    def _err(self, text: str, style: str | None = None) -> None:
        """Text from the model (reasoning, commentary, tool lines) on stderr."""
        if text:
            self.screen.show(self.screen.err, text, style)
            self._err_at_line_start = text.endswith("\n")

    def _err_newline(self) -> None:
        if not self._err_at_line_start:
            self._err("\n")

    def _err_line(self, text: str, style: str | None = None) -> None:
        self._clear_status()
        self._err_newline()
        self._err(text + "\n", style)

    def _status(self, text: str) -> None:
        self.screen.write(self.screen.err, f"\r\x1b[2K{text}", "dim")
        self._status_shown = True

    def _clear_status(self) -> None:
        if self._status_shown:
            self.screen.err.file.write("\r\x1b[2K")
            self.screen.err.file.flush()
            self._status_shown = False
