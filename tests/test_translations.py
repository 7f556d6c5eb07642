"""The server's translations without HTTP, against golden files a reviewer can read.

Requests: a body goes through ``chat.parse``, ``responses.parse`` or ``messages.parse``, and the
call runs on a ``Model`` over a scripted engine. The golden file holds the messages and options
``Model.stream`` gets (as the Model reads them: a ``ReplyOptions``, fields left at their defaults
left out) and what the engine is then asked (the prompt harmony rendered, the sampling, the
grammar, the token limit). Bodies the server refuses give the error a client reads.

Replies: the engine replays a harmony text, and the Model's events go to the translation twice,
as the server uses it: streamed, through ``Server``'s stream methods (the SSE text, as sent, with
no HTTP server; parsed into events for the file), and whole, as a request that is not streamed
gets it. Every chunk, event and object is first checked against the SDKs' own types.

Ids and times are random or the clock's: each is checked for its form, then named by order of
appearance (``call_#1``); the reasoning carried in ``encrypted_content`` and ``signature`` is
shown decoded. ``OSSRUN_UPDATE_GOLDEN=1`` rewrites the files under tests/golden/{chat,responses,messages,tokenize}/.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from helpers import anthropic_shapes, golden, openai_shapes
from helpers.scripted import ScriptedEngine, reply
from ossrun.engine.protocol import GenerationRequest
from ossrun.errors import ContextError
from ossrun.events import Done, Event, Prefill
from ossrun.model import Model
from ossrun.options import ReplyOptions
from ossrun.server import chat, messages, responses, tokens
from ossrun.server.app import Server
from ossrun.server.fields import ApiError
from ossrun.server.served import ServedModel
from ossrun.server.state import ENCRYPTED_PREFIX, ServerState, decode_reasoning, encode_reasoning

GOLDEN = Path(__file__).parent / "golden"
NAME = "gpt-oss-20b"
DATE = "2026-01-15"
PATHS = {"chat": "/v1/chat/completions", "responses": "/v1/responses", "messages": "/v1/messages", "tokenize": "/tokenize"}
PARSE: dict[str, Callable[..., Any]] = {
    "chat": chat.parse,
    "responses": responses.parse,
    "messages": messages.parse,
    "tokenize": tokens.parse_tokenize,
}

WEATHER_PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
CHAT_WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "The weather in a city.", "parameters": WEATHER_PARAMETERS},
}
RESPONSES_WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": WEATHER_PARAMETERS,
}
MESSAGES_WEATHER = {"name": "get_weather", "description": "The weather in a city.", "input_schema": WEATHER_PARAMETERS}
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "integer"}},
    "required": ["answer"],
    "additionalProperties": False,
}
KEPT_REASONING = "The user wants Oslo's weather; call get_weather."


class RecordingEngine(ScriptedEngine):
    """The scripted engine, keeping each request it was given."""

    def __init__(self, encoding: Any, scripts: list[str]):
        super().__init__(encoding, scripts)
        self.requests: list[GenerationRequest] = []

    def generate(self, request: GenerationRequest) -> Any:
        self.requests.append(request)
        return super().generate(request)


@pytest.fixture(autouse=True)
def _pinned_date(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OSSRUN_DATE", DATE)  # the system message's date


def served() -> ServedModel:
    return ServedModel(name=NAME, default_effort="medium")


def model_writing(encoding: Any, *scripts: str) -> Model:
    return Model(RecordingEngine(encoding, list(scripts)), encoding, name=NAME)


def reply_options(options: ReplyOptions | Mapping[str, Any]) -> ReplyOptions:
    """A call's options as ``Model.stream`` reads them (a ``ReplyOptions``, or a mapping of its fields)."""
    return options if isinstance(options, ReplyOptions) else ReplyOptions.of(None, dict(options))


def run(model: Model, call: Any) -> list[Event]:
    """The events of a call, as the server asks for them: no turn of the conversation left out."""
    return list(model.stream(call.messages, dataclasses.replace(reply_options(call.options), truncate=False)))


# -- what is shown in the files ------------------------------------------------

TRANSPORT_OPTIONS = ("truncate", "cancel")  # the HTTP layer's, not the translation's


