"""What ossrun takes before anything is rendered: reasoning efforts and a conversation's instructions.

Kept free of ``openai_harmony`` so that front ends can check their input (``-r``,
``/effort``, a ``/load`` file) without loading it.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from ossrun.errors import OssrunError

REASONING_EFFORTS = ("low", "medium", "high")
DEFAULT_REASONING_EFFORT = "medium"
INSTRUCTION_ROLES = ("system", "developer")  # entries whose text becomes harmony's developer instructions


def check_reasoning_effort(value: str) -> str:
    effort = value.strip().lower()
    if effort not in REASONING_EFFORTS:
        raise OssrunError(f"unknown reasoning effort {value!r}: use low, medium or high")
    return effort


def instructions_from(history: Sequence[Mapping[str, Any]]) -> Optional[str]:
    """The text of a leading system/developer entry, which becomes the developer instructions."""
    texts = [str(m.get("content") or "") for m in history if m.get("role") in INSTRUCTION_ROLES]
    return "\n\n".join(t for t in texts if t) or None
