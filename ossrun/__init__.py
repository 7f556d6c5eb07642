"""ossrun: run OpenAI's open-weight gpt-oss models locally on CPUs."""

from __future__ import annotations

from typing import Any

__version__ = "0.3.0"

__all__ = ["ReplyOptions", "load", "plan"]


def __getattr__(name: str) -> Any:
    # ``import ossrun`` stays cheap: the model API (and llama.cpp) load on first use.
    if name in ("load", "plan"):
        from ossrun import loading

        return getattr(loading, name)
    if name == "ReplyOptions":
        from ossrun.options import ReplyOptions

        return ReplyOptions
    raise AttributeError(f"module 'ossrun' has no attribute {name!r}")