def shown_options(options: ReplyOptions, model: Model) -> dict[str, Any]:
    """The options that differ from the defaults, the effort as the Model applies it."""
    defaults = ReplyOptions()
    shown: dict[str, Any] = {"reasoning_effort": options.reasoning_effort or model.reasoning_effort}
    for option in dataclasses.fields(ReplyOptions):
        value = getattr(options, option.name)
        default = getattr(defaults, option.name)
        if option.name in (*TRANSPORT_OPTIONS, "reasoning_effort") or value == default:
            continue
        if default is None and isinstance(value, (list, tuple, dict)) and not value:
            continue  # no tools is no tools, whether as None or as []
        shown[option.name] = value
    return shown


def engine_asked(model: Model, request: GenerationRequest) -> dict[str, Any]:
    """What the engine was asked: the prompt (one message a line), the sampling, its constraint, the limit."""
    constraint = request.sampling.constraint
    return {
        "prompt": re.split(r"(?=<\|start\|>)", model.decode(request.prompt))[1:],
        "temperature": request.sampling.temperature,
        "top_p": request.sampling.top_p,
        "seed": request.sampling.seed,
        "max_tokens": request.max_tokens,
        "stop_tokens": sorted(model.decode([token]) for token in request.stop_tokens),
        "grammar": constraint.grammar.splitlines() if constraint and constraint.grammar else None,
        "grammar_triggers": list(constraint.triggers) if constraint else [],
        "banned_tokens": sorted(model.decode([token]) for token in constraint.banned) if constraint else [],
    }


def described(event: Event) -> Any:
    """An event in a line: its repr, a Prefill's token count, a Done's reply in brief."""
    if isinstance(event, Prefill):
        return f"Prefill(tokens={event.tokens})"
    if isinstance(event, Done):
        reply_ = event.reply
        return {
            "Done": {
                "finish_reason": reply_.finish_reason,
                "pending_calls": [f"{call.recipient}({call.arguments})" for call in reply_.pending_calls],
                "stop_text": reply_.stop_text,
                "malformed": reply_.malformed,
                "usage": reply_.usage.to_dict(),
            }
        }
    return repr(event)


ID = re.compile(r"\b(chatcmpl|resp|msg|rs|fc|call|toolu|ci|mcp|req)_([0-9a-f]{24})\b")
TIME_KEYS = ("created", "created_at")


