"""What ossrun takes before anything is rendered: reasoning efforts and a conversation's instructions.

Kept free of ``openai_harmony`` so that front ends can check their input (``-r``,
``/effort``, a ``/load`` file) without loading it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from ossrun.errors import ConversationError, OssrunError

ReasoningEffort = Literal["low", "medium", "high"]
REASONING_EFFORTS: tuple[ReasoningEffort, ...] = ("low", "medium", "high")

INSTRUCTION_ROLES = ("system", "developer")  # entries whose text becomes harmony's developer instructions


def check_reasoning_effort(value: object) -> ReasoningEffort:
    """A reasoning effort as people write it (``" High"``) as the type the library takes; called once
    where an effort comes in (the command line, ``/effort``, ``/load``, the Python API, a request)."""
    effort = value.strip().lower() if isinstance(value, str) else value
    if effort not in REASONING_EFFORTS:
        raise OssrunError(f"unknown reasoning effort {value!r}: use low, medium or high")
    return effort


def instructions_from(history: Sequence[Mapping[str, Any]]) -> str | None:
    """The text of a leading system/developer entry, which becomes the developer instructions."""
    texts = [str(m.get("content") or "") for m in history if m.get("role") in INSTRUCTION_ROLES]
    return "\n\n".join(t for t in texts if t) or None


def check_text(text: str, where: str) -> str:
    """``text`` if it can be encoded (UTF-8), else a ConversationError naming ``where``.

    Python strings may hold lone surrogates (undecodable bytes read with surrogateescape,
    or ``"\\udcff"`` in JSON); harmony and the tokenizer cannot take them.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        raise ConversationError(
            f"{where} holds text that is not valid Unicode (the lone surrogate U+{ord(bad):04X} at character "
            f"{exc.start}: bytes that are not UTF-8?): send UTF-8 text"
        ) from None
    return text


def check_strings(value: Any, where: str) -> None:
    """:func:`check_text` on every string inside ``value`` (dicts and lists walked)."""
    if isinstance(value, str):
        check_text(value, where)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            check_strings(item, f"{where} {key}")
    elif isinstance(value, (list, tuple)):
        for item in value:
            check_strings(item, where)
