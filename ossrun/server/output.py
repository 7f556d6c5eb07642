"""A reply as both APIs show it: reasoning, text and tool calls in order, never harmony markup.

``Model.stream`` events become steps (:data:`Step`: text, calls, results). When the model's output
was not valid harmony, its raw text reaches the final channel as it came, special tokens included (``FinalDelta.raw``);
from that text the headers (``<|channel|>commentary to=functions.x <|constrain|>json``) and every
``<|...|>`` token text are taken out, so a client only ever sees what the messages said. A
well-formed answer is never touched: one that explains harmony (``a turn starts with
<|start|>``) reaches the client exactly.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal

from ossrun.events import CommentaryDelta, Done, Event, FinalDelta, ReasoningDelta, Reply, ToolCall, ToolResult

_SPECIAL = re.compile(r"<\|[a-z_]+\|>")
_OPENS_HEADER = {"<|start|>", "<|channel|>"}
_MAX_SPECIAL = 24  # the longest harmony special token text is shorter


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


class MarkupFilter:
    """Streaming removal of harmony markup from text: headers skipped, special tokens dropped."""

    def __init__(self) -> None:
        self._held = ""
        self._in_header = False

    def feed(self, text: str) -> str:
        text = self._held + text
        self._held = ""
        out = []
        position = 0
        for match in _SPECIAL.finditer(text):
            if not self._in_header:
                out.append(text[position : match.start()])
            token = match.group(0)
            if token in _OPENS_HEADER:
                self._in_header = True
            elif token == "<|message|>":
                self._in_header = False
            position = match.end()
        rest = text[position:]
        partial = rest.rfind("<")
        if partial >= 0 and len(rest) - partial < _MAX_SPECIAL and re.fullmatch(r"<(\|[a-z_]*\|?)?", rest[partial:]):
            self._held, rest = rest[partial:], rest[:partial]  # maybe the start of a special token
        if not self._in_header:
            out.append(rest)
        return "".join(out)

    def flush(self) -> str:
        held, self._held = self._held, ""
        return "" if self._in_header else held


def clean(text: str) -> str:
    markup = MarkupFilter()
    return markup.feed(text) + markup.flush()


@dataclass(frozen=True)
class TextStep:
    """A piece of the reasoning or of the text."""

    kind: Literal["reasoning", "text"]
    text: str


@dataclass(frozen=True)
class CallStep:
    """``call``: a tool call for the client; ``run``: a call the server runs itself (python, MCP tools)."""

    kind: Literal["call", "run"]
    call: ToolCall


@dataclass(frozen=True)
class ResultStep:
    """What a call the model's own loop ran returned."""

    result: ToolResult
    kind: Literal["result"] = "result"

    @property
    def call(self) -> ToolCall:
        return self.result.call


Step = TextStep | CallStep | ResultStep


class Transcript:
    """Events in, steps out; counts the reasoning tokens on the way."""

    def __init__(self, server_tools: Collection[str] = frozenset()):
        self.server_tools = server_tools  # recipients the server runs itself
        self._markup = MarkupFilter()  # for the raw text of malformed output only
        self.reasoning_tokens = 0
        self.reply: Reply | None = None

    def feed(self, event: Event) -> list[Step]:
        if isinstance(event, ReasoningDelta):
            self.reasoning_tokens += 1
            return [TextStep("reasoning", event.text)] if event.text else []
        if isinstance(event, FinalDelta) and event.raw:
            cleaned = self._markup.feed(event.text)
            return [TextStep("text", cleaned)] if cleaned else []
        if isinstance(event, (FinalDelta, CommentaryDelta)):
            return self._flush() + ([TextStep("text", event.text)] if event.text else [])
        if isinstance(event, ToolCall):
            return self._flush() + [CallStep("run" if event.recipient in self.server_tools else "call", event)]
        if isinstance(event, ToolResult):
            return [ResultStep(event)]
        if isinstance(event, Done):
            self.reply = event.reply
            return self._flush()
        return []  # Prefill, Notice

    def _flush(self) -> list[Step]:
        rest = self._markup.flush()
        return [TextStep("text", rest)] if rest else []


def arguments_json(call: ToolCall) -> str:
    """A call's arguments as the client reads them: the model's JSON text, or ``{}`` for none."""
    return call.arguments.strip() or "{}"


def split_recipient(recipient: str) -> tuple[str | None, str]:
    """(namespace, name) as the Responses API shows a call: ``functions.x`` has no namespace."""
    namespace, _, name = recipient.partition(".")
    if not name:
        return None, recipient
    return (None if namespace == "functions" else namespace), name


def finish_reason(reply: Reply) -> str:
    """The reply's finish_reason in OpenAI's terms: stop, length or tool_calls (malformed output
    comes back as text, cleaned, with stop or length)."""
    if reply.finish_reason == "tool_calls" and reply.pending_calls:
        return "tool_calls"
    if reply.finish_reason in ("length", "tool_calls"):  # tool_calls without calls: the round limit
        return "length"
    return "stop"


JsonValue = dict | list | str | int | float | bool | None


def usage_counts(reply: Reply, reasoning_tokens: int) -> dict[str, Any]:
    return {
        "prompt": reply.usage.prompt_tokens,
        "cached": reply.usage.cached_tokens,
        "completion": reply.usage.completion_tokens,
        "reasoning": reasoning_tokens,
    }
