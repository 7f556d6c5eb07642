"""Request bodies read field by field: every bad value is a 400 in OpenAI's error shape naming it."""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
              float: "a number", type(None): "null"}


class ApiError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None, headers: Optional[dict] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: Optional[str] = None, code: Optional[str] = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def describe(value: Any) -> str:
    return JSON_TYPES.get(type(value), type(value).__name__)


def get(body: Mapping[str, Any], key: str, kinds: tuple[type, ...], where: str = "", *, required: bool = False,
        default: Any = None) -> Any:
    """``body[key]`` if it is one of ``kinds`` (null counts as missing), else a 400 naming ``where + key``."""
    param = f"{where}{key}"
    value = body.get(key)
    if value is None:
        if required:
            raise bad_request(f"{param} is required", param, "missing_required_parameter")
        return default
    if bool in kinds or not isinstance(value, bool):  # JSON true is not a number here
        if isinstance(value, kinds):
            return value
    names = " or ".join(JSON_TYPES.get(kind, kind.__name__) for kind in kinds)
    raise bad_request(f"{param} must be {names}, not {describe(value)}", param, "invalid_type")


def number(body: Mapping[str, Any], key: str, low: float, high: float, *, default: Optional[float] = None,
           low_open: bool = False) -> Optional[float]:
    value = get(body, key, (int, float))
    if value is None:
        return default
    if not math.isfinite(value) or value < low or value > high or (low_open and value == low):
        bound = f"above {low:g}" if low_open else f"at least {low:g}"
        raise bad_request(f"{key} is {value}: it must be {bound} and at most {high:g}", key, "invalid_value")
    return float(value)


def positive_int(body: Mapping[str, Any], key: str) -> Optional[int]:
    value = get(body, key, (int,))
    if value is not None and value < 1:
        raise bad_request(f"{key} is {value}: it must be at least 1", key, "invalid_value")
    return value


def check_unicode(value: Any, where: str = "") -> None:
    """A 400 naming the first string that is not valid Unicode (a lone surrogate from ``"\\\\udcff"``)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise bad_request(f"{where or 'the body'} is not valid Unicode: it holds the lone surrogate "
                              f"U+{ord(value[exc.start]):04X} at character {exc.start}", where or None,
                              "invalid_unicode") from None
    elif isinstance(value, Mapping):
        for key, item in value.items():
            check_unicode(key, where)
            check_unicode(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_unicode(item, f"{where}[{index}]")


def text_of(content: Any, where: str, part_types: Sequence[str]) -> str:
    """The text of a message's content: a string, or a list of text parts (``{"type": "text", "text"}``)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"{where} must be a string or an array of text parts, not {describe(content)}", where,
                          "invalid_type")
    texts = []
    for index, part in enumerate(content):
        param = f"{where}[{index}]"
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, Mapping):
            raise bad_request(f"{param} must be a text part, not {describe(part)}", param, "invalid_type")
        kind = part.get("type")
        if kind not in part_types:
            raise bad_request(f"{param}.type {kind!r} is not supported: gpt-oss reads text only "
                              f"(parts of type {', '.join(part_types)})", f"{param}.type", "unsupported_content")
        texts.append(get(part, "text", (str,), f"{param}.", default=""))
    return "".join(texts)
