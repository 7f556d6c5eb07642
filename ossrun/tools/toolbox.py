"""The tools of one conversation: declared to the model, and run when it calls them."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ossrun.errors import ToolError
from ossrun.events import ToolCall, ToolResult
from ossrun.harmony.prompt import PromptSettings, function_description, function_namespace, tool_namespace
from ossrun.tools.functions import FUNCTIONS, FunctionTool, ToolSpec, error_result, function_tools, load_functions
from ossrun.tools.mcp_config import McpSource
from ossrun.tools.mcp_servers import McpServers
from ossrun.tools.mcp_tools import McpTool, mcp_function_tools, served_by
from ossrun.tools.sandbox import PythonSandbox

BUILTIN_TOOLS = ("python",)
Confirm = Callable[[ToolCall], bool]  # asked before each python run and MCP call; False: not run
McpOption = McpServers | McpSource | Sequence[McpSource] | None


class Toolbox:
    """Function tools and, optionally, the python sandbox and MCP servers' tools.

    A sandbox passed in stays the caller's (its working directory lives as long
    as the caller wants); one made by ``Toolbox.build(python_tool=True)`` is
    closed by :meth:`close`. So are MCP servers: started by the toolbox from a
    configuration, they stop with it. Their tools join the function tools
    (:mod:`ossrun.tools.mcp_tools` says how they are named).
    """

    def __init__(
        self,
        functions: Sequence[FunctionTool] = (),
        python: PythonSandbox | None = None,
        *,
        owns_python: bool = False,
        namespaces: dict[str, str] | None = None,
        mcp: McpServers | None = None,
        owns_mcp: bool = False,
    ):
        self.functions = {tool.recipient: tool for tool in function_tools(functions)}
        self.python = python
        self._owns_python = owns_python
        self.namespaces = dict(namespaces or {})  # namespace -> its description, for those not "functions"
        self.mcp = mcp
        self._owns_mcp = owns_mcp
        if mcp is not None:
            taken = {tool.name for tool in self.functions.values() if tool.namespace == FUNCTIONS}
            self.functions.update((tool.recipient, tool) for tool in mcp_function_tools(mcp, taken))

    @classmethod
    def build(
        cls,
        tools: Toolbox | Iterable[ToolSpec] | None = None,
        python_tool: bool | PythonSandbox | Callable[[], PythonSandbox] = False,
        mcp: McpOption = None,
    ) -> Toolbox:
        """A toolbox from what the API takes: callables, JSON schemas and namespaces of them, ``python_tool``
        (True or a maker of sandboxes: a sandbox this toolbox owns; a sandbox: the caller's) and ``mcp``
        (running :class:`McpServers`, or configurations to start servers from for this toolbox)."""
        if isinstance(tools, Toolbox):
            if python_tool or mcp:
                raise ToolError("give python_tool and mcp to Toolbox(...) itself when passing a Toolbox as tools")
            return tools
        specs = list(tools or ())
        functions = function_tools(specs)  # checked before any server starts
        namespaces = {
            str(spec.get("name")): str(spec.get("description") or "")
            for spec in specs
            if isinstance(spec, dict) and spec.get("type") == "namespace"
        }
        servers = mcp if isinstance(mcp, McpServers) else McpServers(mcp) if mcp else None
        owns_mcp = servers is not mcp
        try:
            if isinstance(python_tool, PythonSandbox):
                return cls(functions, python_tool, namespaces=namespaces, mcp=servers, owns_mcp=owns_mcp)
            made = python_tool() if callable(python_tool) else PythonSandbox() if python_tool else None
            return cls(functions, made, owns_python=made is not None, namespaces=namespaces, mcp=servers, owns_mcp=owns_mcp)
        except BaseException:
            if servers is not None and owns_mcp:
                servers.close()
            raise

    @classmethod
    def from_options(
        cls,
        functions: Sequence[str | Path] = (),
        tools: Sequence[str] = (),
        mcp: Sequence[str | Path] = (),
        mcp_timeout: float | None = None,
    ) -> Toolbox:
        """The command line's tools: ``--functions FILE.py`` and ``--mcp FILE`` (repeatable), ``--tool python``.
        The MCP servers start here: one that cannot is an McpError before anything else happens."""
        unknown = sorted(set(tools) - set(BUILTIN_TOOLS))
        if unknown:
            raise ToolError(f"unknown tool {unknown[0]!r}: the builtin tools are {', '.join(BUILTIN_TOOLS)}")
        found = [tool for path in functions for tool in load_functions(path)]
        servers = McpServers(list(mcp), timeout=mcp_timeout) if mcp else None
        python = "python" in tools
        try:
            return cls(found, PythonSandbox() if python else None, owns_python=python, mcp=servers, owns_mcp=True)
        except BaseException:
            if servers is not None:
                servers.close()
            raise

    def __bool__(self) -> bool:
        return bool(self.functions) or self.python is not None

    def names(self) -> list[str]:
        return list(self.functions) + (["python"] if self.python else [])

    def namespace_names(self) -> list[str]:
        """The namespaces the model may address: ``functions`` and the caller's own."""
        return sorted({tool.namespace for tool in self.functions.values()} | {FUNCTIONS})

    def prompt_settings(self, settings: PromptSettings) -> PromptSettings:
        """``settings`` with these tools declared: functions (and other namespaces) in the developer
        message, python in the system one."""
        functions = tuple(
            function_description(t.name, t.description, t.parameters) for t in self.functions.values() if t.namespace == FUNCTIONS
        )
        others: dict[str, list[Any]] = {}
        for tool in self.functions.values():
            if tool.namespace != FUNCTIONS:
                others.setdefault(tool.namespace, []).append(function_description(tool.name, tool.description, tool.parameters))
        namespaces = tuple(function_namespace(name, self.namespaces.get(name, ""), tools) for name, tools in others.items())
        system_tools = (tool_namespace("python", self.python.description()),) if self.python else ()
        return dataclasses.replace(settings, functions=functions, namespaces=namespaces, system_tools=system_tools)

    def notices(self) -> list[str]:
        """What the user should know before the conversation starts: a python tool that is not isolated, or has the network."""
        return self.python.notices() if self.python else []

    def news(self) -> list[str]:
        """What changed since the last time this was asked: MCP servers that stopped, each said once."""
        return self.mcp.news() if self.mcp is not None else []

    def asks(self) -> bool:
        """Whether some call waits for the user's yes: a python run, a call to an MCP server not trusted."""
        return self.python is not None or any(
            isinstance(t.function, McpTool) and not t.function.trusted for t in self.functions.values()
        )

    def server_of(self, recipient: str) -> str | None:
        """The MCP server that answers calls to ``recipient`` (``functions.get_weather``), or None."""
        tool = self.functions.get(recipient)
        return served_by(tool) if tool is not None else None

    def runs(self, call: ToolCall) -> bool:
        """False for a function declared by schema alone: the caller runs it. Everything else ossrun answers."""
        tool = self._function(call)
        return tool is None or tool.runnable

    def run(self, call: ToolCall, confirm: Confirm | None = None, cancel: threading.Event | None = None) -> ToolResult:
        """Run one call; failures become an error result for the model, never an exception."""
        if call.recipient == "python" and self.python is not None:
            if confirm is not None and not confirm(call):
                return ToolResult(call, "[not run: the user declined to run this code]", error=True)
            result = self.python.run(call.arguments, cancel=cancel)
            return ToolResult(call, result.text(), error=not result.ok)
        tool = self._function(call)
        if tool is None:
            available = ", ".join(self.names()) or "none"
            return ToolResult(
                call, error_result(f"unknown tool {call.recipient!r}: the available tools are {available}"), error=True
            )
        if isinstance(tool.function, McpTool):
            mcp = tool.function
            if not (mcp.trusted or mcp.down) and confirm is not None and not confirm(call):
                return ToolResult(call, error_result("the user declined this call"), error=True)
            output, failed = mcp.run(call.arguments, cancel)
        else:
            output, failed = tool.call(call.arguments)
        return ToolResult(call, output, error=failed)

    def _function(self, call: ToolCall) -> FunctionTool | None:
        return self.functions.get(call.recipient)

    def close(self) -> None:
        if self._owns_python and self.python is not None:
            self.python.close()
        if self._owns_mcp and self.mcp is not None:
            self.mcp.close()

    def __enter__(self) -> Toolbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
