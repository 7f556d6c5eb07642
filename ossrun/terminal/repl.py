"""The chat REPL: read a question, stream the answer, keep the conversation.

Built on the public ``Model`` API only (``stream``, ``pending_tokens``), the
``Conversation`` state and the ``display`` renderers. Input and output are
injected, so the whole loop runs in tests from a string of input lines.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, TextIO

from ossrun import home as ossrun_home
from ossrun.defaults import DEFAULT_MAX_TOOL_ROUNDS
from ossrun.errors import OssrunError
from ossrun.events import Done, Reply, ToolCall
from ossrun.options import ReplyOptions
from ossrun.terminal.conversation import Conversation
from ossrun.terminal.display import ReasoningMode, Screen, TurnView, stats_line
from ossrun.terminal.interrupt import cancel_on_sigint, sigint_raises, sigint_reaches_input
from ossrun.tools import FunctionTool, Toolbox

PROMPT = ">>> "
CONTINUATION_PROMPT = "... "
MULTILINE_QUOTE = '"""'
HISTORY_FILE_NAME = "chat_history"
HISTORY_LENGTH = 1000
CONFIRM_PROMPT = "run this code? [y/N] "
MCP_CONFIRM_PROMPT = "call {tool} on MCP server {server}? [y/N] "

# (command, argument, what it does): /help prints this table.
COMMANDS = (
    ("/effort", "low|medium|high", "how hard the model thinks (no argument: show it)"),
    ("/system", "TEXT", "set the instructions (no argument: remove them)"),
    ("/reset", "", "start a new conversation"),
    ("/retry", "", "ask the last question again"),
    ("/save", "FILE", "save the conversation as JSON"),
    ("/load", "FILE", "load a conversation saved with /save"),
    ("/stats", "", "speed and context use"),
    ("/tools", "", "the tools the model may call"),
    ("/help", "", "this list"),
    ("/quit", "", "leave (also Ctrl-D)"),
)
KEYS = (
    'Start and end multi-line input with """ on a line.',
    "Ctrl-C stops an answer (not kept; /retry asks again); at the prompt it leaves, as does Ctrl-D.",
)


class LineReader(Protocol):
    def read(self, prompt: str) -> str:
        """One line without its newline; EOFError at the end, KeyboardInterrupt on Ctrl-C."""

    def close(self) -> None: ...


class StreamReader:
    """Lines from a stream (piped stdin, tests); ``echo`` gets the prompt and the line, like a terminal."""

    def __init__(self, stream: TextIO, echo: TextIO | None = None):
        self.stream, self.echo = stream, echo

    def read(self, prompt: str) -> str:
        line = self.stream.readline()
        if self.echo is not None:
            self.echo.write(prompt + line.rstrip("\r\n") + ("\n" if line else ""))
            self.echo.flush()
        if not line:
            raise EOFError
        return line.rstrip("\r\n")

    def close(self) -> None:
        pass


class TerminalReader:
    """``input()`` with line editing and a history kept in the ossrun home (readline, where there is one)."""

    def __init__(self, history_file: Path | None = None):
        self.history_file = history_file or ossrun_home.home() / HISTORY_FILE_NAME
        readline: ModuleType | None
        try:
            import readline
        except ImportError:  # Windows without pyreadline: plain input()
            readline = None
        self._readline = readline
        if readline is not None:
            readline.set_history_length(HISTORY_LENGTH)
            try:
                readline.read_history_file(str(self.history_file))
            except OSError:
                pass  # no history yet

    def read(self, prompt: str) -> str:
        with sigint_reaches_input():
            return input(prompt)

    def close(self) -> None:
        if self._readline is None:
            return
        try:
            ossrun_home.ensure_dir(self.history_file.parent)
            self._readline.write_history_file(str(self.history_file))
        except OSError:
            pass  # a history that cannot be written is not worth an error


