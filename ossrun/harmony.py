"""Everything harmony: the encoding, prompts rendered to token ids, model tokens parsed.

This is the only module that talks to ``openai_harmony``. Prompts are built as
harmony messages and rendered by the library, never by string templates; the
model's tokens go through harmony's streaming parser, wrapped so that malformed
output never ends a turn: it is shown as raw text instead.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import openai_harmony as oh

from ossrun.errors import ConversationError, ModelError, OssrunError
from ossrun.events import CommentaryDelta, Event, FinalDelta, Notice, ReasoningDelta, ToolCall

REASONING_EFFORTS = ("low", "medium", "high")
DEFAULT_REASONING_EFFORT = "medium"
# Real headers are a dozen tokens (``assistant to=functions.x<|channel|>commentary <|constrain|>json``);
# past this bound the model is rambling inside a header and its output is shown raw.
DEFAULT_HEADER_LIMIT = 64
VALID_CHANNELS = ("analysis", "commentary", "final")
VOCAB_FILE = "o200k_base.tiktoken"
# A UTF-8 character spans at most 4 bytes, so at most 4 tokens: past that, the bytes are invalid.
_MAX_PENDING_RAW_TOKENS = 4
_RECIPIENT = re.compile(r"^(functions\.[A-Za-z0-9_.\-]+|python|browser\.[a-z_]+)$")
_EFFORTS = {"low": oh.ReasoningEffort.LOW, "medium": oh.ReasoningEffort.MEDIUM, "high": oh.ReasoningEffort.HIGH}

_encoding: Optional[oh.HarmonyEncoding] = None


def load_encoding(vocab_dir: Path) -> oh.HarmonyEncoding:
    """The gpt-oss harmony encoding, read offline from ``vocab_dir/o200k_base.tiktoken``.

    openai-harmony downloads the vocabulary unless TIKTOKEN_ENCODINGS_BASE names a
    folder holding it, so that is set before the first load. Loaded once per process.
    """
    global _encoding
    if _encoding is None:
        if not (vocab_dir / VOCAB_FILE).is_file():
            raise ModelError(f"the o200k vocabulary is missing from {vocab_dir}: it is derived from the model on first use")
        os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(vocab_dir)
        try:
            _encoding = oh.load_harmony_encoding(oh.HarmonyEncodingName.HARMONY_GPT_OSS)
        except oh.HarmonyError as exc:
            raise ModelError(f"cannot load the harmony encoding from {vocab_dir}: {exc}") from exc
    return _encoding


def check_reasoning_effort(value: str) -> str:
    effort = value.strip().lower()
    if effort not in REASONING_EFFORTS:
        raise OssrunError(f"unknown reasoning effort {value!r}: use low, medium or high")
    return effort


def conversation_date() -> str:
    """Today's date for the system message, or ``$OSSRUN_DATE`` so prompts can be pinned."""
    pinned = os.environ.get("OSSRUN_DATE")
    if pinned:
        try:
            return datetime.date.fromisoformat(pinned).isoformat()
        except ValueError:
            raise OssrunError(f"OSSRUN_DATE={pinned!r} is not a date: use YYYY-MM-DD") from None
    return datetime.date.today().isoformat()


@dataclass(frozen=True)
class PromptSettings:
    """What goes into the system and developer messages."""

    reasoning_effort: str = DEFAULT_REASONING_EFFORT
    instructions: Optional[str] = None  # the developer message's instructions ("system prompt")
    date: Optional[str] = None  # None: conversation_date() at render time
    functions: tuple[oh.ToolDescription, ...] = ()  # the developer message's functions namespace
    system_tools: tuple[oh.ToolNamespaceConfig, ...] = ()  # builtin tools (python) in the system message

    def system_message(self) -> oh.Message:
        content = (
            oh.SystemContent.new()
            .with_reasoning_effort(_EFFORTS[check_reasoning_effort(self.reasoning_effort)])
            .with_conversation_start_date(self.date or conversation_date())
        )
        for namespace in self.system_tools:
            content = content.with_tools(namespace)
        return oh.Message.from_role_and_content(oh.Role.SYSTEM, content)

    def developer_message(self) -> Optional[oh.Message]:
        if not self.instructions and not self.functions:
            return None
        content = oh.DeveloperContent.new()
        if self.instructions:
            content = content.with_instructions(self.instructions)
        if self.functions:
            content = content.with_function_tools(list(self.functions))
        return oh.Message.from_role_and_content(oh.Role.DEVELOPER, content)

    def header_messages(self) -> list[oh.Message]:
        developer = self.developer_message()
        return [self.system_message()] + ([developer] if developer else [])


