"""``ossrun models``, ``ossrun pull`` and ``ossrun rm``: the registry and the models on disk."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer


class Layout(str, Enum):
    hf = "hf"
    original = "original"


def list_models() -> None:
    """List the known models and their copies on disk (path, size, verified).

    Example: ossrun models
    """
    from ossrun.store.local import CONVERTED, local_copies, partial_bytes
    from ossrun.store.registry import load_registry, user_file
    from ossrun.units import format_count, format_memory, format_size

    registry = load_registry()
    header = ("NAME", "ALIASES", "PARAMETERS", "CONTEXT", "DOWNLOAD", "MEMORY", "ON DISK")
    rows, details = [], []
    for entry in registry.entries.values():
        copies = local_copies(entry)
        partial = partial_bytes(entry)
        download = entry.download_bytes
        rows.append(
            (
                entry.name + (" *" if entry.name == registry.default else ""),
                ", ".join(registry.aliases_of(entry.name)) or "-",
                f"{format_count(entry.parameters_total)} ({format_count(entry.parameters_active)} active)",
                str(entry.context_length),
                format_size(download),
                format_memory(entry.memory_bytes),
                "yes" if copies else ("partial" if partial else "no"),
            )
        )
        for copy in copies:
            if copy.source == CONVERTED:
                state = "converted from safetensors"
            else:
                state = "verified" if copy.verified else "not checked yet (checked on first use)"
            details.append(f"{entry.name}: {copy.files[0]}  {format_size(copy.size_bytes)}  {state}")
        if partial and not copies:
            details.append(f"{entry.name}: partial download, {format_size(partial)}: `ossrun pull {entry.name}` resumes it")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    if details:
        typer.echo("")
        for line in details:
            typer.echo(line)
    typer.echo(f"\n* default model. Your own entries and overrides: {user_file()}")


def pull(
    name: Annotated[
        str | None, typer.Argument(metavar="NAME", help="Registry name or alias (default: the default model).")
    ] = None,
    from_safetensors: Annotated[
        bool,
        typer.Option("--from-safetensors", help="Download the published safetensors and convert them locally."),
    ] = False,
    layout: Annotated[
        Layout,
        typer.Option(help="With --from-safetensors: the repo root's layout (hf) or OpenAI's (original/)."),
    ] = Layout.hf,
) -> None:
    """Download a model, verified against the hub's published hashes.

    Prints the path of the model file on stdout; progress goes to stderr. An interrupted
    download resumes where it stopped. Models are listed in models.toml; a models.toml in
    the ossrun home ($OSSRUN_HOME) can add entries and aliases or override fields.

    Examples: ossrun pull 20b; ossrun pull gpt-oss-20b --from-safetensors
    """
    from ossrun.store.pull import pull as pull_model
    from ossrun.terminal.progress import file_steps

    with file_steps() as progress:
        model = pull_model(name, from_safetensors=from_safetensors, layout=layout.value, progress=progress)
    typer.echo(str(model.path))


def remove(name: Annotated[str, typer.Argument(metavar="NAME", help="Registry name or alias.")]) -> None:
    """Delete a model's local copies (pulled or converted) and partial downloads.

    Example: ossrun rm 20b
    """
    from ossrun.store.local import remove_model

    for path in remove_model(name):
        typer.echo(f"removed {path}")


def register(app: typer.Typer) -> None:
    app.command("models")(list_models)
    app.command("pull")(pull)
    app.command("rm")(remove)