class Repl:
    """One chat session over a loaded model."""

    def __init__(
        self,
        model: Any,
        screen: Screen,
        reader: LineReader,
        *,
        conversation: Conversation | None = None,
        reasoning: ReasoningMode = "show",
        sampling: ReplyOptions | None = None,  # temperature, top_p, seed, max_tokens
        banner: bool = True,
        tools: Toolbox | None = None,
        max_tool_rounds: int = DEFAULT_MAX_TOOL_ROUNDS,
        confirm_python: bool = True,  # ask before each python run and MCP call (``--yes`` turns it off)
    ):
        self.model = model
        self.screen = screen
        self.reader = reader
        self.conversation = conversation or Conversation()
        self.reasoning = reasoning
        self.sampling = sampling or ReplyOptions()
        self.banner = banner
        self.tools = tools
        self.max_tool_rounds = max_tool_rounds
        self.confirm_python = confirm_python
        self.last_reply: Reply | None = None
        self.generated_tokens = 0
        self._commands: dict[str, Callable[[str], bool | None]] = {
            "/effort": self._effort,
            "/system": self._system,
            "/reset": self._reset,
            "/retry": self._retry,
            "/save": self._save,
            "/load": self._load,
            "/stats": self._stats,
            "/tools": self._tools,
            "/help": self._help,
            "/quit": self._quit,
            "/exit": self._quit,
        }

    def run(self) -> int:
        """The loop; returns the exit code (0: the user left)."""
        if self.banner:
            tools = f" · tools {', '.join(self.tools.names())}" if self.tools else ""
            ctx = f" · ctx {self.model.n_ctx} (auto)" if self.model.auto_ctx else ""  # what --ctx auto chose
            self.screen.info(
                f"ossrun chat · {self.model.name} · reasoning {self.conversation.reasoning_effort}{ctx}{tools}"
                " · /help for commands, Ctrl-D to leave"
            )
        for text in self.tools.notices() if self.tools else ():
            self.screen.notice(text)
        try:
            while True:
                for text in self.tools.news() if self.tools else ():  # an MCP server that stopped, said once
                    self.screen.notice(text)
                try:
                    line = self._read_input()
                except (EOFError, KeyboardInterrupt):
                    self.screen.write(self.screen.err, "\n")  # leave the prompt's line
                    return 0
                if line is None:
                    continue
                if self.handle(line) is False:
                    return 0
        finally:
            self.reader.close()

    def handle(self, text: str) -> bool | None:
        """One input: a slash command or a question. False means leave."""
        if text.startswith("/"):
            name, _, argument = text.partition(" ")
            command = self._commands.get(name.lower())
            if command is None:
                self.screen.error(f"unknown command {name}: type /help for the list")
                return None
            try:
                return command(argument.strip())
            except OssrunError as exc:
                self.screen.error(str(exc))
                return None
        self.ask(text)
        return None

    # -- input ------------------------------------------------------------

    def _read_input(self) -> str | None:
        line = self.reader.read(PROMPT)
        if not line.strip():
            return None
        if not line.lstrip().startswith(MULTILINE_QUOTE):
            return line.strip()
        # """ opens a block that ends at a line ending with """; text beside the quotes counts.
        first = line.lstrip()[len(MULTILINE_QUOTE) :]
        if first.rstrip().endswith(MULTILINE_QUOTE):
            return first.rstrip()[: -len(MULTILINE_QUOTE)].strip() or None
        lines = [first] if first.strip() else []
        while True:
            line = self.reader.read(CONTINUATION_PROMPT)
            if line.rstrip().endswith(MULTILINE_QUOTE):
                last = line.rstrip()[: -len(MULTILINE_QUOTE)]
                if last.strip():
                    lines.append(last)
                break
            lines.append(line)
        return "\n".join(lines).strip("\n") or None

    # -- answering --------------------------------------------------------

    def ask(self, question: str) -> Reply | None:
        """Stream an answer to ``question``; an interrupted or failed one is not kept."""
        messages = self.conversation.ask(question)
        options = dataclasses.replace(self.sampling, **self.conversation.options(), **self._tool_options())
        reply: Reply | None = None
        try:
            with TurnView(self.screen, reasoning=self.reasoning) as view, cancel_on_sigint() as cancel:
                for event in self.model.stream(messages, options, cancel=cancel):
                    view.handle(event)
                    if isinstance(event, Done):
                        reply = event.reply
        except KeyboardInterrupt:  # a second Ctrl-C while the answer was stopping
            pass
        except OssrunError as exc:
            self.screen.error(str(exc))
            return None
        if reply is None or reply.finish_reason == "interrupted":
            self.screen.notice("interrupted: this answer is not kept; /retry asks again")
            return reply
        self.last_reply = reply
        self.generated_tokens += reply.usage.completion_tokens
        self.conversation.commit(question, reply)
        if reply.finish_reason == "length":
            self.screen.notice("the answer was cut off at the token limit")
        return reply

    def _tool_options(self) -> dict[str, Any]:
        if not self.tools:
            return {}
        options: dict[str, Any] = {"tools": self.tools, "max_tool_rounds": self.max_tool_rounds}
        if self.tools.asks() and self.confirm_python:
            options["confirm"] = self._confirm_run
        return options

    def _confirm_run(self, call: ToolCall) -> bool:
        """Ask before the model's code runs or an MCP tool is called (the call was just shown). Ctrl-C
        stops the answer; end of input declines."""
        with sigint_raises():
            try:
                answer = self.reader.read(confirm_prompt(self.tools, call))
            except EOFError:
                self.screen.write(self.screen.err, "\n")
                return False
        return answer.strip().lower() in ("y", "yes")

    # -- commands ---------------------------------------------------------

    def _reprocessing(self, what: str) -> None:
        """Say what a change costs: the history is rendered anew and evaluated again."""
        if not self.conversation.messages:
            self.screen.info(what)
            return
        tokens = self.model.pending_tokens(self.conversation.messages, **self.conversation.options(), **self._tool_options())
        self.screen.info(f"{what}: the next answer re-processes {tokens} tokens of history")

    def _effort(self, argument: str) -> None:
        if not argument:
            self.screen.info(f"reasoning effort: {self.conversation.reasoning_effort}")
            return
        self.conversation.set_effort(argument)
        self._reprocessing(f"reasoning effort: {self.conversation.reasoning_effort}")

    def _system(self, argument: str) -> None:
        self.conversation.system = argument or None
        self._reprocessing("instructions set" if argument else "instructions removed")

    def _reset(self, argument: str) -> None:
        self.conversation.reset()
        self.last_reply = None
        self.screen.info("new conversation")

    def _retry(self, argument: str) -> None:
        question = self.conversation.retry()
        first_line = question.partition("\n")[0]  # a question loaded from a file may be empty
        self.screen.info(f"retrying: {first_line}")
        self.ask(question)

    def _save(self, argument: str) -> None:
        if not argument:
            raise OssrunError("/save needs a file name: /save FILE")
        self.conversation.save(Path(argument))
        self.screen.info(f"saved {len(self.conversation.messages)} messages to {argument}")

    def _load(self, argument: str) -> None:
        if not argument:
            raise OssrunError("/load needs a file name: /load FILE")
        self.conversation = Conversation.load(Path(argument))
        self.last_reply = None
        self._reprocessing(
            f"loaded {len(self.conversation.messages)} messages from {argument}"
            f" (reasoning effort {self.conversation.reasoning_effort})"
        )

    def _stats(self, argument: str) -> None:
        conversation = self.conversation
        self.screen.info(
            f"model {self.model.name} · reasoning {conversation.reasoning_effort}"
            f" · instructions {'set' if conversation.system else 'none'}"
            f" · {len(conversation.messages)} messages · {self.generated_tokens} tokens generated"
        )
        if self.last_reply is not None:
            self.screen.info(f"last answer: {stats_line(self.last_reply)}")

    def _tools(self, argument: str) -> None:
        if not self.tools:
            self.screen.info("no tools: give chat --functions FILE.py, --tool python or --mcp FILE")
            return
        for line in tool_lines(self.tools, asks=self.confirm_python):
            self.screen.info(line, None)

    def _help(self, argument: str) -> None:
        width = max(len(f"{name} {arg}".strip()) for name, arg, _ in COMMANDS)
        for name, arg, text in COMMANDS:
            self.screen.info(f"  {f'{name} {arg}'.strip():<{width}}  {text}", None)
        for line in KEYS:
            self.screen.info(line, None)

    def _quit(self, argument: str) -> bool:
        return False


