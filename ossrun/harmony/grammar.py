"""Grammars over harmony's tokens: an answer held to a JSON format, a turn that must call a tool.

llama.cpp's grammar sampler (GBNF) matches text character by character; harmony's special
tokens are matched by id (``<[id]>``), so that the text of a special token written with
ordinary tokens never counts as one. These builders only assemble the grammar text; the
JSON rules come from the engine's schema converter.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

# Harmony's final-channel header as the model writes it: "<|channel|>final", maybe a content
# type ("<|constrain|>json"), then "<|message|>" (llama.cpp matches the tokens' text).
FINAL_HEADER_PATTERN = r"<\|channel\|>final[^<]*(?:<\|constrain\|>[^<]*)?<\|message\|>"
# llama.cpp's converter allows any character but '"' and '\\' in a JSON string; the text of a
# special token would then pass too, so a string may not hold "<|".
_JSON_CHAR = 'char ::= [^"\\\\] | '
_SAFE_JSON_CHAR = 'char ::= [^"\\\\<] | "<" [^|"\\\\] | '


def _ids(encoding: Any, *texts: str) -> list[int]:
    return [encoding.encode(text, allowed_special={text})[0] for text in texts]


def _token(token_id: int) -> str:
    return f"<[{token_id}]>"


def _literal(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def safe_json_rules(rules: str) -> str:
    """The converter's JSON rules with strings that cannot hold ``<|`` (see above)."""
    lines = rules.splitlines()
    return "\n".join(_SAFE_JSON_CHAR + line[len(_JSON_CHAR) :] if line.startswith(_JSON_CHAR) else line for line in lines)


def final_answer_grammar(encoding: Any, json_rules: str, json_rule: str) -> tuple[str, tuple[str, ...], frozenset[int]]:
    """(grammar, triggers, banned tokens) holding the final channel to ``json_rule``.

    Lazy: the reasoning stays free; from the final channel's header on, the answer must be the
    JSON value, and once it is complete only ``<|return|>`` may follow.
    """
    channel, constrain, message, call, endoftext = _ids(
        encoding, "<|channel|>", "<|constrain|>", "<|message|>", "<|call|>", "<|endoftext|>"
    )
    grammar = (
        f"root ::= final-header {json_rule}\n"
        f'final-header ::= {_token(channel)} "final" [^<]* ({_token(constrain)} [^<]*)? {_token(message)}\n'
        + safe_json_rules(json_rules)
    )
    return grammar, (FINAL_HEADER_PATTERN,), frozenset({call, endoftext})


def tool_call_grammar(encoding: Any, calls: Sequence[tuple[str, str, str]]) -> tuple[str, frozenset[int]]:
    """(grammar, banned tokens) for a turn that must end with a call to one of ``calls``.

    ``calls`` holds (recipient, its JSON rules, the arguments rule). Up to two messages of
    reasoning or preamble may come first (more and a model can think in circles instead of
    calling); the call is addressed either way harmony allows, and ends with ``<|call|>``.
    """
    channel, constrain, message, end, start, ret, endoftext = _ids(
        encoding, "<|channel|>", "<|constrain|>", "<|message|>", "<|end|>", "<|start|>", "<|return|>", "<|endoftext|>"
    )
    alternatives, rules = [], []
    for recipient, json_rules, json_rule in calls:
        head = (
            f"({_token(channel)} {_literal('commentary to=' + recipient + ' ')} | "
            f"{_literal(' to=' + recipient)} {_token(channel)} {_literal('commentary ')})"
        )
        alternatives.append(f'{head} ({_token(constrain)} "json")? {_token(message)} {json_rule}')
        rules.append(safe_json_rules(json_rules))
    grammar = (
        "root ::= (thought thought?)? call\n"
        f'thought ::= {_token(channel)} ("analysis" | "commentary") {_token(message)} text '
        f'{_token(end)} {_token(start)} "assistant"\n'
        'text ::= ([^<] | "<" [^|])*\n'
        f"call ::= {' | '.join(f'({a})' for a in alternatives)}\n" + "\n".join(_unique_rules(rules))
    )
    return grammar, frozenset({ret, endoftext})


def _unique_rules(blocks: Sequence[str]) -> list[str]:
    """Rule lines of several converted schemas, each rule once (they share ``space``, ``char``...)."""
    seen: dict[str, str] = {}
    for block in blocks:
        for line in block.splitlines():
            name = line.split(" ::= ", 1)[0]
            seen.setdefault(name, line)
    return list(seen.values())


def json_rule_name(recipient: str) -> str:
    """A grammar rule name for a recipient's arguments (letters, digits and dashes only)."""
    return "args-" + re.sub(r"[^A-Za-z0-9]+", "-", recipient).strip("-").lower()


def declared_schema(schema: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return schema if schema else {"type": "object"}
