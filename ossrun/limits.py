"""Bounds on what one request may ask: how deep its JSON nests, how large a grammar its schemas make.

A JSON Schema that holds an answer (``response_format``) or a call's arguments (``tool_choice``)
becomes a llama.cpp grammar. llama-cpp-python's converter writes ``maxItems: n`` (``maxLength``,
a pattern's ``{m,n}``) as n nested groups and ``minItems: n`` as n copies; llama.cpp's parser
recurses once per group and refuses more than a thousand of them, and far past that overflows
its thread's stack and kills the process, while copies grow the grammar without limit. So a
schema is checked here before any grammar is built: each bound names the keyword and where it
stands, and past it the request is refused. Tool parameters the model only reads are bounded
in depth alone (harmony's renderer refuses JSON nested much deeper).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from ossrun.errors import OssrunError

MAX_JSON_DEPTH = 128  # objects and arrays inside each other in a request body
MAX_SCHEMA_DEPTH = 64  # the same inside one schema (harmony renders tool parameters up to about 118)
MAX_SCHEMA_NODES = 10_000  # objects and arrays in one schema
MAX_REPEAT = 1000  # minItems, maxItems, minLength, maxLength, a pattern's {m,n}: llama.cpp's own limit
MAX_REPEAT_TOTAL = 8000  # their sum over one schema
# A pattern's {m,n} inside a group repeated {m,n} times: llama.cpp's grammar sampler follows every way
# the text may match at once, and past about a hundred ways each token takes seconds to check.
MAX_NESTED_REPEAT = 100
MAX_PROPERTIES = 256  # of one object: the converter's work grows with their square
MAX_GRAMMAR_BYTES = 256 << 10  # the grammar of one request, all its schemas together

REPEAT_KEYWORDS = ("minItems", "maxItems", "minLength", "maxLength")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
_SCHEMA_VALUES = (
    "items",
    "additionalProperties",
    "additionalItems",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
)
# {m}, {m,} and {m,n} in a pattern, not escaped.
_QUANTIFIER = re.compile(r"(?<!\\)\{(\d+)(,(\d*))?\}")


class SchemaError(OssrunError):
    """A JSON Schema past one of the bounds above; ``param`` names the keyword (``schema.properties.x.maxItems``)."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def json_depth(value: Any) -> int:
    """How many objects and arrays nest in ``value`` at the deepest (0 for a string or a number)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, Mapping):
            children: Any = node.values()
        elif isinstance(node, (list, tuple)):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def subschemas(schema: Mapping[str, Any], where: str) -> Iterator[tuple[Mapping[str, Any], str]]:
    """The schemas directly inside ``schema`` (properties, items, anyOf...), each with its path."""
    for key in _SCHEMA_VALUES:
        value = schema.get(key)
        if isinstance(value, Mapping):
            yield value, f"{where}.{key}"
        elif key in ("items", "additionalItems") and isinstance(value, list):
            yield from ((v, f"{where}.{key}[{i}]") for i, v in enumerate(value) if isinstance(v, Mapping))
    for key in _SCHEMA_LISTS:
        value = schema.get(key)
        if isinstance(value, list):
            yield from ((v, f"{where}.{key}[{i}]") for i, v in enumerate(value) if isinstance(v, Mapping))
    for key in _SCHEMA_MAPS:
        value = schema.get(key)
        if isinstance(value, Mapping):
            yield from ((v, f"{where}.{key}.{name}") for name, v in value.items() if isinstance(v, Mapping))


def walk_schema(schema: Mapping[str, Any], where: str) -> Iterator[tuple[Mapping[str, Any], str]]:
    """``schema`` and every schema inside it, with their paths (no ``$ref`` is followed)."""
    stack = [(schema, where)]
    while stack:
        node, path = stack.pop()
        yield node, path
        stack.extend(reversed(list(subschemas(node, path))))


def check_schema(schema: Any, where: str, *, grammar: bool) -> None:
    """A SchemaError naming the first bound ``schema`` is past; ``where`` names the schema (a request
    field like ``response_format.json_schema.schema``); ``grammar``: it will become one."""
    if not isinstance(schema, Mapping):
        raise SchemaError(f"{where} must be a JSON Schema object", where)
    nodes, stack = 0, [(schema, 1)]
    while stack:  # depth and size of the whole document, whatever its keywords
        node, depth = stack.pop()
        children = node.values() if isinstance(node, Mapping) else node if isinstance(node, list) else None
        if children is None:
            continue
        nodes += 1
        if depth > MAX_SCHEMA_DEPTH:
            raise SchemaError(f"{where} nests objects and arrays more than {MAX_SCHEMA_DEPTH} deep: flatten it", where)
        if nodes > MAX_SCHEMA_NODES:
            raise SchemaError(f"{where} holds more than {MAX_SCHEMA_NODES} objects and arrays: make it smaller", where)
        stack.extend((child, depth + 1) for child in children)
    if grammar:
        _check_repeats(schema, where)


def _check_repeats(schema: Mapping[str, Any], where: str) -> None:
    total = 0
    for node, path in walk_schema(schema, where):
        properties = node.get("properties")
        if isinstance(properties, Mapping) and len(properties) > MAX_PROPERTIES:
            raise SchemaError(
                f"{path}.properties has {len(properties)} properties, more than the {MAX_PROPERTIES} "
                f"one object may have in a grammar: split it",
                f"{path}.properties",
            )
        counts = {key: _count(node, key, path) for key in REPEAT_KEYWORDS if key in node}
        for low, high in (("minItems", "maxItems"), ("minLength", "maxLength")):
            if low in counts and high in counts and counts[low] > counts[high]:
                raise SchemaError(
                    f"{path}.{low} is {counts[low]}, more than its {high} {counts[high]}: no value can match", f"{path}.{low}"
                )
        total += max(counts.get("minItems", 0), counts.get("maxItems", 0))
        total += max(counts.get("minLength", 0), counts.get("maxLength", 0))
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            total += _pattern_repeats(pattern, f"{path}.pattern")
        if total > MAX_REPEAT_TOTAL:
            raise SchemaError(
                f"{where} repeats items and characters more than {MAX_REPEAT_TOTAL} times in all "
                f"(minItems, maxItems, minLength, maxLength and a pattern's {{m,n}} added up, "
                f"reached at {path}): lower them",
                path,
            )


def _count(node: Mapping[str, Any], key: str, path: str) -> int:
    value = node[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise SchemaError(f"{path}.{key} must be a whole number of at least 0, not {value!r}", f"{path}.{key}")
    if value > MAX_REPEAT:
        raise SchemaError(
            f"{path}.{key} is {value}, more than the {MAX_REPEAT} a grammar can hold: lower it or leave it out", f"{path}.{key}"
        )
    return value


def _pattern_repeats(pattern: str, path: str) -> int:
    total = 0
    for match in _QUANTIFIER.finditer(pattern):
        count = _quantifier_count(match)
        if count > MAX_REPEAT:
            raise SchemaError(
                f"{path} repeats something {match.group(0)} times, more than the {MAX_REPEAT} a grammar can hold: lower it", path
            )
        total += count
    nested = _nested_repeats(pattern)
    if nested > MAX_NESTED_REPEAT:
        raise SchemaError(
            f"{path} nests repetitions {nested} times deep in all (a group repeated {{m,n}} times holding "
            f"one repeated {{m,n}} times multiplies them): more than the {MAX_NESTED_REPEAT} a grammar can "
            f"follow at speed; flatten it",
            path,
        )
    return total


def _quantifier_count(match: re.Match) -> int:
    low = int(match.group(1))
    return low if match.group(2) is None else int(match.group(3)) if match.group(3) else low


def _nested_repeats(pattern: str) -> int:
    """The largest product of {m,n} counts along a chain of repeated groups holding repetitions (1: none)."""
    frames = [1]  # per open group: the largest product inside it so far
    nested = 1
    index, atom = 0, 1  # atom: the product the last element carries (a group's inside, or 1)
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            index, atom = index + 2, 1
            continue
        if char == "[":  # a class: skipped whole
            end = index + 1
            while end < len(pattern) and pattern[end] != "]":
                end += 2 if pattern[end] == "\\" else 1
            index, atom = end + 1, 1
            continue
        match = _QUANTIFIER.match(pattern, index) if char == "{" else None
        if match:
            frames[-1] = max(frames[-1], atom * _quantifier_count(match))
            if atom > 1:
                nested = max(nested, atom * _quantifier_count(match))
            index, atom = match.end(), 1
            continue
        if char == "(":
            frames.append(1)
        elif char == ")" and len(frames) > 1:
            atom = frames.pop()
            frames[-1] = max(frames[-1], atom)
            index += 1
            continue
        index, atom = index + 1, 1
    return nested


def check_grammar_size(grammar: str, what: str) -> None:
    """An OssrunError if ``grammar`` (the whole grammar of a request) is past MAX_GRAMMAR_BYTES."""
    size = len(grammar.encode())
    if size > MAX_GRAMMAR_BYTES:
        raise OssrunError(
            f"{what} makes a grammar of {size >> 10} KiB, more than the {MAX_GRAMMAR_BYTES >> 10} KiB "
            f"one request may have: simplify the schemas"
        )
