"""The opaque reasoning the server hands out (Responses' ``encrypted_content``, a thinking block's
``signature``) and takes back: it round-trips, and a crafted one cannot make the server inflate
a few kilobytes of body into gigabytes of memory."""

from __future__ import annotations

import base64
import tracemalloc
import zlib

from ossrun.server import messages, responses
from ossrun.server.state import ENCRYPTED_PREFIX, MAX_INFLATION, ServerState, decode_reasoning, encode_reasoning

BOMB_BYTES = 32 << 20


def opaque(inflated: bytes) -> str:
    """A blob in the server's own format around ``inflated`` (the JSON it would hold)."""
    return ENCRYPTED_PREFIX + base64.urlsafe_b64encode(zlib.compress(inflated, 9)).decode()


def bomb() -> str:
    """32 MiB of reasoning packed in about 45 KB of text."""
    return opaque(b'{"reasoning": "' + b"a" * BOMB_BYTES + b'"}')


def test_reasoning_round_trips():
    for text in ("", "We need the weather: call get_weather.", 'Köln, 東京 and \u2028 quotes " \\ too\n' * 40):
        blob = encode_reasoning(text)
        assert blob.startswith(ENCRYPTED_PREFIX)
        assert decode_reasoning(blob) == text


def test_blobs_the_server_did_not_make_are_not_read():
    whole = encode_reasoning("some reasoning " * 10)
    for blob in (None, 42, "", "plain text", ENCRYPTED_PREFIX, ENCRYPTED_PREFIX + "!!!", whole[:-8], opaque(b"[1, 2]")):
        assert decode_reasoning(blob) is None


def test_a_blob_that_inflates_past_the_bound_is_refused_without_being_inflated():
    blob = bomb()
    assert len(blob) * 500 < BOMB_BYTES  # what it would cost without the bound
    tracemalloc.start()
    try:
        assert decode_reasoning(blob) is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MAX_INFLATION * len(blob) + (1 << 20)  # the bound's output and change, not 32 MiB
    assert peak < BOMB_BYTES / 16


def test_a_requests_bombs_fall_back_to_the_text_sent_beside_them():
    state = ServerState()
    items = [
        {"role": "user", "content": "Weather?"},
        {"type": "reasoning", "encrypted_content": bomb(), "content": [{"type": "reasoning_text", "text": "Ask the tool."}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
    ]
    converted = responses.convert_input(items, [], state)
    assert converted[1]["reasoning"] == "Ask the tool."

    blocks = [
        {"type": "thinking", "thinking": "Ask the tool.", "signature": bomb()},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
    ]
    assert messages.assistant_message(blocks, "messages[1].content", {}, state)["reasoning"] == "Ask the tool."
