"""``ossrun run``: one prompt, one answer, for scripts."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Annotated, Any

import typer

from ossrun.cli import options as opt
from ossrun.defaults import DEFAULT_CTX, DEFAULT_MAX_TOOL_ROUNDS
from ossrun.errors import OssrunError

INTERRUPTED_EXIT_CODE = 130  # what shells report for a command ended by Ctrl-C

HELP = """Answer one prompt and exit: the answer on stdout, everything else on stderr.

PROMPT "-" reads the prompt from stdin. --json prints one object instead:
model, reasoning_effort, reasoning, final, finish_reason (stop, length,
interrupted, or tool_calls when --max-tool-rounds stopped it), usage
{prompt_tokens, cached_tokens, completion_tokens}, timings {prefill_tps,
decode_tps} and tool_calls [{name, arguments, result, error, and server for
an MCP server's tool}]. Ctrl-C stops the answer and exits with 130.

--functions FILE.py, --tool python and --mcp FILE give the model tools (see
ossrun chat --help). Each python run and MCP call is confirmed on the terminal;
without a terminal, --tool python and MCP servers not trusted need --yes.

Examples:

\b
  ossrun run "Why is the sky blue?"
  ossrun run --demo "What is 23 + 45?"
  git diff | ossrun run -r high --system "Review this patch." -
  ossrun run -m ./my-model.gguf --json --seed 1 "Name three primes" | jq .final
  ossrun run --show-prompt "Hello"
  ossrun run --tool python --yes "What is the 50th Fibonacci number?"
  ossrun run --mcp mcp.json --yes --json "Weather in Oslo?" | jq .tool_calls
"""


def read_prompt(prompt: str, notice: Any = None) -> str:
    """The prompt argument, or stdin for "-"; bytes that are not UTF-8 are replaced, with a notice."""
    if prompt == "-":
        stream = getattr(sys.stdin, "buffer", None)  # the bytes, where stdin is not a text stream of its own
        text = stream.read().decode("utf-8", "surrogateescape") if stream is not None else sys.stdin.read()
        what = "the prompt on stdin"
    else:
        text, what = prompt, "the prompt"
    text = opt.utf8_text(text, what, notice or (lambda message: None))
    if not text.strip():
        raise OssrunError("the prompt is empty: give it as an argument, or pipe it in with -")
    return text


def reply_json(model_name: str, effort: str, reply: Any, tools: Any = None) -> dict[str, Any]:
    """The one object ``--json`` prints (a call to an MCP server's tool names the server)."""

    def call(result: Any) -> dict[str, Any]:
        entry = {"name": result.call.name, "arguments": result.call.arguments, "result": result.output, "error": result.error}
        server = tools.server_of(result.call.recipient) if tools is not None else None
        return {**entry, "server": server} if server is not None else entry

    return {
        "model": model_name,
        "reasoning_effort": effort,
        "reasoning": reply.reasoning,
        "final": reply.final,
        "finish_reason": reply.finish_reason,
        "usage": reply.usage.to_dict(),
        "timings": reply.timings.to_dict(),
        "tool_calls": [call(result) for result in reply.tool_calls],
    }


def confirm_on_terminal(call: Any, tools: Any = None) -> bool:
    """Ask on the terminal before the model's code runs or an MCP tool is called (the call was just shown
    on stderr); Ctrl-C ends the command."""
    from ossrun.terminal.interrupt import sigint_raises
    from ossrun.terminal.repl import confirm_prompt

    with sigint_raises():
        sys.stderr.write(confirm_prompt(tools, call))
        sys.stderr.flush()
        answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def refuse_to_ask(tools: list[str], mcp: list[Any]) -> None:
    """Without a terminal nobody can say yes: the python tool and MCP servers not trusted need --yes."""
    from ossrun.tools.mcp_config import read_configs

    if "python" in tools:
        raise OssrunError(
            "--tool python asks before each run of the model's code and there is no terminal "
            "to ask on: add --yes to let it run without asking"
        )
    asking = [server.name for server in read_configs(mcp) if not server.trust] if mcp else []
    if asking:
        raise OssrunError(
            f"MCP server {asking[0]!r} asks before each call and there is no terminal to ask on: "
            'add --yes, or "trust": true to the server\'s configuration, to let its tools run without asking'
        )


def register(app: typer.Typer) -> None:
    @app.command("run", help=HELP, no_args_is_help=True)
    def run_command(
        prompt: Annotated[
            str, typer.Argument(metavar="PROMPT", help='The prompt, or "-" to read it from stdin.', show_default=False)
        ],
        model: opt.ModelOption = None,
        demo: opt.Demo = False,
        reasoning_effort: opt.ReasoningEffort = None,
        system: opt.System = None,
        show_reasoning: Annotated[bool, typer.Option("--show-reasoning", help="Stream the reasoning to stderr.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object with the reply and its stats.")] = False,
        show_prompt: Annotated[
            bool, typer.Option("--show-prompt", help="Print the rendered harmony prompt and exit without generating.")
        ] = False,
        temperature: opt.Temperature = None,
        top_p: opt.TopP = None,
        seed: opt.Seed = None,
        max_tokens: opt.MaxTokens = None,
        ctx: opt.Ctx = DEFAULT_CTX,
        kv_type: opt.KvType = opt.DEFAULT_KV_TYPE,
        swa_full: opt.SwaFull = False,
        threads: opt.Threads = None,
        verbose: opt.Verbose = False,
        pull: opt.Pull = False,
        rpc: opt.Rpc = None,
        functions: opt.Functions = None,
        tool: opt.Tool = None,
        mcp: opt.Mcp = None,
        mcp_timeout: opt.McpTimeout = None,
        yes: opt.Yes = False,
        max_tool_rounds: opt.MaxToolRounds = DEFAULT_MAX_TOOL_ROUNDS,
    ) -> None:
        from ossrun.events import Done
        from ossrun.terminal.display import ReasoningMode, Screen, TurnView
        from ossrun.terminal.interrupt import cancel_on_sigint

        screen = Screen.create()
        messages = [{"role": "user", "content": read_prompt(prompt, screen.notice)}]
        if system is not None:
            system = opt.utf8_text(system, "--system", screen.notice)
        if not (yes or show_prompt or sys.stdin.isatty()):
            refuse_to_ask(tool or [], mcp or [])
        tools = opt.toolbox(functions, tool, mcp, mcp_timeout)
        settings = dataclasses.replace(
            opt.sampling(temperature, top_p, seed, max_tokens),
            reasoning_effort=opt.effort(reasoning_effort),
            system=system,
            tools=tools,
            max_tool_rounds=max_tool_rounds,
        )
        try:
            loaded = opt.load_model(
                opt.pick_model(None, model, demo),
                ctx=ctx,
                threads=threads,
                verbose=verbose,
                pull=pull,
                rpc=rpc,
                kv_type=kv_type,
                swa_full=swa_full,
            )
        except BaseException:
            tools.close()
            raise
        try:
            if show_prompt:
                typer.echo(loaded.decode(loaded.render(messages, settings)))
                return
            for text in tools.notices():
                screen.notice(text)
            confirm = (lambda call: confirm_on_terminal(call, tools)) if tools.asks() and not yes else None
            reasoning: ReasoningMode = "show" if show_reasoning and not as_json else "off"
            with TurnView(screen, reasoning=reasoning, answer=not as_json, stats=False) as view, cancel_on_sigint() as cancel:
                for event in loaded.stream(messages, settings, cancel=cancel, confirm=confirm):
                    view.handle(event)
                    if isinstance(event, Done):
                        reply = event.reply
        finally:
            loaded.close()
            tools.close()
        if as_json:
            effort = opt.effort(reasoning_effort) or loaded.reasoning_effort
            typer.echo(json.dumps(reply_json(loaded.name, effort, reply, tools), ensure_ascii=False))
        if reply.finish_reason == "interrupted":
            screen.info("interrupted", None)
            raise typer.Exit(INTERRUPTED_EXIT_CODE)
