"""Renderers: streamed markdown equals a one-shot render at bounded cost; event transcripts; streams; colour."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console
from rich.text import Text

from ossrun.events import (
    CommentaryDelta,
    Done,
    FinalDelta,
    Notice,
    Prefill,
    ReasoningDelta,
    Reply,
    Timings,
    ToolCall,
    ToolResult,
    Usage,
)
from ossrun.terminal import markdown_stream
from ossrun.terminal.display import Screen, TurnView, stats_line, visible
from ossrun.terminal.markdown_stream import AlignedMarkdown, MarkdownStream

WIDTH, HEIGHT = 72, 24

DOC = (
    """# Sorting in Python

Python offers two ways to sort: `sorted()` and `list.sort()`.
The first returns a **new** list, the second works *in place*.

Key points:
- `sorted()` takes any iterable
- `list.sort()` only lists
- both are stable

Steps:
"""
    + "".join(f"{n}. step number {n}\n" for n in range(1, 13))
    + """
Here is code:
```python
def double(x):
    return x * 2

print(double(3))
```

> A quote that
> spans two lines.

## A long fence
```python
"""
    + "".join(f"value_{n} = {n}\n" if n % 9 else "\n" for n in range(120))
    + """```
Words right after the fence.

Last paragraph, with no newline at the end."""
)


def tokens(text: str) -> list[str]:
    """Roughly how a model streams: words with their leading spaces, newlines on their own."""
    return re.findall(r"\n|[^\S\n]*[^\s]+|[^\S\n]+", text)


def terminal(buffer: io.StringIO, color: str | None = None) -> Console:
    return Console(file=buffer, width=WIDTH, height=HEIGHT, force_terminal=True, color_system=color)


def lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.strip("\n").split("\n")]


def cells(text: str) -> list[list[tuple[str, tuple[str, ...]]]]:
    """Each line as (character, styles) cells: equal screens compare equal however the codes are split."""
    screen = []
    for line in text.strip("\n").split("\n"):
        styled = Text.from_ansi(line)
        styles = [[] for _ in styled.plain]
        for span in styled.spans:
            for index in range(span.start, span.end):
                styles[index].append(str(span.style))
        screen.append([(char, tuple(sorted(style))) for char, style in zip(styled.plain, styles, strict=True)])
    return screen


@pytest.mark.parametrize("color", [None, "truecolor"])
def test_streamed_blocks_match_a_one_shot_render(color):
    whole = io.StringIO()
    terminal(whole, color).print(AlignedMarkdown(DOC))
    streamed = io.StringIO()
    stream = MarkdownStream(terminal(streamed, color), refresh_seconds=float("inf"))  # commits only, no live tail
    for piece in tokens(DOC):
        stream.feed(piece)
    stream.close()
    assert cells(streamed.getvalue()) == cells(whole.getvalue())


def test_blocks_are_printed_as_soon_as_they_are_final():
    out = io.StringIO()
    stream = MarkdownStream(terminal(out), refresh_seconds=float("inf"))
    stream.feed("First paragraph.\n\n")
    assert out.getvalue() == ""  # an indented line could still continue it
    stream.feed("Second")
    assert "First paragraph." in out.getvalue() and "Second" not in out.getvalue()
    stream.feed(" paragraph.\n\n- item one\n")
    assert "Second paragraph." in out.getvalue() and "item one" not in out.getvalue()
    stream.feed("- item two\n")
    assert "item one" in out.getvalue() and "item two" not in out.getvalue()
    stream.feed("```text\n" + "code line\n" * (markdown_stream.CODE_LIVE_MAX + 5))
    printed = out.getvalue().count("code line")
    assert 0 < printed <= markdown_stream.CODE_LIVE_MAX + 5 - markdown_stream.CODE_LIVE_KEEP
    stream.close()
    assert out.getvalue().count("code line") == markdown_stream.CODE_LIVE_MAX + 5


def test_live_repaints_cost_the_tail_not_the_answer():
    """Repainting after every token writes a bounded amount, the same for the second copy of a text as the first."""
    out = io.StringIO()
    stream = MarkdownStream(terminal(out, "truecolor"), refresh_seconds=0)
    copies = 2
    written = []
    for _ in range(copies):
        start = out.tell()
        for piece in tokens(DOC + "\n\n"):
            before = out.tell()
            stream.feed(piece)
            assert out.tell() - before < 40 * WIDTH * HEIGHT  # at most a screenful of styled cells
        written.append(out.tell() - start)
    stream.close()
    assert written[-1] < 1.1 * written[0], written


def reply(**kwargs) -> Reply:
    fields = dict(
        reasoning="Think.",
        final="Hello **world**",
        finish_reason="stop",
        usage=Usage(100, 60, 12),
        timings=Timings(0.5, 0.4, 40, 12),
        context_used=112,
        context_size=8192,
    )
    fields.update(kwargs)
    return Reply(**fields)


EVENTS = [
    Prefill(40),
    ReasoningDelta("Think"),
    ReasoningDelta("."),
    FinalDelta("Hello "),
    Notice("something odd"),
    FinalDelta("**world**"),
    Done(reply()),
]
STATS = "prompt 100 tokens (40 new) · prefill 80.0 tok/s · decode 12 tokens at 30.0 tok/s · context 112/8192 (1%)"


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("show", f"thinking\nThink.\n\nHello \nnote: something odd\n**world**\n{STATS}\n"),
        ("hide", f"thought for 2 tokens\nHello \nnote: something odd\n**world**\n{STATS}\n"),
        ("off", f"Hello \nnote: something odd\n**world**\n{STATS}\n"),
    ],
)
def test_turn_transcript(mode, expected):
    both = io.StringIO()
    with TurnView(Screen.create(both, both), reasoning=mode) as view:
        for event in EVENTS:
            view.handle(event)
    assert both.getvalue() == expected


def test_answer_to_stdout_everything_else_to_stderr():
    out, err = io.StringIO(), io.StringIO()
    with TurnView(Screen.create(out, err)) as view:
        for event in [
            ReasoningDelta("Hmm."),
            CommentaryDelta("Checking."),
            ToolCall("functions.f", "{}"),
            FinalDelta("The answer."),
            Notice("n"),
            Done(reply()),
        ]:
            view.handle(event)
    assert out.getvalue() == "The answer.\n"
    assert err.getvalue() == f"thinking\nHmm.\n\nChecking.\n→ f({{}})\nnote: n\n{STATS}\n"


def test_answer_can_be_left_to_the_caller():
    out, err = io.StringIO(), io.StringIO()
    with TurnView(Screen.create(out, err), reasoning="off", answer=False, stats=False) as view:
        for event in EVENTS:
            view.handle(event)
    assert out.getvalue() == ""
    assert err.getvalue() == "note: something odd\n"


@pytest.mark.parametrize("mode", ["show", "hide", "off"])
def test_a_status_line_says_the_prompt_is_being_read_until_output_arrives(mode):
    err = io.StringIO()
    with TurnView(Screen(terminal(io.StringIO()), terminal(err)), reasoning=mode) as view:
        view.handle(Prefill(14080))
        assert "reading 14080 prompt tokens…" in err.getvalue()
        shown = len(err.getvalue())
        view.handle(ReasoningDelta("Hmm"))
    assert err.getvalue()[shown:].startswith("\r\x1b[2K")  # the status line is wiped by the first output


def test_markdown_on_a_terminal_plain_text_elsewhere():
    piped = io.StringIO()
    with TurnView(Screen.create(piped, io.StringIO())) as view:
        view.handle(FinalDelta("Some **bold** text"))
    assert piped.getvalue() == "Some **bold** text\n"
    tty = io.StringIO()
    screen = Screen(terminal(tty), terminal(io.StringIO()))
    with TurnView(screen) as view:
        view.handle(FinalDelta("Some **bold** text"))
    visible = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", tty.getvalue())
    assert "Some bold text" in visible and "**" not in visible


def test_no_color_keeps_colour_codes_off(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    err = io.StringIO()
    screen = Screen(terminal(io.StringIO(), "truecolor"), Console(file=err, force_terminal=True, color_system="truecolor"))
    screen.notice("careful")
    screen.error("broken")
    assert "careful" in err.getvalue() and "broken" in err.getvalue()
    assert not re.search(r"\x1b\[[0-9;]*3[0-9]", err.getvalue())  # no foreground colour


def test_stats_line_when_everything_was_cached():
    line = stats_line(reply(usage=Usage(50, 50, 3), timings=Timings(0.0, 0.1, 0, 3), context_used=53, context_size=4096))
    assert line == "prompt 50 tokens (0 new) · prefill cached · decode 3 tokens at 30.0 tok/s · context 53/4096 (1%)"


OSC52 = "\x1b]52;c;aGFja2Vk\x07"  # writes the clipboard
REWRITE = "\r\x1b[2K\x1b[1A\x1b[2K"  # carriage return, erase the line, up one, erase it
STYLING = re.compile(r"\x1b\[[0-9;]*m")  # rich's own colours and dimming


def test_control_characters_from_the_model_and_its_code_are_shown_not_obeyed_on_a_terminal():
    code = f"print('safe')\nprint({OSC52!r}){REWRITE}import os; os.system('rm -rf ~')  # \u202e hidden\x0cpage"
    events = [
        ReasoningDelta(f"plan{OSC52}"),
        CommentaryDelta(f"note{REWRITE}"),
        ToolCall("python", code),
        ToolResult(ToolCall("python", code), f"out{OSC52}\x1b[31mred\x08\x7f"),
        Notice(f"odd{REWRITE}"),
        FinalDelta(f"The answer{OSC52} is{REWRITE} here."),
    ]
    for color in (None, "truecolor"):
        out, err = io.StringIO(), io.StringIO()
        with TurnView(Screen(terminal(out, color), terminal(err, color)), stats=False) as view:
            for event in events:
                view.handle(event)
        live = re.compile(r"\x1b\[(\?25[lh]|2K|1A)|\r")  # the live answer's own: cursor hidden and shown, lines redrawn
        for bare in (STYLING.sub("", live.sub("", out.getvalue())), STYLING.sub("", err.getvalue())):
            assert "\x1b" not in bare and "\x07" not in bare and "\r" not in bare and "\x08" not in bare
            assert "\u202e" not in bare and "\x0c" not in bare
        shown = STYLING.sub("", err.getvalue())
        # The code is shown whole, each of its lines under "→ python", its controls written out.
        assert (
            "→ python\n  print('safe')\n  print('\\x1b]52;c;aGFja2Vk\\x07')\\x0d\\x1b[2K\\x1b[1A\\x1b[2Kimport os; "
            "os.system('rm -rf ~')  # \\u202e hidden\\x0cpage\n"
        ) in shown
        assert "plan\\x1b]52;c;aGFja2Vk\\x07" in shown and "← python: out\\x1b]52;c;aGFja2Vk\\x07\\x1b[31mred\\x08\\x7f" in shown
        assert "note: odd\\x0d\\x1b[2K\\x1b[1A\\x1b[2K" in shown
        answer = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
        assert "The answer\\x1b]52;c;aGFja2Vk\\x07 is\\x0d\\x1b[2K\\x1b[1A\\x1b[2K here." in answer


def test_control_characters_stay_as_they_are_off_a_terminal():
    out, err = io.StringIO(), io.StringIO()
    with TurnView(Screen.create(out, err), stats=False) as view:
        for event in [ReasoningDelta(f"plan{OSC52}"), ToolCall("python", f"print(1){REWRITE}"), FinalDelta(f"answer{OSC52}")]:
            view.handle(event)
    assert out.getvalue() == f"answer{OSC52}\n"
    assert f"plan{OSC52}" in err.getvalue() and f"→ python\n  print(1){REWRITE}\n" in err.getvalue()


def test_visible_writes_out_what_a_terminal_would_obey():
    assert visible("a\tb\nc") == "a\tb\nc"
    assert visible("\x1b[2J\r\x00\x9b\u2028\u2066x") == "\\x1b[2J\\x0d\\x00\\x9b\\u2028\\u2066x"
    assert visible("café ☕ 中文 👍🏽") == "café ☕ 中文 👍🏽"
