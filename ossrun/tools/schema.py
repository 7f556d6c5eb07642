"""JSON Schemas for Python functions, from their type hints and docstrings.

The schema is what the model reads: harmony renders it as a TypeScript-like
declaration in the developer message. Only what JSON can carry is accepted
(str, int, float, bool, list, tuple, dict, None, Literal, Enum, Optional);
anything else is an error that names the function and the parameter.
"""

from __future__ import annotations

import collections.abc
import enum
import functools
import inspect
import json
import re
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, Union

from ossrun.errors import ToolError

_PRIMITIVES = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}
_SUPPORTED = "str, int, float, bool, list, dict, Literal, Enum or Optional"
# Google style "Args:" sections and Sphinx ":param x:" lines both describe parameters.
_SECTION = re.compile(r"^\s*(Args|Arguments|Parameters|Params|Returns|Return|Raises|Yields|Examples?|Notes?)\s*:\s*$")
_GOOGLE_PARAM = re.compile(r"^\s*\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_SPHINX_PARAM = re.compile(r"^\s*:param\s+(?:[^:]*\s)?(\w+)\s*:\s*(.*)$")
_ARGS_SECTIONS = ("args", "arguments", "parameters", "params")


def function_schema(func: Callable[..., Any]) -> tuple[str, dict[str, Any] | None]:
    """(description, parameters schema) of ``func``; the schema is None for a function without parameters."""
    name = getattr(func, "__name__", repr(func))
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError) as exc:
        raise ToolError(f"cannot read the signature of {name}: {exc}") from None
    # The hints of a callable object are on its __call__, those of a partial on the function it wraps.
    annotated: Any = func
    if isinstance(func, functools.partial):
        annotated = func.func
    elif not (inspect.isfunction(func) or inspect.ismethod(func)):
        annotated = annotated.__call__
    try:
        hints = typing.get_type_hints(annotated)
    except Exception as exc:  # an annotation naming something undefined
        raise ToolError(f"cannot resolve the type hints of {name}: {exc}") from None
    summary, param_docs = parse_docstring(inspect.getdoc(func) or inspect.getdoc(annotated) or "")

    properties: dict[str, Any] = {}
    required: list[str] = []
    for param in signature.parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue  # the model passes named arguments only
        if param.kind == param.POSITIONAL_ONLY:
            raise ToolError(f"{name}: parameter {param.name!r} is positional-only: the model passes arguments by name")
        try:
            schema = type_schema(hints.get(param.name, Any), required=param.default is param.empty)
        except ToolError as exc:
            raise ToolError(f"{name}: parameter {param.name!r} {exc}") from None
        if param.name in param_docs:
            schema = {"description": param_docs[param.name], **schema}
        if param.default is param.empty:
            required.append(param.name)
        elif param.default is not None and _is_json(param.default):
            default = param.default.value if isinstance(param.default, enum.Enum) else param.default
            schema["default"] = json.loads(json.dumps(default))  # tuples become lists, as the model sees them
        properties[param.name] = schema
    if not properties:
        return summary, None
    parameters: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    return summary, parameters


def type_schema(hint: Any, *, required: bool = True) -> dict[str, Any]:
    """The JSON Schema of one type hint. ``required`` decides how Optional is spelled."""
    if hint is Any or hint is inspect.Parameter.empty:
        return {}
    if hint in _PRIMITIVES:
        return {"type": _PRIMITIVES[hint]}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _enum_schema([member.value for member in hint])
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return _enum_schema(list(args))
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) == len(args):
            raise ToolError(f"has a union type {hint}: use one type, Literal or Optional")
        if len(inner) > 1:
            raise ToolError(f"has a union type {hint}: use Optional of one type")
        schema = type_schema(inner[0])
        # harmony renders ["string", "null"] as "string | null" but an optional list as "array | null",
        # so only simple types say null; an optional parameter with a default is simply not required.
        if required and schema.get("type") in ("string", "integer", "number", "boolean"):
            schema = {**schema, "type": [schema["type"], "null"]}
        return schema
    if hint in (list, tuple, set, frozenset) or origin in (list, tuple, set, frozenset, collections.abc.Sequence):
        array: dict[str, Any] = {"type": "array"}
        item_types = [a for a in args if a is not Ellipsis]
        if len(set(item_types)) == 1:
            array["items"] = type_schema(item_types[0])
        return array
    if hint is dict or origin in (dict, collections.abc.Mapping):
        if args and args[0] is not str:
            raise ToolError(f"has type {hint}: JSON object keys are strings")
        return {"type": "object"}
    raise ToolError(f"has type {getattr(hint, '__name__', hint)}, which JSON cannot carry: use {_SUPPORTED}")


def _enum_schema(values: list[Any]) -> dict[str, Any]:
    kinds = {_PRIMITIVES.get(type(v)) for v in values}
    if None in kinds or not values:
        raise ToolError(f"has choices {values!r}: use strings, numbers or booleans")
    schema: dict[str, Any] = {"enum": values}
    if len(kinds) == 1:
        schema = {"type": kinds.pop(), **schema}
    return schema


def _is_json(value: Any) -> bool:
    if isinstance(value, enum.Enum):
        value = value.value
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(description, {parameter: description}) from a Google- or Sphinx-style docstring.

    The description is the text before the first section; a parameter's text may
    continue on more-indented lines.
    """
    description: list[str] = []
    params: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    param_indent: int | None = None  # of the first line in an Args section
    for line in doc.splitlines():
        indent = len(line) - len(line.lstrip())
        header = _SECTION.match(line)
        sphinx = _SPHINX_PARAM.match(line)
        if header:
            section, current, param_indent = header.group(1).lower(), None, None
        elif sphinx:
            section, current = "sphinx", sphinx.group(1)
            params[current] = sphinx.group(2).strip()
        elif section is None:
            description.append(line)
        elif not line.strip():
            continue
        elif section in _ARGS_SECTIONS:
            if param_indent is None:
                param_indent = indent
            match = _GOOGLE_PARAM.match(line)
            if match and indent <= param_indent:
                current = match.group(1)
                params[current] = match.group(2).strip()
            elif current:
                params[current] = f"{params[current]} {line.strip()}".strip()
        elif section == "sphinx" and current and not line.lstrip().startswith(":"):
            params[current] = f"{params[current]} {line.strip()}".strip()
        else:
            current = None  # :returns: and the like end a Sphinx parameter
    return "\n".join(description).strip(), params