def function_description(name: str, description: str, parameters: Optional[Mapping[str, Any]]) -> oh.ToolDescription:
    """A function for the developer message's functions namespace; ``parameters`` is a JSON Schema or None."""
    return oh.ToolDescription.new(name, description, parameters=dict(parameters) if parameters else None)


def tool_namespace(name: str, description: str) -> oh.ToolNamespaceConfig:
    """A builtin tool (``python``) for the system message, described in our own words."""
    return oh.ToolNamespaceConfig(name=name, description=description, tools=[])


_NO_AUTO_DROP = oh.RenderConversationConfig(auto_drop_analysis=False)


def render_prompt(encoding: oh.HarmonyEncoding, history: Sequence[Mapping[str, Any]], settings: PromptSettings) -> list[int]:
    """Token ids of the whole conversation, ending with ``<|start|>assistant``.

    Analysis of finished turns is dropped here (see :func:`history_messages`) and
    harmony's own dropping is off: it would keep re-rendering earlier analysis
    during a tool chain and break KV-cache reuse.
    """
    messages = settings.header_messages() + history_messages(history)
    conversation = oh.Conversation.from_messages(messages)
    return encoding.render_conversation_for_completion(conversation, oh.Role.ASSISTANT, _NO_AUTO_DROP)


def render_prefix(encoding: oh.HarmonyEncoding, settings: PromptSettings) -> list[int]:
    """Token ids of the system and developer messages alone: the prefix every prompt shares."""
    conversation = oh.Conversation.from_messages(settings.header_messages())
    return encoding.render_conversation(conversation, _NO_AUTO_DROP)


def instructions_from(history: Sequence[Mapping[str, Any]]) -> Optional[str]:
    """The text of a leading system/developer entry, which becomes the developer instructions."""
    texts = [str(m.get("content") or "") for m in history if m.get("role") in ("system", "developer")]
    return "\n\n".join(t for t in texts if t) or None


def history_messages(history: Sequence[Mapping[str, Any]]) -> list[oh.Message]:
    """OpenAI-style message dicts as harmony messages.

    ``system``/``developer`` entries are skipped (see :func:`instructions_from`).
    An assistant entry may carry ``reasoning`` (analysis) and ``tool_calls``; its
    reasoning is kept only while its user turn has no final answer yet.
    """
    finished = _finished_turns(history)
    messages: list[oh.Message] = []
    turn = 0
    for index, entry in enumerate(history):
        role = entry.get("role")
        if role == "user":
            turn += 1
            messages.append(oh.Message.from_role_and_content(oh.Role.USER, _text(entry, index)))
        elif role == "assistant":
            messages.extend(_assistant_messages(entry, index, keep_reasoning=turn not in finished))
        elif role == "tool":
            messages.append(_tool_result_message(entry, index))
        elif role not in ("system", "developer"):
            raise ConversationError(f"message {index + 1} has an unknown role {role!r}: use system, user, assistant or tool")
    return messages


def _finished_turns(history: Sequence[Mapping[str, Any]]) -> set[int]:
    """Numbers of the user turns that ended in a final answer (an assistant entry without tool calls)."""
    finished, turn = set(), 0
    for entry in history:
        if entry.get("role") == "user":
            turn += 1
        elif entry.get("role") == "assistant" and not entry.get("tool_calls"):
            finished.add(turn)
    return finished


def _text(entry: Mapping[str, Any], index: int) -> str:
    content = entry.get("content")
    if content is None:
        return ""
    if not isinstance(content, str):
        raise ConversationError(f"message {index + 1}: content must be a string")
    return content


def _assistant_messages(entry: Mapping[str, Any], index: int, keep_reasoning: bool) -> list[oh.Message]:
    out = []
    reasoning = entry.get("reasoning")
    if reasoning and keep_reasoning:
        out.append(_assistant(str(reasoning), "analysis"))
    calls = entry.get("tool_calls") or []
    content = _text(entry, index)
    if calls:
        if content:  # a preamble before the calls
            out.append(_assistant(content, "commentary"))
        for call in calls:
            out.append(_tool_call_message(call, index))
    elif content or not out:
        out.append(_assistant(content, "final"))
    return out


