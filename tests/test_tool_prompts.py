"""Prompts with tools: ossrun's rendering equals openai-harmony's own, token for token."""

from __future__ import annotations

from typing import Literal

import openai_harmony as oh
import pytest

from ossrun.harmony.prompt import PromptSettings, render_prompt
from ossrun.tools import PythonSandbox, Toolbox

DATE = "2026-01-15"
NO_AUTO_DROP = oh.RenderConversationConfig(auto_drop_analysis=False)


def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> dict:
    """Get the current weather in a city.

    Args:
        city: The city, e.g. Paris.
    """
    return {"temperature": 21, "unit": unit}


def get_time() -> str:
    """The current time."""
    return "12:00"


SEARCH = {
    "type": "function",
    "function": {
        "name": "search_docs",
        "description": "Search the docs.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    },
}

HISTORY = [
    {"role": "user", "content": "Weather in Paris, and 2**100?"},
    {
        "role": "assistant",
        "reasoning": "Need the weather tool.",
        "content": "Checking the weather.",
        "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}],
    },
    {"role": "tool", "name": "get_weather", "content": '{"temperature": 21, "unit": "celsius"}'},
    {"role": "assistant", "reasoning": "Now the power.", "tool_calls": [{"name": "python", "arguments": "print(2**100)"}]},
    {"role": "tool", "name": "python", "content": "1267650600228229401496703205376\n[exit status 0]"},
]


def expected_prompt(encoding, python_description: str) -> list[int]:
    """The same conversation built with openai_harmony directly."""
    system = (
        oh.SystemContent.new()
        .with_reasoning_effort(oh.ReasoningEffort.MEDIUM)
        .with_conversation_start_date(DATE)
        .with_tools(oh.ToolNamespaceConfig(name="python", description=python_description, tools=[]))
    )
    developer = (
        oh.DeveloperContent.new()
        .with_instructions("Be brief.")
        .with_function_tools(
            [
                oh.ToolDescription.new(
                    "get_weather",
                    "Get the current weather in a city.",
                    parameters={
                        "type": "object",
                        "properties": {
                            "city": {"description": "The city, e.g. Paris.", "type": "string"},
                            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
                        },
                        "required": ["city"],
                    },
                ),
                oh.ToolDescription.new("get_time", "The current time.", parameters=None),
                oh.ToolDescription.new("search_docs", "Search the docs.", parameters=SEARCH["function"]["parameters"]),
            ]
        )
    )
    A = oh.Role.ASSISTANT
    messages = [
        oh.Message.from_role_and_content(oh.Role.SYSTEM, system),
        oh.Message.from_role_and_content(oh.Role.DEVELOPER, developer),
        oh.Message.from_role_and_content(oh.Role.USER, "Weather in Paris, and 2**100?"),
        oh.Message.from_role_and_content(A, "Need the weather tool.").with_channel("analysis"),
        oh.Message.from_role_and_content(A, "Checking the weather.").with_channel("commentary"),
        oh.Message.from_role_and_content(A, '{"city": "Paris"}')
        .with_channel("commentary")
        .with_recipient("functions.get_weather")
        .with_content_type("<|constrain|>json"),
        oh.Message.from_author_and_content(
            oh.Author.new(oh.Role.TOOL, "functions.get_weather"), '{"temperature": 21, "unit": "celsius"}'
        )
        .with_channel("commentary")
        .with_recipient("assistant"),
        oh.Message.from_role_and_content(A, "Now the power.").with_channel("analysis"),
        oh.Message.from_role_and_content(A, "print(2**100)")
        .with_channel("analysis")
        .with_recipient("python")
        .with_content_type("code"),
        oh.Message.from_author_and_content(
            oh.Author.new(oh.Role.TOOL, "python"), "1267650600228229401496703205376\n[exit status 0]"
        )
        .with_channel("analysis")
        .with_recipient("assistant"),
    ]
    return encoding.render_conversation_for_completion(oh.Conversation.from_messages(messages), A, NO_AUTO_DROP)


@pytest.fixture
def sandbox():
    with PythonSandbox() as box:
        yield box


def test_prompt_with_functions_python_and_a_tool_chain_equals_openai_harmony(encoding, sandbox):
    toolbox = Toolbox.build([get_weather, get_time, SEARCH], python_tool=sandbox)
    settings = toolbox.prompt_settings(PromptSettings(instructions="Be brief.", date=DATE))
    ids = render_prompt(encoding, HISTORY, settings)
    expected = expected_prompt(encoding, sandbox.description())
    if ids != expected:
        first = next((i for i, (a, b) in enumerate(zip(ids, expected, strict=False)) if a != b), min(len(ids), len(expected)))
        pytest.fail(
            f"rendered ids differ at {first}: got {ids[first : first + 8]}, expected {expected[first : first + 8]}\n"
            f"got:\n{encoding.decode_utf8(ids)}\nexpected:\n{encoding.decode_utf8(expected)}"
        )
    text = encoding.decode_utf8(ids)
    # What the model reads: the real sandbox, functions as TypeScript, both chains' analysis kept.
    assert "## python\n\nUse this tool to execute Python code in your chain of thought." in text
    assert "stateful Jupyter" not in text and "/mnt/data" not in text
    assert (
        "type get_weather = (_: {\n// The city, e.g. Paris.\ncity: string,\n"
        'unit?: "celsius" | "fahrenheit", // default: celsius\n}) => any;' in text
    )
    assert "type get_time = () => any;" in text
    assert "Calls to these tools must go to the commentary channel: 'functions'." in text


def test_entries_from_the_tool_loop_render_like_harmony_would(encoding):
    """The history entries the loop appends (ToolCall.to_dict, ToolResult.message) render as the model wrote them."""
    from ossrun.events import ToolCall, ToolResult

    call = ToolCall(
        recipient="functions.get_weather", arguments='{"city": "Paris"}', channel="commentary", content_type="<|constrain|>json"
    )
    result = ToolResult(call, '{"temperature": 21}')
    history = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [call.to_dict()]},
        result.message(),
    ]
    text = encoding.decode_utf8(render_prompt(encoding, history, PromptSettings(date=DATE)))
    assert text.endswith(
        '<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>{"city": "Paris"}<|call|>'
        '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>{"temperature": 21}<|end|>'
        "<|start|>assistant"
    )
