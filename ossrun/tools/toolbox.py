"""The tools of one conversation: declared to the model, and run when it calls them."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

from ossrun.errors import ToolError
from ossrun.events import ToolCall, ToolResult
from ossrun.harmony.prompt import PromptSettings, function_description, function_namespace, tool_namespace
from ossrun.tools.functions import FUNCTIONS, FunctionTool, ToolSpec, error_result, function_tools, load_functions
from ossrun.tools.sandbox import PythonSandbox

BUILTIN_TOOLS = ("python",)
Confirm = Callable[[ToolCall], bool]  # asked before each python run; False: not run


class Toolbox:
    """Function tools and, optionally, the python sandbox.

    A sandbox passed in stays the caller's (its working directory lives as long
    as the caller wants); one made by ``Toolbox.build(python_tool=True)`` is
    closed by :meth:`close`.
    """

    def __init__(self, functions: Sequence[FunctionTool] = (), python: Optional[PythonSandbox] = None, *,
                 owns_python: bool = False, namespaces: Optional[dict[str, str]] = None):
        self.functions = {tool.recipient: tool for tool in function_tools(functions)}
        self.python = python
        self._owns_python = owns_python
        self.namespaces = dict(namespaces or {})  # namespace -> its description, for those not "functions"

    @classmethod
    def build(cls, tools: Union["Toolbox", Iterable[ToolSpec], None] = None,
              python_tool: Union[bool, PythonSandbox, Callable[[], PythonSandbox]] = False) -> "Toolbox":
        """A toolbox from what the API takes: callables, JSON schemas and namespaces of them, and ``python_tool``
        (True or a maker of sandboxes: a sandbox this toolbox owns; a sandbox: the caller's)."""
        if isinstance(tools, Toolbox):
            if python_tool:
                raise ToolError("give python_tool to Toolbox(...) itself when passing a Toolbox as tools")
            return tools
        specs = list(tools or ())
        namespaces = {str(spec.get("name")): str(spec.get("description") or "") for spec in specs
                      if isinstance(spec, dict) and spec.get("type") == "namespace"}
        if isinstance(python_tool, PythonSandbox):
            return cls(function_tools(specs), python_tool, namespaces=namespaces)
        made = python_tool() if callable(python_tool) else PythonSandbox() if python_tool else None
        return cls(function_tools(specs), made, owns_python=made is not None, namespaces=namespaces)

    @classmethod
    def from_options(cls, functions: Sequence[Union[str, Path]] = (), tools: Sequence[str] = ()) -> "Toolbox":
        """The command line's tools: ``--functions FILE.py`` (repeatable) and ``--tool python``."""
        unknown = sorted(set(tools) - set(BUILTIN_TOOLS))
        if unknown:
            raise ToolError(f"unknown tool {unknown[0]!r}: the builtin tools are {', '.join(BUILTIN_TOOLS)}")
        found = [tool for path in functions for tool in load_functions(path)]
        python = "python" in tools
        return cls(found, PythonSandbox() if python else None, owns_python=python)

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
        functions = tuple(function_description(t.name, t.description, t.parameters)
                          for t in self.functions.values() if t.namespace == FUNCTIONS)
        others = {}
        for tool in self.functions.values():
            if tool.namespace != FUNCTIONS:
                others.setdefault(tool.namespace, []).append(function_description(tool.name, tool.description, tool.parameters))
        namespaces = tuple(function_namespace(name, self.namespaces.get(name, ""), tools) for name, tools in others.items())
        system_tools = (tool_namespace("python", self.python.description()),) if self.python else ()
        return dataclasses.replace(settings, functions=functions, namespaces=namespaces, system_tools=system_tools)

    def notices(self) -> list[str]:
        """What the user should know before the conversation starts: a python tool that is not isolated, or has the network."""
        return self.python.notices() if self.python else []

    def runs(self, call: ToolCall) -> bool:
        """False for a function declared by schema alone: the caller runs it. Everything else ossrun answers."""
        tool = self._function(call)
        return tool is None or tool.runnable

    def run(self, call: ToolCall, confirm: Optional[Confirm] = None, cancel: Optional[threading.Event] = None) -> ToolResult:
        """Run one call; failures become an error result for the model, never an exception."""
        if call.recipient == "python" and self.python is not None:
            if confirm is not None and not confirm(call):
                return ToolResult(call, "[not run: the user declined to run this code]", error=True)
            result = self.python.run(call.arguments, cancel=cancel)
            return ToolResult(call, result.text(), error=not result.ok)
        tool = self._function(call)
        if tool is None:
            available = ", ".join(self.names()) or "none"
            return ToolResult(call, error_result(f"unknown tool {call.recipient!r}: the available tools are {available}"), error=True)
        output, failed = tool.call(call.arguments)
        return ToolResult(call, output, error=failed)

    def _function(self, call: ToolCall) -> Optional[FunctionTool]:
        return self.functions.get(call.recipient)

    def close(self) -> None:
        if self._owns_python and self.python is not None:
            self.python.close()

    def __enter__(self) -> "Toolbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
