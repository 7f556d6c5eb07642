"""Every object ``ossrun serve`` sends, checked against the ``openai`` SDK's own types, strictly.

pydantic's strict mode over the SDK's models (the JSON as it came over the wire): a missing
required field, a wrong type or a value outside a Literal fails. The SDK leaves optional a few
fields that OpenAI's API reference requires (present, maybe null), and accepts null for some the
reference never sends as null: ``REQUIRED`` and ``NEVER_NULL`` add those, from the reference's
components named beside them.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from openai.types import Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from openai.types.shared import ErrorObject

# OpenAI's servers end a Responses stream with this code for a prompt too long (Codex CLI reads
# it); the reference's list of ResponseErrorCode does not name it, nor does the SDK's Literal.
UNLISTED_ERROR_CODES = ("context_length_exceeded",)


def event_classes(stream_event: Any) -> dict[str, type]:
    """An SDK's stream event classes by their ``type`` (the annotated union of ``stream_event``)."""
    union = typing.get_args(stream_event)[0]
    classes = {}
    for cls in typing.get_args(union):
        (kind,) = typing.get_args(cls.model_fields["type"].annotation)
        classes[kind] = cls
    return classes


EVENT_CLASSES = event_classes(ResponseStreamEvent)


class ShapeError(AssertionError):
    pass


def require(data: Mapping[str, Any], keys: Iterable[str], where: str, reference: str = "OpenAI's API reference") -> None:
    missing = [key for key in keys if key not in data]
    if missing:
        raise ShapeError(f"{where} lacks {', '.join(missing)} (required by {reference}): {json.dumps(data)[:300]}")


def _not_null(data: Mapping[str, Any], keys: Iterable[str], where: str) -> None:
    nulls = [key for key in keys if key in data and data[key] is None]
    if nulls:
        raise ShapeError(f"{where}: {', '.join(nulls)} is null, which OpenAI's API reference never allows")


def _strict(cls: type, data: Any) -> Any:
    return cls.model_validate_json(json.dumps(data), strict=True)  # type: ignore[attr-defined]


def check_chat_completion(data: Mapping[str, Any]) -> ChatCompletion:
    for index, choice in enumerate(data.get("choices", [])):
        require(choice, ("finish_reason", "index", "message", "logprobs"), f"choices[{index}]")  # CreateChatCompletionResponse
        require(choice["message"], ("role", "content", "refusal"), f"choices[{index}].message")  # ChatCompletionResponseMessage
    _not_null(data, ("usage",), "chat.completion")
    return _strict(ChatCompletion, data)


def check_chat_chunk(data: Mapping[str, Any]) -> ChatCompletionChunk:
    for index, choice in enumerate(data.get("choices", [])):
        require(choice, ("delta", "index", "finish_reason"), f"choices[{index}]")  # CreateChatCompletionStreamResponse
    return _strict(ChatCompletionChunk, data)


RESPONSE_REQUIRED = (
    "id",
    "object",
    "created_at",
    "error",
    "incomplete_details",
    "instructions",
    "model",
    "tools",
    "output",
    "parallel_tool_calls",
    "metadata",
    "tool_choice",
    "temperature",
    "top_p",
)  # Response


def check_response(data: Mapping[str, Any]) -> Response:
    require(data, RESPONSE_REQUIRED, "response")
    _not_null(data, ("usage", "text", "status"), "response")
    for index, tool in enumerate(data.get("tools", [])):
        if tool.get("type") == "function":
            require(tool, ("type", "name", "strict", "parameters"), f"response.tools[{index}]")  # FunctionTool
    for index, item in enumerate(data.get("output", [])):
        if item.get("type") == "code_interpreter_call":
            require(item, ("id", "status", "container_id", "code", "outputs"), f"response.output[{index}]")
    error = data.get("error")
    if error and error.get("code") in UNLISTED_ERROR_CODES:
        data = {**data, "error": {**error, "code": "server_error"}}
    return _strict(Response, data)


def check_event(data: Mapping[str, Any]) -> Any:
    """One Responses stream event, by its type."""
    kind = data.get("type")
    if kind not in EVENT_CLASSES:
        raise ShapeError(f"no Responses stream event has the type {kind!r}")
    if kind == "response.function_call_arguments.done":
        require(data, ("type", "item_id", "name", "output_index", "arguments", "sequence_number"), kind)
    if "response" in data:
        check_response(data["response"])
        data = {**data, "response": {**data["response"], "error": None}}  # checked above, unlisted codes included
    return _strict(EVENT_CLASSES[kind], data)


def check_model(data: Mapping[str, Any]) -> Model:
    require(data, ("id", "object", "created", "owned_by"), "model")
    return _strict(Model, data)


def check_model_list(data: Mapping[str, Any]) -> list[Model]:
    require(data, ("object", "data"), "model list")
    if data["object"] != "list":
        raise ShapeError(f"a model list has object 'list', not {data['object']!r}")
    return [check_model(model) for model in data["data"]]


def check_error(data: Mapping[str, Any]) -> ErrorObject:
    require(data, ("error",), "an error body")
    require(data["error"], ("message", "type", "param", "code"), "error")  # Error
    return _strict(ErrorObject, data["error"])


def check_body(path: str, status: int, data: Any) -> None:
    """A whole non-streamed answer of ``ossrun serve``, whatever its route and status."""
    if status >= 400:
        check_error(data)
    elif path == "/v1/chat/completions":
        check_chat_completion(data)
    elif path == "/v1/responses":
        check_response(data)
    elif path == "/v1/models":
        check_model_list(data)
    elif path.startswith("/v1/models/"):
        check_model(data)


def check_sse(path: str, text: str) -> list[Any]:
    """Every event of a streamed answer (its raw text); returns the parsed objects."""
    objects: list[Any] = []
    for block in text.split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        data = [line[6:] for line in lines if line.startswith("data: ")]
        if not data:
            continue
        if data == ["[DONE]"]:
            objects.append("[DONE]")
            continue
        value = json.loads("\n".join(data))
        objects.append(value)
        if "error" in value and "object" not in value and "type" not in value:
            check_error(value)  # Chat Completions ends a failed stream with an error object
        elif path == "/v1/chat/completions":
            check_chat_chunk(value)
        else:
            names = [line[7:] for line in lines if line.startswith("event: ")]
            if names != [value.get("type")]:
                raise ShapeError(f"an event named {names} carries type {value.get('type')!r}")
            check_event(value)
    return objects
