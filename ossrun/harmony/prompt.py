"""Prompts: OpenAI-style messages and prompt settings rendered to harmony token ids.

Prompts are built as harmony messages and rendered by openai-harmony, never by
string templates.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import openai_harmony as oh

from ossrun.defaults import DEFAULT_REASONING_EFFORT
from ossrun.errors import ConversationError, OssrunError
from ossrun.harmony.messages import ReasoningEffort, check_strings

_EFFORTS = {"low": oh.ReasoningEffort.LOW, "medium": oh.ReasoningEffort.MEDIUM, "high": oh.ReasoningEffort.HIGH}


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

    reasoning_effort: ReasoningEffort = DEFAULT_REASONING_EFFORT
    instructions: str | None = None  # the developer message's instructions ("system prompt")
    date: str | None = None  # None: conversation_date() at render time
    functions: tuple[oh.ToolDescription, ...] = ()  # the developer message's functions namespace
    namespaces: tuple[oh.ToolNamespaceConfig, ...] = ()  # more namespaces of functions in the developer message
    system_tools: tuple[oh.ToolNamespaceConfig, ...] = ()  # builtin tools (python) in the system message
    response_format: ResponseFormat | None = None  # declared after the tools in the developer message

    def system_message(self) -> oh.Message:
        content = (
            oh.SystemContent.new()
            .with_reasoning_effort(_EFFORTS[self.reasoning_effort])
            .with_conversation_start_date(self.date or conversation_date())
        )
        for namespace in self.system_tools:
            content = content.with_tools(namespace)
        return oh.Message.from_role_and_content(oh.Role.SYSTEM, content)

    def developer_message(self) -> oh.Message | None:
        if not self.instructions and not self.functions and not self.namespaces and not self.response_format:
            return None
        content = oh.DeveloperContent.new()
        if self.instructions:
            content = content.with_instructions(self.instructions)
        if self.functions:
            content = content.with_function_tools(list(self.functions))
        for namespace in self.namespaces:
            content = content.with_tools(namespace)
        parts: list[oh.Content] = [content]
        if self.response_format is not None:
            parts.append(oh.TextContent(text=self.response_format.section()))
        return oh.Message(author=oh.Author(role=oh.Role.DEVELOPER), content=parts)

    def header_messages(self) -> list[oh.Message]:
        check_strings(self.instructions, "the instructions")
        if self.response_format is not None:
            check_strings(dict(self.response_format.schema), f"the response format {self.response_format.name}")
        developer = self.developer_message()
        return [self.system_message()] + ([developer] if developer else [])


@dataclass(frozen=True)
class ResponseFormat:
    """A JSON format the final answer follows, declared in harmony's Response Formats section."""

    name: str
    schema: Mapping[str, Any]
    description: str = ""

    def section(self) -> str:
        # After the developer message's tools: "# Response Formats", "## name", "// description", the schema.
        comment = "".join(f"// {line}\n" for line in self.description.splitlines() if line.strip())
        schema = json.dumps(self.schema, ensure_ascii=False, separators=(",", ":"))
        return f"\n\n# Response Formats\n\n## {self.name}\n\n{comment}{schema}"

    def __hash__(self) -> int:
        return hash((self.name, json.dumps(self.schema, sort_keys=True, default=str), self.description))


def function_description(name: str, description: str, parameters: Mapping[str, Any] | None) -> oh.ToolDescription:
    """A function for the developer message's functions namespace; ``parameters`` is a JSON Schema or None."""
    check_strings([description, dict(parameters or {})], f"tool {name}")
    return oh.ToolDescription.new(name, description, parameters=dict(parameters) if parameters else None)


def function_namespace(name: str, description: str, functions: Sequence[oh.ToolDescription]) -> oh.ToolNamespaceConfig:
    """Another namespace of functions for the developer message (``multi_agent_v1``, say)."""
    return oh.ToolNamespaceConfig(name=name, description=description or None, tools=list(functions))


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
    for index, entry in enumerate(history):
        check_strings(entry, f"message {index + 1}")
    messages = settings.header_messages() + history_messages(history)
    with _render_errors():
        conversation = oh.Conversation.from_messages(messages)
        return encoding.render_conversation_for_completion(conversation, oh.Role.ASSISTANT, _NO_AUTO_DROP)


def render_prefix(encoding: oh.HarmonyEncoding, settings: PromptSettings) -> list[int]:
    """Token ids of the system and developer messages alone: the prefix every prompt shares."""
    with _render_errors():
        conversation = oh.Conversation.from_messages(settings.header_messages())
        return encoding.render_conversation(conversation, _NO_AUTO_DROP)


@contextlib.contextmanager
def _render_errors() -> Iterator[None]:
    """openai-harmony's refusals (JSON nested past its parser's limit, say) as one clear error."""
    try:
        yield
    except (ValueError, oh.HarmonyError) as exc:
        raise ConversationError(f"harmony cannot render this conversation ({exc}): simplify the tools or messages") from None


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
