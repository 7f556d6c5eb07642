"""Anthropic's Messages API: a ``/v1/messages`` body to ``Model.stream`` arguments, its events to a message.

The request, as Claude Code and the ``anthropic`` SDK send it: ``system`` (a string or text
blocks); ``messages`` of user and assistant turns, whose content is a string or blocks (text;
thinking, whose ``signature`` brings the reasoning back as ``encrypted_content`` does on the
Responses API; redacted_thinking, ignored; tool_use; tool_result, with ``is_error`` rendered as
ossrun's own tools report a failure, ``{"error": ...}``), and the ``system`` turns Claude Code
puts among them, which become user messages where they stand so that the prompt before them
never changes; ``tools`` with an ``input_schema`` (Anthropic's own server tools, such as
``web_search_20250305``, are left out of the prompt); ``tool_choice`` auto, any, tool or none,
with ``disable_parallel_tool_use``; ``max_tokens`` (required), ``stop_sequences``,
``temperature``, ``top_p``, ``top_k`` (accepted, not applied: gpt-oss samples with top_p
alone), ``metadata.user_id``, ``output_config.format`` (a JSON schema the answer keeps to), and
the effort, mapped onto harmony's three (:data:`OUTPUT_EFFORTS`, :func:`budget_effort`):

- ``output_config.effort``: low, medium and high as they are; xhigh and max are high;
- ``thinking: {"type": "enabled", "budget_tokens": N}``: low below 4,000 tokens, medium below
  16,000, high from there (Claude Code's "think" asks for 4,000, "ultrathink" for 31,999);
- ``thinking: {"type": "disabled"}``: low (gpt-oss always reasons);
- ``adaptive``, or no ``thinking``: the server's ``--reasoning-effort``.

``output_config.effort`` wins over a budget. Thinking blocks are in the answer when ``thinking``
is enabled or adaptive (empty, with their signature, under ``display: "omitted"``), never
otherwise: a client that did not ask for them reads ``content[0].text``. The reasoning before
tool calls is kept by the server as well (``state.py``), for clients that drop it.

The answer: thinking, text and tool_use blocks, streamed as ``message_start``, then
``content_block_start``, ``_delta`` and ``_stop`` per block, ``message_delta`` (stop_reason,
usage), ``message_stop``, with ``ping`` while the prompt is read. Usage: ``input_tokens`` are
the prompt tokens evaluated, ``cache_read_input_tokens`` those the KV cache held; Anthropic's
total input is their sum.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ossrun.events import Event, Reply, ToolCall
from ossrun.harmony.messages import ReasoningEffort
from ossrun.options import ReplyOptions
from ossrun.server import fields
from ossrun.server.fields import bad_request, describe, get, number
from ossrun.server.output import CallStep, ResultStep, Step, TextStep, Transcript, arguments_json, finish_reason, new_id
from ossrun.server.served import ServedModel
from ossrun.server.state import ServerState, decode_reasoning, encode_reasoning

ROLES = ("user", "assistant", "system")
OUTPUT_EFFORTS: dict[str, ReasoningEffort] = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}
THINKING_TYPES = ("enabled", "adaptive", "between_tools", "disabled")
MIN_BUDGET_TOKENS = 1024  # Anthropic's own minimum for budget_tokens
TOOL_CHOICES = ("auto", "any", "tool", "none")
# Blocks of Anthropic's own server tools in an assistant turn: nothing gpt-oss made, nothing to render.
SERVER_BLOCKS = (
    "server_tool_use",
    "web_search_tool_result",
    "web_fetch_tool_result",
    "code_execution_tool_result",
    "bash_code_execution_tool_result",
    "text_editor_code_execution_tool_result",
    "tool_search_tool_result",
    "container_upload",
    "mcp_tool_use",
    "mcp_tool_result",
)


def budget_effort(budget_tokens: int) -> ReasoningEffort:
    """The harmony effort of a thinking budget."""
    return "low" if budget_tokens < 4000 else "medium" if budget_tokens < 16000 else "high"


@dataclass
class MessagesCall:
    """One request, read: what ``Model.stream`` gets, and how the answer goes back."""

    messages: list[dict[str, Any]]
    options: ReplyOptions  # never truncating: the API drops no message
    model: str
    stream: bool = False
    thinking: str | None = None  # "shown", "omitted" (empty blocks with their signature) or None (no blocks)
    parallel_tool_use: bool = True
    server_tools: Mapping[str, str] = field(default_factory=dict)  # recipients the server runs -> their label


def parse(body: Mapping[str, Any], served: ServedModel, state: ServerState, *, counting: bool = False) -> MessagesCall:
    """A ``/v1/messages`` body (``counting``: a ``/v1/messages/count_tokens`` one, without max_tokens)."""
    model = served.check_model(get(body, "model", (str,), required=True))
    max_tokens = None if counting else get(body, "max_tokens", (int,), required=True)
    if max_tokens is not None and max_tokens < 1:
        raise bad_request(f"max_tokens is {max_tokens}: it must be at least 1", "max_tokens", "invalid_value")
    effort, thinking = effort_and_thinking(body, served.default_effort)
    temperature = number(body, "temperature", 0.0, 1.0)
    top_p = number(body, "top_p", 0.0, 1.0, low_open=True)
    top_k = get(body, "top_k", (int,))
    if top_k is not None and top_k < 0:
        raise bad_request(f"top_k is {top_k}: it must be at least 0", "top_k", "invalid_value")
    stop = fields.stop_texts(body["stop_sequences"], "stop_sequences") if body.get("stop_sequences") is not None else None
    check_metadata(body.get("metadata"))
    given = get(body, "tools", (list,), default=[])
    tools = [tool for tool in (function_tool(tool, f"tools[{i}]") for i, tool in enumerate(given)) if tool]
    names = [tool["function"]["name"] for tool in tools]
    choice, parallel = tool_choice(body.get("tool_choice"), names)
    chosen = fields.tool_choice(choice, names)
    for index, tool in enumerate(tools):
        fields.schema(tool["function"]["parameters"], f"tools[{index}].input_schema", grammar=tool["function"]["name"] in chosen)
    output_format = get(body, "output_config", (dict,), default={}).get("format")
    response_format = json_format(output_format) if output_format is not None else None
    messages = get(body, "messages", (list,), required=True)
    if not messages:
        raise bad_request("messages is empty: send at least one message", "messages")
    system = system_text(body.get("system"))
    call = MessagesCall(
        messages=([{"role": "system", "content": system}] if system else []) + convert_messages(messages, state),
        options=ReplyOptions(
            reasoning_effort=effort,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            stop=stop,
            tools=tools,
            tool_choice=choice,
            response_format=response_format,
            truncate=False,
        ),
        model=model,
        stream=bool(get(body, "stream", (bool,), default=False)),
        thinking=thinking,
        parallel_tool_use=parallel,
    )
    if not counting:
        call.options, call.server_tools = served.with_server_tools(call.options, body)
    return call


def effort_and_thinking(body: Mapping[str, Any], default: ReasoningEffort) -> tuple[ReasoningEffort, str | None]:
    """The harmony effort of ``thinking`` and ``output_config.effort``, and how thinking blocks are shown."""
    effort: ReasoningEffort = default
    shown: str | None = None
    thinking = get(body, "thinking", (dict,))
    if thinking is not None:
        kind = get(thinking, "type", (str,), "thinking.", required=True)
        if kind not in THINKING_TYPES:
            raise bad_request(
                f"thinking.type {kind!r} is not one of {', '.join(THINKING_TYPES)}", "thinking.type", "invalid_value"
            )
        display = get(thinking, "display", (str,), "thinking.")
        if display not in (None, "summarized", "omitted"):
            raise bad_request(
                f"thinking.display {display!r} is not one of summarized, omitted", "thinking.display", "invalid_value"
            )
        if kind == "enabled":
            budget = get(thinking, "budget_tokens", (int,), "thinking.", required=True)
            if budget < MIN_BUDGET_TOKENS:
                raise bad_request(
                    f"thinking.budget_tokens is {budget}: it must be at least {MIN_BUDGET_TOKENS}",
                    "thinking.budget_tokens",
                    "invalid_value",
                )
            effort = budget_effort(budget)
        if kind == "disabled":
            effort = "low"
        else:
            shown = "omitted" if display == "omitted" else "shown"
    output_config = get(body, "output_config", (dict,), default={})
    asked = get(output_config, "effort", (str,), "output_config.")
    if asked is not None:
        if asked not in OUTPUT_EFFORTS:
            raise bad_request(
                f"output_config.effort {asked!r} is not one of {', '.join(OUTPUT_EFFORTS)}",
                "output_config.effort",
                "invalid_value",
            )
        effort = OUTPUT_EFFORTS[asked]
    return effort, shown


def check_metadata(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, Mapping):
        raise bad_request(f"metadata must be an object, not {describe(value)}", "metadata", "invalid_type")
    for key in value:
        if key != "user_id":
            raise bad_request(f"metadata.{key} is not a field of metadata: it holds user_id only", f"metadata.{key}")
    get(value, "user_id", (str,), "metadata.")


def function_tool(tool: Any, where: str) -> dict[str, Any] | None:
    """A tool with an ``input_schema`` as a function ossrun declares; None for Anthropic's server tools."""
    if not isinstance(tool, Mapping):
        raise bad_request(f"{where} must be an object", where, "invalid_type")
    kind = get(tool, "type", (str,), f"{where}.")
    if kind not in (None, "custom"):
        return None  # web_search_20250305, bash_20250124, ...: tools Anthropic runs or defines, left out
    name = fields.tool_name(tool, where)
    description = get(tool, "description", (str,), f"{where}.")
    schema = get(tool, "input_schema", (dict,), f"{where}.", required=True)
    function: dict[str, Any] = {"name": name, "parameters": schema}
    if description:
        function["description"] = description
    return {"type": "function", "function": function}


