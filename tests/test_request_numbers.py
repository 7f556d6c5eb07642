"""Numbers in request bodies past what a float holds: JSON allows integers of any length (Python
reads up to 4,300 digits), and each is a 400 naming its field, never the server failing."""

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
