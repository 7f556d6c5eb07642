"""The gpt-oss harmony encoding, loaded offline, and the special tokens ossrun acts on."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import openai_harmony as oh

from ossrun.errors import ModelError, OssrunError

VOCAB_FILE = "o200k_base.tiktoken"

_encoding: oh.HarmonyEncoding | None = None


def load_encoding(vocab_dir: Path) -> oh.HarmonyEncoding:
    """The gpt-oss harmony encoding, read offline from ``vocab_dir/o200k_base.tiktoken``.

    openai-harmony downloads the vocabulary unless TIKTOKEN_ENCODINGS_BASE names a
    folder holding it, so that is set before the first load. Loaded once per process.
    """
    global _encoding
    if _encoding is None:
        if not (vocab_dir / VOCAB_FILE).is_file():
            raise ModelError(f"the o200k vocabulary is missing from {vocab_dir}: it is derived from the model on first use")
        os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(vocab_dir)
        try:
            _encoding = oh.load_harmony_encoding(oh.HarmonyEncodingName.HARMONY_GPT_OSS)
        except oh.HarmonyError as exc:
            raise ModelError(f"cannot load the harmony encoding from {vocab_dir}: {exc}") from exc
    return _encoding


def special_ids(encoding: oh.HarmonyEncoding) -> dict[str, Any]:
    """The ids of the special tokens a turn's parser watches for."""

    def one(text: str) -> int:
        (token,) = encoding.encode(text, allowed_special={text})
        return token

    stops = stop_tokens(encoding)  # <|return|>, <|call|>
    return {
        "start": one("<|start|>"),
        "message": one("<|message|>"),
        "stops": stops,
        "ends": stops | {one("<|end|>")},
        "header_only": frozenset({one("<|channel|>"), one("<|message|>"), one("<|constrain|>")}),
    }


def checkpoint_marks(encoding: oh.HarmonyEncoding) -> tuple[tuple[int, ...], ...]:
    """Where a history re-rendered later may part from what the model saw: right after
    ``<|start|>assistant`` (every prompt ends there; a tool call's header may be written
    another way) and after ``<|start|>assistant<|channel|>`` (the reasoning of an answered
    turn is dropped: ``analysis`` becomes ``final`` or ``commentary``). The engine keeps a
    checkpoint of the sliding-window cache at each."""
    conversation = oh.Conversation.from_messages([])
    start = tuple(encoding.render_conversation_for_completion(conversation, oh.Role.ASSISTANT))
    (channel,) = encoding.encode("<|channel|>", allowed_special={"<|channel|>"})
    return start, (*start, channel)


def stop_tokens(encoding: oh.HarmonyEncoding) -> frozenset[int]:
    """Generation stops on ``<|return|>`` (answer done) and ``<|call|>`` (tool call)."""
    return frozenset(encoding.stop_tokens_for_assistant_actions())


def decode_ids(encoding: oh.HarmonyEncoding, ids: list[int]) -> str:
    """The text of ``ids``, special tokens as their names; an OssrunError for an id outside the vocabulary."""
    try:
        return encoding.decode(ids)
    except oh.HarmonyError as exc:
        wrong = next((i for i in ids if not _decodes(encoding, i)), None)
        raise OssrunError(
            f"token id {wrong} is not in the vocabulary of gpt-oss"
            if wrong is not None
            else f"cannot decode these token ids: {exc}"
        ) from None


def _decodes(encoding: oh.HarmonyEncoding, token: int) -> bool:
    try:
        encoding.decode([token])
    except oh.HarmonyError:
        return False
    return True
