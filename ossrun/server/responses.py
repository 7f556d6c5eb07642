"""The Responses API: ``input`` items to ``Model.stream`` arguments, its events to output items.

Input: a string or items (messages with ``input_text`` parts and roles developer, system,
user, assistant; ``reasoning``; ``function_call``; ``function_call_output``), ``instructions``,
function and ``namespace`` tools (tool types ossrun cannot serve, like ``web_search``, are
left out of the prompt), ``previous_response_id`` (kept in memory, bounded) and
``include: ["reasoning.encrypted_content"]``, with which the reasoning travels to the client
and back in an opaque, versioned form that needs no server state. A client that sends a
``function_call`` back without its reasoning item (Open WebUI's Responses connection) gets the
reasoning the server kept by ``call_id``, as on Chat Completions.

Output: reasoning, message, function_call (and, for the server's python tool,
code_interpreter_call; for its MCP servers' tools, mcp_call) items, streamed with the event
order the SDK's ``responses.stream()`` requires: created, in_progress, then per item added /
content_part.added / deltas / done, and ``response.completed`` with the whole response.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ossrun.events import Event, Reply, ToolCall
from ossrun.options import ReplyOptions
from ossrun.server import fields
from ossrun.server.chat import sampling_options
from ossrun.server.fields import ApiError, bad_request, get, text_of
from ossrun.server.output import CallStep, ResultStep, Step, TextStep, Transcript, arguments_json, new_id, split_recipient
from ossrun.server.served import ServedModel, effort_of
from ossrun.server.state import ServerState, decode_reasoning, encode_reasoning

TEXT_PARTS = ("input_text", "output_text", "text")
ENCRYPTED_REASONING = "reasoning.encrypted_content"
SUMMARIES = ("auto", "concise", "detailed")


@dataclass
class ResponsesCall:
    messages: list[dict[str, Any]]
    options: ReplyOptions  # never truncating: the API drops no message
    model: str
    echo: dict[str, Any]  # request fields the response object repeats
    stream: bool = False
    store: bool = True
    include_encrypted: bool = False
    previous: list[dict[str, Any]] = field(default_factory=list)
    server_tools: Mapping[str, str] = field(default_factory=dict)  # recipients the server runs -> their label


def parse(body: Mapping[str, Any], served: ServedModel, state: ServerState) -> ResponsesCall:
    model = served.check_model(get(body, "model", (str,), required=True))
    effort = effort_of(body, served.default_effort)
    sampling = sampling_options(body, max_keys=("max_output_tokens",))
    tools = get(body, "tools", (list,), default=[])
    declared = [(index, served_tool(tool, f"tools[{index}]")) for index, tool in enumerate(tools)]
    check_tool_schemas(tools, declared, body.get("tool_choice"))
    text = get(body, "text", (dict,), default={})
    if text.get("format") is not None:
        fields.response_format(text["format"], "text.format")
    options = dataclasses.replace(
        sampling,
        reasoning_effort=effort,
        tools=[tool for _, tool in declared if tool],
        tool_choice=body.get("tool_choice"),
        response_format=text.get("format"),
    )
    include = get(body, "include", (list,), default=[])
    previous_id = get(body, "previous_response_id", (str,))
    previous: list[dict[str, Any]] = []
    if previous_id:
        stored = state.responses.get(previous_id)
        if stored is None:
            raise ApiError(
                400,
                f"previous response {previous_id!r} is not known here (responses are kept in memory, "
                f"a limited number, and only with store: true)",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        previous = stored["messages"]
    instructions = get(body, "instructions", (str,))
    messages = ([{"role": "system", "content": instructions}] if instructions else []) + previous
    messages += convert_input(body.get("input"), previous, state)
    reasoning = get(body, "reasoning", (dict,), default={})
    summary = get(reasoning, "summary", (str,), "reasoning.")
    if summary not in (None, *SUMMARIES):
        raise bad_request(
            f"reasoning.summary {summary!r} is not one of {', '.join(SUMMARIES)}", "reasoning.summary", "invalid_value"
        )
    call = ResponsesCall(
        messages=messages,
        options=options,
        model=model,
        echo={
            "instructions": instructions,
            "tools": [echoed_tool(tool) for tool in tools],
            "tool_choice": body.get("tool_choice") or "auto",
            "parallel_tool_calls": get(body, "parallel_tool_calls", (bool,), default=True),
            "temperature": body.get("temperature"),
            "top_p": body.get("top_p"),
            "max_output_tokens": body.get("max_output_tokens"),
            "previous_response_id": previous_id,
            "reasoning": {"effort": effort, "summary": summary},
            "text": {"format": text.get("format") or {"type": "text"}},
            "metadata": fields.string_map(body, "metadata"),
            "truncation": "disabled",
            "store": get(body, "store", (bool,), default=True),
        },
        stream=bool(get(body, "stream", (bool,), default=False)),
        store=bool(get(body, "store", (bool,), default=True)),
        include_encrypted=ENCRYPTED_REASONING in include,
    )
    call.options, call.server_tools = served.with_server_tools(call.options, body)
    return call


def served_tool(tool: Any, where: str) -> dict[str, Any] | None:
    """A function or namespace tool as ossrun declares it; None for tool types it cannot serve."""
    if not isinstance(tool, Mapping):
        raise bad_request(f"{where} must be an object", where, "invalid_type")
    kind = get(tool, "type", (str,), f"{where}.", required=True)
    if kind == "function":
        fields.tool_name(tool, where)
        get(tool, "parameters", (dict,), f"{where}.")
        return dict(tool)
    if kind == "namespace":
        fields.tool_name(tool, where)
        get(tool, "description", (str,), f"{where}.")
        inner = get(tool, "tools", (list,), f"{where}.", required=True)
        functions = []
        for number, function in enumerate(inner):
            if isinstance(function, Mapping) and function.get("type", "function") == "function":
                fields.tool_name(function, f"{where}.tools[{number}]")
                get(function, "parameters", (dict,), f"{where}.tools[{number}].")
                functions.append(dict(function))
        return {**tool, "tools": functions}
    return None  # web_search, file_search, custom tools...: not served, left out of the prompt


def check_tool_schemas(tools: list[Any], declared: list[tuple[int, dict[str, Any] | None]], choice: Any) -> None:
    """The parameters of every served function within bounds; those ``choice`` holds the turn to become grammars."""
    functions = []  # (name as tool_choice names it, its parameters, where they are)
    for index, tool in declared:
        if tool is None:
            continue
        if tool["type"] == "function":
            functions.append((tool["name"], tool.get("parameters"), f"tools[{index}].parameters"))
            continue
        for number, function in enumerate(tools[index].get("tools") or []):
            if isinstance(function, Mapping) and function.get("type", "function") == "function":
                functions.append(
                    (
                        f"{tool['name']}.{function['name']}",
                        function.get("parameters"),
                        f"tools[{index}].tools[{number}].parameters",
                    )
                )
    chosen = fields.tool_choice(choice, [name for name, _, _ in functions])
    for name, parameters, where in functions:
        if parameters is not None:
            fields.schema(parameters, where, grammar=name in chosen)


def echoed_tool(tool: Any) -> Any:
    """A tool as the response object repeats it, with the fields OpenAI's reference requires: a function's
    ``parameters`` and ``strict`` (null when not given), a namespace's ``description``. Tool types ossrun
    does not serve are repeated as sent."""
    if isinstance(tool, Mapping) and tool.get("type") == "function":
        return {**tool, "parameters": tool.get("parameters"), "strict": tool.get("strict")}
    if isinstance(tool, Mapping) and tool.get("type") == "namespace":
        return {**tool, "description": tool.get("description") or ""}
    return tool


def convert_input(value: Any, previous: list[dict[str, Any]], state: ServerState) -> list[dict[str, Any]]:
    """``input`` (a string or items) as the message dicts ``Model.stream`` takes."""
    if value is None or isinstance(value, str):
        return [{"role": "user", "content": value or ""}]
    if not isinstance(value, list):
        raise bad_request("input must be a string or an array of items", "input")
    out: list[dict[str, Any]] = []
    names = {c["id"]: c["function"]["name"] for m in previous for c in m.get("tool_calls", []) if c.get("id")}
    reasoning: str | None = None  # a reasoning item's text, for the assistant output that follows it
    for index, item in enumerate(value):
        where = f"input[{index}]"
        if not isinstance(item, Mapping):
            raise bad_request(f"{where} must be an object", where)
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            role = get(item, "role", (str,), f"{where}.", required=True)
            content = text_of(item.get("content"), f"{where}.content", TEXT_PARTS)
            if role in ("developer", "system"):
                out.append({"role": "system", "content": content})
            elif role == "user":
                out.append({"role": "user", "content": content})
            elif role == "assistant":
                entry: dict[str, Any] = {"role": "assistant", "content": content}
                if reasoning:
                    entry["reasoning"] = reasoning
                out.append(entry)
                reasoning = None
            else:
                raise bad_request(f"{where}.role {role!r} is not one of developer, system, user, assistant", f"{where}.role")
        elif kind == "reasoning":
            reasoning = reasoning_text(item, where) or reasoning
        elif kind == "function_call":
            name = get(item, "name", (str,), f"{where}.", required=True)
            namespace = get(item, "namespace", (str,), f"{where}.")
            full = f"{namespace}.{name}" if namespace and namespace != "functions" else name
            call_id = get(item, "call_id", (str,), f"{where}.", required=True)
            arguments = get(item, "arguments", (str,), f"{where}.", default="")
            names[call_id] = full
            call = {"id": call_id, "type": "function", "function": {"name": full, "arguments": arguments}}
            if reasoning is None:
                reasoning = state.reasoning.get(call_id)  # the client dropped it: the server kept it
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and last.get("tool_calls") and not last.get("content"):
                last["tool_calls"].append(call)  # calls of one turn
            else:
                entry = {"role": "assistant", "content": "", "tool_calls": [call]}
                if reasoning:
                    entry["reasoning"] = reasoning
                out.append(entry)
            reasoning = None
        elif kind == "function_call_output":
            call_id = get(item, "call_id", (str,), f"{where}.", required=True)
            if call_id not in names:
                raise bad_request(
                    f"{where}.call_id {call_id!r} answers no function_call of the input or the previous response",
                    f"{where}.call_id",
                )
            output = item.get("output")
            text = output if isinstance(output, str) else text_of(output, f"{where}.output", TEXT_PARTS)
            out.append({"role": "tool", "name": names[call_id], "content": text})
        # Items of tools ossrun does not serve (web_search_call, ...) carry nothing it can render.
    return out


def reasoning_text(item: Mapping[str, Any], where: str) -> str | None:
    """A reasoning item's text: from ``encrypted_content`` (ossrun's own form), else its content."""
    decoded = decode_reasoning(item.get("encrypted_content"))
    if decoded:
        return decoded
    parts = get(item, "content", (list,), f"{where}.", default=[])
    text = "".join(p.get("text", "") for p in parts if isinstance(p, Mapping) and isinstance(p.get("text"), str))
    return text or None


# -- the answer ---------------------------------------------------------------


class _Item:
    def __init__(self, index: int, data: dict[str, Any]):
        self.index = index
        self.data = data
        self.text: list[str] = []


class Response:
    """A reply's events as Responses API events (streamed) or one response object."""

    def __init__(self, call: ResponsesCall, state: ServerState):
        self.call = call
        self.state = state
        self.id = new_id("resp")
        self.created = int(time.time())
        self.transcript = Transcript(call.server_tools)
        self.items: list[_Item] = []
        self._open: _Item | None = None
        self._sequence = 0
        self.status = "in_progress"
        self.error: dict[str, Any] | None = None
        self.reply: Reply | None = None

    # -- events -------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    def start(self) -> list[dict[str, Any]]:
        return [self._event("response.created", response=self.body()), self._event("response.in_progress", response=self.body())]

    def keepalive(self) -> dict[str, Any]:
        """Repeated while a long prompt is read: clients drop streams that stay silent."""
        return self._event("response.in_progress", response=self.body())

    def feed(self, event: Event) -> list[dict[str, Any]]:
        """The events one reply event makes."""
        return [out for step in self.transcript.feed(event) for out in self._step(step)]

    def finish(self) -> list[dict[str, Any]]:
        out = self._close()
        reply = self.transcript.reply
        if reply is None:  # pragma: no cover - Model.stream always ends with Done
            raise RuntimeError("the reply ended without Done")
        self.reply = reply
        self.status = "incomplete" if reply.finish_reason == "length" else "completed"
        if reply.reasoning:
            for item in self.items:  # for clients that will not send the reasoning item back
                if item.data["type"] == "function_call":
                    self.state.reasoning.put(item.data["call_id"], reply.reasoning)
        self._store(reply)
        return out + [self._event("response.completed", response=self.body())]

    def failed(self, code: str, message: str) -> list[dict[str, Any]]:
        """Events that end a stream that cannot go on (a prompt too long, the server stopping)."""
        self.status, self.error = "failed", {"code": code, "message": message}
        return self._close() + [self._event("response.failed", response=self.body())]

    def run(self, events: Iterable[Event]) -> dict[str, Any]:
        """The whole response object, for a request that is not streamed."""
        self.start()
        for event in events:
            self.feed(event)
        self.finish()
        return self.body()

    # -- items --------------------------------------------------------------

    def _step(self, step: Step) -> list[dict[str, Any]]:
        if isinstance(step, TextStep):
            return self._text("reasoning" if step.kind == "reasoning" else "message", step.text)
        if isinstance(step, CallStep) and step.kind == "call":
            return self._function_call(step.call)
        if step.call.recipient != "python":  # an MCP server's tool, run here
            return self._mcp_step(step)
        if isinstance(step, CallStep):  # the server's own python tool runs
            data: dict[str, Any] = {
                "id": new_id("ci"),
                "type": "code_interpreter_call",
                "status": "in_progress",
                "code": step.call.arguments,
                "container_id": "ossrun-python",
                "outputs": [],
            }
            out = self._close() + self._add(data)
            self._open = None
            return out
        # the python tool's result completes its item
        item = next((i for i in reversed(self.items) if i.data["type"] == "code_interpreter_call"), None)
        if item is None:
            return []
        item.data.update(status="completed", outputs=[{"type": "logs", "logs": step.result.output}])
        return [self._event("response.output_item.done", output_index=item.index, item=item.data)]

    def _function_call(self, call: ToolCall) -> list[dict[str, Any]]:
        """A ``function_call`` item for the client to run, whole."""
        namespace, name = split_recipient(call.recipient)
        data: dict[str, Any] = {
            "id": new_id("fc"),
            "type": "function_call",
            "status": "in_progress",
            "call_id": new_id("call"),
            "name": name,
            "arguments": "",
        }
        if namespace:
            data["namespace"] = namespace
        out = self._close() + self._add(data)
        item = self.items[-1]
        arguments = arguments_json(call)
        item.data.update(arguments=arguments, status="completed")
        self._open = None
        return out + [
            self._event("response.function_call_arguments.delta", item_id=data["id"], output_index=item.index, delta=arguments),
            self._event(
                "response.function_call_arguments.done",
                item_id=data["id"],
                output_index=item.index,
                name=name,
                arguments=arguments,
            ),
            self._event("response.output_item.done", output_index=item.index, item=item.data),
        ]

    def _mcp_step(self, step: CallStep | ResultStep) -> list[dict[str, Any]]:
        """An ``mcp_call`` item: added with its arguments when the call starts, done with its output."""
        if isinstance(step, CallStep):
            arguments = arguments_json(step.call)
            data: dict[str, Any] = {
                "id": new_id("mcp"),
                "type": "mcp_call",
                "status": "in_progress",
                "server_label": self.call.server_tools.get(step.call.recipient, ""),
                "name": step.call.name,
                "arguments": arguments,
                "output": None,
                "error": None,
            }
            out = self._close() + self._add(data)
            self._open = None
            ids = {"item_id": data["id"], "output_index": self.items[-1].index}
            return out + [
                self._event("response.mcp_call_arguments.delta", **ids, delta=arguments),
                self._event("response.mcp_call_arguments.done", **ids, arguments=arguments),
                self._event("response.mcp_call.in_progress", **ids),
            ]
        item = next((i for i in reversed(self.items) if i.data["type"] == "mcp_call" and i.data["status"] == "in_progress"), None)
        if item is None:
            return []
        failed = step.result.error
        item.data.update(status="failed" if failed else "completed", output=step.result.output)
        if failed:
            item.data["error"] = {"type": "mcp_tool_execution_error", "content": [{"type": "text", "text": step.result.output}]}
        ids = {"item_id": item.data["id"], "output_index": item.index}
        return [
            self._event("response.mcp_call.failed" if failed else "response.mcp_call.completed", **ids),
            self._event("response.output_item.done", output_index=item.index, item=item.data),
        ]

    def _add(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        item = _Item(len(self.items), data)
        self.items.append(item)
        self._open = item
        return [self._event("response.output_item.added", output_index=item.index, item=dict(data))]

    def _text(self, kind: str, text: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        item = self._open
        if item is None or item.data["type"] != kind:
            out += self._close()
            part: dict[str, Any]
            if kind == "reasoning":
                out += self._add({"id": new_id("rs"), "type": "reasoning", "summary": [], "content": []})
                part = {"type": "reasoning_text", "text": ""}
            else:
                out += self._add(
                    {"id": new_id("msg"), "type": "message", "role": "assistant", "status": "in_progress", "content": []}
                )
                part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            item = self.items[-1]  # the one just added, now open
            out.append(
                self._event(
                    "response.content_part.added", item_id=item.data["id"], output_index=item.index, content_index=0, part=part
                )
            )
        item.text.append(text)
        kind_event = "response.reasoning_text.delta" if kind == "reasoning" else "response.output_text.delta"
        extra: dict[str, Any] = {} if kind == "reasoning" else {"logprobs": []}
        out.append(
            self._event(kind_event, item_id=item.data["id"], output_index=item.index, content_index=0, delta=text, **extra)
        )
        return out

    def _close(self) -> list[dict[str, Any]]:
        item, self._open = self._open, None
        if item is None or item.data["type"] not in ("reasoning", "message"):
            return []
        text = "".join(item.text)
        ids = {"item_id": item.data["id"], "output_index": item.index, "content_index": 0}
        part: dict[str, Any]
        if item.data["type"] == "reasoning":
            part = {"type": "reasoning_text", "text": text}
            item.data.update(content=[part])
            if self.call.include_encrypted:
                item.data["encrypted_content"] = encode_reasoning(text)
            done = self._event("response.reasoning_text.done", **ids, text=text)
        else:
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            item.data.update(content=[part], status="completed")
            done = self._event("response.output_text.done", **ids, text=text, logprobs=[])
        return [
            done,
            self._event("response.content_part.done", **ids, part=part),
            self._event("response.output_item.done", output_index=item.index, item=item.data),
        ]

    # -- the response object ------------------------------------------------

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": self.status,
            "model": self.call.model,
            "output": [i.data for i in self.items] if self.status != "in_progress" else [],
            "error": self.error,
            "incomplete_details": None,
            **self.call.echo,
        }
        if self.status == "incomplete":
            body["incomplete_details"] = {"reason": "max_output_tokens"}
        if self.reply is not None:
            usage = self.reply.usage
            body["usage"] = {
                "input_tokens": usage.prompt_tokens,  # no billed cache writes here
                "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": 0},
                "output_tokens": usage.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": self.transcript.reasoning_tokens},
                "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            }
        return body

    def _store(self, reply: Reply) -> None:
        if not self.call.store:
            return
        history = list(self.call.messages) + [dict(m) for m in reply.messages()]
        if reply.malformed:
            history[-1]["content"] = "".join(i.text and "".join(i.text) or "" for i in self.items if i.data["type"] == "message")
        ids = [i.data for i in self.items if i.data["type"] == "function_call"]
        for message in history[len(self.call.messages) :]:
            for call, item in zip(message.get("tool_calls", []), ids, strict=False):
                call["id"] = item["call_id"]  # the ids the client will answer with
        self.state.responses.put(self.id, {"messages": history})