class Normalised:
    """Random ids named by order of appearance, the clock's times checked and named, reasoning blobs decoded."""

    def __init__(self, since: float):
        self.since = since
        self.names: dict[str, str] = {}

    def __call__(self, value: Any, key: str = "") -> Any:
        if isinstance(value, Mapping):
            return {k: self(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [self(v) for v in value]
        if key in TIME_KEYS and isinstance(value, int) and not isinstance(value, bool):
            assert int(self.since) <= value <= time.time(), f"{key} {value} is not the time of the reply"
            return "<unix time>"
        if isinstance(value, str) and value.startswith(ENCRYPTED_PREFIX):
            decoded = decode_reasoning(value)
            assert decoded is not None, f"{value[:40]}... does not decode"
            return f"{ENCRYPTED_PREFIX}<{decoded}>"
        if isinstance(value, str):
            return ID.sub(self._name, value)
        return value

    def _name(self, match: re.Match[str]) -> str:
        prefix = match.group(1)
        count = sum(1 for name in self.names.values() if name.startswith(f"{prefix}_#"))
        return self.names.setdefault(match.group(0), f"{prefix}_#{count + 1}")


def check(path: str, document: Mapping[str, Any], since: float) -> None:
    golden.check(GOLDEN / f"{path}.json", Normalised(since)(document), one_a_line=("events", "stream"))


# -- requests ----------------------------------------------------------------


def asked(encoding: Any, api: str, body: dict[str, Any], state: ServerState | None = None) -> dict[str, Any]:
    """A body, what ``Model.stream`` is asked for it, and what the engine then reads."""
    call = PARSE[api](body, served(), state or ServerState())
    model = model_writing(encoding, reply("Fine.", "Fine."))
    run(model, call)
    request = model.engine.requests[0]  # type: ignore[attr-defined]
    return {
        "body": body,
        "messages": call.messages,
        "options": shown_options(reply_options(call.options), model),
        "engine": engine_asked(model, request),
    }


def refused(api: str, body: dict[str, Any]) -> dict[str, Any]:
    """A body the server refuses, and its answer: status and error body, in the API's shape."""
    with pytest.raises(ApiError) as raised:
        PARSE[api](body, served(), ServerState())
    status, answer = raised.value.answer(PATHS[api])
    check_body = anthropic_shapes.check_body if api == "messages" else openai_shapes.check_body
    check_body(PATHS[api], status, answer)
    return {"body": body, "status": status, "answer": answer}


def kept_reasoning() -> ServerState:
    """A server that kept the reasoning before the tool call ``call_w1`` (a client dropped it)."""
    state = ServerState()
    state.reasoning.put("call_w1", KEPT_REASONING)
    return state


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


CHAT_REQUESTS: dict[str, tuple[dict[str, Any], Callable[[], ServerState] | None]] = {
    "plain": ({"model": NAME, "messages": [user("What is 2+2?")]}, None),
    "system-developer-sampling": (
        {
            "model": NAME,
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
                {"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}]},
            ],
            "reasoning_effort": "high",
            "temperature": 0.7,
            "top_p": 0.9,
            "seed": 42,
            "max_completion_tokens": 200,
            "stop": ["\n\n", "END"],
        },
        None,
    ),
    "tools-and-results": (
        {
            "model": NAME,
            "messages": [
                user("Weather in Oslo?"),
                {
                    "role": "assistant",
                    "content": None,
                    "reasoning_content": "Call the tool.",
                    "tool_calls": [
                        {"id": "call_w1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
                    ],
                },
                {"role": "tool", "tool_call_id": "call_w1", "content": "12 C, rain"},
            ],
            "tools": [CHAT_WEATHER],
            "tool_choice": "auto",
        },
        None,
    ),
    "reasoning-kept-by-the-server": (
        {
            "model": NAME,
            "messages": [
                user("Weather in Oslo?"),
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {"id": "call_w1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
                    ],
                },
                {"role": "tool", "tool_call_id": "call_w1", "content": "12 C, rain"},
            ],
            "tools": [CHAT_WEATHER],
        },
        kept_reasoning,
    ),
    "structured-output": (
        {
            "model": NAME,
            "messages": [user("What is 2+2?")],
            "reasoning_effort": "minimal",
            "response_format": {"type": "json_schema", "json_schema": {"name": "sum", "schema": ANSWER_SCHEMA}},
        },
        None,
    ),
    "named-tool-required": (
        {
            "model": NAME,
            "messages": [user("Weather in Oslo?")],
            "tools": [CHAT_WEATHER],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "max_tokens": 64,
        },
        None,
    ),
}

RESPONSES_REQUESTS: dict[str, tuple[dict[str, Any], Callable[[], ServerState] | None]] = {
    "plain": ({"model": NAME, "input": "What is 2+2?", "instructions": "You are terse."}, None),
    "codex-first-turn": (
        {
            "model": NAME,
            "input": [
                {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "You are a coding agent."}]},
                {"type": "message", "role": "user", "id": "msg_1", "content": [{"type": "input_text", "text": "List files."}]},
            ],
            "tools": [
                {
                    "type": "function",
                    "name": "exec_command",
                    "description": "Run a command.",
                    "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}},
                    "strict": False,
                },
                {
                    "type": "namespace",
                    "name": "multi_agent_v1",
                    "description": "Agents.",
                    "tools": [{"type": "function", "name": "spawn", "parameters": {"type": "object", "properties": {}}}],
                },
                {"type": "web_search"},
            ],
            "tool_choice": "auto",
            "parallel_tool_calls": True,
            "reasoning": {"effort": "low", "summary": "auto"},
            "store": False,
            "include": ["reasoning.encrypted_content"],
            "prompt_cache_key": "abc",
            "max_output_tokens": 500,
        },
        None,
    ),
    "reasoning-round-trip": (
        {
            "model": NAME,
            "input": [
                user("Weather in Oslo?"),
                {
                    "type": "reasoning",
                    "summary": [],
                    "encrypted_content": encode_reasoning("Oslo: call get_weather."),
                },
                {"type": "function_call", "call_id": "call_w1", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
                {"type": "function_call_output", "call_id": "call_w1", "output": "12 C, rain"},
            ],
            "tools": [RESPONSES_WEATHER],
        },
        None,
    ),
    "reasoning-kept-by-the-server": (
        {
            "model": NAME,
            "input": [
                user("Weather in Oslo?"),
                {"type": "function_call", "call_id": "call_w1", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
                {"type": "function_call_output", "call_id": "call_w1", "output": "12 C, rain"},
            ],
            "tools": [RESPONSES_WEATHER],
        },
        kept_reasoning,
    ),
    "structured-output": (
        {
            "model": NAME,
            "input": "What is 2+2?",
            "text": {"format": {"type": "json_schema", "name": "sum", "schema": ANSWER_SCHEMA, "strict": True}},
            "temperature": 0.2,
        },
        None,
    ),
    "previous-response": (
        {"model": NAME, "previous_response_id": "resp_0123456789abcdef01234567", "input": "And 3+3?"},
        lambda: stored_response("resp_0123456789abcdef01234567"),
    ),
}

MESSAGES_REQUESTS: dict[str, tuple[dict[str, Any], Callable[[], ServerState] | None]] = {
    "plain": ({"model": NAME, "max_tokens": 1024, "system": "You are terse.", "messages": [user("What is 2+2?")]}, None),
    "thinking-budget-sampling": (
        {
            "model": NAME,
            "max_tokens": 2048,
            "system": [{"type": "text", "text": "You are terse."}, {"type": "text", "text": "Answer in French."}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}],
            "thinking": {"type": "enabled", "budget_tokens": 10000},
            "temperature": 0.5,
            "top_k": 40,
            "stop_sequences": ["END"],
            "metadata": {"user_id": "u1"},
        },
        None,
    ),
    "tools-and-results": (
        {
            "model": NAME,
            "max_tokens": 1024,
            "messages": [
                user("Weather in Oslo and Bergen?"),
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "", "signature": encode_reasoning("Two cities: two calls.")},
                        {"type": "text", "text": "Checking."},
                        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}},
                        {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Bergen"}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "12 C, rain"},
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_2",
                            "content": [{"type": "text", "text": "no station"}],
                            "is_error": True,
                        },
                        {"type": "text", "text": "Summarise."},
                    ],
                },
            ],
            "tools": [MESSAGES_WEATHER, {"type": "web_search_20250305", "name": "web_search"}],
            "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
            "thinking": {"type": "adaptive"},
        },
        None,
    ),
    "tool-choice-any": (
        {
            "model": NAME,
            "max_tokens": 256,
            "messages": [user("Weather in Oslo?")],
            "tools": [MESSAGES_WEATHER],
            "tool_choice": {"type": "any"},
        },
        None,
    ),
    "structured-output-max-effort": (
        {
            "model": NAME,
            "max_tokens": 256,
            "messages": [user("What is 2+2?")],
            "output_config": {"effort": "max", "format": {"type": "json_schema", "schema": ANSWER_SCHEMA}},
        },
        None,
    ),
    "claude-code-system-turn": (
        {
            "model": NAME,
            "max_tokens": 1024,
            "system": "You are Claude Code.",
            "messages": [
                user("Fix the bug."),
                {"role": "assistant", "content": "Which file?"},
                {"role": "system", "content": "The user switched to plan mode."},
                user("main.py"),
            ],
            "thinking": {"type": "disabled"},
        },
        None,
    ),
}

