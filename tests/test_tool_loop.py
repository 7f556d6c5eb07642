"""The tool loop through the Model API, on scripted harmony streams: calls run, results sent back, answers kept."""

from __future__ import annotations

import json
import threading

import pytest

from helpers.scripted import ScriptedEngine, reply
from ossrun.events import CommentaryDelta, Done, FinalDelta, Notice, Prefill, ReasoningDelta, ToolCall, ToolResult
from ossrun.model import Model
from ossrun.tools import PythonSandbox, Toolbox

DATE = "2026-01-15"
QUESTION = [{"role": "user", "content": "Weather in Paris?"}]


def call(name: str, arguments: str, reasoning: str = "Need the weather.", *, recipient_after_role: bool = False) -> str:
    """An assistant turn that thinks, then calls functions.NAME (recipient after the channel, or after the role)."""
    head = f"<|channel|>analysis<|message|>{reasoning}<|end|><|start|>assistant"
    if recipient_after_role:
        return f"{head} to=functions.{name}<|channel|>commentary <|constrain|>json<|message|>{arguments}<|call|>"
    return f"{head}<|channel|>commentary to=functions.{name} <|constrain|>json<|message|>{arguments}<|call|>"


def python_call(code: str) -> str:
    return (
        "<|channel|>analysis<|message|>Let me compute.<|end|>"
        f"<|start|>assistant<|channel|>analysis to=python code<|message|>{code}<|call|>"
    )


