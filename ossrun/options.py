"""The options of one reply: what ``Model.stream``, ``chat``, ``render`` and ``pending_tokens`` take.

A frozen :class:`ReplyOptions` is built once where a reply is asked for (the command line, the
REPL, the server's request translations, or the keyword arguments of the Python API), its
reasoning effort normalised there; the model reads it as it is. Light: the command line imports it.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ossrun.defaults import DEFAULT_MAX_TOOL_ROUNDS
from ossrun.harmony.messages import ReasoningEffort, check_reasoning_effort

if TYPE_CHECKING:
    from ossrun.events import ToolCall
    from ossrun.tools.toolbox import McpOption


@dataclass(frozen=True, kw_only=True)
class ReplyOptions:
    """How to answer. ``None`` for the effort or the sampling: the model's defaults (models.toml's
    ``reasoning_effort`` and ``sampling`` for a registry model, else medium, temperature 1, top_p 1)."""

    reasoning_effort: ReasoningEffort | None = None
    system: str | None = None  # developer instructions; wins over a system entry of the messages
    temperature: float | None = None  # 0: greedy
    top_p: float | None = None
    seed: int | None = None
    max_tokens: int | None = None
    stop: str | Sequence[str] | None = None  # texts that end the answer where one appears
    truncate: bool = True  # leave out the oldest turns of a conversation too long for the context
    cancel: threading.Event | None = None  # stops the reply, even mid-prefill
    tools: Any = None  # functions, JSON schemas, namespaces of them, or an ossrun.tools.Toolbox
    python_tool: Any = False  # True, a maker of sandboxes, or an ossrun.tools.PythonSandbox
    mcp: McpOption = None  # McpServers, or configurations to start servers from for this reply
    max_tool_rounds: int = DEFAULT_MAX_TOOL_ROUNDS
    confirm: Callable[[ToolCall], bool] | None = None  # asked before each python run and MCP call
    tool_choice: Any = None  # "auto" (None), "none", "required" or one function, for the first turn
    response_format: Mapping[str, Any] | None = None  # OpenAI's json_object or json_schema

    def __post_init__(self) -> None:
        if self.reasoning_effort is not None:
            object.__setattr__(self, "reasoning_effort", check_reasoning_effort(self.reasoning_effort))

    @classmethod
    def of(cls, options: ReplyOptions | None, fields: Mapping[str, Any]) -> ReplyOptions:
        """``options`` (or the defaults) with ``fields`` (keyword arguments of the Python API) set."""
        unknown = sorted(set(fields) - _NAMES)
        if unknown:
            raise TypeError(f"unknown option(s): {', '.join(unknown)}")
        base = options if options is not None else cls()
        return dataclasses.replace(base, **fields) if fields else base


_NAMES = frozenset(f.name for f in dataclasses.fields(ReplyOptions))