def tool_choice(value: Any, names: list[str]) -> tuple[Any, bool]:
    """Anthropic's ``tool_choice`` as ossrun's (OpenAI's), and whether several calls may be made."""
    if value is None:
        return None, True
    if not isinstance(value, Mapping):
        raise bad_request(
            f'tool_choice must be an object like {{"type": "auto"}}, not {describe(value)}', "tool_choice", "invalid_type"
        )
    kind = get(value, "type", (str,), "tool_choice.", required=True)
    if kind not in TOOL_CHOICES:
        raise bad_request(
            f"tool_choice.type {kind!r} is not one of {', '.join(TOOL_CHOICES)}", "tool_choice.type", "invalid_value"
        )
    parallel = not get(value, "disable_parallel_tool_use", (bool,), "tool_choice.", default=False)
    if kind in ("any", "tool") and not names:
        raise bad_request(
            f"tool_choice.type is {kind!r} but the request has no tools: add tools or use auto",
            "tool_choice.type",
            "invalid_value",
        )
    if kind == "tool":
        name = get(value, "name", (str,), "tool_choice.", required=True)
        if name not in names:
            raise bad_request(f"tool_choice.name {name!r} is not among the request's tools", "tool_choice.name", "invalid_value")
        return {"type": "function", "function": {"name": name}}, parallel
    return {"auto": "auto", "any": "required", "none": "none"}[kind], parallel


