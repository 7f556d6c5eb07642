"""Output rules on the demo model: JSON answers held to a schema, tool_choice, stop texts; and the
checks on what enters harmony (namespaces, text that is not Unicode)."""

from __future__ import annotations

import json

import pytest

import ossrun
from helpers.scripted import ScriptedEngine
from ossrun.errors import ConversationError, OssrunError
from ossrun.model import Model

DATE = "2025-08-05"
CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]
SUM = [{"role": "user", "content": "What is 23 + 45?"}]
SCHEMA = {
    "type": "object",
    "properties": {"capital": {"type": "string", "enum": ["Paris", "Rome", "Madrid"]}},
    "required": ["capital"],
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
NAMESPACE = {
    "type": "namespace",
    "name": "multi_agent_v1",
    "description": "Agents.",
    "tools": [
        {
            "type": "function",
            "name": "spawn",
            "description": "Start an agent.",
            "parameters": {"type": "object", "properties": {"task": {"type": "string"}}},
        }
    ],
}


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
    options = {
        "response_format": {"type": "json_schema", "json_schema": {"name": "capital", "schema": SCHEMA}},
        "seed": seed,
        "max_tokens": 200,
    }
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
    streamed = "".join(
        e.text
        for e in demo_model.stream(CAPITAL, temperature=0, max_tokens=200, stop="Paris")
        if type(e).__name__ == "FinalDelta"
    )
    assert streamed == cut.final


def test_bad_output_rules_are_clear_errors(encoding):
    model = Model(ScriptedEngine(encoding, []), encoding)
    with pytest.raises(OssrunError, match='tool_choice is "required" but no function tools'):
        model.render(SUM, tool_choice="required")
    with pytest.raises(OssrunError, match="names the function 'nope', which is not among the tools"):
        model.render(SUM, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}})
    with pytest.raises(OssrunError, match="response_format type 'yaml' is not supported"):
        model.render(SUM, response_format={"type": "yaml"})
    with pytest.raises(OssrunError, match="stop must be a text or a list of texts"):
        model.render(SUM, stop=[1])


def test_calls_to_a_declared_namespace_are_tool_calls(encoding):
    call = '<|channel|>commentary to=multi_agent_v1.spawn <|constrain|>json<|message|>{"task": "look around"}<|call|>'
    model = Model(ScriptedEngine(encoding, [call, call]), encoding)
    reply = model.chat(SUM, tools=[NAMESPACE])
    assert reply.finish_reason == "tool_calls" and not reply.malformed
    assert [c.recipient for c in reply.pending_calls] == ["multi_agent_v1.spawn"]
    assert "namespace multi_agent_v1 {" in model.decode(model.render(SUM, tools=[NAMESPACE]))
    undeclared = model.chat(SUM)  # the same call without the namespace declared: shown raw
    assert undeclared.malformed and not undeclared.pending_calls


@pytest.mark.parametrize(
    "message, where",
    [
        ({"role": "user", "content": "bad \udcff byte"}, "message 1 content"),
        ({"role": "assistant", "content": "ok", "reasoning": "\ud800"}, "message 1 reasoning"),
    ],
)
def test_text_that_is_not_unicode_is_a_clear_error(encoding, message, where):
    model = Model(ScriptedEngine(encoding, []), encoding)
    with pytest.raises(ConversationError, match=f"^{where} holds text that is not valid Unicode \\(the lone surrogate U\\+D"):
        model.render([message, *SUM])
    with pytest.raises(ConversationError, match="^the instructions holds text that is not valid Unicode"):
        model.render(SUM, system="fine \udcff")


# -- $defs, bounds and the largest schema a grammar may hold --------------------------------

# What Pydantic writes for a model holding an enum and a nested model (the SDK's parse sends it).
DEFS_SCHEMA = {
    "$defs": {
        "Kind": {"enum": ["capital", "city"], "title": "Kind", "type": "string"},
        "Place": {
            "properties": {"capital": {"enum": ["Paris", "Rome", "Oslo"], "type": "string"}},
            "required": ["capital"],
            "title": "Place",
            "type": "object",
        },
    },
    "properties": {"kind": {"$ref": "#/$defs/Kind"}, "place": {"$ref": "#/$defs/Place"}},
    "required": ["kind", "place"],
    "title": "Answer",
    "type": "object",
}
DEFS_FORMAT = {"type": "json_schema", "json_schema": {"name": "Answer", "schema": DEFS_SCHEMA, "strict": True}}


def check_defs_answer(text: str) -> None:
    answer = json.loads(text)
    assert answer["kind"] in ("capital", "city") and answer["place"]["capital"] in ("Paris", "Rome", "Oslo")


@pytest.mark.slow
def test_a_defs_schema_holds_the_answer_every_time_and_is_never_changed(demo_model):
    original = json.loads(json.dumps(DEFS_FORMAT))
    for seed in (1, 2):  # the same response_format twice: the first call must not have rewritten its $refs
        reply = demo_model.chat(CAPITAL, response_format=DEFS_FORMAT, seed=seed, max_tokens=200)
        assert reply.finish_reason == "stop"
        check_defs_answer(reply.final)
    assert DEFS_FORMAT == original
    tool = {"type": "function", "function": {"name": "answer", "description": "Give the answer.", "parameters": DEFS_SCHEMA}}
    for choice in ("required", {"type": "function", "function": {"name": "answer"}}):
        reply = demo_model.chat(CAPITAL, tools=[tool], tool_choice=choice, seed=3, max_tokens=200)
        (call,) = reply.pending_calls
        check_defs_answer(call.arguments)
    assert tool["function"]["parameters"] == DEFS_SCHEMA == original["json_schema"]["schema"]


