"""MCP servers' tools as gpt-oss reads them: function tools with harmony-friendly names, schemas and results.

Every MCP tool is declared in harmony's ``functions`` namespace under the name its server gives
it, as the harmony guide says developer tools should be: that is where gpt-oss was trained to
find the tools it may call (``to=functions.NAME``), and the demo model calls
``functions.get_weather`` whatever namespace or prefix it is shown. Only a name offered twice
(by two servers, or by a server and one of your own functions) is prefixed by its server:
``weather__get_weather``. Schemas are rewritten into what harmony's TypeScript-like rendering
shows (local ``$ref`` s inlined, ``anyOf`` with null made optional); results become the text of
the tool's message.
"""

from __future__ import annotations

import collections
import json
import re
import threading
from collections.abc import Collection, Mapping
from typing import Any

from ossrun.tools.functions import FunctionTool, error_result, parse_arguments
from ossrun.tools.mcp_servers import McpCallFailed, McpServers

RESULT_CHARS = 16 * 1024  # what the model reads of one result: the head and the tail of a longer one
PREFIX_SEPARATOR = "__"
_NOT_IN_NAMES = re.compile(r"[^A-Za-z0-9_\-]")
_SIMPLE_TYPES = ("string", "integer", "number", "boolean")


class McpTool:
    """What runs when the model calls an MCP tool: the call to its server (a FunctionTool's function)."""

    def __init__(self, servers: McpServers, server: str, name: str):
        self.servers = servers
        self.server = server
        self.name = name  # as the server knows it

    @property
    def trusted(self) -> bool:
        """The server's ``"trust": true``: its calls run without asking."""
        return self.servers.config(self.server).trust

    @property
    def down(self) -> bool:
        """The server stopped: calls fail at once (and nobody is asked about them)."""
        return self.servers.down(self.server) is not None

    def run(self, arguments: str, cancel: threading.Event | None = None) -> tuple[str, bool]:
        """The call on the model's JSON arguments: (the text the model reads, whether it is an error)."""
        kwargs, problem = parse_arguments(arguments)
        if kwargs is None:
            return error_result(problem), True
        try:
            result = self.servers.call(self.server, self.name, kwargs, cancel=cancel)
        except McpCallFailed as exc:
            return error_result(str(exc)), True
        return result_text(result)

    def __call__(self, **arguments: Any) -> str:
        output, failed = self.run(json.dumps(arguments))
        if failed:
            raise McpCallFailed(json.loads(output)["error"] if output.startswith("{") else output)
        return output


def served_by(tool: FunctionTool) -> str | None:
    """The MCP server that answers ``tool``'s calls, or None for a function tool of the caller's."""
    return tool.function.server if isinstance(tool.function, McpTool) else None


def mcp_function_tools(servers: McpServers, taken: Collection[str] = ()) -> list[FunctionTool]:
    """The servers' tools as FunctionTools in ``functions``; ``taken``: names other tools already have."""
    tools = servers.tools()
    plain = [_name(tool.name) for tool in tools]
    offered = collections.Counter(plain)
    used = set(taken)
    out = []
    for tool, name in zip(tools, plain, strict=True):
        if offered[name] > 1 or name in used:
            name = _name(f"{_name(tool.server)}{PREFIX_SEPARATOR}{tool.name}")
        base, number = name, 2
        while name in used:  # a prefixed name taken too (or cut to the same 64 characters)
            name, number = f"{base[:60]}_{number}", number + 1
        used.add(name)
        out.append(
            FunctionTool(name, tool.description, harmony_parameters(tool.input_schema), McpTool(servers, tool.server, tool.name))
        )
    return out


def _name(text: str) -> str:
    """A function name harmony and OpenAI's clients take: letters, digits, ``_`` and ``-``, at most 64."""
    return (_NOT_IN_NAMES.sub("_", text) or "tool")[:64]


# -- schemas ---------------------------------------------------------------------