def json_format(value: Any) -> dict[str, Any]:
    """``output_config.format`` (``{"type": "json_schema", "schema": ...}``) as a response_format."""
    where = "output_config.format"
    if not isinstance(value, Mapping):
        raise bad_request(f'{where} must be an object like {{"type": "json_schema", "schema": ...}}', where, "invalid_type")
    if value.get("type") != "json_schema":
        raise bad_request(f"{where}.type {value.get('type')!r} is not json_schema", f"{where}.type", "invalid_value")
    schema = get(value, "schema", (dict,), f"{where}.", required=True)
    fields.schema(schema, f"{where}.schema", grammar=True)
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}


def system_text(value: Any) -> str:
    """``system``: a string, or text blocks joined by blank lines."""
    if value is None or isinstance(value, str):
        return value or ""
    if not isinstance(value, list):
        raise bad_request(f"system must be a string or an array of text blocks, not {describe(value)}", "system", "invalid_type")
    return "\n\n".join(text for text in (block_text(block, f"system[{i}]") for i, block in enumerate(value)) if text)


def block_text(block: Any, where: str) -> str:
    """The text of a text block."""
    if not isinstance(block, Mapping):
        raise bad_request(f"{where} must be a content block, not {describe(block)}", where, "invalid_type")
    if block.get("type") != "text":
        raise bad_request(
            f"{where}.type {block.get('type')!r} is not supported here: gpt-oss reads text blocks",
            f"{where}.type",
            "unsupported_content",
        )
    return get(block, "text", (str,), f"{where}.", required=True)