TOKENIZE_REQUESTS: dict[str, tuple[dict[str, Any], Callable[[], ServerState] | None]] = {
    "messages-and-tools": (
        {
            "messages": [{"role": "developer", "content": "You are terse."}, user("Hi")],
            "tools": [CHAT_WEATHER],
            "reasoning_effort": "high",
        },
        None,
    ),
}

REQUESTS = {"chat": CHAT_REQUESTS, "responses": RESPONSES_REQUESTS, "messages": MESSAGES_REQUESTS, "tokenize": TOKENIZE_REQUESTS}


def stored_response(response_id: str) -> ServerState:
    """A server that kept an earlier response's conversation."""
    state = ServerState()
    history = [
        {"role": "system", "content": "You are terse."},
        user("What is 2+2?"),
        {"role": "assistant", "reasoning": "Simple sum.", "content": "4"},
    ]
    state.responses.put(response_id, {"messages": history})
    return state


@pytest.mark.parametrize(("api", "case"), [(api, case) for api, cases in REQUESTS.items() for case in cases])
def test_a_request_body_becomes_a_model_call(encoding: Any, api: str, case: str) -> None:
    since = time.time()
    body, state = REQUESTS[api][case]
    check(f"{api}/request-{case}", asked(encoding, api, body, state() if state else None), since)


