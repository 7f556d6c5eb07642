"""Output rules on the demo model: JSON answers held to a schema, tool_choice, stop texts; and the
checks on what enters harmony (namespaces, text that is not Unicode)."""

from __future__ import annotations

import json

import pytest
from scripted import ScriptedEngine

import ossrun
from ossrun.errors import ConversationError, OssrunError
from ossrun.model import Model

DATE = "2025-08-05"
CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]
SUM = [{"role": "user", "content": "What is 23 + 45?"}]
SCHEMA = {"type": "object", "properties": {"capital": {"type": "string", "enum": ["Paris", "Rome", "Madrid"]}},
          "required": ["capital"]}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
NAMESPACE = {"type": "namespace", "name": "multi_agent_v1", "description": "Agents.",
             "tools": [{"type": "function", "name": "spawn", "description": "Start an agent.",
                        "parameters": {"type": "object", "properties": {"task": {"type": "string"}}}}]}


@pytest.fixture(autouse=True)
def _pinned_date(monkeypatch):
    monkeypatch.setenv("OSSRUN_DATE", DATE)


@pytest.fixture(scope="module")
def demo_model(demo_build):
    model = ossrun.load(demo_build, ctx=4096, threads=2)
    yield model
    model.close()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_json_schema_holds_the_answer_and_leaves_the_reasoning_free(demo_model, seed):
    options = {"response_format": {"type": "json_schema", "json_schema": {"name": "capital", "schema": SCHEMA}},
               "seed": seed, "max_tokens": 200}
    for question in (CAPITAL, SUM):  # the demo never learned JSON: the grammar makes it
        reply = demo_model.chat(question, **options)
        assert reply.finish_reason == "stop" and reply.reasoning
        answer = json.loads(reply.final)
        assert set(answer) == {"capital"} and answer["capital"] in SCHEMA["properties"]["capital"]["enum"]
    plain = demo_model.chat(CAPITAL, seed=seed, max_tokens=200)
    with pytest.raises(json.JSONDecodeError):
        json.loads(plain.final)
    # The format is declared to the model in harmony's Response Formats section.
    prompt = demo_model.decode(demo_model.render(CAPITAL, response_format=options["response_format"]))
    assert "# Response Formats\n\n## capital\n\n" + json.dumps(SCHEMA, separators=(",", ":")) in prompt


@pytest.mark.slow
def test_json_object_holds_the_answer_to_an_object(demo_model):
    """Any object: the demo, which never saw JSON, may write keys until the token limit."""
    for seed in range(4):
        reply = demo_model.chat(SUM, response_format={"type": "json_object"}, seed=seed, max_tokens=120)
        assert reply.final.startswith("{")
        if reply.finish_reason == "stop":
            assert isinstance(json.loads(reply.final), dict)
        else:
            assert reply.finish_reason == "length"


@pytest.mark.slow
def test_tool_choice_required_and_named_hold_the_first_turn_to_a_call(demo_model):
    # Bounded arguments: asked about a sum, the demo would fill a free city string with anything.
    cities = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}}, "required": ["city"]}
    weather = {"type": "function", "function": {**WEATHER["function"], "parameters": cities}}
    other = {"type": "function", "function": {"name": "get_time", "description": "The time.", "parameters": cities}}
    for choice, name in (("required", None), ({"type": "function", "function": {"name": "get_time"}}, "get_time")):
        reply = demo_model.chat(SUM, tools=[weather, other], tool_choice=choice, seed=5, max_tokens=200)
        assert reply.finish_reason == "tool_calls", choice
        (call,) = reply.pending_calls
        assert call.name in ((name,) if name else ("get_weather", "get_time"))
        assert json.loads(call.arguments)["city"] in ("Paris", "Oslo")
    free = demo_model.chat(SUM, tools=[weather, other], seed=5, max_tokens=200)
    assert free.finish_reason == "stop" and "68" in free.final  # without the rule the demo just adds


@pytest.mark.slow
def test_tool_choice_none_takes_the_tools_out(demo_model):
    question = [{"role": "user", "content": "What's the weather in Oslo?"}]
    called = demo_model.chat(question, tools=[WEATHER], seed=6, max_tokens=200)
    assert called.finish_reason == "tool_calls"
    reply = demo_model.chat(question, tools=[WEATHER], tool_choice="none", seed=6, max_tokens=200)
    assert reply.finish_reason == "stop" and not reply.pending_calls
    assert "get_weather" not in demo_model.decode(demo_model.render(question, tools=[WEATHER], tool_choice="none"))


@pytest.mark.slow
def test_a_stop_text_ends_the_answer_before_it(demo_model):
    full = demo_model.chat(CAPITAL, temperature=0, max_tokens=200)
    assert "Paris" in full.final
    cut = demo_model.chat(CAPITAL, temperature=0, max_tokens=200, stop=["Paris", "never"])
    assert cut.final == full.final[: full.final.index("Paris")] and cut.finish_reason == "stop"
    assert cut.reasoning == full.reasoning  # the reasoning is not cut
    streamed = "".join(e.text for e in demo_model.stream(CAPITAL, temperature=0, max_tokens=200, stop="Paris")
                       if type(e).__name__ == "FinalDelta")
    assert streamed == cut.final


def test_bad_output_rules_are_clear_errors(encoding):
    model = Model(ScriptedEngine(encoding, []), encoding)
    with pytest.raises(OssrunError, match="tool_choice is \"required\" but no function tools"):
        model.render(SUM, tool_choice="required")
    with pytest.raises(OssrunError, match="names the function 'nope', which is not among the tools"):
        model.render(SUM, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}})
    with pytest.raises(OssrunError, match="response_format type 'yaml' is not supported"):
        model.render(SUM, response_format={"type": "yaml"})
    with pytest.raises(OssrunError, match="stop must be a text or a list of texts"):
        model.render(SUM, stop=[1])


def test_calls_to_a_declared_namespace_are_tool_calls(encoding):
    call = ("<|channel|>commentary to=multi_agent_v1.spawn <|constrain|>json<|message|>"
            '{"task": "look around"}<|call|>')
    model = Model(ScriptedEngine(encoding, [call, call]), encoding)
    reply = model.chat(SUM, tools=[NAMESPACE])
    assert reply.finish_reason == "tool_calls" and not reply.malformed
    assert [c.recipient for c in reply.pending_calls] == ["multi_agent_v1.spawn"]
    assert "namespace multi_agent_v1 {" in model.decode(model.render(SUM, tools=[NAMESPACE]))
    undeclared = model.chat(SUM)  # the same call without the namespace declared: shown raw
    assert undeclared.malformed and not undeclared.pending_calls


@pytest.mark.parametrize("message, where", [
    ({"role": "user", "content": "bad \udcff byte"}, "message 1 content"),
    ({"role": "assistant", "content": "ok", "reasoning": "\ud800"}, "message 1 reasoning"),
])
def test_text_that_is_not_unicode_is_a_clear_error(encoding, message, where):
    model = Model(ScriptedEngine(encoding, []), encoding)
    with pytest.raises(ConversationError, match=f"^{where} holds text that is not valid Unicode \\(the lone surrogate U\\+D"):
        model.render([message, *SUM])
    with pytest.raises(ConversationError, match="^the instructions holds text that is not valid Unicode"):
        model.render(SUM, system="fine \udcff")
