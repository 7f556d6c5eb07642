"""``ossrun batch``: requests in OpenAI's Batch API format (JSON Lines) answered offline."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from ossrun.cli import options as opt
from ossrun.defaults import DEFAULT_SERVE_PARALLEL

INTERRUPTED_EXIT_CODE = 130

HELP = """Answer a file of requests in OpenAI's Batch API format, offline.

Each line of IN.jsonl is {"custom_id", "method": "POST", "url": "/v1/chat/completions",
"/v1/responses" or "/v1/messages" (Anthropic's Messages API), "body"}; each line of OUT.jsonl is {"id", "custom_id", "response":
{"status_code", "body"}, "error"}, written as soon as it is done. Run it again with the
same OUT to go on after a crash or Ctrl-C: lines already answered are skipped, lines that
ended in an error are done again. The loaded model answers every line, whatever model its
body names; --parallel lines are decoded together.

Examples:

\b
  ossrun batch requests.jsonl -o answers.jsonl
  ossrun batch requests.jsonl -o answers.jsonl --demo --parallel 8
"""


def register(app: typer.Typer) -> None:
    @app.command("batch", help=HELP, no_args_is_help=True)
    def batch_command(
        input_path: Annotated[
            Path, typer.Argument(metavar="IN.jsonl", help="The requests, one JSON object per line.", show_default=False)
        ],
        output: Annotated[
            Path, typer.Option("-o", "--output", metavar="OUT.jsonl", help="Where the answers go.", show_default=False)
        ],
        model_argument: opt.ModelArgument = None,
        model: opt.ModelOption = None,
        demo: opt.Demo = False,
        parallel: Annotated[
            int, typer.Option("--parallel", min=1, max=64, help="Lines decoded together.")
        ] = DEFAULT_SERVE_PARALLEL,
        reasoning_effort: opt.ReasoningEffort = None,
        ctx: Annotated[
            str,
            typer.Option(
                "--ctx",
                metavar="auto|TOKENS",
                callback=opt.parse_ctx,
                help="KV cells the lines in flight share; auto: the most that fit in memory.",
            ),
        ] = "auto",
        kv_type: opt.KvType = opt.DEFAULT_KV_TYPE,
        swa_full: opt.SwaFull = False,
        threads: opt.Threads = None,
        verbose: opt.Verbose = False,
        pull: opt.Pull = False,
        rpc: opt.Rpc = None,
    ) -> None:
        from ossrun.server.batch import Batch, read_input
        from ossrun.server.served import ServedModel
        from ossrun.terminal.display import Screen

        screen = Screen.create()
        lines = read_input(input_path)  # duplicate custom_ids stop it here, before the model loads
        if not output.parent.is_dir():
            raise typer.BadParameter(f"the folder {output.parent} does not exist", param_hint="--output")
        loaded = opt.load_model(
            opt.pick_model(model_argument, model, demo),
            ctx=ctx,
            threads=threads,
            verbose=verbose,
            pull=pull,
            parallel=parallel,
            rpc=rpc,
            kv_type=kv_type,
            swa_full=swa_full,
        )
        try:
            effort = opt.effort(reasoning_effort) or loaded.reasoning_effort
            served = ServedModel(name=loaded.name, default_effort=effort, created=int(time.time()), any_model=True)
            for line in lines:
                if line.problem:
                    screen.error(line.problem)
            batch = Batch(loaded, served, output, parallel=parallel)
            summary = _run(batch, lines, screen)
        finally:
            loaded.close()
        screen.info(summary.line(output), None)
        if summary.interrupted:
            raise typer.Exit(INTERRUPTED_EXIT_CODE)


def _run(batch, lines, screen):
    from ossrun.terminal.progress import counting

    with counting("batch", len(lines), screen.err) as update:
        if update is None:
            return batch.run(lines)

        def progress(summary) -> None:
            rate = f"{summary.completion_tokens / summary.seconds:.1f} tokens/s" if summary.seconds else ""
            update(summary.skipped + summary.done + summary.failed, rate)

        return batch.run(lines, progress)
