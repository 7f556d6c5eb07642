"""The model a server serves: the names a request may call it by, its defaults, its own tools."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ossrun.harmony.messages import ReasoningEffort
from ossrun.options import ReplyOptions
from ossrun.server.fields import ApiError, bad_request, get
from ossrun.server.python_sessions import PythonSessions, conversation_of

# OpenAI's efforts, each as the nearest one gpt-oss was trained with.
EFFORTS: dict[str, ReasoningEffort] = {
    "low": "low",
    "medium": "medium",
    "high": "high",
    "minimal": "low",
    "none": "low",
    "xhigh": "high",
}


@dataclass
class ServedModel:
    name: str
    aliases: tuple[str, ...] = ()
    default_effort: ReasoningEffort = "medium"
    python_tool: Any = None  # an ossrun.tools.PythonSandbox when --tool python was given: the model of each request's
    created: int = 0
    server_tools: frozenset[str] = field(default_factory=frozenset)
    any_model: bool = False  # a batch: the loaded model serves every line, whatever it names
    python_sessions: PythonSessions | None = field(default=None, init=False)
    mcp: Any = None  # ossrun.tools.McpServers when --mcp was given: their tools run here too
    context_length: int = 0  # the KV cells all requests share, and any one request's limit
    parallel: int = 1  # replies decoded together

    def __post_init__(self) -> None:
        self.server_tools = frozenset({"python"}) if self.python_tool is not None else frozenset()
        if self.python_tool is not None:
            self.python_sessions = PythonSessions(self.python_tool)

    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def check_model(self, requested: str) -> str:
        """The request's model name if it is this model's (or an alias), else a 404."""
        if requested not in self.names() and not self.any_model:
            raise ApiError(
                404,
                f"the model {requested!r} does not exist: this server serves {self.name}",
                param="model",
                code="model_not_found",
            )
        return requested

    def describe(self) -> dict[str, Any]:
        """OpenAI's model object, plus what a client sizes its requests by."""
        return {
            "id": self.name,
            "object": "model",
            "created": self.created,
            "owned_by": "ossrun",
            "context_length": self.context_length,
            "parallel_sequences": self.parallel,
            "default_reasoning_effort": self.default_effort,
        }

    def with_server_tools(self, options: ReplyOptions, body: Mapping[str, Any]) -> tuple[ReplyOptions, dict[str, str]]:
        """``options`` with the server's own tools for one request: python in a working directory of the
        request's tool chain, or of the conversation the body names (``python_sessions.py``), and the MCP
        servers' tools. Also returns the recipients the server runs for this request, each with the label
        its calls are shown with (``python``, an MCP server's name). The request's own tools keep
        their names: an MCP tool of the same name is prefixed by its server."""
        if self.python_sessions is not None:
            options = dataclasses.replace(options, python_tool=self.python_sessions.for_request(conversation_of(body)))
        runs = {recipient: "python" for recipient in self.server_tools}
        if self.mcp is not None:
            from ossrun.errors import ToolError
            from ossrun.tools.functions import FUNCTIONS, function_tools
            from ossrun.tools.mcp_tools import mcp_function_tools, served_by

            options = dataclasses.replace(options, mcp=self.mcp)
            try:
                taken = {t.name for t in function_tools(options.tools or ()) if t.namespace == FUNCTIONS}
            except ToolError:
                taken = set()  # the request's tools are refused when its prompt is rendered
            runs.update((tool.recipient, str(served_by(tool))) for tool in mcp_function_tools(self.mcp, taken))
        return options, runs

    def close(self) -> None:
        """Close the python sessions of the conversations still open."""
        if self.python_sessions is not None:
            self.python_sessions.close()


def effort_of(body: Mapping[str, Any], default: ReasoningEffort) -> ReasoningEffort:
    """``reasoning_effort`` or ``reasoning.effort`` as low, medium or high."""
    asked = get(body, "reasoning_effort", (str,))
    param = "reasoning_effort"
    if asked is None:
        reasoning = get(body, "reasoning", (dict,), default={})
        asked, param = get(reasoning, "effort", (str,), "reasoning."), "reasoning.effort"
    if asked is None:
        return default
    effort = EFFORTS.get(asked.lower())
    if effort is None:
        raise bad_request(
            f"{param} {asked.lower()!r} is not one of low, medium, high (minimal and none mean low, xhigh high)", param
        )
    return effort


def served_names(name: str, entry: Any | None) -> tuple[str, ...]:
    """Aliases a registry model answers to: its registry aliases and its hub repositories."""
    if entry is None:
        return ()
    names = list(entry.aliases)
    for source in (entry.gguf, entry.safetensors):
        if source is not None:
            names.append(source.repo)
    return tuple(dict.fromkeys(n for n in names if n != name))