def blocks_of(content: Any, where: str) -> list[Mapping[str, Any]]:
    """A message's content as blocks: a string is one text block."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise bad_request(
            f"{where} must be a string or an array of content blocks, not {describe(content)}", where, "invalid_type"
        )
    for index, block in enumerate(content):
        if not isinstance(block, Mapping) or not isinstance(block.get("type"), str):
            raise bad_request(f"{where}[{index}] must be a content block with a type", f"{where}[{index}]", "invalid_type")
    return content


def convert_messages(messages: list[Any], state: ServerState) -> list[dict[str, Any]]:
    """Anthropic's messages as the dicts ``Model.stream`` takes."""
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_use id -> tool name, for the tool_result blocks that follow
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, Mapping):
            raise bad_request(f"{where} must be an object with a role and content", where, "invalid_type")
        role = get(message, "role", (str,), f"{where}.", required=True)
        if role not in ROLES:
            raise bad_request(f"{where}.role {role!r} is not one of {', '.join(ROLES)}", f"{where}.role", "invalid_value")
        if message.get("content") is None:
            raise bad_request(f"{where}.content is required", f"{where}.content", "missing_required_parameter")
        blocks = blocks_of(message["content"], f"{where}.content")
        if role == "assistant":
            out.append(assistant_message(blocks, f"{where}.content", names, state))
        elif role == "system":  # Claude Code's turns of instructions among the messages, kept in their place
            text = "".join(block_text(block, f"{where}.content[{i}]") for i, block in enumerate(blocks))
            out.append({"role": "user", "content": text})
        else:
            out.extend(user_messages(blocks, f"{where}.content", names))
    if out and out[-1]["role"] == "assistant":
        raise bad_request(
            f"messages[{len(messages) - 1}] is the assistant's: gpt-oss cannot continue a prefilled "
            f"answer; end with a user message",
            f"messages[{len(messages) - 1}].role",
            "invalid_value",
        )
    return out


def assistant_message(blocks: list[Mapping[str, Any]], where: str, names: dict[str, str], state: ServerState) -> dict[str, Any]:
    texts, thoughts, calls = [], [], []
    for index, block in enumerate(blocks):
        at = f"{where}[{index}]"
        kind = block["type"]
        if kind == "text":
            texts.append(get(block, "text", (str,), f"{at}.", required=True))
        elif kind == "thinking":
            signature = get(block, "signature", (str,), f"{at}.", default="")
            thoughts.append(decode_reasoning(signature) or get(block, "thinking", (str,), f"{at}.", default=""))
        elif kind == "tool_use":
            call_id = get(block, "id", (str,), f"{at}.", required=True)
            name = get(block, "name", (str,), f"{at}.", required=True)
            given = get(block, "input", (dict,), f"{at}.", required=True)
            names[call_id] = name
            arguments = arguments_text(call_id, given, state)
            calls.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}})
        elif kind != "redacted_thinking" and kind not in SERVER_BLOCKS:
            raise bad_request(
                f"{at}.type {kind!r} is not a block of an assistant message (text, thinking, tool_use)",
                f"{at}.type",
                "invalid_value",
            )
    entry: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    reasoning = "".join(thoughts) or next((state.reasoning.get(c["id"]) for c in calls if state.reasoning.get(c["id"])), None)
    if calls:
        entry["tool_calls"] = calls
    if reasoning:
        entry["reasoning"] = reasoning
    return entry


def arguments_text(call_id: str, given: Mapping[str, Any], state: ServerState) -> str:
    """A tool_use's input as the model wrote it (the server kept its text), so the prompt stays what it read."""
    written = state.arguments.get(call_id)
    if written is not None:
        try:
            if json.loads(written) == given:
                return written
        except ValueError:
            pass
    return json.dumps(given, ensure_ascii=False)