def _assistant(text: str, channel: str) -> oh.Message:
    return oh.Message.from_role_and_content(oh.Role.ASSISTANT, text).with_channel(channel)


def _call_fields(call: Mapping[str, Any], index: int) -> tuple[str, str]:
    """(name, arguments) of a tool call in either OpenAI's nested shape or a flat one."""
    function = call.get("function", call)
    name, arguments = function.get("name"), function.get("arguments", "")
    if not isinstance(name, str) or not name:
        raise ConversationError(f"message {index + 1}: a tool call has no name")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return name, arguments


def recipient_for(name: str) -> str:
    """The harmony recipient of a tool: the builtin ``python``, else ``functions.NAME``."""
    return name if name == "python" or "." in name else f"functions.{name}"


def _tool_call_message(call: Mapping[str, Any], index: int) -> oh.Message:
    name, arguments = _call_fields(call, index)
    recipient = recipient_for(name)
    if recipient == "python":
        channel, content_type = call.get("channel", "analysis"), "code"
    else:
        channel, content_type = call.get("channel", "commentary"), "<|constrain|>json"
    return _assistant(arguments, channel).with_recipient(recipient).with_content_type(content_type)


def _tool_result_message(entry: Mapping[str, Any], index: int) -> oh.Message:
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise ConversationError(f"message {index + 1}: a tool result needs the tool's name")
    recipient = recipient_for(name)
    channel = entry.get("channel", "analysis" if recipient == "python" else "commentary")
    author = oh.Author.new(oh.Role.TOOL, recipient)
    return oh.Message.from_author_and_content(author, _text(entry, index)).with_channel(channel).with_recipient("assistant")


# ---------------------------------------------------------------------------
# Parsing one assistant turn


@dataclass
class Turn:
    """What one assistant turn produced, once its stop token (or the end) arrived."""

    tokens: list[int] = field(default_factory=list)
    reasoning: str = ""
    final: str = ""
    commentary: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    malformed: Optional[str] = None  # why the output was shown raw, if it was


class TurnParser:
    """Feeds an assistant turn's tokens to harmony's streaming parser, turning them into events.

    openai-harmony's non-strict parser does not recover by itself: a garbage header
    raises and leaves it stuck, an endless header only fails at the end, and text
    after a bare ``<|start|>`` is dropped silently. So the raw tokens are kept and,
    on a parser error, a header over ``header_limit`` tokens, a wrong role, channel
    or recipient, or a message harmony did not produce, the rest of the turn from
    the broken message on is shown as decoded raw text in the answer.
    """

    def __init__(self, encoding: oh.HarmonyEncoding, *, header_limit: int = DEFAULT_HEADER_LIMIT):
        self._encoding = encoding
        self._parser = oh.StreamableParser(encoding, oh.Role.ASSISTANT, strict=False)
        self._header_limit = header_limit
        self._ids = _special_ids(encoding)
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
        return self._content_events()

    def finish(self) -> Turn:
        """The turn so far, for a turn that ended without a stop token (length, interrupt)."""
        if self.malformed:
            self._raw_events(lossy=True)
        return self.turn

    # -- helpers ----------------------------------------------------------

    def _header_problem(self) -> Optional[str]:
        parser = self._parser
        if parser.current_role != oh.Role.ASSISTANT:
            return f"a message came from role {getattr(parser.current_role, 'value', None)!r}"
        channel, recipient = parser.current_channel, parser.current_recipient
        if channel not in VALID_CHANNELS:
            return f"unknown channel {channel!r}"
        if recipient is not None and not _RECIPIENT.match(recipient):
            return f"unknown recipient {recipient!r}"
        return None

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
        return [FinalDelta(text)] if text else []


def _special_ids(encoding: oh.HarmonyEncoding) -> dict[str, Any]:
    def one(text: str) -> int:
        (token,) = encoding.encode(text, allowed_special={text})
        return token

    stops = frozenset(encoding.stop_tokens_for_assistant_actions())  # <|return|>, <|call|>
    return {
        "start": one("<|start|>"),
        "message": one("<|message|>"),
        "stops": stops,
        "ends": stops | {one("<|end|>")},
    }


def stop_tokens(encoding: oh.HarmonyEncoding) -> frozenset[int]:
    """Generation stops on ``<|return|>`` (answer done) and ``<|call|>`` (tool call)."""
    return frozenset(encoding.stop_tokens_for_assistant_actions())
