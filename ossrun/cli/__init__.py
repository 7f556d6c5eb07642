"""The ``ossrun`` command line: a thin Typer layer over the ossrun library.

Each command lives in its own module and only parses options and calls the
library. Errors take one path: :func:`main` turns them into one line on stderr.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Annotated

import typer

from ossrun import __version__
from ossrun.errors import OssrunError

app = typer.Typer(
    name="ossrun",
    help="Run OpenAI's open-weight gpt-oss models locally on CPUs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"ossrun {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Show the version and exit."),
    ] = None,
) -> None:
    """Run OpenAI's open-weight gpt-oss models locally on CPUs."""


def _register_commands() -> None:
    # One module per command, each with a register(app) function.
    from ossrun.cli import batch, chat, convert, models, plan, run, serve, worker

    for module in (chat, run, serve, batch, plan, convert, models, worker):
        module.register(app)


_register_commands()


def debug_enabled() -> bool:
    return os.environ.get("OSSRUN_DEBUG", "") not in ("", "0")


def describe_error(exc: BaseException) -> str:
    """The one line a user sees for an error that reached :func:`main`."""
    if isinstance(exc, OssrunError):
        return str(exc)
    if isinstance(exc, OSError):
        if exc.errno == errno.ENOSPC:
            where = f" writing {exc.filename}" if exc.filename else ""
            return f"the disk is full{where}: free some space and try again"
        reason = exc.strerror or str(exc)
        return f"{reason}: {exc.filename}" if exc.filename else reason
    if isinstance(exc, MemoryError):
        return "out of memory: close other programs or use a smaller model or context"
    return f"unexpected {type(exc).__name__}: {exc} (set OSSRUN_DEBUG=1 to see the traceback)"


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``ossrun`` console script.

    Ctrl-C never gets here: Typer turns a KeyboardInterrupt in a command into exit code 130.
    """
    try:
        app(args=argv, prog_name="ossrun")
    except Exception as exc:  # the single place errors become messages
        if debug_enabled():
            raise
        sys.stderr.write(f"error: {describe_error(exc)}\n")
        sys.exit(getattr(exc, "exit_code", 1))