class Weather:
    """A get_weather tool that records its calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, city: str, unit: str = "celsius") -> dict:
        """Get the current weather in a city."""
        self.calls.append(city)
        if city == "Atlantis":
            raise ValueError("no such city")
        return {"city": city, "temperature": 21, "unit": unit}


@pytest.fixture(autouse=True)
def pinned_date(monkeypatch):
    monkeypatch.setenv("OSSRUN_DATE", DATE)


@pytest.fixture
def weather():
    tool = Weather()
    tool.__name__ = "get_weather"
    return tool


def run(encoding, scripts, messages=QUESTION, **options):
    engine = ScriptedEngine(encoding, scripts)
    model = Model(engine, encoding, name="scripted")
    events = list(model.stream(messages, **options))
    assert isinstance(events[-1], Done) and sum(isinstance(e, Done) for e in events) == 1
    return engine, events, events[-1].reply


def prompt_text(encoding, engine, index: int) -> str:
    return encoding.decode_utf8(engine.prompts[index])


def test_one_call(encoding, weather):
    engine, events, answer = run(
        encoding, [call("get_weather", '{"city": "Paris"}'), reply("It is 21.", "21 °C in Paris.")], tools=[weather]
    )
    assert weather.calls == ["Paris"]
    kinds = [type(e) for e in events if not isinstance(e, (ReasoningDelta, FinalDelta))]
    assert kinds == [Prefill, ToolCall, ToolResult, Prefill, Done]  # each turn of the chain reads its prompt first
    assert [e.tokens for e in events if isinstance(e, Prefill)] == [p.evaluated for p in engine.prefills]
    result = next(e for e in events if isinstance(e, ToolResult))
    assert (result.call.name, result.error) == ("get_weather", False)
    assert json.loads(result.output) == {"city": "Paris", "temperature": 21, "unit": "celsius"}
    assert (answer.final, answer.finish_reason, answer.reasoning) == ("21 °C in Paris.", "stop", "It is 21.")
    assert answer.tool_calls == (result,)
    # The second prompt holds the call, its result and the chain's analysis, then asks the assistant again.
    second = prompt_text(encoding, engine, 1)
    assert second.endswith(
        "<|start|>assistant<|channel|>analysis<|message|>Need the weather.<|end|>"
        '<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>{"city": "Paris"}<|call|>'
        f"<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>{result.output}<|end|><|start|>assistant"
    )
    # Only the re-rendered call was evaluated again: the rest came from the KV cache.
    assert engine.prefills[1].reused > len(engine.prompts[0])
    # Usage covers both turns.
    assert answer.usage.prompt_tokens == len(engine.prompts[0]) + len(engine.prompts[1])
    assert answer.usage.completion_tokens == sum(len(encoding.encode(s.text, allowed_special="all")) for s in engine.scripts)
    assert [m["role"] for m in answer.messages()] == ["assistant", "tool", "assistant"]


def test_analysis_of_a_finished_chain_is_dropped_but_its_calls_stay(encoding, weather):
    engine, _, answer = run(encoding, [call("get_weather", '{"city": "Paris"}'), reply("It is 21.", "21 °C.")], tools=[weather])
    history = QUESTION + answer.messages() + [{"role": "user", "content": "And tomorrow?"}]
    engine2, _, _ = run(encoding, [reply("Same.", "Same.")], messages=history, tools=[weather])
    text = prompt_text(encoding, engine2, 0)
    assert "Need the weather." not in text and "It is 21." not in text
    assert (
        '<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>{"city": "Paris"}<|call|>'
        in text
    )
    assert "<|start|>assistant<|channel|>final<|message|>21 °C.<|end|><|start|>user<|message|>And tomorrow?<|end|>" in text


def test_a_chain_of_calls(encoding, weather):
    scripts = [
        call("get_weather", '{"city": "Paris"}', "First Paris."),
        call("get_weather", '{"city": "London", "unit": "fahrenheit"}', "Now London.", recipient_after_role=True),
        reply("Both known.", "Paris 21 °C, London 21 °F."),
    ]
    engine, events, answer = run(encoding, scripts, tools=[weather])
    assert weather.calls == ["Paris", "London"]
    assert [r.call.arguments for r in answer.tool_calls] == ['{"city": "Paris"}', '{"city": "London", "unit": "fahrenheit"}']
    third = prompt_text(encoding, engine, 2)
    assert "First Paris." in third and "Now London." in third  # analysis kept across the chain
    assert third.count("<|start|>functions.get_weather to=assistant") == 2
    assert answer.final == "Paris 21 °C, London 21 °F."
    assert [m["role"] for m in answer.messages()] == ["assistant", "tool", "assistant", "tool", "assistant"]


@pytest.mark.parametrize(
    "script, expected",
    [
        (call("get_weather", '{"city": Paris}'), "the arguments are not valid JSON"),
        (
            call("get_stock", '{"symbol": "ACME"}'),
            "unknown tool 'functions.get_stock': the available tools are functions.get_weather",
        ),
        (call("get_weather", '{"city": "Atlantis"}'), "get_weather raised ValueError: no such city"),
        (call("get_weather", '{"town": "Paris"}'), "missing a required argument: 'city'"),
    ],
)
def test_errors_go_back_to_the_model_and_the_answer_goes_on(encoding, weather, script, expected):
    engine, events, answer = run(encoding, [script, reply("The tool failed.", "Sorry, I could not check.")], tools=[weather])
    (result,) = [e for e in events if isinstance(e, ToolResult)]
    assert result.error and expected in json.loads(result.output)["error"]
    assert result.output in prompt_text(encoding, engine, 1)
    assert (answer.final, answer.finish_reason) == ("Sorry, I could not check.", "stop")


def test_a_call_without_tools_declared_is_answered_with_an_error(encoding):
    engine, events, answer = run(encoding, [call("get_weather", '{"city": "Paris"}'), reply("No tools.", "I cannot check.")])
    (result,) = [e for e in events if isinstance(e, ToolResult)]
    assert json.loads(result.output) == {"error": "unknown tool 'functions.get_weather': the available tools are none"}
    assert answer.final == "I cannot check."


def test_the_round_limit(encoding, weather):
    scripts = [call("get_weather", f'{{"city": "City{i}"}}', f"Round {i}.") for i in range(3)]
    engine, events, answer = run(encoding, scripts, tools=[weather], max_tool_rounds=2)
    assert weather.calls == ["City0", "City1"]
    assert engine.turns_started == 3
    notices = [e.text for e in events if isinstance(e, Notice)]
    assert notices == ["stopped after 2 rounds of tool calls: allow more with max_tool_rounds (--max-tool-rounds)"]
    assert answer.finish_reason == "tool_calls" and answer.final == ""
    assert [c.arguments for c in answer.pending_calls] == ['{"city": "City2"}']
    assert len(answer.tool_calls) == 2
    last = answer.message()
    assert last["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "City2"}'}


def test_the_default_round_limit_is_eight(encoding, weather):
    scripts = [call("get_weather", '{"city": "Paris"}')] * 9
    engine, _, answer = run(encoding, scripts, tools=[weather])
    assert len(weather.calls) == 8 and answer.finish_reason == "tool_calls"


def test_a_schema_only_tool_is_returned_to_the_caller(encoding):
    schema = {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look up a word.",
            "parameters": {"type": "object", "properties": {"word": {"type": "string"}}},
        },
    }
    engine = ScriptedEngine(
        encoding,
        [
            "<|channel|>commentary<|message|>Looking it up.<|end|>"
            '<|start|>assistant<|channel|>commentary to=functions.lookup <|constrain|>json<|message|>{"word": "ossify"}<|call|>',
            reply("Got it.", "To turn into bone."),
        ],
    )
    model = Model(engine, encoding)
    first = model.chat(QUESTION, tools=[schema])
    assert first.finish_reason == "tool_calls" and first.commentary == "Looking it up."
    (pending,) = first.pending_calls
    assert (pending.name, json.loads(pending.arguments)) == ("lookup", {"word": "ossify"})
    # The caller runs it and sends the result back.
    history = QUESTION + first.messages() + [{"role": "tool", "name": "lookup", "content": "to become bone"}]
    second = model.chat(history, tools=[schema])
    assert second.final == "To turn into bone."
    text = encoding.decode_utf8(engine.prompts[1])
    assert (
        "<|start|>assistant<|channel|>commentary<|message|>Looking it up.<|end|>"
        '<|start|>assistant to=functions.lookup<|channel|>commentary <|constrain|>json<|message|>{"word": "ossify"}<|call|>'
        "<|start|>functions.lookup to=assistant<|channel|>commentary<|message|>to become bone<|end|>"
    ) in text


def test_python_tool_runs_in_the_sandbox_after_confirmation(encoding):
    asked = []
    with PythonSandbox() as sandbox:
        engine, events, answer = run(
            encoding,
            [python_call("print(6 * 7)"), reply("It printed 42.", "42")],
            python_tool=sandbox,
            confirm=lambda c: asked.append(c.arguments) or True,
        )
        assert sandbox.workdir.exists()  # the caller's sandbox outlives the call
    assert asked == ["print(6 * 7)"]
    (result,) = [e for e in events if isinstance(e, ToolResult)]
    assert (result.call.recipient, result.output, result.error) == ("python", "42\n[exit status 0]", False)
    first, second = prompt_text(encoding, engine, 0), prompt_text(encoding, engine, 1)
    assert "## python\n\nUse this tool to execute Python code in your chain of thought." in first
    assert second.endswith(
        "<|start|>assistant to=python<|channel|>analysis code<|message|>print(6 * 7)<|call|>"
        "<|start|>python to=assistant<|channel|>analysis<|message|>42\n[exit status 0]<|end|><|start|>assistant"
    )
    assert answer.final == "42"


def test_declined_python_runs_are_reported_to_the_model(encoding, tmp_path):
    marker = tmp_path / "ran"
    engine, events, answer = run(
        encoding,
        [python_call(f"open({str(marker)!r}, 'w')"), reply("Declined.", "I was not allowed to run code.")],
        python_tool=True,
        confirm=lambda c: False,
    )
    (result,) = [e for e in events if isinstance(e, ToolResult)]
    assert result.error and result.output == "[not run: the user declined to run this code]"
    assert not marker.exists()
    assert answer.final == "I was not allowed to run code."


def test_a_toolbox_is_reused_across_calls_and_not_closed(encoding, weather):
    with PythonSandbox() as sandbox:
        toolbox = Toolbox.build([weather], python_tool=sandbox)
        engine = ScriptedEngine(
            encoding,
            [
                python_call("open('kept.txt', 'w').write('x')"),
                reply("ok", "ok"),
                python_call("print(open('kept.txt').read())"),
                reply("ok", "ok"),
            ],
        )
        model = Model(engine, encoding)
        first = model.chat(QUESTION, tools=toolbox)
        second = model.chat(QUESTION + first.messages() + [{"role": "user", "content": "Again"}], tools=toolbox)
        assert second.tool_calls[0].output == "x\n[exit status 0]"


def test_a_malformed_call_turn_runs_nothing(encoding, weather):
    engine, events, answer = run(
        encoding,
        ["<|channel|>commentary to=functions.get_weather <|constrain|>json junk junk<|start|>oops<|call|>"],
        tools=[weather],
    )
    assert weather.calls == [] and not [e for e in events if isinstance(e, ToolResult)]
    assert answer.malformed and answer.final


def test_cancel_during_a_python_run_ends_the_answer(encoding):
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    engine, events, answer = run(encoding, [python_call("import time; time.sleep(30)")], python_tool=True, cancel=cancel)
    (result,) = [e for e in events if isinstance(e, ToolResult)]
    assert result.output.endswith("[killed: interrupted by the user]")
    assert answer.finish_reason == "interrupted" and engine.turns_started == 1


def test_commentary_preamble_is_shown_and_kept(encoding, weather):
    script = (
        "<|channel|>commentary<|message|>Let me check.<|end|>"
        '<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}<|call|>'
    )
    engine, events, answer = run(encoding, [script, reply("ok", "21 °C.")], tools=[weather])
    assert "".join(e.text for e in events if isinstance(e, CommentaryDelta)) == "Let me check."
    assert answer.messages()[0]["content"] == "Let me check."
