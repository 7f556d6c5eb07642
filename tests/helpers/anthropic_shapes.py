"""Every object ``ossrun serve`` sends on Anthropic's routes, checked against the ``anthropic`` SDK's own types.

pydantic's strict mode over the SDK's models (the JSON as it came over the wire): a missing
required field, a wrong type or a value outside a Literal fails. The SDK's models take unknown
fields silently: here every field sent must be one the SDK declares, at every depth. Fields the
API reference shows on every message although the SDK makes them optional (``stop_reason``,
``stop_sequence``, the cache counts of ``usage``) must be present (maybe null).

Two things the SDK's types do not hold and Anthropic's API does: the ``ping`` event (the SDK's
stream skips it) and the ``request_too_large`` error type of a 413 (Anthropic's errors page
lists it; the SDK's ``ErrorObject`` union does not).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from anthropic.types import Message, MessageTokensCount, RawMessageStreamEvent
from anthropic.types.shared import ErrorResponse
from pydantic import BaseModel

from helpers.openai_shapes import ShapeError, event_classes, require

UNLISTED_ERROR_TYPES = ("request_too_large",)
MESSAGE_REQUIRED = ("id", "type", "role", "model", "content", "stop_reason", "stop_sequence", "usage")
USAGE_REQUIRED = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


EVENT_CLASSES = event_classes(RawMessageStreamEvent)


def _require(data: Mapping[str, Any], keys: Iterable[str], where: str) -> None:
    require(data, keys, where, "Anthropic's API reference")


def _declared_only(value: Any, where: str) -> None:
    """No field the SDK does not declare, at any depth (its models would keep it as an extra)."""
    if isinstance(value, BaseModel):
        if value.model_extra:
            raise ShapeError(f"{where} ({type(value).__name__}) has fields the SDK does not know: {sorted(value.model_extra)}")
        for name in type(value).model_fields:
            _declared_only(getattr(value, name), f"{where}.{name}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _declared_only(item, f"{where}[{index}]")


def _strict(cls: type, data: Any, where: str) -> Any:
    value = cls.model_validate_json(json.dumps(data), strict=True)  # type: ignore[attr-defined]
    _declared_only(value, where)
    return value


def _check_message_fields(data: Mapping[str, Any], where: str) -> None:
    _require(data, MESSAGE_REQUIRED, where)
    _require(data["usage"], USAGE_REQUIRED, f"{where}.usage")


def check_message(data: Mapping[str, Any]) -> Message:
    _check_message_fields(data, "message")
    if data["stop_reason"] is None:
        raise ShapeError("a whole message has a stop_reason")
    return _strict(Message, data, "message")


def check_event(data: Mapping[str, Any]) -> Any:
    """One stream event, by its type (``ping`` and ``error`` included)."""
    kind = data.get("type")
    if kind == "ping":
        if dict(data) != {"type": "ping"}:
            raise ShapeError(f"a ping holds nothing else: {data}")
        return data
    if kind == "error":
        return check_error(data)
    if kind not in EVENT_CLASSES:
        raise ShapeError(f"no Messages stream event has the type {kind!r}")
    if kind == "message_start":
        _check_message_fields(data["message"], "message_start.message")
    return _strict(EVENT_CLASSES[kind], data, kind)


def check_count(data: Mapping[str, Any]) -> MessageTokensCount:
    return _strict(MessageTokensCount, data, "count_tokens")


def check_error(data: Mapping[str, Any]) -> ErrorResponse:
    _require(data, ("type", "error"), "an error body")
    _require(data["error"], ("type", "message"), "error")
    if data["error"]["type"] in UNLISTED_ERROR_TYPES:
        data = {**data, "error": {**data["error"], "type": "invalid_request_error"}}
    return _strict(ErrorResponse, data, "error")


def check_stream(text: str) -> list[dict[str, Any]]:
    """Every event of a streamed answer (its raw text), in Anthropic's order; returns them parsed."""
    events: list[dict[str, Any]] = []
    for block in text.split("\n\n"):
        lines = [line for line in block.split("\n") if line]
        data = [line[6:] for line in lines if line.startswith("data: ")]
        if not data:
            continue
        value = json.loads("\n".join(data))
        names = [line[7:] for line in lines if line.startswith("event: ")]
        if names != [value.get("type")]:
            raise ShapeError(f"an event named {names} carries type {value.get('type')!r}")
        check_event(value)
        events.append(value)
    check_order([event for event in events if event["type"] != "ping"])
    return events


def check_order(events: list[dict[str, Any]]) -> None:
    """message_start first; each block started, given deltas of its kind, stopped, one at a time, with
    indices counting from 0; then message_delta and message_stop last, or an error event that ends the
    stream where it stands, a block left open."""
    failed = bool(events) and events[-1]["type"] == "error"
    if failed:
        events = events[:-1]
        if not events:
            return
    kinds = [event["type"] for event in events]
    if not kinds or kinds[0] != "message_start":
        raise ShapeError(f"a stream starts with message_start: {kinds[:3]}")
    if kinds[-2:] != ["message_delta", "message_stop"] and not failed:
        raise ShapeError(f"a stream ends with message_delta, message_stop: {kinds[-3:]}")
    deltas = {"text": ("text_delta",), "thinking": ("thinking_delta", "signature_delta"), "tool_use": ("input_json_delta",)}
    open_block, count = None, 0
    for event in events[1:] if failed else events[1:-2]:
        kind = event["type"]
        if kind == "content_block_start":
            if open_block is not None or event["index"] != count:
                raise ShapeError(f"block {event['index']} starts while {open_block} is open (or out of order)")
            open_block = event
        elif kind in ("content_block_delta", "content_block_stop"):
            if open_block is None or event["index"] != open_block["index"]:
                raise ShapeError(f"{kind} for block {event['index']}, which is not open")
            if kind == "content_block_stop":
                open_block, count = None, count + 1
            elif event["delta"]["type"] not in deltas[open_block["content_block"]["type"]]:
                raise ShapeError(f"a {event['delta']['type']} in a {open_block['content_block']['type']} block")
        else:
            raise ShapeError(f"{kind} between message_start and message_delta")
    if open_block is not None and not failed:
        raise ShapeError(f"block {open_block['index']} is never stopped")


def check_body(path: str, status: int, data: Any) -> None:
    """A whole non-streamed answer of Anthropic's routes, whatever its status."""
    if status >= 400:
        check_error(data)
    elif path.startswith("/v1/messages/count_tokens"):
        check_count(data)
    else:
        check_message(data)
