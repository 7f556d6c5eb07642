"""One assistant turn's tokens parsed by harmony's streaming parser, recovering from malformed output.

The model's tokens go through openai-harmony's parser, wrapped so that malformed
output never ends a turn: it is shown as raw text instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import openai_harmony as oh

from ossrun.events import CommentaryDelta, Event, FinalDelta, Notice, ReasoningDelta, ToolCall
from ossrun.harmony.encoding import special_ids

# Real headers are a dozen tokens (``assistant to=functions.x<|channel|>commentary <|constrain|>json``);
# past this bound the model is rambling inside a header and its output is shown raw.
DEFAULT_HEADER_LIMIT = 64
VALID_CHANNELS = ("analysis", "commentary", "final")
# A UTF-8 character spans at most 4 bytes, so at most 4 tokens: past that, the bytes are invalid.
_MAX_PENDING_RAW_TOKENS = 4
_RECIPIENT = re.compile(r"^(functions\.[A-Za-z0-9_.\-]+|python|browser\.[a-z_]+)$")
_NAMESPACED = re.compile(r"^([A-Za-z0-9_\-]+)\.[A-Za-z0-9_.\-]+$")


@dataclass
class Turn:
    """What one assistant turn produced, once its stop token (or the end) arrived."""

    tokens: list[int] = field(default_factory=list)
    reasoning: str = ""
    final: str = ""
    commentary: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    malformed: str | None = None  # why the output was shown raw, if it was


class TurnParser:
    """Feeds an assistant turn's tokens to harmony's streaming parser, turning them into events.

    openai-harmony's non-strict parser does not recover by itself: a garbage header
    raises and leaves it stuck, an endless header only fails at the end, and text
    after a bare ``<|start|>`` is dropped silently. So the raw tokens are kept and,
    on a parser error, a header over ``header_limit`` tokens, a wrong role, channel
    or recipient, or a message harmony did not produce, the rest of the turn from
    the broken message on is shown as decoded raw text in the answer.
    """

    def __init__(self, encoding: oh.HarmonyEncoding, *, header_limit: int = DEFAULT_HEADER_LIMIT, namespaces: Iterable[str] = ()):
        self._encoding = encoding
        self._namespaces = frozenset(namespaces)  # declared beyond functions, python and browser
        self._parser = oh.StreamableParser(encoding, oh.Role.ASSISTANT, strict=False)
        self._header_limit = header_limit
        self._ids = special_ids(encoding)
        self._in_header = True  # the prompt ends with <|start|>assistant
        self._header_tokens = 0
        self._segment_start = 0  # where the current message began in turn.tokens
        self._messages_done = 0
        self._raw_pending: list[int] = []  # raw tokens not shown yet, once malformed
        self.turn = Turn()

    @property
    def malformed(self) -> bool:
        return self.turn.malformed is not None

    def feed(self, token: int) -> list[Event]:
        """Process one generated token (stop tokens included) and return the events it produced."""
        turn = self.turn
        turn.tokens.append(token)
        if self.malformed:
            self._raw_pending.append(token)
            return self._raw_events()
        ids = self._ids
        if token in ids["stops"] and self._in_header and self._header_tokens == 0 and self._messages_done:
            return []  # "<|end|><|return|>": a finished message followed by a stop, nothing lost
        try:
            self._parser.process(token)
        except oh.HarmonyError as exc:
            return self._fall_back(f"the parser rejected it ({exc})")
        if self._in_header:
            self._header_tokens += 1
            if token == ids["message"]:
                self._in_header = False
                problem = self._header_problem()
                if problem:
                    return self._fall_back(problem)
                return []
            if token in ids["stops"]:
                return self._fall_back("a message header was cut short")
            if self._header_tokens > self._header_limit:
                return self._fall_back(f"a message header ran past {self._header_limit} tokens")
            return []
        if token in ids["ends"]:
            return self._end_message()
        if token == ids["start"]:
            return []
        if token in ids["header_only"]:  # harmony would take it as text of the message (or of a call's arguments)
            return self._fall_back("a header token inside a message")
        return self._content_events()

    def finish(self) -> Turn:
        """The turn so far, for a turn that ended without a stop token (length, interrupt)."""
        if self.malformed:
            self._raw_events(lossy=True)
        return self.turn

    # -- helpers ----------------------------------------------------------

    def _header_problem(self) -> str | None:
        parser = self._parser
        if parser.current_role != oh.Role.ASSISTANT:
            return f"a message came from role {getattr(parser.current_role, 'value', None)!r}"
        channel, recipient = parser.current_channel, parser.current_recipient
        if channel not in VALID_CHANNELS:
            return f"unknown channel {channel!r}"
        if recipient is not None and not self._known_recipient(recipient):
            return f"unknown recipient {recipient!r}"
        return None

    def _known_recipient(self, recipient: str) -> bool:
        if _RECIPIENT.match(recipient):
            return True
        namespaced = _NAMESPACED.match(recipient)
        return namespaced is not None and namespaced.group(1) in self._namespaces

    def _content_events(self) -> list[Event]:
        parser = self._parser
        delta = parser.last_content_delta
        if not delta or parser.current_recipient is not None:
            return []  # tool-call arguments are reported whole, as a ToolCall
        channel = parser.current_channel
        if channel == "analysis":
            self.turn.reasoning += delta
            return [ReasoningDelta(delta)]
        if channel == "final":
            self.turn.final += delta
            return [FinalDelta(delta)]
        self.turn.commentary += delta
        return [CommentaryDelta(delta)]

    def _end_message(self) -> list[Event]:
        messages = self._parser.messages
        if len(messages) <= self._messages_done:
            return self._fall_back("a message was lost by the parser")
        self._messages_done = len(messages)
        self._in_header, self._header_tokens = True, 0
        self._segment_start = len(self.turn.tokens)
        message = messages[-1]
        if message.recipient is None:
            return []
        call = ToolCall(
            recipient=message.recipient,
            arguments="".join(c.text for c in message.content if isinstance(c, oh.TextContent)),
            channel=message.channel or "commentary",
            content_type=message.content_type,
        )
        self.turn.tool_calls.append(call)
        return [call]

    def _fall_back(self, reason: str) -> list[Event]:
        self.turn.malformed = reason
        self._raw_pending = self.turn.tokens[self._segment_start :]
        return [Notice(f"the model's output is not valid harmony ({reason}): showing it raw")] + self._raw_events()

    def _raw_events(self, lossy: bool = False) -> list[Event]:
        """Decoded text of the raw tokens not shown yet (the broken message on).

        A character split across tokens waits for its last byte; bytes that never
        form one are shown with replacement characters.
        """
        pending = [t for t in self._raw_pending if t not in self._ids["stops"]]
        try:
            text = self._encoding.decode(pending) if lossy else self._encoding.decode_utf8(pending)
        except oh.HarmonyError:  # an incomplete UTF-8 sequence
            if len(pending) < _MAX_PENDING_RAW_TOKENS:
                self._raw_pending = pending
                return []
            text = self._encoding.decode(pending)
        self._raw_pending = []
        self.turn.final += text
        return [FinalDelta(text, raw=True)] if text else []