def image_part(api: str) -> dict[str, Any]:
    if api == "chat":
        return {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    if api == "responses":
        return {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}
    return {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}


REFUSED: dict[str, dict[str, dict[str, Any]]] = {
    "chat": {
        "image": {
            "model": NAME,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "What?"}, image_part("chat")]}],
        },
        "several-choices": {"model": NAME, "messages": [user("Hi")], "n": 2},
        "unknown-role": {"model": NAME, "messages": [{"role": "narrator", "content": "Hi"}]},
        "result-of-no-call": {
            "model": NAME,
            "messages": [user("Hi"), {"role": "tool", "tool_call_id": "call_x", "content": "1"}],
        },
        "unknown-effort": {"model": NAME, "messages": [user("Hi")], "reasoning_effort": "extreme"},
        "temperature-out-of-range": {"model": NAME, "messages": [user("Hi")], "temperature": 3},
        "unknown-format": {"model": NAME, "messages": [user("Hi")], "response_format": {"type": "xml"}},
        "required-without-tools": {"model": NAME, "messages": [user("Hi")], "tool_choice": "required"},
        "unknown-model": {"model": "llama-3", "messages": [user("Hi")]},
    },
    "responses": {
        "image": {
            "model": NAME,
            "input": [{"type": "message", "role": "user", "content": [image_part("responses")]}],
        },
        "output-of-no-call": {
            "model": NAME,
            "input": [{"type": "function_call_output", "call_id": "call_x", "output": "1"}],
        },
        "unknown-previous-response": {"model": NAME, "input": "Hi", "previous_response_id": "resp_gone"},
        "unknown-summary": {"model": NAME, "input": "Hi", "reasoning": {"summary": "verbose"}},
        "format-without-schema": {"model": NAME, "input": "Hi", "text": {"format": {"type": "json_schema", "name": "x"}}},
    },
    "messages": {
        "image": {"model": NAME, "max_tokens": 64, "messages": [{"role": "user", "content": [image_part("messages")]}]},
        "no-max-tokens": {"model": NAME, "messages": [user("Hi")]},
        "prefilled-answer": {
            "model": NAME,
            "max_tokens": 64,
            "messages": [user("Hi"), {"role": "assistant", "content": "Hello"}],
        },
        "result-of-no-call": {
            "model": NAME,
            "max_tokens": 64,
            "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "1"}]}],
        },
        "budget-too-small": {
            "model": NAME,
            "max_tokens": 64,
            "messages": [user("Hi")],
            "thinking": {"type": "enabled", "budget_tokens": 100},
        },
        "unknown-model": {"model": "claude-opus-4", "max_tokens": 64, "messages": [user("Hi")]},
    },
    "tokenize": {
        "nothing-to-tokenize": {"model": NAME},
        "text-and-messages": {"text": "Hi", "messages": [user("Hi")]},
        "unknown-model": {"model": "llama-3", "text": "Hi"},
    },
}


@pytest.mark.parametrize("api", list(REFUSED))
def test_a_bad_request_body_is_refused_with_the_apis_error(api: str) -> None:
    since = time.time()
    check(f"{api}/refused", {case: refused(api, body) for case, body in REFUSED[api].items()}, since)


# -- replies -----------------------------------------------------------------

TOOL_CALL = (
    "<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>commentary "
    'to=functions.get_weather <|constrain|>json<|message|>{"city":"Oslo"}<|call|>'
)
MALFORMED = "<|channel|>finalz<|message|>Hello from a broken header<|return|>"  # an unknown channel
ANSWER = reply("Add them.", "2+2 is 4.")
COUNTING = reply("Count.", "One. Two. Three.")
LONG = reply("Let me count to ten, slowly, one number at a time.", "One, two, three.")
OVERFLOW = ContextError("the prompt is 5000 tokens, more than the context of 4096 tokens allows: use a larger --ctx")