def harmony_parameters(schema: Any) -> dict[str, Any] | None:
    """An MCP input schema as harmony renders it well; None for a tool without arguments.

    harmony's rendering shows ``any`` for a ``$ref`` and for ``anyOf``, which is what
    pydantic-based servers (FastMCP's included) write for model arguments and for Optional ones:
    the references to the schema's own ``$defs`` are inlined (a recursive one stays ``any``),
    ``anyOf`` of a type and null becomes that type (the argument is optional), other ``anyOf``
    becomes ``oneOf``, which harmony shows as a union. The server still checks the arguments
    against its own schema.
    """
    if not isinstance(schema, Mapping):
        return None
    definitions = {**_mapping(schema.get("definitions")), **_mapping(schema.get("$defs"))}
    simplified = _simplify(schema, definitions, ())
    for key in ("$defs", "definitions", "$schema"):
        simplified.pop(key, None)
    if not simplified.get("properties"):
        return None  # declared "() => any", as harmony declares functions without arguments
    simplified.setdefault("type", "object")
    return simplified


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _simplify(node: Any, definitions: Mapping[str, Any], seen: tuple[str, ...]) -> Any:
    if isinstance(node, list):
        return [_simplify(item, definitions, seen) for item in node]
    if not isinstance(node, Mapping):
        return node
    node = {key: value for key, value in node.items() if key != "title"}
    reference = node.pop("$ref", None)
    if isinstance(reference, str):
        name = reference.rsplit("/", 1)[-1] if reference.startswith(("#/$defs/", "#/definitions/")) else None
        if name is None or name in seen or not isinstance(definitions.get(name), Mapping):
            return _simplify(node, definitions, seen)  # not inlined: harmony shows it as any
        return _simplify({**definitions[name], **node}, definitions, (*seen, name))
    for key in ("anyOf", "oneOf"):
        variants = node.get(key)
        if isinstance(variants, list):
            node = _union(node, key, [_simplify(v, definitions, seen) for v in variants])
    parts = node.get("allOf")
    if isinstance(parts, list) and len(parts) == 1 and isinstance(parts[0], Mapping):
        node.pop("allOf")
        node = {**_simplify(parts[0], definitions, seen), **node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties" and isinstance(value, Mapping):
            out[key] = {name: _simplify(item, definitions, seen) for name, item in value.items()}
        elif key in ("items", "additionalProperties", "oneOf", "allOf", "not"):
            out[key] = _simplify(value, definitions, seen)
        else:
            out[key] = value
    return out


def _union(node: dict[str, Any], key: str, variants: list[Any]) -> dict[str, Any]:
    """``anyOf``/``oneOf`` as harmony shows them: one type and null is that type, others are ``oneOf``."""
    rest = {k: v for k, v in node.items() if k != key}
    kinds = [v for v in variants if v != {"type": "null"}]
    if len(kinds) == 1 and len(kinds) < len(variants) and isinstance(kinds[0], Mapping):
        return {**kinds[0], **rest}
    return {**rest, "oneOf": variants}


# -- results ---------------------------------------------------------------------


def result_text(result: Any) -> tuple[str, bool]:
    """A ``CallToolResult`` as the tool message's text: text as it is (JSON on one line), structured
    content as JSON (when no text says it already), resources as their text, images and audio as a
    note (the model reads text only)."""
    parts = [_block_text(block) for block in result.content or ()]
    structured = getattr(result, "structured_content", None)
    if structured is not None and not any(getattr(block, "type", "") == "text" for block in result.content or ()):
        parts.append(json.dumps(structured, ensure_ascii=False))  # servers also send it as text, as the spec asks
    text = "\n".join(part for part in parts if part)
    if result.is_error:
        return _bounded(error_result(text or "the tool failed without saying why")), True
    return _bounded(text), False


def _block_text(block: Any) -> str:
    kind = getattr(block, "type", "")
    if kind == "text":
        return _compact_json(block.text)
    if kind in ("image", "audio"):
        return f"[{kind} ({block.mime_type}, {_decoded_size(block.data)} bytes): not shown, the model reads text only]"
    if kind == "resource_link":
        about = f": {block.description}" if getattr(block, "description", None) else ""
        return f"[resource {block.name} at {block.uri}{about}]"
    if kind == "resource":
        resource = block.resource
        text = getattr(resource, "text", None)
        if text is not None:
            return f"[resource {resource.uri}]\n{text}"
        size = _decoded_size(getattr(resource, "blob", ""))
        return f"[resource {resource.uri} ({resource.mime_type or 'binary'}, {size} bytes): not shown, the model reads text only]"
    return f"[{kind or 'content'}: not shown]"


def _compact_json(text: str) -> str:
    """A JSON object or array on one line, as function tools' results are: servers often indent
    theirs, which costs tokens and, for the demo model, the answer (it was trained on one line)."""
    if not text.lstrip().startswith(("{", "[")):
        return text
    try:
        return json.dumps(json.loads(text), ensure_ascii=False)
    except ValueError:
        return text


def _decoded_size(data: str | None) -> int:
    """The size of base64 data once decoded."""
    data = (data or "").strip()
    return len(data) * 3 // 4 - data[-2:].count("=")


def _bounded(text: str) -> str:
    if len(text) <= RESULT_CHARS:
        return text
    half = RESULT_CHARS // 2
    return f"{text[:half]}\n[… {len(text) - 2 * half} characters left out …]\n{text[-half:]}"
