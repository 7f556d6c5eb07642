"""``ossrun run``: one prompt, one answer, for scripts."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from ossrun.cli import options as opt
from ossrun.errors import OssrunError

INTERRUPTED_EXIT_CODE = 130  # what shells report for a command ended by Ctrl-C

HELP = """Answer one prompt and exit: the answer on stdout, everything else on stderr.

PROMPT "-" reads the prompt from stdin. --json prints one object instead:
model, reasoning_effort, reasoning, final, finish_reason (stop, length or
interrupted), usage {prompt_tokens, cached_tokens, completion_tokens} and
timings {prefill_tps, decode_tps}. Ctrl-C stops the answer and exits with 130.

Examples:

\b
  ossrun run "Why is the sky blue?"
  git diff | ossrun run -r high --system "Review this patch." -
  ossrun run -m ./my-model.gguf --json --seed 1 "Name three primes" | jq .final
  ossrun run --show-prompt "Hello"
"""


def read_prompt(prompt: str) -> str:
    text = sys.stdin.read() if prompt == "-" else prompt
    if not text.strip():
        raise OssrunError("the prompt is empty: give it as an argument, or pipe it in with -")
    return text


def reply_json(model_name: str, effort: str, reply: Any) -> dict[str, Any]:
    """The one object ``--json`` prints."""
    return {
        "model": model_name,
        "reasoning_effort": effort,
        "reasoning": reply.reasoning,
        "final": reply.final,
        "finish_reason": reply.finish_reason,
        "usage": reply.usage.to_dict(),
        "timings": reply.timings.to_dict(),
    }


def register(app: typer.Typer) -> None:
    @app.command("run", help=HELP, no_args_is_help=True)
    def run_command(
        prompt: Annotated[str, typer.Argument(metavar="PROMPT", help='The prompt, or "-" to read it from stdin.', show_default=False)],
        model: opt.ModelOption = None,
        reasoning_effort: opt.ReasoningEffort = opt.DEFAULT_EFFORT,
        system: opt.System = None,
        show_reasoning: Annotated[bool, typer.Option("--show-reasoning", help="Stream the reasoning to stderr.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object with the reply and its stats.")] = False,
        show_prompt: Annotated[
            bool, typer.Option("--show-prompt", help="Print the rendered harmony prompt and exit without generating.")
        ] = False,
        temperature: opt.Temperature = 1.0,
        top_p: opt.TopP = 1.0,
        seed: opt.Seed = None,
        max_tokens: opt.MaxTokens = None,
        ctx: opt.Ctx = opt.DEFAULT_CTX,
        threads: opt.Threads = None,
        verbose: opt.Verbose = False,
    ) -> None:
        from ossrun.display import Screen, TurnView
        from ossrun.events import Done
        from ossrun.interrupt import cancel_on_sigint

        messages = [{"role": "user", "content": read_prompt(prompt)}]
        settings = {"reasoning_effort": reasoning_effort, "system": system}
        loaded = opt.load_model(model, ctx=ctx, threads=threads, verbose=verbose)
        try:
            if show_prompt:
                typer.echo(loaded.decode(loaded.render(messages, **settings)))
                return
            screen = Screen.create()
            reasoning = "show" if show_reasoning and not as_json else "off"
            with TurnView(screen, reasoning=reasoning, answer=not as_json, stats=False) as view, \
                    cancel_on_sigint() as cancel:
                for event in loaded.stream(messages, cancel=cancel, **settings,
                                           **opt.sampling(temperature, top_p, seed, max_tokens)):
                    view.handle(event)
                    if isinstance(event, Done):
                        reply = event.reply
        finally:
            loaded.close()
        if as_json:
            typer.echo(json.dumps(reply_json(loaded.name, reasoning_effort, reply), ensure_ascii=False))
        if reply.finish_reason == "interrupted":
            screen.info("interrupted", None)
            raise typer.Exit(INTERRUPTED_EXIT_CODE)
