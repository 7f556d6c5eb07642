"""JSON Schemas as llama.cpp grammar rules (GBNF), for outputs constrained to a format.

llama-cpp-python ships llama.cpp's own schema converter; this names the rule it defines so
that callers can embed it in a larger grammar. The converter rewrites the ``$ref`` s of the
schema it is given, so it only ever sees a copy; a schema is checked against the bounds of
:mod:`ossrun.limits` first, and each one is converted once (a request checks its prompt,
then runs it: both need the grammar).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from typing import Any

from llama_cpp.llama_grammar import SchemaConverter

from ossrun.errors import OssrunError
from ossrun.limits import check_schema, walk_schema

ANY_OBJECT: Mapping[str, Any] = {"type": "object"}
CONVERTED_SCHEMAS = 64  # the last ones kept, with their grammars (MAX_GRAMMAR_BYTES at most each)
# A JSON Schema pattern matches anywhere in the string unless it is anchored; the converter
# takes anchored ones only. This stands for "any text" around an unanchored one: any character
# of a JSON string but a quote, an escape or the "<" that could open a special token.
_ANY_TEXT = '[^"\\\\<]*'
_CLASSES = {
    "d": ("0-9", False),
    "D": ("0-9", True),
    "w": ("0-9A-Za-z_", False),
    "W": ("0-9A-Za-z_", True),
    "s": (" \\t\\n\\r\\x0B\\x0C", False),
    "S": (" \\t\\n\\r\\x0B\\x0C", True),
}
# What llama.cpp's grammar parser takes after a backslash; the converter passes others on unchanged.
_GRAMMAR_ESCAPES = 'xuUtrn\\"[]'


def json_rules(schema: Mapping[str, Any] | None, rule: str, where: str = "schema") -> tuple[str, str]:
    """(GBNF rules, the name of the rule) for a JSON value matching ``schema`` (None: any object).

    ``where`` names the schema in errors (``response_format.json_schema.schema``, ``get_weather.parameters``).
    """
    schema = ANY_OBJECT if schema is None else schema
    check_schema(schema, where, grammar=True)
    try:
        text = json.dumps(schema, ensure_ascii=False)  # in its own key order: properties come in that order
    except (TypeError, ValueError) as exc:
        raise OssrunError(f"{where} is not JSON ({exc}): use dicts, lists, strings, numbers, booleans and None") from None
    return _converted(text, rule, where)


@functools.lru_cache(maxsize=CONVERTED_SCHEMAS)
def _converted(text: str, rule: str, where: str) -> tuple[str, str]:
    schema = json.loads(text)  # the converter's own copy
    for node, _ in walk_schema(schema, ""):
        if isinstance(node.get("pattern"), str):
            node["pattern"] = anchored(translated(node["pattern"]))  # type: ignore[index]
    converter = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    try:
        resolved = converter.resolve_refs(schema, "request")
        name = converter.visit(resolved, rule)
        grammar = converter.format_grammar()
    except Exception as exc:  # the converter's own errors: unsupported keywords, bad references
        raise OssrunError(f"{where} cannot be turned into a grammar ({type(exc).__name__}: {exc}): simplify it") from None
    unknown = next((m.group(1) for m in re.finditer(r"\\(.)", grammar) if m.group(1) not in _GRAMMAR_ESCAPES), None)
    if unknown is not None:  # refused here rather than by llama.cpp, which would print the whole grammar on its way out
        raise OssrunError(
            f"{where} holds a pattern with \\{unknown}, which a grammar cannot hold: write it with a character class"
        )
    return grammar, name


def translated(pattern: str) -> str:
    """``pattern`` with the escapes the converter passes on as they are, which llama.cpp's grammar parser
    refuses, written as character classes: ``\\d``, ``\\w``, ``\\s`` and an escaped punctuation mark."""
    out, index, in_class = [], 0, False
    while index < len(pattern):
        char = pattern[index]
        if char == "\\" and index + 1 < len(pattern):
            escaped = pattern[index + 1]
            index += 2
            if escaped in _CLASSES:
                inner, negated = _CLASSES[escaped]
                out.append(inner if in_class and not negated else f"[{'^' if negated else ''}{inner}]")
            elif not escaped.isalnum() and escaped.isascii():
                out.append(f"\\x{ord(escaped):02X}" if in_class else f"[\\x{ord(escaped):02X}]")
            else:
                out.append(char + escaped)  # \\n, \\t, \\uXXXX...: the grammar's own escapes, or refused below
            continue
        if char == "[" and not in_class:
            in_class = True
        elif char == "]" and in_class:
            in_class = False
        out.append(char)
        index += 1
    return "".join(out)


def anchored(pattern: str) -> str:
    """``pattern`` as the converter takes it, ``^...$``: JSON Schema's unanchored patterns match anywhere."""
    starts = pattern.startswith("^")
    ends = pattern.endswith("$") and (len(pattern) - len(pattern[:-1].rstrip("\\")) - 1) % 2 == 0
    if starts and ends:
        return pattern
    body = pattern[1 if starts else 0 : len(pattern) - 1 if ends else len(pattern)]
    return "^" + ("" if starts else _ANY_TEXT) + (f"({body})" if body else "") + ("" if ends else _ANY_TEXT) + "$"
