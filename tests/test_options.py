"""ReplyOptions and a model's defaults, on a scripted engine: what reaches the prompt and the sampler."""

from __future__ import annotations

import pytest

from helpers.scripted import ScriptedEngine, reply
from ossrun import ReplyOptions
from ossrun.engine.protocol import Sampling
from ossrun.errors import OssrunError
from ossrun.model import Model
from ossrun.store.registry import Sampling as RegistrySampling

QUESTION = [{"role": "user", "content": "Hi"}]
ANSWER = reply("Greet back.", "Hello!")


@pytest.fixture(autouse=True)
def pinned_date(monkeypatch):
    monkeypatch.setenv("OSSRUN_DATE", "2026-01-15")


def model(encoding, turns=1, **defaults) -> Model:
    return Model(ScriptedEngine(encoding, [ANSWER] * turns), encoding, name="scripted", **defaults)


def prompt_text(encoding, engine: ScriptedEngine, turn: int = 0) -> str:
    return encoding.decode_utf8(engine.prompts[turn])


def test_an_effort_is_normalised_once_where_it_comes_in():
    assert ReplyOptions(reasoning_effort=" High").reasoning_effort == "high"
    with pytest.raises(OssrunError, match="unknown reasoning effort 'extreme': use low, medium or high"):
        ReplyOptions(reasoning_effort="extreme")


def test_options_as_a_value_or_keywords_reach_the_prompt_and_the_sampler(encoding):
    chat = model(encoding, turns=3)
    options = ReplyOptions(reasoning_effort="low", temperature=0.5, top_p=0.9, seed=3)
    assert chat.chat(QUESTION, options).final == "Hello!"
    chat.chat(QUESTION, options, reasoning_effort="high", seed=4)  # keywords override the value's fields
    chat.chat(QUESTION, reasoning_effort="medium", temperature=0)
    engine = chat.engine
    assert [s.seed for s in engine.samplings] == [3, 4, None]
    assert [(s.temperature, s.top_p) for s in engine.samplings] == [(0.5, 0.9), (0.5, 0.9), (0.0, 1.0)]
    assert [
        next(line for line in prompt_text(encoding, engine, i).split("\n") if line.startswith("Reasoning:")) for i in range(3)
    ] == ["Reasoning: low", "Reasoning: high", "Reasoning: medium"]
    assert options == ReplyOptions(reasoning_effort="low", temperature=0.5, top_p=0.9, seed=3)  # frozen, untouched


def test_an_unknown_option_is_a_type_error(encoding):
    with pytest.raises(TypeError, match=r"unknown option\(s\): top_k"):
        model(encoding).chat(QUESTION, top_k=40)


def test_a_models_defaults_apply_when_a_reply_sets_none(encoding):
    # models.toml's reasoning_effort and sampling, as load() hands them to the Model.
    chat = model(encoding, turns=2, reasoning_effort="high", sampling=RegistrySampling(temperature=0.7, top_p=0.8))
    assert (chat.reasoning_effort, chat.temperature, chat.top_p) == ("high", 0.7, 0.8)
    chat.chat(QUESTION)
    chat.chat(QUESTION, reasoning_effort="low", temperature=1.0, top_p=1.0)
    engine = chat.engine
    assert [(s.temperature, s.top_p) for s in engine.samplings] == [(0.7, 0.8), (1.0, 1.0)]
    assert "Reasoning: high" in prompt_text(encoding, engine, 0) and "Reasoning: low" in prompt_text(encoding, engine, 1)


def test_without_registry_defaults_a_model_answers_as_openai_recommends(encoding):
    chat = model(encoding)
    chat.chat(QUESTION)
    assert chat.engine.samplings[0] == Sampling(temperature=1.0, top_p=1.0, seed=None)
    assert "Reasoning: medium" in prompt_text(encoding, chat.engine)


def test_a_reply_says_what_was_left_out_in_typed_fields(encoding):
    long = [{"role": "user", "content": "word " * 600}, {"role": "assistant", "content": "ok"}, *QUESTION]
    chat = Model(ScriptedEngine(encoding, [ANSWER], n_ctx=512), encoding)
    result = chat.chat(long, max_tokens=64)
    assert result.dropped_messages == 2
    assert result.notices == ("the conversation is longer than the context of 512 tokens: left out the 2 oldest messages",)
