"""Benchmark the terminal renderer: time per token must stay flat as an answer grows.

Streams a long markdown answer (paragraphs, lists, code fences, quotes; about
``--tokens`` word-sized pieces) through ``ossrun.terminal.markdown_stream.MarkdownStream``
on a 100x40 truecolor terminal console writing to an in-memory buffer, and
reports the median and worst time per token in each tenth of the answer:

  * ``every token``: the live tail repainted after each token (the worst case);
  * ``default``: the shipped throttle (a repaint at most every 1/15 s);
  * ``whole re-render``: for contrast, the naive way, re-rendering the whole
    answer as markdown in a live region after each token (on a shorter answer,
    as it grows quadratically).

Flat means the last tenth costs about what the first tenth does.

    python benchmarks/render_benchmark.py --tokens 20000 --runs 3
"""

from __future__ import annotations

import argparse
import io
import re
import statistics
import time

from rich.console import Console
from rich.live import Live

from ossrun.terminal.markdown_stream import AlignedMarkdown, MarkdownStream

WIDTH, HEIGHT = 100, 40


def answer_pieces(target_tokens: int) -> list[str]:
    """A long, varied markdown answer split like a model streams it (words, spaces, newlines)."""
    sections, n = [], 0
    while True:
        n += 1
        sections.append(
            f"## Part {n}\n\n"
            f"Part {n} explains *why* the loop runs in **linear** time: each element is visited once, "
            f"and the `seen` set answers membership in constant time on average.\n\n"
            f"Steps:\n"
            + "".join(f"{i}. step {i} of part {n}, with `code` and more words\n" for i in range(1, 12))
            + "\n```python\n"
            + "".join(f"def f_{n}_{i}(x):\n    return x * {i}  # note {i}\n" for i in range(8))
            + "```\n\n> A quoted remark\n> on two lines.\n\n"
            + "- a bullet\n- another bullet with **bold**\n- a third\n\n"
        )
        pieces = re.findall(r"\n|[^\S\n]*[^\s]+|[^\S\n]+", "".join(sections))
        if len(pieces) >= target_tokens:
            return pieces[:target_tokens]


def terminal() -> Console:
    return Console(file=io.StringIO(), width=WIDTH, height=HEIGHT, force_terminal=True, color_system="truecolor")


def time_stream(pieces: list[str], refresh_seconds: float) -> list[float]:
    stream = MarkdownStream(terminal(), refresh_seconds=refresh_seconds)
    times = []
    for piece in pieces:
        start = time.perf_counter()
        stream.feed(piece)
        times.append(time.perf_counter() - start)
    stream.close()
    return times


def time_whole_rerender(pieces: list[str]) -> list[float]:
    console = terminal()
    text, times = "", []
    with Live(console=console, auto_refresh=False, vertical_overflow="visible") as live:
        for piece in pieces:
            start = time.perf_counter()
            text += piece
            live.update(AlignedMarkdown(text), refresh=True)
            times.append(time.perf_counter() - start)
    return times


def by_tenth(times: list[float]) -> list[tuple[float, float, float]]:
    """(median, mean, worst) milliseconds per token in each tenth of the answer."""
    size = len(times) // 10
    tenths = [times[i * size : (i + 1) * size] for i in range(10)]
    return [(statistics.median(t) * 1e3, statistics.fmean(t) * 1e3, max(t) * 1e3) for t in tenths]


def report(label: str, runs: list[list[float]]) -> None:
    tenths = [by_tenth(times) for times in runs]
    print(f"{label}: ms per token in each tenth of the answer (median over {len(runs)} runs)")
    for column, name in enumerate(("median", "mean", "worst")):
        values = [statistics.median(run[i][column] for run in tenths) for i in range(10)]
        ratio = values[-1] / values[0] if values[0] else float("nan")
        print(f"  {name:>6}: " + " ".join(f"{v:7.3f}" for v in values) + f"   last/first {ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=20000)
    parser.add_argument("--naive-tokens", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    pieces = answer_pieces(args.tokens)
    print(f"answer: {len(pieces)} pieces, {sum(map(len, pieces))} characters; terminal {WIDTH}x{HEIGHT}")
    report("every token", [time_stream(pieces, 0.0) for _ in range(args.runs)])
    report(
        "default throttle (1/15 s)", [time_stream(pieces, MarkdownStream(terminal()).refresh_seconds) for _ in range(args.runs)]
    )
    naive = pieces[: args.naive_tokens]
    report(f"whole re-render ({len(naive)} pieces)", [time_whole_rerender(naive) for _ in range(args.runs)])


if __name__ == "__main__":
    main()
