"""Function tools: Python callables or JSON schemas the model may call.

A callable's schema comes from its signature and docstring
(:mod:`ossrun.tools.schema`); a JSON schema alone declares a tool the caller
runs. Calling never raises: bad arguments and exceptions become an error
result the model reads, so the conversation goes on.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from ossrun.errors import ToolError
from ossrun.tools.schema import function_schema

# OpenAI's rule for function names; harmony addresses them as functions.NAME.
_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")

ToolSpec = Union[Callable[..., Any], Mapping[str, Any], "FunctionTool"]
FUNCTIONS = "functions"  # harmony's namespace for function tools


@dataclass(frozen=True)
class FunctionTool:
    """One function the model may call: what it is told, and what runs (None: the caller runs it)."""

    name: str
    description: str = ""
    parameters: dict[str, Any] | None = None  # JSON Schema of the arguments object; None: no arguments
    function: Callable[..., Any] | None = None
    namespace: str = FUNCTIONS  # another one groups functions the caller declared together

    def __post_init__(self) -> None:
        for what, value in (("tool name", self.name), ("namespace", self.namespace)):
            if not isinstance(value, str) or not _NAME.match(value):
                raise ToolError(f"{what} {value!r} is not valid: use 1-64 letters, digits, '_' or '-'")

    @property
    def recipient(self) -> str:
        """How harmony addresses it: ``functions.get_weather``, ``multi_agent_v1.spawn``."""
        return f"{self.namespace}.{self.name}"

    @classmethod
    def from_callable(cls, func: Callable[..., Any], name: str | None = None) -> FunctionTool:
        description, parameters = function_schema(func)
        return cls(name or str(getattr(func, "__name__", "")), description, parameters, func)

    @classmethod
    def from_schema(cls, schema: Mapping[str, Any], namespace: str = FUNCTIONS) -> FunctionTool:
        """OpenAI's ``{"type": "function", "function": {...}}`` or the flat ``{"name", "description", "parameters"}``."""
        spec = schema.get("function", schema) if schema.get("type", "function") == "function" else None
        if not isinstance(spec, Mapping) or "name" not in spec:
            raise ToolError(f"a tool schema needs a name: {json.dumps(schema, default=str)[:80]}")
        parameters = spec.get("parameters")
        if parameters is not None and not isinstance(parameters, Mapping):
            raise ToolError(f"tool {spec['name']!r}: parameters must be a JSON Schema object")
        if parameters is not None and not parameters.get("properties"):
            parameters = None  # rendered "() => any", as harmony declares functions without arguments
        return cls(
            spec["name"], str(spec.get("description") or ""), dict(parameters) if parameters else None, namespace=namespace
        )

    @property
    def runnable(self) -> bool:
        return self.function is not None

    def call(self, arguments: str) -> tuple[str, bool]:
        """Run the function on the model's JSON arguments: (result text, whether it is an error)."""
        if self.function is None:
            raise ToolError(f"tool {self.name!r} has no Python function: the caller runs it")
        kwargs, problem = parse_arguments(arguments)
        if kwargs is None:
            return error_result(problem), True
        try:
            inspect.signature(self.function).bind(**kwargs)
        except TypeError as exc:
            return error_result(f"bad arguments for {self.name}: {exc}"), True
        except ValueError:
            pass  # a builtin without a readable signature: let the call decide
        try:
            result = self.function(**kwargs)
        except Exception as exc:  # the model reads the error and may try again
            return error_result(f"{self.name} raised {type(exc).__name__}: {exc}"), True
        return result_text(result), False


def parse_arguments(arguments: str) -> tuple[dict[str, Any] | None, str]:
    """The model's JSON arguments as a dict, or None and what is wrong with them."""
    try:
        kwargs = json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError as exc:
        return None, f"the arguments are not valid JSON ({exc}): send one JSON object"
    if not isinstance(kwargs, dict):
        return None, f"the arguments must be a JSON object, not {type(kwargs).__name__}"
    return kwargs, ""


def error_result(message: str) -> str:
    """What the model reads when a call fails: a JSON object, like the results it expects."""
    return json.dumps({"error": message}, ensure_ascii=False)


def result_text(result: Any) -> str:
    """A function's return value as the text the model reads: strings as they are, the rest as JSON."""
    if isinstance(result, str):
        return result
    try:
        return json.dumps(result, ensure_ascii=False, default=str)
    except (TypeError, ValueError):  # circular structures and the like
        return repr(result)


def function_tools(specs: Iterable[ToolSpec]) -> list[FunctionTool]:
    """Callables, JSON schemas or FunctionTools as FunctionTools, checking names are unique.

    A ``{"type": "namespace", "name", "description", "tools": [...]}`` spec (the Responses
    API's shape) gives its function schemas that namespace.
    """
    tools: list[FunctionTool] = []
    for spec in specs:
        if isinstance(spec, FunctionTool):
            tools.append(spec)
        elif isinstance(spec, Mapping) and spec.get("type") == "namespace":
            tools.extend(namespace_tools(spec))
        elif isinstance(spec, Mapping):
            tools.append(FunctionTool.from_schema(spec))
        elif callable(spec):
            tools.append(FunctionTool.from_callable(spec))
        else:
            raise ToolError(f"a tool must be a function or a JSON schema, not {type(spec).__name__}")
    names = [t.recipient for t in tools]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ToolError(f"two tools are named {duplicates[0].split('.', 1)[1]!r}: give each tool its own name")
    return tools


def namespace_tools(spec: Mapping[str, Any]) -> list[FunctionTool]:
    """The function schemas of a namespace spec, in that namespace."""
    namespace, tools = spec.get("name"), spec.get("tools")
    if not isinstance(namespace, str) or namespace in (FUNCTIONS, "python"):
        raise ToolError(f"namespace {namespace!r} is not usable: give it a name other than functions or python")
    if not isinstance(tools, list):
        raise ToolError(f"namespace {namespace!r}: tools must be a list of function schemas")
    return [
        FunctionTool.from_schema(tool, namespace=namespace)
        for tool in tools
        if isinstance(tool, Mapping) and tool.get("type", "function") == "function"
    ]


def load_functions(path: str | Path) -> list[FunctionTool]:
    """The public functions a Python file defines (not those it imports), as tools."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ToolError(f"no such file: {path}: give --functions the path of a Python file")
    # A name unique to the file, so two files with the same stem do not collide in sys.modules.
    module_name = "ossrun_functions_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ToolError(f"{path} is not a Python file: give --functions a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and string annotations look the module up
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.append(folder)  # its sibling modules import as they would for a script (installed ones win)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        sys.modules.pop(module_name, None)
        raise ToolError(f"{path}:{exc.lineno}: syntax error ({exc.msg}): fix the file") from None
    except (Exception, SystemExit) as exc:
        sys.modules.pop(module_name, None)
        raise ToolError(f"importing {path} failed: {type(exc).__name__}: {exc}") from None
    functions = [
        value
        for name, value in vars(module).items()
        if not name.startswith("_") and inspect.isfunction(value) and value.__module__ == module_name
    ]
    if not functions:
        raise ToolError(f"{path} defines no public functions: define at least one function whose name does not start with '_'")
    return function_tools(functions)