@dataclass(frozen=True)
class Scenario:
    body: dict[str, Any]
    script: str
    raising: Exception | None = None  # the stream ends with this error instead of Done


def chat_body(**fields: Any) -> dict[str, Any]:
    return {"model": NAME, "messages": [user("What is 2+2?")], "stream_options": {"include_usage": True}, **fields}


def responses_body(**fields: Any) -> dict[str, Any]:
    return {"model": NAME, "input": "What is 2+2?", **fields}


def messages_body(**fields: Any) -> dict[str, Any]:
    return {"model": NAME, "max_tokens": 1024, "messages": [user("What is 2+2?")], **fields}


THINKING = {"thinking": {"type": "enabled", "budget_tokens": 2048}}
REPLIES: dict[str, dict[str, Scenario]] = {
    "chat": {
        "answer": Scenario(chat_body(), ANSWER),
        "tool-call": Scenario(chat_body(tools=[CHAT_WEATHER]), TOOL_CALL),
        "length": Scenario(chat_body(max_tokens=6), LONG),
        "stop-text": Scenario(chat_body(stop=["Two"]), COUNTING),
        "malformed": Scenario(chat_body(), MALFORMED),
        "context-error": Scenario(chat_body(), ANSWER, OVERFLOW),
    },
    "responses": {
        "answer": Scenario(responses_body(), ANSWER),
        "tool-call": Scenario(
            responses_body(tools=[RESPONSES_WEATHER], store=False, include=["reasoning.encrypted_content"]), TOOL_CALL
        ),
        "length": Scenario(responses_body(max_output_tokens=6), LONG),
        "malformed": Scenario(responses_body(), MALFORMED),
        "context-error": Scenario(responses_body(), ANSWER, OVERFLOW),
    },
    "messages": {
        "answer": Scenario(messages_body(**THINKING), ANSWER),
        "answer-without-thinking": Scenario(messages_body(), ANSWER),
        "answer-thinking-omitted": Scenario(
            messages_body(thinking={"type": "enabled", "budget_tokens": 2048, "display": "omitted"}), ANSWER
        ),
        "tool-call": Scenario(messages_body(tools=[MESSAGES_WEATHER], **THINKING), TOOL_CALL),
        "length": Scenario(messages_body(max_tokens=6, **THINKING), LONG),
        "stop-sequence": Scenario(messages_body(stop_sequences=["Two"]), COUNTING),
        "malformed": Scenario(messages_body(), MALFORMED),
        "context-error": Scenario(messages_body(**THINKING), ANSWER, OVERFLOW),
    },
}


def translations(api: str, call: Any, state: ServerState) -> Any:
    if api == "chat":
        return chat.Completion(call, state)
    if api == "responses":
        return responses.Response(call, state)
    return messages.Message(call, state)


async def replay(events: Iterable[Event], raising: Exception | None) -> AsyncIterator[Any]:
    for event in events:
        yield event
    if raising is not None:
        raise raising


def streamed(server: Server, api: str, translation: Any, events: list[Event], raising: Exception | None) -> str:
    """The SSE text the server writes for these events (its stream methods, without HTTP)."""
    prompt_tokens = next(event.tokens for event in events if isinstance(event, Prefill))
    request = SimpleNamespace(state=SimpleNamespace(reading=None, tokens="", prompt_tokens=prompt_tokens, endpoint=PATHS[api]))
    stream = {"chat": server.chat_stream, "responses": server.responses_stream, "messages": server.messages_stream}[api]

    async def text() -> str:
        return "".join([chunk async for chunk in stream(request, translation, replay(events, raising))])  # type: ignore[arg-type]

    return asyncio.run(text())


def parsed_sse(api: str, text: str) -> list[dict[str, Any]]:
    """The SSE text as a list of its messages (comments, event names, data), each checked against the SDK's types."""
    assert text.endswith("\n\n"), "an SSE stream ends with a blank line"
    if api == "messages":
        anthropic_shapes.check_stream(text)
    else:
        openai_shapes.check_sse(PATHS[api], text)
    out: list[dict[str, Any]] = []
    for block in text[:-2].split("\n\n"):
        message: dict[str, Any] = {}
        for line in block.split("\n"):
            field, _, value = line.partition(": ")
            assert field in ("", "event", "data"), f"an SSE line {line!r}"
            message[field or "comment"] = value if field != "data" or value == "[DONE]" else json.loads(value)
        out.append(message)
    return out


