"""``POST /tokenize`` and ``POST /detokenize``: text or messages to gpt-oss token ids, and back.

``{"text": ...}`` is tokenized as it is, harmony's special tokens written in it (``<|start|>``)
read as themselves. ``{"messages": [...]}`` (with ``reasoning_effort`` and ``tools`` as Chat
Completions takes them) gives the prompt ``/v1/chat/completions`` would feed the model: the
harmony system and developer messages, the conversation, and ``<|start|>assistant`` at the end.
Decoding writes special tokens as their names, so both round-trip.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ossrun.options import ReplyOptions
from ossrun.server.chat import convert_messages, function_tool
from ossrun.server.fields import bad_request, describe, get
from ossrun.server.served import ServedModel, effort_of
from ossrun.server.state import ServerState


@dataclass
class Tokenize:
    """A /tokenize body, read: either a text or messages with the options of their prompt."""

    text: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    options: ReplyOptions = field(default_factory=ReplyOptions)


def parse_tokenize(body: Mapping[str, Any], served: ServedModel, state: ServerState) -> Tokenize:
    model = get(body, "model", (str,))
    if model is not None:
        served.check_model(model)
    text = get(body, "text", (str,))
    messages = get(body, "messages", (list,))
    if text is None and messages is None:
        raise bad_request(
            "text or messages is required: a string to tokenize, or messages as for /v1/chat/completions",
            "text",
            "missing_required_parameter",
        )
    if text is not None and messages is not None:
        raise bad_request("send text or messages, not both", "messages")
    if text is not None:
        return Tokenize(text=text)
    if not messages:
        raise bad_request("messages is empty: send at least one message", "messages")
    tools = get(body, "tools", (list,), default=[])
    options = ReplyOptions(
        reasoning_effort=effort_of(body, served.default_effort),
        truncate=False,
        tools=[function_tool(tool, f"tools[{i}]") for i, tool in enumerate(tools)],
        # the server's tools are declared as for any request; nothing runs here
        python_tool=served.python_tool if served.python_tool is not None else False,
        mcp=served.mcp,
    )
    return Tokenize(messages=convert_messages(messages, state), options=options)


def parse_detokenize(body: Mapping[str, Any]) -> list[int]:
    tokens = get(body, "tokens", (list,), required=True)
    for index, token in enumerate(tokens):
        if isinstance(token, bool) or not isinstance(token, int) or token < 0:
            raise bad_request(
                f"tokens[{index}] is {describe(token)} {token!r}: token ids are integers from 0",
                f"tokens[{index}]",
                "invalid_value",
            )
    return tokens