def test_each_schema_is_converted_once(encoding):
    from ossrun.engine.grammar import _converted

    model = Model(
        ScriptedEngine(encoding, ['<|channel|>final<|message|>{"kind": "city", "place": {"capital": "Oslo"}}<|return|>']),
        encoding,
    )
    _converted.cache_clear()
    model.render(CAPITAL, response_format=DEFS_FORMAT)  # what the server does first: the prompt's fit
    reply = model.chat(CAPITAL, response_format=DEFS_FORMAT)  # then the reply
    check_defs_answer(reply.final)
    info = _converted.cache_info()
    assert (info.misses, info.hits) == (1, 1)


def schema_with(**keywords):
    return {"type": "object", "properties": {"x": keywords}, "required": ["x"]}


@pytest.mark.parametrize(
    "keywords, param, message",
    [
        ({"type": "array", "items": {"type": "integer"}, "maxItems": 1001}, "properties.x.maxItems", "more than the 1000"),
        ({"type": "array", "items": {"type": "integer"}, "minItems": 10**7}, "properties.x.minItems", "more than the 1000"),
        ({"type": "string", "maxLength": 20000}, "properties.x.maxLength", "more than the 1000"),
        ({"type": "string", "minLength": 10**9}, "properties.x.minLength", "more than the 1000"),
        ({"type": "string", "minLength": 5, "maxLength": 2}, "properties.x.minLength", "no value can match"),
        ({"type": "string", "maxLength": -1}, "properties.x.maxLength", "whole number"),
        ({"type": "string", "maxLength": 2.5}, "properties.x.maxLength", "whole number"),
        ({"type": "string", "pattern": "^a{2,5000}$"}, "properties.x.pattern", r"repeats something \{2,5000\} times"),
        (
            {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(257)}},
            "properties.x.properties",
            "257 properties",
        ),
        ({"type": "string", "pattern": "^(a{0,30}){0,30}$"}, "properties.x.pattern", "nests repetitions 900 times"),
    ],
)
def test_a_schema_past_a_bound_is_refused_before_any_grammar(encoding, keywords, param, message):
    from ossrun.limits import SchemaError

    model = Model(ScriptedEngine(encoding, []), encoding)
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema_with(**keywords)}}
    with pytest.raises(SchemaError, match=message) as caught:
        model.render(CAPITAL, response_format=fmt)
    assert caught.value.param == f"response_format.json_schema.schema.{param}"
    tool = {"type": "function", "function": {"name": "f", "parameters": schema_with(**keywords)}}
    with pytest.raises(SchemaError, match=message):
        model.render(CAPITAL, tools=[tool], tool_choice="required")
    model.render(CAPITAL, tools=[tool])  # read by the model only: no grammar, no bound but depth


def test_the_repetitions_of_a_schema_are_bounded_in_all_and_its_depth_always(encoding):
    from ossrun.limits import MAX_REPEAT, MAX_REPEAT_TOTAL, SchemaError

    model = Model(ScriptedEngine(encoding, []), encoding)
    many = {
        "type": "object",
        "properties": {f"s{i}": {"type": "string", "maxLength": MAX_REPEAT} for i in range(MAX_REPEAT_TOTAL // MAX_REPEAT + 1)},
    }
    with pytest.raises(SchemaError, match=f"more than {MAX_REPEAT_TOTAL} times in all"):
        model.render(CAPITAL, response_format={"type": "json_schema", "json_schema": {"name": "m", "schema": many}})
    deep = {"type": "string"}
    for _ in range(59):  # harmony's renderer refuses tool parameters about this deep
        deep = {"type": "object", "properties": {"a": deep}}
    tool = {"type": "function", "function": {"name": "f", "parameters": deep}}
    with pytest.raises(SchemaError, match="nests objects and arrays more than 64 deep"):
        model.render(CAPITAL, tools=[tool])


LARGEST = {
    "type": "object",
    "required": ["a"],
    "properties": {  # every bound at once, repetitions adding up to 8,000
        "a": {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 1000},
        "b": {"type": "array", "items": {"type": "string", "maxLength": 1000}, "maxItems": 1000},
        "c": {"type": "string", "minLength": 1000, "maxLength": 1000},
        "d": {"type": "string", "maxLength": 1000},
        "e": {"type": "string", "pattern": "^[a-z]{0,1000}-[0-9]{1000}$"},
        "f": {"type": "string", "pattern": "[a-z]{2,1000}"},  # unanchored: it may stand anywhere in the string
        "g": {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(256)}},
    },
}


@pytest.mark.slow
def test_the_largest_allowed_schema_converts_and_runs_through_the_engine(demo_model, encoding):
    from ossrun.engine.grammar import json_rules
    from ossrun.limits import MAX_GRAMMAR_BYTES

    rules, _ = json_rules(LARGEST, "answer")
    assert 100_000 < len(rules) < MAX_GRAMMAR_BYTES
    fmt = {"type": "json_schema", "json_schema": {"name": "big", "schema": LARGEST}}
    tool = {"type": "function", "function": {"name": "fill", "description": "Fill it in.", "parameters": LARGEST}}
    for options in ({"response_format": fmt}, {"tools": [tool], "tool_choice": "required"}):
        reply = demo_model.chat(CAPITAL, seed=1, max_tokens=24, **options)  # llama.cpp parses the grammar at the start
        assert reply.finish_reason == "length" and reply.usage.completion_tokens == 24
    assert demo_model.chat(CAPITAL, temperature=0, max_tokens=200).final  # and the model goes on
