"""What a caller asks the reply to look like: ``response_format`` and ``tool_choice``.

Both take OpenAI's shapes. A JSON format is declared to the model in harmony's Response
Formats section and enforced by llama.cpp's grammar sampler from the start of the final
channel, so the reasoning stays free. ``tool_choice`` ``"required"`` or one named function
holds the first turn to a call (reasoning may come first; arguments follow the function's
schema); ``"none"`` leaves the tools out of the prompt and bans ``<|call|>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ossrun.engine.protocol import Constraint
from ossrun.errors import OssrunError
from ossrun.harmony.grammar import declared_schema, final_answer_grammar, json_rule_name, tool_call_grammar
from ossrun.harmony.prompt import ResponseFormat
from ossrun.limits import check_grammar_size, check_schema
from ossrun.tools import Toolbox

TOOL_CHOICES = ("auto", "none", "required")
ANSWER_RULE = "answer"


@dataclass(frozen=True)
class OutputRules:
    declared: ResponseFormat | None  # the Response Formats section, if any
    no_tools: bool  # tool_choice "none": the prompt declares no tools
    first_turn: Constraint | None  # the reply's first assistant turn
    later_turns: Constraint | None  # the turns after tool results


def response_format_of(value: Any) -> ResponseFormat | None:
    """OpenAI's ``response_format`` (or the Responses API's ``text.format``) as a ResponseFormat; None for text."""
    if value is None or value == "text":
        return None
    if not isinstance(value, Mapping):
        raise OssrunError(f'response_format must be an object like {{"type": "json_schema", ...}}, not {value!r}')
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return ResponseFormat("json_object", {"type": "object"}, "Answer with one JSON object.")
    if kind != "json_schema":
        raise OssrunError(f"response_format type {kind!r} is not supported: use text, json_object or json_schema")
    spec = value.get("json_schema", value)  # Chat Completions nests it; the Responses API does not
    if not isinstance(spec, Mapping):
        raise OssrunError("response_format json_schema must be an object with a name and a schema")
    schema = spec.get("schema")
    if schema is None:
        schema = {"type": "object"}
    if not isinstance(schema, Mapping):
        raise OssrunError("response_format json_schema.schema must be a JSON Schema object")
    name = spec.get("name") or "response"
    if not isinstance(name, str):
        raise OssrunError("response_format json_schema.name must be a string")
    return ResponseFormat(name, dict(schema), str(spec.get("description") or ""))


def chosen_recipients(toolbox: Toolbox, tool_choice: Any) -> list[str] | None:
    """The recipients a first turn must call (None: no such rule)."""
    if tool_choice is None or tool_choice == "auto":
        return None
    if tool_choice == "required":
        recipients = list(toolbox.functions)
        if not recipients:
            raise OssrunError('tool_choice is "required" but no function tools were given: add tools or use "auto"')
        return recipients
    if isinstance(tool_choice, Mapping):
        kind = tool_choice.get("type")
        if kind in ("auto", "allowed_tools"):
            return None
        if kind == "function":
            spec = tool_choice.get("function", tool_choice)
            name = spec.get("name") if isinstance(spec, Mapping) else None
            namespace = tool_choice.get("namespace")
            for recipient, tool in toolbox.functions.items():
                if name in (tool.name, recipient) and namespace in (None, tool.namespace):
                    return [recipient]
            raise OssrunError(f"tool_choice names the function {name!r}, which is not among the tools given")
    raise OssrunError(
        f"tool_choice {tool_choice!r} is not supported: use auto, none, required or "
        f'{{"type": "function", "function": {{"name": ...}}}}'
    )


def output_rules(encoding: Any, toolbox: Toolbox, response_format: Any = None, tool_choice: Any = None) -> OutputRules:
    # The schema converter comes with llama-cpp-python: loaded only when a format asks for it.
    from ossrun.engine.grammar import json_rules

    for tool in toolbox.functions.values():  # read by harmony's renderer, which refuses JSON nested too deep
        if tool.parameters is not None:
            check_schema(tool.parameters, f"{tool.name}.parameters", grammar=False)
    declared = response_format_of(response_format)
    answer = None
    if declared is not None:
        nested = isinstance(response_format, Mapping) and "json_schema" in response_format
        where = "response_format.json_schema.schema" if nested else "response_format.schema"
        rules, rule = json_rules(declared.schema, ANSWER_RULE, where)
        grammar, triggers, banned = final_answer_grammar(encoding, rules, rule)
        if toolbox.functions and tool_choice != "none":
            banned = frozenset(b for b in banned if b != _id(encoding, "<|call|>"))  # calls may still come first
        check_grammar_size(grammar, "the response_format")
        answer = Constraint(grammar, triggers, banned)
    if tool_choice == "none":
        no_call = frozenset({_id(encoding, "<|call|>")})
        constraint = (
            Constraint(answer.grammar, answer.triggers, answer.banned | no_call) if answer else Constraint(banned=no_call)
        )
        return OutputRules(declared, True, constraint, constraint)
    recipients = chosen_recipients(toolbox, tool_choice)
    if recipients is None:
        return OutputRules(declared, False, answer, answer)
    calls = []
    for recipient in recipients:
        tool = toolbox.functions[recipient]
        rules, rule = json_rules(declared_schema(tool.parameters), json_rule_name(recipient), f"{tool.name}.parameters")
        calls.append((recipient, rules, rule))
    grammar, banned = tool_call_grammar(encoding, calls)
    check_grammar_size(grammar + ((answer.grammar or "") if answer else ""), "the tool_choice and response_format")
    return OutputRules(declared, False, Constraint(grammar, (), banned), answer)


def _id(encoding: Any, text: str) -> int:
    return encoding.encode(text, allowed_special={text})[0]
