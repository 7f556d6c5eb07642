"""``ossrun chat``: talk with a model in the terminal."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ossrun.cli import options as opt
from ossrun.defaults import DEFAULT_CTX, DEFAULT_MAX_TOOL_ROUNDS

HELP = """Chat with a gpt-oss model in the terminal.

The model's reasoning streams dimmed under "thinking", then the answer as markdown,
then a line of stats. Type /help in the chat for the commands (/effort, /system,
/retry, /save, /load, ...). Ctrl-C stops an answer; Ctrl-D leaves.

--functions FILE.py lets the model call the file's public functions (their type
hints and docstrings describe them to it); --tool python lets it run Python code
in a sandbox; --mcp FILE gives it the tools of the MCP servers configured there
(they start first and stop with the chat; /tools lists what is offered). Each
call and its result are shown dimmed, and each python run and MCP call waits for
your "y" unless --yes is given (or the server's "trust" is true).

Examples:

\b
  ossrun chat
  ossrun chat --demo
  ossrun chat gpt-oss-120b -r high
  ossrun chat -m ./my-model.gguf --system "Answer in French." --hide-reasoning
  ossrun chat --functions my_tools.py --tool python
  ossrun chat --mcp mcp.json
  ossrun chat gpt-oss-120b --rpc 127.0.0.1:50052=20GiB,127.0.0.1:50053=20GiB
"""


def register(app: typer.Typer) -> None:
    @app.command("chat", help=HELP)
    def chat_command(
        model_argument: opt.ModelArgument = None,
        model: opt.ModelOption = None,
        demo: opt.Demo = False,
        reasoning_effort: opt.ReasoningEffort = None,
        hide_reasoning: Annotated[
            bool, typer.Option("--hide-reasoning", help='Show "thought for N tokens" instead of the reasoning.')
        ] = False,
        system: opt.System = None,
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
        from ossrun.terminal.conversation import Conversation
        from ossrun.terminal.display import Screen
        from ossrun.terminal.repl import Repl, StreamReader, TerminalReader

        name = opt.pick_model(model_argument, model, demo)
        tools = opt.toolbox(functions, tool, mcp, mcp_timeout)  # a bad --functions file or MCP server fails first
        try:
            screen = Screen.create()
            if system is not None:
                system = opt.utf8_text(system, "--system", screen.notice)
            if name is None and not pull:  # the default model, or the demo until it is downloaded
                name, notice = opt.default_model_or_demo()
                if notice:
                    screen.notice(notice)
            loaded = opt.load_model(
                name, ctx=ctx, threads=threads, verbose=verbose, pull=pull, rpc=rpc, kv_type=kv_type, swa_full=swa_full
            )
        except BaseException:
            tools.close()
            raise
        try:
            effort = opt.effort(reasoning_effort) or loaded.reasoning_effort
            reader = TerminalReader() if sys.stdin.isatty() else StreamReader(sys.stdin)
            repl = Repl(
                loaded,
                screen,
                reader,
                conversation=Conversation(reasoning_effort=effort, system=system),
                reasoning="hide" if hide_reasoning else "show",
                sampling=opt.sampling(temperature, top_p, seed, max_tokens),
                tools=tools or None,
                max_tool_rounds=max_tool_rounds,
                confirm_python=not yes,
            )
            code = repl.run()
        finally:
            loaded.close()
            tools.close()
        raise typer.Exit(code)