def whole(api: str, translation: Any, events: list[Event]) -> dict[str, Any]:
    """The object a request that is not streamed gets, checked against the SDK's types."""
    if api == "chat":
        result = translation.completion(events)
        openai_shapes.check_chat_completion(result)
    elif api == "responses":
        result = translation.run(events)
        openai_shapes.check_response(result)
    else:
        result = translation.message(events)
        anthropic_shapes.check_message(result)
    return result


@pytest.mark.parametrize(("api", "case"), [(api, case) for api, cases in REPLIES.items() for case in cases])
def test_a_replys_events_become_what_the_client_reads(encoding: Any, api: str, case: str) -> None:
    since = time.time()
    scenario = REPLIES[api][case]
    model = model_writing(encoding, scenario.script)
    server = Server(model, served(), log=io.StringIO())
    call = PARSE[api](scenario.body, server.served, server.state)
    events = run(model, call)
    if scenario.raising is not None:
        before = [event for event in events if not isinstance(event, Done)]
        events = before[: len(before) // 2]  # the reply stops half way: a later round did not fit
    document: dict[str, Any] = {
        "body": scenario.body,
        "model_writes": scenario.script,
        "events": [described(event) for event in events],
    }
    if scenario.raising is not None:
        document["then_raises"] = f"{type(scenario.raising).__name__}: {scenario.raising}"
    document["stream"] = parsed_sse(api, streamed(server, api, translations(api, call, server.state), events, scenario.raising))
    if scenario.raising is None:
        document["response"] = whole(api, translations(api, call, server.state), events)
    check(f"{api}/reply-{case}", document, since)


def follow_up(api: str, answer: dict[str, Any]) -> dict[str, Any]:
    """The next request of a client that runs the tool and sends the call back without its reasoning."""
    if api == "chat":
        (call,) = answer["choices"][0]["message"]["tool_calls"]
        sent = [
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "12 C"},
        ]
        return {"model": NAME, "messages": [user("What is 2+2?"), *sent], "tools": [CHAT_WEATHER]}
    if api == "responses":
        (item,) = [item for item in answer["output"] if item["type"] == "function_call"]
        call = {key: item[key] for key in ("type", "call_id", "name", "arguments")}
        output = {"type": "function_call_output", "call_id": item["call_id"], "output": "12 C"}
        return {"model": NAME, "input": [user("What is 2+2?"), call, output], "tools": [RESPONSES_WEATHER]}
    (block,) = [block for block in answer["content"] if block["type"] == "tool_use"]
    result = {"type": "tool_result", "tool_use_id": block["id"], "content": "12 C"}
    sent = [{"role": "assistant", "content": [block]}, {"role": "user", "content": [result]}]
    return messages_body(messages=[user("What is 2+2?"), *sent], tools=[MESSAGES_WEATHER])


@pytest.mark.parametrize("api", list(REPLIES))
def test_what_a_client_drops_of_a_tool_call_comes_back_from_the_server(encoding: Any, api: str) -> None:
    """The reasoning before a call (and, for Anthropic's parsed input, the model's own JSON text) is
    kept by the server when it answers, and put back when the call returns without it."""
    scenario = REPLIES[api]["tool-call"]
    model = model_writing(encoding, scenario.script)
    server = Server(model, served(), log=io.StringIO())
    call = PARSE[api](scenario.body, server.served, server.state)
    answer = whole(api, translations(api, call, server.state), run(model, call))
    prompt = "".join(asked(encoding, api, follow_up(api, answer), server.state)["engine"]["prompt"])
    assert "<|start|>assistant<|channel|>analysis<|message|>Need the weather.<|end|>" in prompt
    assert '<|constrain|>json<|message|>{"city":"Oslo"}<|call|>' in prompt
    assert "<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>12 C<|end|>" in prompt
    # a server that never answered that call has nothing to put back
    assert "Need the weather." not in "".join(asked(encoding, api, follow_up(api, answer))["engine"]["prompt"])
