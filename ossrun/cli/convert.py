"""``ossrun convert``: a gpt-oss safetensors checkpoint to one GGUF file."""

from __future__ import annotations

import enum
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Annotated

import typer


class OutType(str, enum.Enum):
    """--outtype choices, kept in step with ossrun.convert.OUTTYPES (a test checks); listed here
    so that --help does not import numpy and gguf."""

    q8_0 = "q8_0"
    bf16 = "bf16"
    f16 = "f16"
    f32 = "f32"


HELP = """Convert a gpt-oss checkpoint (safetensors) into one GGUF file llama.cpp loads.

SRC is a folder in either published layout: the Hugging Face one (the repository root) or
OpenAI's original/ one, whose tokenizer files are read from the parent folder or --tokenizer.
Experts keep their MXFP4 bits; the other matrices are Q8_0 unless --outtype says otherwise.

Examples:

  ossrun convert ~/models/gpt-oss-20b -o gpt-oss-20b.gguf

  ossrun convert gpt-oss-20b/original -o gpt-oss-20b-bf16.gguf --outtype bf16
"""


def progress_reporter(label: str) -> AbstractContextManager[Callable[[int, int], None] | None]:
    """A progress bar (bytes, rate, ETA) on a terminal; nothing animated otherwise (tests replace it)."""
    from ossrun.terminal.progress import transfer

    return transfer(label)


def register(app: typer.Typer) -> None:
    @app.command("convert", help=HELP, no_args_is_help=True)
    def convert_command(
        src: Annotated[Path, typer.Argument(help="Checkpoint folder (HF layout or original/).", show_default=False)],
        out: Annotated[Path, typer.Option("-o", "--out", help="The GGUF file to write.", show_default=False)],
        outtype: Annotated[OutType, typer.Option(help="Type of the non-expert matrices.")] = OutType.q8_0,
        tokenizer: Annotated[
            Path | None,
            typer.Option(help="Folder with tokenizer.json (default: SRC, or its parent for original/).", show_default=False),
        ] = None,
        force: Annotated[bool, typer.Option("--force", help="Overwrite OUT if it exists.")] = False,
    ) -> None:
        from ossrun.convert import convert
        from ossrun.units import format_size

        started = time.monotonic()
        with progress_reporter("converting") as progress:
            written = convert(src, out, outtype=outtype.value, tokenizer_dir=tokenizer, force=force, progress=progress)
        seconds = time.monotonic() - started
        size = written.stat().st_size
        sys.stderr.write(f"wrote {format_size(size)} in {seconds:.1f} s ({format_size(int(size / max(seconds, 1e-3)))}/s)\n")
        typer.echo(str(written))
