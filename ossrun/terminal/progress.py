"""Progress on stderr, one style for every front end: loading a model, a pull, a conversion, a batch.

A rich progress bar while stderr is a terminal (transient: the line is gone once the work is
done), nothing otherwise. The library never draws: it calls the function these yield.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from rich.console import Console


def _console(console: Console | None) -> Console:
    return console or Console(file=sys.stderr, highlight=False, markup=False, emoji=False)


@contextmanager
def _bar(
    label: str, columns: tuple[Any, ...], total: float | None, console: Console | None, transient: bool = True
) -> Iterator[Callable[..., None] | None]:
    console = _console(console)
    if not console.is_terminal:
        yield None
        return
    from rich.progress import Progress, TextColumn

    text = TextColumn(label.replace("{", "{{").replace("}", "}}"), markup=False)  # a file name is not a format
    with Progress(text, *columns, console=console, transient=transient) as bar:
        task = bar.add_task(label, total=total)
        yield lambda **fields: bar.update(task, **fields)


@contextmanager
def loading(name: str, console: Console | None = None) -> Iterator[Callable[[float], None] | None]:
    """The fraction of the weights llama.cpp has read (``ossrun.load``'s ``on_progress``).

    The bar appears with the first fraction: what comes before (finding the file, a ``--pull``
    download with its own lines, the memory checks) is not drawn over."""
    from rich.progress import BarColumn, TaskProgressColumn

    console = _console(console)
    if not console.is_terminal:
        yield None
        return
    with ExitStack() as stack:
        shown: list[Callable[..., None]] = []

        def show(fraction: float) -> None:
            if not shown:
                columns = (BarColumn(), TaskProgressColumn())
                update = stack.enter_context(_bar(f"loading {name}", columns, 1.0, console))
                assert update is not None  # a terminal, checked above
                shown.append(update)
            shown[0](completed=fraction)

        yield show


def _byte_columns() -> tuple[Any, ...]:
    from rich.progress import BarColumn, DownloadColumn, TimeRemainingColumn, TransferSpeedColumn

    return (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())


@contextmanager
def transfer(label: str, console: Console | None = None) -> Iterator[Callable[[int, int], None] | None]:
    """Bytes done of a total, with rate and time left (a conversion's ``progress``). The bar stays."""
    with _bar(label, _byte_columns(), None, console, transient=False) as update:
        yield None if update is None else lambda done, total: update(completed=done, total=total)


@contextmanager
def file_steps(console: Console | None = None) -> Iterator[Callable[[str, int, int], None] | None]:
    """Steps on files, each with its bytes done of a total (a pull's downloads, hash checks and
    conversion, a first use's hash check: ``FileProgress`` in ``ossrun.store``).

    Each step gets the bar of ``transfer`` when it starts; the bar stays once the step is done, and
    no bar is live between steps, so the lines said between them, and a load's bar, come after it."""
    console = _console(console)
    if not console.is_terminal:
        yield None
        return
    with ExitStack() as stack:
        current: list[tuple[str, ExitStack, Callable[..., None]]] = []

        def end() -> None:
            if current:
                current.pop()[1].close()

        def show(what: str, done: int, total: int) -> None:
            if current and current[0][0] != what:
                end()
            if not current:
                step = stack.enter_context(ExitStack())
                update = step.enter_context(_bar(what, _byte_columns(), total, console, transient=False))
                assert update is not None  # a terminal, checked above
                current.append((what, step, update))
            current[0][2](completed=done, total=total)
            if done >= total:
                end()

        yield show


@contextmanager
def counting(label: str, total: int, console: Console | None = None) -> Iterator[Callable[[int, str], None] | None]:
    """Items done of ``total``, with a rate the caller words (a batch's lines and tokens/s)."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    columns = (BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"), TimeRemainingColumn())
    with _bar(label, columns, total, console) as update:
        if update is not None:
            update(completed=0, rate="")
        yield None if update is None else lambda done, rate: update(completed=done, rate=rate)
