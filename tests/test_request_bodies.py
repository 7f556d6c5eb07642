"""Values the translations once failed on (a 500) instead of naming them in a 400: numbers past what a
float holds (JSON allows integers of any length, Python reads up to 4,300 digits), a reasoning
item's content that is not an array."""

from __future__ import annotations

import pytest

from ossrun.server import chat, messages, responses
from ossrun.server.fields import ApiError, parse_json
from ossrun.server.served import ServedModel
from ossrun.server.state import ServerState

HUGE = "1" + "0" * 400  # 1e400: float() of it overflows

BODIES = {
    chat.parse: '{{"model": "m", "messages": [{{"role": "user", "content": "Hi"}}], "{key}": {value}}}',
    responses.parse: '{{"model": "m", "input": "Hi", "{key}": {value}}}',
    messages.parse: '{{"model": "m", "max_tokens": 16, "messages": [{{"role": "user", "content": "Hi"}}], "{key}": {value}}}',
}


@pytest.mark.parametrize("parse", list(BODIES), ids=lambda parse: parse.__module__.rsplit(".", 1)[1])
@pytest.mark.parametrize("key", ["temperature", "top_p"])
@pytest.mark.parametrize("value", [HUGE, "-" + HUGE])
def test_an_integer_past_a_float_is_a_400_naming_its_field(parse, key, value):
    body = parse_json(BODIES[parse].format(key=key, value=value))
    with pytest.raises(ApiError) as caught:
        parse(body, ServedModel(name="m"), ServerState())
    error = caught.value
    assert (error.status, error.param, error.code) == (400, key, "invalid_value")
    assert error.message.startswith(f"{key} is {value}: it must be ")


@pytest.mark.parametrize("parse", list(BODIES), ids=lambda parse: parse.__module__.rsplit(".", 1)[1])
def test_integers_within_the_bounds_are_taken_as_floats(parse):
    call = parse(parse_json(BODIES[parse].format(key="temperature", value="1")), ServedModel(name="m"), ServerState())
    assert call.options.temperature == 1.0 and isinstance(call.options.temperature, float)


@pytest.mark.parametrize("content", [5, 2.5, True, "Think.", {"type": "reasoning_text", "text": "Think."}])
def test_a_reasoning_items_content_that_is_no_array_is_a_400(content):
    items = [{"type": "reasoning", "content": content}, {"role": "assistant", "content": "Hello."}]
    with pytest.raises(ApiError) as caught:
        responses.convert_input(items, [], ServerState())
    error = caught.value
    assert (error.status, error.param, error.code) == (400, "input[0].content", "invalid_type")
    assert error.message.startswith("input[0].content must be an array, not ")


def test_a_reasoning_items_text_parts_are_the_reasoning_of_the_answer_after_it():
    parts = [{"type": "reasoning_text", "text": "Think"}, {"type": "reasoning_text", "text": " twice."}, "junk"]
    items = [{"type": "reasoning", "content": parts}, {"role": "assistant", "content": "Hello."}]
    assert responses.convert_input(items, [], ServerState()) == [
        {"role": "assistant", "content": "Hello.", "reasoning": "Think twice."}
    ]
    for absent in (None, []):
        items = [{"type": "reasoning", "content": absent}, {"role": "assistant", "content": "Hello."}]
        assert responses.convert_input(items, [], ServerState()) == [{"role": "assistant", "content": "Hello."}]