def user_messages(blocks: list[Mapping[str, Any]], where: str, names: Mapping[str, str]) -> list[dict[str, Any]]:
    """A user turn: its text blocks as user messages, its tool_result blocks as tool results, in order."""
    out: list[dict[str, Any]] = []
    texts: list[str] = []
    for index, block in enumerate(blocks):
        at = f"{where}[{index}]"
        kind = block["type"]
        if kind == "text":
            texts.append(get(block, "text", (str,), f"{at}.", required=True))
            continue
        if kind != "tool_result":
            raise bad_request(
                f"{at}.type {kind!r} is not supported: gpt-oss reads text and tool_result blocks",
                f"{at}.type",
                "unsupported_content",
            )
        if texts:
            out.append({"role": "user", "content": "".join(texts)})
            texts = []
        call_id = get(block, "tool_use_id", (str,), f"{at}.", required=True)
        if call_id not in names:
            raise bad_request(
                f"{at}.tool_use_id {call_id!r} answers no tool_use block of an earlier assistant message",
                f"{at}.tool_use_id",
                "invalid_value",
            )
        text = result_text(block.get("content"), f"{at}.content")
        if get(block, "is_error", (bool,), f"{at}.", default=False):
            text = json.dumps({"error": text}, ensure_ascii=False)  # as ossrun's own tools report a failure
        out.append({"role": "tool", "name": names[call_id], "content": text})
    if texts:
        out.append({"role": "user", "content": "".join(texts)})
    return out


def result_text(content: Any, where: str) -> str:
    """A tool_result's content as text; blocks gpt-oss cannot read (an image a tool returned) are named instead."""
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for index, block in enumerate(blocks_of(content, where)):
        if block["type"] == "text":
            parts.append(get(block, "text", (str,), f"{where}[{index}].", required=True))
        else:
            parts.append(f"[{block['type']} left out: gpt-oss reads text only]")
    return "".join(parts)


# -- the answer ---------------------------------------------------------------


