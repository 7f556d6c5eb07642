"""Prompt rendering against golden token ids, and the recovering turn parser."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ossrun.errors import ConversationError, OssrunError
from ossrun.events import FinalDelta, Notice, ReasoningDelta, ToolCall
from ossrun.harmony.messages import REASONING_EFFORTS, check_reasoning_effort
from ossrun.harmony.parser import TurnParser
from ossrun.harmony.prompt import PromptSettings, render_prefix, render_prompt

GOLDEN = Path(__file__).parent / "golden"
DATE = "2026-01-15"

HISTORY = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "reasoning": "Simple arithmetic: 2+2=4.", "content": "4"},
    {"role": "user", "content": "And 3+3?"},
]


def check_golden(encoding, name: str, ids: list[int]) -> None:
    """Compare ids with tests/golden/NAME.json; OSSRUN_UPDATE_GOLDEN=1 rewrites the file."""
    path = GOLDEN / f"{name}.json"
    text = encoding.decode_utf8(ids)
    if os.environ.get("OSSRUN_UPDATE_GOLDEN"):
        path.write_text(json.dumps({"text": text, "ids": ids}, indent=1, ensure_ascii=False) + "\n")
    golden = json.loads(path.read_text())
    if ids != golden["ids"]:
        first = next(
            (i for i, (a, b) in enumerate(zip(ids, golden["ids"], strict=False)) if a != b), min(len(ids), len(golden["ids"]))
        )
        pytest.fail(
            f"{name}: rendered ids differ from the golden file at position {first}\n"
            f"  got      ids[{first}:{first + 8}] = {ids[first : first + 8]}\n"
            f"  expected ids[{first}:{first + 8}] = {golden['ids'][first : first + 8]}\n"
            f"  got text:\n{text}\n  expected text:\n{golden['text']}"
        )


@pytest.mark.parametrize("effort", REASONING_EFFORTS)
def test_prompt_for_each_effort(encoding, effort):
    settings = PromptSettings(reasoning_effort=effort, date=DATE)
    ids = render_prompt(encoding, [{"role": "user", "content": "Hello"}], settings)
    check_golden(encoding, f"prompt_{effort}", ids)
    assert f"Reasoning: {effort}" in encoding.decode_utf8(ids)


def test_prompt_with_developer_instructions(encoding):
    settings = PromptSettings(instructions="Answer like a pirate.", date=DATE)
    ids = render_prompt(encoding, [{"role": "user", "content": "Hello"}], settings)
    check_golden(encoding, "prompt_developer", ids)
    text = encoding.decode_utf8(ids)
    assert "<|start|>developer<|message|># Instructions\n\nAnswer like a pirate.<|end|>" in text


def test_multi_turn_history_drops_finished_analysis(encoding):
    settings = PromptSettings(date=DATE)
    ids = render_prompt(encoding, HISTORY, settings)
    check_golden(encoding, "prompt_multi_turn", ids)
    text = encoding.decode_utf8(ids)
    assert "Simple arithmetic" not in text
    assert text.endswith(
        "<|start|>assistant<|channel|>final<|message|>4<|end|><|start|>user<|message|>And 3+3?<|end|><|start|>assistant"
    )


def test_analysis_stays_inside_an_unfinished_tool_chain(encoding):
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "reasoning": "Need the weather tool.",
            "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}],
        },
        {"role": "tool", "name": "get_weather", "content": '{"temp": 21}'},
    ]
    text = encoding.decode_utf8(render_prompt(encoding, history, PromptSettings(date=DATE)))
    assert "<|channel|>analysis<|message|>Need the weather tool.<|end|>" in text
    assert (
        '<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>{"city": "Paris"}<|call|>'
        in text
    )
    assert '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>{"temp": 21}<|end|>' in text
    finished = history + [{"role": "assistant", "reasoning": "It is 21.", "content": "21 degrees."}]
    text = encoding.decode_utf8(
        render_prompt(encoding, finished + [{"role": "user", "content": "Thanks"}], PromptSettings(date=DATE))
    )
    assert "Need the weather tool." not in text and "It is 21." not in text


def test_prefix_is_a_prefix_of_every_prompt(encoding):
    settings = PromptSettings(reasoning_effort="high", instructions="Be brief.", date=DATE)
    prefix = render_prefix(encoding, settings)
    prompt = render_prompt(encoding, HISTORY, settings)
    assert len(prefix) > 20 and prompt[: len(prefix)] == prefix


def test_pinned_date(encoding, monkeypatch):
    monkeypatch.setenv("OSSRUN_DATE", "2025-03-04")
    ids = render_prompt(encoding, [{"role": "user", "content": "Hi"}], PromptSettings())
    assert "Current date: 2025-03-04" in encoding.decode_utf8(ids)
    monkeypatch.setenv("OSSRUN_DATE", "yesterday")
    with pytest.raises(OssrunError, match="OSSRUN_DATE"):
        render_prompt(encoding, [{"role": "user", "content": "Hi"}], PromptSettings())


def test_bad_inputs(encoding):
    with pytest.raises(OssrunError, match="unknown reasoning effort 'extreme'"):
        check_reasoning_effort("extreme")
    with pytest.raises(ConversationError, match="message 1 has an unknown role 'robot'"):
        render_prompt(encoding, [{"role": "robot", "content": "x"}], PromptSettings(date=DATE))
    with pytest.raises(ConversationError, match="message 1: content must be a string"):
        render_prompt(encoding, [{"role": "user", "content": 5}], PromptSettings(date=DATE))


def parse(encoding, text: str):
    parser = TurnParser(encoding)
    events = []
    for token in encoding.encode(text, allowed_special="all"):
        events += parser.feed(token)
    return parser.finish(), events


def test_parses_a_well_formed_turn(encoding):
    turn, events = parse(
        encoding, "<|channel|>analysis<|message|>Think é 漢字.<|end|><|start|>assistant<|channel|>final<|message|>Four.<|return|>"
    )
    assert turn.malformed is None
    assert (turn.reasoning, turn.final) == ("Think é 漢字.", "Four.")
    assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)) == "Think é 漢字."
    assert "".join(e.text for e in events if isinstance(e, FinalDelta)) == "Four."


@pytest.mark.parametrize(
    "text",
    [
        '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city":"Paris"}<|call|>',
        "<|channel|>analysis<|message|>x<|end|><|start|>assistant to=functions.get_weather<|channel|>commentary "
        '<|constrain|>json<|message|>{"city":"Paris"}<|call|>',
    ],
)
def test_tool_call_recipient_after_channel_or_role(encoding, text):
    turn, events = parse(encoding, text)
    assert turn.malformed is None
    (call,) = [e for e in events if isinstance(e, ToolCall)]
    assert (call.recipient, call.name, call.arguments) == ("functions.get_weather", "get_weather", '{"city":"Paris"}')


@pytest.mark.parametrize(
    "text, reason, final",
    [
        ("<|channel|>foo<|message|>hi there<|end|>", "unknown channel 'foo'", "<|channel|>foo<|message|>hi there<|end|>"),
        ("<|channel|>analysis<|channel|>x<|start|>y<|message|>hi<|end|>", "unknown recipient", None),
        ("<|channel|>analysis and more words " * 12 + "<|return|>", "header ran past 64 tokens", None),
        (
            "<|channel|>analysis<|message|>ok<|end|><|start|>the answer is 4<|return|>",
            "header was cut short",
            "<|start|>the answer is 4",
        ),
        ("<|channel|>analysis<|message|>ok<|end|>final answer 4<|return|>", "the parser rejected it", "final answer 4"),
        ("<|channel|>analysis<|message|>ok<|end|><|start|>user<|message|>hi<|end|>", "role 'user'", None),
    ],
)
def test_malformed_output_is_shown_raw(encoding, text, reason, final):
    turn, events = parse(encoding, text)
    assert reason in turn.malformed
    notices = [e for e in events if isinstance(e, Notice)]
    assert len(notices) == 1 and "not valid harmony" in notices[0].text
    assert turn.final == "".join(e.text for e in events if isinstance(e, FinalDelta))
    assert turn.final.strip()
    if final is not None:
        assert turn.final == final


def test_stop_after_end_is_not_malformed(encoding):
    turn, _ = parse(encoding, "<|channel|>final<|message|>4<|end|><|return|>")
    assert turn.malformed is None and turn.final == "4"


def test_raw_text_keeps_characters_split_across_tokens(encoding):
    emoji = encoding.encode("😀🎉")  # 🎉 spans two tokens
    assert len(emoji) == 3
    parser = TurnParser(encoding)
    events = []
    for token in encoding.encode("<|channel|>nonsense<|message|>", allowed_special="all") + emoji:
        events += parser.feed(token)
    texts = [e.text for e in events if isinstance(e, FinalDelta)]
    assert "".join(texts) == "<|channel|>nonsense<|message|>😀🎉"
    assert all("\ufffd" not in t for t in texts)


def test_raw_mode_decodes_each_token_once(encoding):
    """Raw output costs the same per token however long it gets: no re-decoding of the segment."""

    class CountingEncoding:
        decoded = 0

        def __getattr__(self, name):
            return getattr(encoding, name)

        def decode_utf8(self, tokens):
            CountingEncoding.decoded += len(tokens)
            return encoding.decode_utf8(tokens)

        def decode(self, tokens):
            CountingEncoding.decoded += len(tokens)
            return encoding.decode(tokens)

    parser = TurnParser(CountingEncoding())
    parser.feed(encoding.encode("<|message|>", allowed_special="all")[0])  # no channel: malformed
    (word,) = encoding.encode(" word")
    for _ in range(5000):
        parser.feed(word)
    assert parser.finish().final == "<|message|>" + " word" * 5000
    assert CountingEncoding.decoded <= 5001
