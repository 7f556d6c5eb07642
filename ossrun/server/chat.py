"""Chat Completions: a request body to ``Model.stream`` arguments, its events to a completion.

Messages: system and developer become harmony's developer instructions; user text (or text
parts); assistant content, ``tool_calls`` and reasoning (``reasoning_content``, ``reasoning``
or ``thinking``); tool results by ``tool_call_id``. Clients that drop the reasoning of a tool
chain get it back from :class:`ossrun.server.state.ServerState`. The reply's content is the
final channel only, the reasoning goes to ``reasoning_content`` and ``reasoning``. The server's
own tools (``--tool python``) run inside the reply: each run is shown in the reasoning and, for
clients that show runs apart, in ``tool_run`` deltas (``tool_runs`` of the message).
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
from ossrun.server.fields import bad_request, get, number, positive_int, text_of
from ossrun.server.output import CallStep, ResultStep, Step, TextStep, Transcript, arguments_json, finish_reason, new_id
from ossrun.server.served import ServedModel, effort_of
from ossrun.server.state import ServerState

TEXT_PARTS = ("text", "input_text", "output_text")
REASONING_FIELDS = ("reasoning_content", "reasoning", "thinking")
ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_SEED = 2**32 - 1  # llama.cpp's sampler takes a 32-bit seed


@dataclass
class ChatCall:
    """One request, read: what ``Model.stream`` gets, and how the answer goes back."""

    messages: list[dict[str, Any]]
    options: ReplyOptions  # never truncating: the API drops no message
    model: str
    stream: bool = False
    include_usage: bool = False
    parallel_tool_calls: bool = True
    server_tools: Mapping[str, str] = field(default_factory=dict)  # recipients the server runs -> their label


def parse(body: Mapping[str, Any], served: ServedModel, state: ServerState) -> ChatCall:
    model = served.check_model(get(body, "model", (str,), required=True))
    n = get(body, "n", (int,), default=1)
    if n != 1:
        raise bad_request(f"n is {n}: ossrun returns one choice per request; send n = 1 or leave it out", "n")
    messages = get(body, "messages", (list,), required=True)
    if not messages:
        raise bad_request("messages is empty: send at least one message", "messages")
    effort = effort_of(body, served.default_effort)
    sampling = sampling_options(body, max_keys=("max_completion_tokens", "max_tokens"))
    stop = body.get("stop")
    if stop is not None:
        fields.stop_texts(stop, "stop")
    given = get(body, "tools", (list,), default=[])
    tools = [function_tool(tool, f"tools[{i}]") for i, tool in enumerate(given)]
    choice = body.get("tool_choice")
    chosen = fields.tool_choice(choice, [t["function"]["name"] for t in tools])
    for index, tool in enumerate(tools):
        if tool["function"].get("parameters") is not None:
            fields.schema(
                tool["function"]["parameters"], f"tools[{index}].function.parameters", grammar=tool["function"]["name"] in chosen
            )
    response_format = body.get("response_format")
    if response_format is not None:
        fields.response_format(response_format, "response_format")
    stream_options = get(body, "stream_options", (dict,), default={})
    call = ChatCall(
        messages=convert_messages(messages, state),
        options=dataclasses.replace(
            sampling,
            reasoning_effort=effort,
            stop=stop,
            tools=tools,
            tool_choice=choice,
            response_format=response_format,
        ),
        model=model,
        stream=bool(get(body, "stream", (bool,), default=False)),
        include_usage=bool(get(stream_options, "include_usage", (bool,), "stream_options.", default=False)),
        parallel_tool_calls=bool(get(body, "parallel_tool_calls", (bool,), default=True)),
    )
    call.options, call.server_tools = served.with_server_tools(call.options, body)
    return call


def sampling_options(body: Mapping[str, Any], *, max_keys: tuple[str, ...]) -> ReplyOptions:
    """The sampling fields both OpenAI APIs share (``max_keys``: the names of the token limit, the first
    given wins), as the options of a reply that drops no message (the API never truncates)."""
    temperature = number(body, "temperature", 0.0, 2.0)
    top_p = number(body, "top_p", 0.0, 1.0, low_open=True)
    seed = fields.integer(body, "seed", 0, MAX_SEED)
    limits = [limit for limit in (positive_int(body, key) for key in max_keys) if limit is not None]
    return ReplyOptions(temperature=temperature, top_p=top_p, seed=seed, max_tokens=limits[0] if limits else None, truncate=False)


def function_tool(tool: Any, where: str) -> dict[str, Any]:
    """A ``{"type": "function", "function": {...}}`` tool, checked; ossrun never runs it, the client does."""
    if not isinstance(tool, Mapping):
        raise bad_request(f"{where} must be an object", where)
    kind = tool.get("type", "function")
    if kind != "function":
        raise bad_request(f"{where}.type {kind!r} is not supported here: Chat Completions tools are functions", f"{where}.type")
    function = get(tool, "function", (dict,), f"{where}.", required=True)
    fields.tool_name(function, f"{where}.function")
    get(function, "description", (str,), f"{where}.function.")
    get(function, "parameters", (dict,), f"{where}.function.")
    return {"type": "function", "function": dict(function)}


def convert_messages(messages: list[Any], state: ServerState) -> list[dict[str, Any]]:
    """OpenAI messages as the dicts ``Model.stream`` takes."""
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool-call id -> function name, for the tool results that follow
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, Mapping):
            raise bad_request(f"{where} must be an object with a role", where)
        role = get(message, "role", (str,), f"{where}.", required=True)
        if role not in ROLES:
            raise bad_request(f"{where}.role {role!r} is not one of {', '.join(ROLES)}", f"{where}.role")
        content = text_of(message.get("content"), f"{where}.content", TEXT_PARTS)
        if role in ("system", "developer"):
            out.append({"role": "system", "content": content})
        elif role == "user":
            out.append({"role": "user", "content": content})
        elif role == "assistant":
            out.append(assistant_message(message, content, where, names, state))
        else:
            out.append(tool_message(message, content, where, names))
    return out


def assistant_message(
    message: Mapping[str, Any], content: str, where: str, names: dict[str, str], state: ServerState
) -> dict[str, Any]:
    entry: dict[str, Any] = {"role": "assistant", "content": content}
    reasoning = next((message[key] for key in REASONING_FIELDS if isinstance(message.get(key), str) and message[key]), None)
    calls = get(message, "tool_calls", (list,), f"{where}.", default=[])
    tool_calls = []
    for number_, call in enumerate(calls):
        at = f"{where}.tool_calls[{number_}]"
        if not isinstance(call, Mapping):
            raise bad_request(f"{at} must be an object", at)
        function = get(call, "function", (dict,), f"{at}.", required=True)
        name = get(function, "name", (str,), f"{at}.function.", required=True)
        arguments = function.get("arguments", "")
        if not isinstance(arguments, str):
            raise bad_request(f"{at}.function.arguments must be a JSON string", f"{at}.function.arguments")
        call_id = get(call, "id", (str,), f"{at}.")
        if call_id:
            names[call_id] = name
            if reasoning is None:
                reasoning = state.reasoning.get(call_id)  # the client dropped it: the server kept it
        tool_calls.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}})
    if tool_calls:
        entry["tool_calls"] = tool_calls
    if reasoning:
        entry["reasoning"] = reasoning
    return entry


def tool_message(message: Mapping[str, Any], content: str, where: str, names: Mapping[str, str]) -> dict[str, Any]:
    call_id = get(message, "tool_call_id", (str,), f"{where}.")
    name = names.get(call_id or "") or get(message, "name", (str,), f"{where}.")
    if not name:
        raise bad_request(
            f"{where}.tool_call_id {call_id!r} answers no tool call of an earlier assistant message", f"{where}.tool_call_id"
        )
    return {"role": "tool", "name": name, "content": content}


# -- the answer ---------------------------------------------------------------


class Completion:
    """A reply's events as Chat Completions chunks (streamed) or one completion."""

    def __init__(self, call: ChatCall, state: ServerState):
        self.call = call
        self.state = state
        self.id = new_id("chatcmpl")
        self.created = int(time.time())
        self.transcript = Transcript(call.server_tools)
        self.reasoning: list[str] = []
        self.content: list[str] = []
        self.tool_calls: list[dict[str, Any]] = []
        self.tool_runs: list[dict[str, Any]] = []  # the server's own tool runs: name, arguments, output, error
        self._run_calls: list[ToolCall] = []  # the call of each run, to find its result

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.call.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    def open(self) -> list[dict[str, Any]]:
        """The first chunk of a stream: the role."""
        return [self._chunk({"role": "assistant", "content": ""})]

    def feed(self, event: Event) -> list[dict[str, Any]]:
        """The chunks one event makes (also collected for :meth:`completion`)."""
        return [self._chunk(delta) for step in self.transcript.feed(event) for delta in self._step(step)]

    def close(self) -> list[dict[str, Any]]:
        """The last chunks: the finish_reason on its own, then the usage when asked for."""
        reply = self._finish()
        out = [self._chunk({}, self._finish_reason(reply))]
        if self.call.include_usage:
            out.append(
                {
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.call.model,
                    "choices": [],
                    "usage": self.usage(reply),
                }
            )
        return out

    def completion(self, events: Iterable[Event]) -> dict[str, Any]:
        """The whole completion, for a request that is not streamed."""
        for event in events:
            self.feed(event)
        reply = self._finish()
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(self.content) or (None if self.tool_calls else ""),
            "refusal": None,
        }
        if self.reasoning:
            message["reasoning_content"] = message["reasoning"] = "".join(self.reasoning)
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        if self.tool_runs:
            message["tool_runs"] = self.tool_runs
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.call.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": self._finish_reason(reply)}],
            "usage": self.usage(reply),
        }

    def _step(self, step: Step) -> list[dict[str, Any]]:
        """The deltas of one step (also collected for the whole completion)."""
        if isinstance(step, TextStep):
            if step.kind == "reasoning":
                self.reasoning.append(step.text)
                return [{"reasoning_content": step.text, "reasoning": step.text}]
            self.content.append(step.text)
            return [{"content": step.text}]
        if isinstance(step, CallStep) and step.kind == "call":
            return self._tool_call(step.call)
        # the server's own tools (python, MCP servers'): shown with the reasoning
        server = self.call.server_tools.get(step.call.recipient)
        label = "python" if step.call.recipient == "python" else f"MCP {server}: {step.call.name}"
        text = f"[output]\n{step.result.output}\n" if isinstance(step, ResultStep) else f"\n[{label}]\n{step.call.arguments}\n"
        self.reasoning.append(text)
        delta: dict[str, Any] = {"reasoning_content": text, "reasoning": text}
        run = self._run(step, None if step.call.recipient == "python" else server)
        if run is not None:
            delta["tool_run"] = run
        return [delta]

    def _tool_call(self, call: ToolCall) -> list[dict[str, Any]]:
        """The deltas of a call for the client to run."""
        if not self.call.parallel_tool_calls and self.tool_calls:
            return []
        index, call_id, arguments = len(self.tool_calls), new_id("call"), arguments_json(call)
        self.tool_calls.append({"id": call_id, "type": "function", "function": {"name": call.name, "arguments": arguments}})
        return [  # id and name first, then the arguments, as clients merge them by index
            {
                "tool_calls": [
                    {"index": index, "id": call_id, "type": "function", "function": {"name": call.name, "arguments": ""}}
                ]
            },
            {"tool_calls": [{"index": index, "function": {"arguments": arguments}}]},
        ]

    def _run(self, step: CallStep | ResultStep, server: str | None) -> dict[str, Any] | None:
        """The ``tool_run`` delta of a run (its index, name, arguments, and the MCP server that runs it) or of
        its result (index, output, error); None for the result of a call that was not a run (a function
        the server answered itself)."""
        if isinstance(step, CallStep):
            run = {"name": step.call.name, "arguments": step.call.arguments, **({"server": server} if server else {})}
            self.tool_runs.append(run)
            self._run_calls.append(step.call)
            return {"index": len(self.tool_runs) - 1, **run}
        result = step.result
        index = next(
            (i for i, run in enumerate(self.tool_runs) if "output" not in run and self._run_calls[i] == result.call), None
        )
        if index is None:
            return None
        self.tool_runs[index].update(output=result.output, error=result.error)
        return {"index": index, "output": result.output, "error": result.error}

    def _finish(self) -> Reply:
        reply = self.transcript.reply
        if reply is None:  # pragma: no cover - Model.stream always ends with Done
            raise RuntimeError("the reply ended without Done")
        if self.tool_calls and reply.reasoning:
            for call in self.tool_calls:  # for clients that will not send the reasoning back
                self.state.reasoning.put(call["id"], reply.reasoning)
        return reply

    def _finish_reason(self, reply: Reply) -> str:
        return "tool_calls" if self.tool_calls and reply.pending_calls else finish_reason(reply)

    def usage(self, reply: Reply) -> dict[str, Any]:
        usage = reply.usage
        return {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.transcript.reasoning_tokens},
        }