class Message:
    """A reply's events as Messages API stream events, or one message object."""

    def __init__(self, call: MessagesCall, state: ServerState, prompt_tokens: int = 0):
        self.call = call
        self.state = state
        self.prompt_tokens = prompt_tokens  # the rendered prompt's length, for message_start's usage
        self.id = new_id("msg")
        self.transcript = Transcript(call.server_tools)
        self.blocks: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None  # the block being written
        self._thought: list[str] = []  # the reasoning of the open thinking block, for its signature
        self.reply: Reply | None = None

    def open(self) -> list[dict[str, Any]]:
        """``message_start``, before the prompt is read: its usage counts the whole prompt as input; the
        last ``message_delta`` splits it into what was evaluated and what the cache held."""
        usage = {
            "input_tokens": self.prompt_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 0,
        }
        message: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.call.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }
        return [{"type": "message_start", "message": message}]

    def feed(self, event: Event) -> list[dict[str, Any]]:
        """The stream events one reply event makes (the blocks are collected for :meth:`message`)."""
        return [out for step in self.transcript.feed(event) for out in self._step(step)]

    def close(self) -> list[dict[str, Any]]:
        """The last events: the open block's end, ``message_delta`` with the stop reason and usage, ``message_stop``."""
        out = self._close()
        reply = self._finish()
        delta = {"stop_reason": self._stop_reason(reply), "stop_sequence": reply.stop_text}
        return out + [{"type": "message_delta", "delta": delta, "usage": self.usage(reply)}, {"type": "message_stop"}]

    def message(self, events: Iterable[Event]) -> dict[str, Any]:
        """The whole message, for a request that is not streamed."""
        for event in events:
            self.feed(event)
        self._close()
        reply = self._finish()
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.call.model,
            "content": self.blocks,
            "stop_reason": self._stop_reason(reply),
            "stop_sequence": reply.stop_text,
            "usage": self.usage(reply),
        }

    # -- blocks -------------------------------------------------------------

    def _step(self, step: Step) -> list[dict[str, Any]]:
        if isinstance(step, TextStep):
            if step.kind == "text":
                return self._write("text", step.text)
            if not self.call.thinking:
                return []
            self._thought.append(step.text)
            return self._write("thinking", step.text)
        if isinstance(step, CallStep) and step.kind == "call":
            return self._tool_use(step.call)
        if self.call.thinking != "shown":  # the server's own tools (python, MCP): shown with the thinking
            return []
        server = self.call.server_tools.get(step.call.recipient)
        label = "python" if step.call.recipient == "python" else f"MCP {server}: {step.call.name}"
        shown = f"[output]\n{step.result.output}\n" if isinstance(step, ResultStep) else f"\n[{label}]\n{step.call.arguments}\n"
        return self._write("thinking", shown)

    def _write(self, kind: str, text: str) -> list[dict[str, Any]]:
        """``text`` into a block of ``kind`` (thinking or text): the open one, or a new one after the last is closed."""
        out: list[dict[str, Any]] = []
        block = self._open
        if block is None or block["type"] != kind:
            out = self._close()
            block = {"type": "thinking", "thinking": "", "signature": ""} if kind == "thinking" else {"type": "text", "text": ""}
            self._open = block
            self.blocks.append(block)
            out.append({"type": "content_block_start", "index": len(self.blocks) - 1, "content_block": dict(block)})
        if kind == "thinking" and self.call.thinking == "omitted":
            return out  # the block stays empty: its signature alone carries the reasoning
        block[kind] += text
        return out + [self._delta({"type": f"{kind}_delta", kind: text})]

    def _tool_use(self, call: ToolCall) -> list[dict[str, Any]]:
        if not self.call.parallel_tool_use and any(b["type"] == "tool_use" for b in self.blocks):
            return []
        out = self._close()
        arguments = arguments_json(call)
        try:
            given = json.loads(arguments)
        except ValueError:
            given = None
        call_id = new_id("toolu")
        if isinstance(given, dict):
            self.state.arguments.put(call_id, arguments)
        else:  # the model wrote no JSON object: the client gets an empty input (and says what is missing)
            given, arguments = {}, "{}"
        block = {"type": "tool_use", "id": call_id, "name": call.name, "input": given}
        self.blocks.append(block)
        index = len(self.blocks) - 1
        delta = {"type": "input_json_delta", "partial_json": arguments}
        return out + [
            {"type": "content_block_start", "index": index, "content_block": {**block, "input": {}}},
            {"type": "content_block_delta", "index": index, "delta": delta},
            {"type": "content_block_stop", "index": index},
        ]

    def _delta(self, delta: dict[str, Any]) -> dict[str, Any]:
        return {"type": "content_block_delta", "index": len(self.blocks) - 1, "delta": delta}

    def _close(self) -> list[dict[str, Any]]:
        block, self._open = self._open, None
        if block is None:
            return []
        out = []
        if block["type"] == "thinking":
            block["signature"] = encode_reasoning("".join(self._thought))
            self._thought = []
            out.append(self._delta({"type": "signature_delta", "signature": block["signature"]}))
        return out + [{"type": "content_block_stop", "index": len(self.blocks) - 1}]

    # -- the end ------------------------------------------------------------

    def _finish(self) -> Reply:
        reply = self.transcript.reply
        if reply is None:  # pragma: no cover - Model.stream always ends with Done
            raise RuntimeError("the reply ended without Done")
        self.reply = reply
        if reply.reasoning:
            for block in self.blocks:  # for clients that will not send the thinking back
                if block["type"] == "tool_use":
                    self.state.reasoning.put(block["id"], reply.reasoning)
        return reply

    def _stop_reason(self, reply: Reply) -> str:
        if reply.pending_calls and any(b["type"] == "tool_use" for b in self.blocks):
            return "tool_use"
        if reply.stop_text is not None:
            return "stop_sequence"
        return "max_tokens" if finish_reason(reply) == "length" else "end_turn"

    def usage(self, reply: Reply) -> dict[str, Any]:
        usage = reply.usage
        return {
            "input_tokens": usage.prompt_tokens - usage.cached_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": usage.cached_tokens,
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"thinking_tokens": self.transcript.reasoning_tokens},
        }


def error_event(error: fields.ApiError) -> dict[str, Any]:
    """An ``error`` event, which ends a stream that cannot go on."""
    return error.anthropic()[1]


def count(prompt_ids: list[int]) -> dict[str, Any]:
    """The answer of ``/v1/messages/count_tokens``."""
    return {"input_tokens": len(prompt_ids)}
