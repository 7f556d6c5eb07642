"""The typed events and results every ossrun front end consumes.

``Model.stream`` yields these; ``Model.chat`` collects them into a :class:`Reply`.
Renderers (the REPL, ``ossrun run``, ``--json``) only ever see these types.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

FinishReason = Literal["stop", "length", "interrupted", "tool_calls"]


@dataclass(frozen=True)
class ReasoningDelta:
    """A piece of the model's chain of thought (harmony's analysis channel)."""

    text: str


@dataclass(frozen=True)
class FinalDelta:
    """A piece of the answer (harmony's final channel), or with ``raw`` the decoded text of output
    that was not valid harmony, special tokens included."""

    text: str
    raw: bool = False


@dataclass(frozen=True)
class CommentaryDelta:
    """A user-visible preamble (harmony's commentary channel without a recipient)."""

    text: str


@dataclass(frozen=True)
class ToolCall:
    """The model asked a tool to run: ``recipient`` is e.g. ``functions.get_weather`` or ``python``."""

    recipient: str
    arguments: str
    channel: str = "commentary"
    content_type: str | None = None

    @property
    def name(self) -> str:
        """The tool's name without its namespace (``get_weather``, ``python``)."""
        return self.recipient.split(".", 1)[1] if self.recipient.startswith("functions.") else self.recipient

    def to_dict(self) -> dict[str, Any]:
        """This call as an entry of an assistant message's ``tool_calls`` (OpenAI's shape, plus the channel)."""
        return {"type": "function", "function": {"name": self.name, "arguments": self.arguments}, "channel": self.channel}


@dataclass(frozen=True)
class ToolResult:
    """What a tool returned to the model, as the text the model sees."""

    call: ToolCall
    output: str
    error: bool = False

    def message(self) -> dict[str, Any]:
        """This result as an OpenAI-style history entry, answered in the channel of the call."""
        return {"role": "tool", "name": self.call.name, "content": self.output, "channel": self.call.channel}


def _nothing_read() -> int:
    return 0


@dataclass(frozen=True)
class Prefill:
    """The model starts reading ``tokens`` prompt tokens it has not cached: minutes for a long 20b prompt.

    ``read()`` says how many of them it has read so far; any thread may call it, e.g. to show
    progress while the stream waits for the first token.
    """

    tokens: int
    read: Callable[[], int] = field(default=_nothing_read, compare=False, repr=False)


@dataclass(frozen=True)
class Notice:
    """Something the user should know that is not model output (goes to stderr)."""

    text: str


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0  # every prompt token, cached or not
    cached_tokens: int = 0  # prompt tokens reused from the KV cache, not evaluated
    completion_tokens: int = 0

    def to_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "completion_tokens": self.completion_tokens,
        }


@dataclass(frozen=True)
class Timings:
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    prefill_tokens: int = 0  # tokens actually evaluated during prefill
    decode_tokens: int = 0

    @property
    def prefill_tps(self) -> float:
        return self.prefill_tokens / self.prefill_seconds if self.prefill_seconds > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        return self.decode_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, float]:
        return {"prefill_tps": round(self.prefill_tps, 2), "decode_tps": round(self.decode_tps, 2)}


@dataclass(frozen=True)
class Reply:
    """One assistant turn, complete."""

    reasoning: str
    final: str
    finish_reason: FinishReason
    usage: Usage
    timings: Timings
    tool_calls: tuple[ToolResult, ...] = ()  # the calls ossrun ran for this reply, with their results
    malformed: bool = False  # the model's output did not parse as harmony; final holds its raw text
    context_used: int = 0
    context_size: int = 0
    dropped_messages: int = 0  # the oldest history entries left out to fit the context
    notices: tuple[str, ...] = ()  # what the stream's Notice events said
    # finish_reason "tool_calls": the calls the caller runs; it appends messages(), then one
    # ToolResult(...).message() (or {"role": "tool", "name", "content"}) per call, and asks again.
    pending_calls: tuple[ToolCall, ...] = ()
    commentary: str = ""  # a preamble the model wrote before its pending calls
    chain: tuple[dict[str, Any], ...] = ()  # history entries before the last message: calls run and their results
    stop_text: str | None = None  # the text of ``stop`` that ended the answer, when one did

    def message(self) -> dict[str, Any]:
        """This reply's last message as an OpenAI-style history entry (what ``/save`` writes)."""
        if self.pending_calls:
            entry: dict[str, Any] = {"role": "assistant", "content": self.commentary}
            if self.reasoning:
                entry["reasoning"] = self.reasoning
            entry["tool_calls"] = [call.to_dict() for call in self.pending_calls]
            return entry
        entry = {"role": "assistant", "content": self.final}
        if self.reasoning:
            entry["reasoning"] = self.reasoning
        return entry

    def messages(self) -> list[dict[str, Any]]:
        """Every history entry this reply adds: the tool calls run and their results, then :meth:`message`."""
        return [*self.chain, self.message()]


@dataclass(frozen=True)
class Done:
    """The last event of a stream."""

    reply: Reply


Event = ReasoningDelta | FinalDelta | CommentaryDelta | ToolCall | ToolResult | Notice | Prefill | Done
