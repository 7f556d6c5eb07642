"""JSON Schemas as llama.cpp grammar rules (GBNF), for outputs constrained to a format.

llama-cpp-python ships llama.cpp's own schema converter; this names the rule it defines so
that callers can embed it in a larger grammar.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from llama_cpp.llama_grammar import SchemaConverter

from ossrun.errors import OssrunError

ANY_OBJECT: Mapping[str, Any] = {"type": "object"}


def json_rules(schema: Optional[Mapping[str, Any]], rule: str) -> tuple[str, str]:
    """(GBNF rules, the name of the rule) for a JSON value matching ``schema`` (None: any object)."""
    converter = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    try:
        resolved = converter.resolve_refs(dict(ANY_OBJECT if schema is None else schema), "request")
        name = converter.visit(resolved, rule)
        return converter.format_grammar(), name
    except Exception as exc:  # the converter's own errors: unsupported keywords, bad references
        raise OssrunError(f"the JSON schema cannot be turned into a grammar ({type(exc).__name__}: {exc}): "
                          f"simplify it") from None
