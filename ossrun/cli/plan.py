"""``ossrun plan``: what a model needs at each context size, and whether it fits this machine."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ossrun.cli import options as opt

HELP = """Show what loading a model takes at each context size, per KV cache type, and
whether it fits in the memory available now (a container's limit included).

Each figure is the memory plan ossrun checks before loading: the repacked expert
weights, the other weights, the KV cache at that context (the sliding-window layers
keep their window unless --swa-full), the context checkpoints of --parallel sequences,
and llama.cpp's buffers. The last line says what --ctx auto would choose. Only the
model file's header is read: nothing is loaded.

Examples:

\b
  ossrun plan
  ossrun plan --demo
  ossrun plan gpt-oss-120b --parallel 4
  ossrun plan --kv-type q8_0 --ctx 131072
"""


def register(app: typer.Typer) -> None:
    @app.command("plan", help=HELP)
    def plan_command(
        model_argument: opt.ModelArgument = None,
        model: opt.ModelOption = None,
        demo: opt.Demo = False,
        parallel: Annotated[
            int, typer.Option("--parallel", min=1, max=64, help="Sequences decoded together (as serve and batch's --parallel).")
        ] = 1,
        kv_type: Annotated[
            str | None,
            typer.Option(
                "--kv-type",
                metavar="f16|q8_0",
                show_default=False,
                help="One KV cache type [default: f16 and q8_0 side by side].",
            ),
        ] = None,
        swa_full: opt.SwaFull = False,
        ctx: Annotated[
            str | None,
            typer.Option(
                "--ctx", metavar="TOKENS", show_default=False, help="One context size [default: 4096 up to the model's limit]."
            ),
        ] = None,
    ) -> None:
        import ossrun

        kinds = [opt.parse_kv_type(kv_type)] if kv_type else list(opt.KV_TYPES)
        contexts = None
        if ctx is not None:
            tokens = opt.parse_ctx(ctx)
            if tokens == "auto":
                raise typer.BadParameter("give a number of tokens: the last line says what auto chooses", param_hint="--ctx")
            contexts = [tokens]
        report = ossrun.plan(
            opt.pick_model(model_argument, model, demo), parallel=parallel, kv_types=kinds, swa_full=swa_full, contexts=contexts
        )
        typer.echo(_available_line(report))
        names = [c.name for c in report.caches]
        header = ["context", *names]
        rows = [[str(n), *(_cell(report, p) for p in plans)] for n, plans in report.rows]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            typer.echo(
                "  ".join(
                    cell.rjust(width) if i == 0 else cell.ljust(width)
                    for i, (cell, width) in enumerate(zip(row, widths, strict=True))
                ).rstrip()
            )
        _, first = report.rows[-1]
        typer.echo(f"at {report.rows[-1][0]} tokens, {first[0].cache.name}: {first[0].describe()}")
        if report.available is not None:
            chosen = ", ".join(f"{n if n else 'nothing fits'} with {name}" for n, name in zip(report.auto, names, strict=True))
            typer.echo(f"--ctx auto: {chosen} (keeps {size(report.headroom)} of the available memory free)")


def size(n_bytes: int) -> str:
    """Memory with one decimal from 1 GiB up (12 GiB and 12.4 GiB differ here)."""
    from ossrun.units import format_memory

    return f"{n_bytes / 2**30:.1f} GiB" if n_bytes >= 2**30 else format_memory(n_bytes)


def _available_line(report: Any) -> str:
    sequences = f", {report.parallel} sequences" if report.parallel > 1 else ""
    if report.available is None:
        return f"{report.model}{sequences}: this machine does not say how much memory is available"
    container = f", the container's limit leaves {size(report.container)}" if report.container is not None else ""
    return f"{report.model}{sequences} on this machine: {size(report.available)} available{container}"


def _cell(report: Any, plan: Any) -> str:
    fits = report.fits(plan)
    verdict = "" if fits is None else (" fits" if fits else " does not fit")
    return f"{size(plan.total)}{verdict}"