def confirm_prompt(tools: Toolbox | None, call: ToolCall) -> str:
    """What the user is asked before a call runs: the python tool's code, or an MCP server's tool."""
    server = tools.server_of(call.recipient) if tools is not None else None
    return CONFIRM_PROMPT if server is None else MCP_CONFIRM_PROMPT.format(tool=call.name, server=server)


def tool_lines(tools: Toolbox, asks: bool = True) -> list[str]:
    """``/tools``: each tool the model may call with its arguments and the first line of its
    description, the MCP ones under their server (where it runs, whether it asks, whether it stopped)."""

    def line(tool: FunctionTool) -> str:
        arguments = ", ".join((tool.parameters or {}).get("properties", {}))
        summary = tool.description.strip().partition("\n")[0]
        return f"  {tool.name}({arguments})" + (f": {summary}" if summary else "")

    lines = []
    if tools.python is not None:
        lines.append("python: runs the model's code in a sandbox")
    own = [tool for tool in tools.functions.values() if tools.server_of(tool.recipient) is None]
    if own:
        lines += ["functions:", *(line(tool) for tool in own)]
    servers = tools.mcp
    for config in servers.configs if servers is not None else ():
        down = servers.down(config.name) if servers is not None else None
        if down:
            lines.append(f"{down} ({config.describe()}); its tools answer with an error:")
        else:
            state = "asks before each call" if asks and not config.trust else "calls run without asking"
            lines.append(f"MCP server {config.name} ({config.describe()}), {state}:")
        lines += [line(tool) for tool in tools.functions.values() if tools.server_of(tool.recipient) == config.name]
    return lines
