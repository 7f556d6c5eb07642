"""Request bodies read field by field: every bad value is a 400 in OpenAI's error shape naming it.

A body is parsed as strict JSON: no ``NaN`` or ``Infinity`` (nor numbers past a double, like
``1e309``), which responses would echo and clients cannot parse, and no nesting deeper than
:data:`ossrun.limits.MAX_JSON_DEPTH`. The fields both APIs share (``response_format``, tools,
``tool_choice``) are checked here, their schemas against the grammar bounds of :mod:`ossrun.limits`.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from ossrun.limits import MAX_JSON_DEPTH, SchemaError, check_schema, json_depth

JSON_TYPES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    type(None): "null",
}


# Anthropic's error types by status (its other 4xx are invalid_request_error); a full queue and a
# server that stops are its 529 overloaded_error, which its clients retry.
ANTHROPIC_ERRORS = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    500: "api_error",
    529: "overloaded_error",
}
ANTHROPIC_STATUS = {429: 529, 503: 529}
ANTHROPIC_PATHS = ("/v1/messages", "/v1/messages/")


def anthropic_path(path: str) -> bool:
    """Whether ``path`` is a route of Anthropic's Messages API, whose errors have Anthropic's shape."""
    return path == ANTHROPIC_PATHS[0] or path.startswith(ANTHROPIC_PATHS[1])


class ApiError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``, or on
    Anthropic's routes in its: ``{"type": "error", "error": {"type", "message"}}`` (:meth:`anthropic`)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    @property
    def kind(self) -> str:
        """What went wrong in one word, for the metrics: the code, else the type."""
        return self.code or self.type

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def anthropic(self) -> tuple[int, dict[str, Any]]:
        """(status, body) of this error as Anthropic's API answers it."""
        status = ANTHROPIC_STATUS.get(self.status, self.status)
        kind = ANTHROPIC_ERRORS.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return status, {"type": "error", "error": {"type": kind, "message": self.message}, "request_id": new_request_id()}

    def answer(self, path: str) -> tuple[int, dict[str, Any]]:
        """(status, body) of this error for a request to ``path``, in the shape of its API."""
        return self.anthropic() if anthropic_path(path) else (self.status, self.body())


def new_request_id() -> str:
    return f"req_{secrets.token_hex(12)}"


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


class _NotFinite(ValueError):
    pass


def _constant(name: str) -> Any:
    raise _NotFinite(name)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotFinite(text)
    return value


def parse_json(data: bytes | str, what: str = "the body") -> dict[str, Any]:
    """A request body as a JSON object, or a 400 saying what is wrong with it."""
    try:
        body = json.loads(data, parse_constant=_constant, parse_float=_finite)
    except _NotFinite as exc:
        raise bad_request(
            f"{what} holds the number {exc}: JSON numbers are finite (no NaN, Infinity or values past 1.8e308)",
            code="invalid_json",
        ) from None
    except RecursionError:
        raise bad_request(f"{what} nests objects and arrays more than {MAX_JSON_DEPTH} deep", code="invalid_json") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"{what} is not JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request(f"{what} must be a JSON object", code="invalid_json")
    if json_depth(body) > MAX_JSON_DEPTH:
        raise bad_request(f"{what} nests objects and arrays more than {MAX_JSON_DEPTH} deep", code="invalid_json")
    return body


def describe(value: Any) -> str:
    return JSON_TYPES.get(type(value), type(value).__name__)


def get(
    body: Mapping[str, Any], key: str, kinds: tuple[type, ...], where: str = "", *, required: bool = False, default: Any = None
) -> Any:
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


def number(
    body: Mapping[str, Any], key: str, low: float, high: float, *, default: float | None = None, low_open: bool = False
) -> float | None:
    value = get(body, key, (int, float))
    if value is None:
        return default
    # an int is compared as it is: JSON's 1 followed by 400 zeros is past any float (no overflow here)
    if (isinstance(value, float) and not math.isfinite(value)) or value < low or value > high or (low_open and value == low):
        bound = f"above {low:g}" if low_open else f"at least {low:g}"
        raise bad_request(f"{key} is {value}: it must be {bound} and at most {high:g}", key, "invalid_value")
    return float(value)


def positive_int(body: Mapping[str, Any], key: str) -> int | None:
    value = get(body, key, (int,))
    if value is not None and value < 1:
        raise bad_request(f"{key} is {value}: it must be at least 1", key, "invalid_value")
    return value


def integer(body: Mapping[str, Any], key: str, low: int, high: int) -> int | None:
    value = get(body, key, (int,))
    if value is not None and not low <= value <= high:
        raise bad_request(f"{key} is {value}: it must be from {low} to {high}", key, "invalid_value")
    return value


def string_map(body: Mapping[str, Any], key: str) -> dict[str, str]:
    """An object of strings (``metadata``), empty when absent."""
    value = get(body, key, (dict,), default={})
    for name, item in value.items():
        if not isinstance(item, str):
            raise bad_request(f"{key}.{name} must be a string, not {describe(item)}", f"{key}.{name}", "invalid_type")
    return value


MAX_STOPS, MAX_STOP_CHARS = 16, 256  # every generated piece is compared with each stop text's prefixes


def stop_texts(value: Any, param: str) -> list[str]:
    """Chat's ``stop`` or Anthropic's ``stop_sequences``: a text or texts, bounded in number and length."""
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad_request(f"{param} must be a string or an array of strings", param, "invalid_type")
    if len(stops) > MAX_STOPS or any(len(s) > MAX_STOP_CHARS for s in stops):
        raise bad_request(
            f"{param} holds {len(stops)} texts: at most {MAX_STOPS} are taken, each at most {MAX_STOP_CHARS} characters",
            param,
            "invalid_value",
        )
    return stops


def check_unicode(value: Any, where: str = "") -> None:
    """A 400 naming the first string that is not valid Unicode (a lone surrogate from ``"\\\\udcff"``)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise bad_request(
                f"{where or 'the body'} is not valid Unicode: it holds the lone surrogate "
                f"U+{ord(value[exc.start]):04X} at character {exc.start}",
                where or None,
                "invalid_unicode",
            ) from None
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
        raise bad_request(f"{where} must be a string or an array of text parts, not {describe(content)}", where, "invalid_type")
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
            raise bad_request(
                f"{param}.type {kind!r} is not supported: gpt-oss reads text only (parts of type {', '.join(part_types)})",
                f"{param}.type",
                "unsupported_content",
            )
        texts.append(get(part, "text", (str,), f"{param}.", default=""))
    return "".join(texts)


# -- what the reply must look like --------------------------------------------

TOOL_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
FORMAT_TYPES = ("text", "json_object", "json_schema")


def tool_name(value: Mapping[str, Any], where: str) -> str:
    """A tool's ``name``: 1-64 letters, digits, ``_`` or ``-``, as OpenAI takes them."""
    name = get(value, "name", (str,), f"{where}.", required=True)
    if not TOOL_NAME.match(name):
        raise bad_request(
            f"{where}.name {name[:80]!r} is not a tool name: use 1-64 letters, digits, '_' or '-'",
            f"{where}.name",
            "invalid_value",
        )
    return name


def schema(value: Any, where: str, *, grammar: bool) -> None:
    """A JSON Schema within the bounds of :mod:`ossrun.limits` (``grammar``: it holds the output)."""
    try:
        check_schema(value, where, grammar=grammar)
    except SchemaError as exc:
        raise bad_request(str(exc), exc.param, "invalid_schema") from None


def response_format(value: Any, where: str) -> None:
    """Chat's ``response_format`` or the Responses API's ``text.format`` (``json_schema`` flat there)."""
    if not isinstance(value, Mapping):
        raise bad_request(
            f'{where} must be an object like {{"type": "json_schema", ...}}, not {describe(value)}', where, "invalid_type"
        )
    kind = value.get("type")
    if kind not in FORMAT_TYPES:
        raise bad_request(f"{where}.type {kind!r} is not one of {', '.join(FORMAT_TYPES)}", f"{where}.type", "invalid_value")
    if kind != "json_schema":
        return
    nested = "json_schema" in value  # Chat Completions; the Responses API's is flat, and needs both
    spec, at = (
        (get(value, "json_schema", (dict,), f"{where}.", required=True), f"{where}.json_schema") if nested else (value, where)
    )
    get(spec, "name", (str,), f"{at}.", required=not nested)
    get(spec, "description", (str,), f"{at}.")
    get(spec, "schema", (dict,), f"{at}.", required=not nested)
    if spec.get("schema") is not None:
        schema(spec["schema"], f"{at}.schema", grammar=True)


def tool_choice(value: Any, names: Sequence[str]) -> tuple[str, ...]:
    """The tools ``tool_choice`` holds the first turn to (their schemas become grammars); ``names`` are
    the request's function tools (``name``, or ``namespace.name`` for a namespace's)."""
    if value is None or value in ("auto", "none"):
        return ()
    if value == "required":
        if not names:
            raise bad_request(
                'tool_choice is "required" but the request has no function tools: add tools or use "auto"',
                "tool_choice",
                "invalid_value",
            )
        return tuple(names)
    if isinstance(value, Mapping):
        kind = value.get("type")
        if kind == "allowed_tools":  # a subset of the tools for this turn: ossrun offers them all (auto)
            nested = "allowed_tools" in value  # Chat Completions nests it
            spec, at = (value["allowed_tools"], "tool_choice.allowed_tools") if nested else (value, "tool_choice")
            if not isinstance(spec, Mapping) or spec.get("mode") not in ("auto", "required"):
                raise bad_request(f"{at}.mode must be auto or required", f"{at}.mode", "invalid_value")
            get(spec, "tools", (list,), f"{at}.", required=True)
            return ()
        if kind == "function":
            spec, at = (value["function"], "tool_choice.function") if "function" in value else (value, "tool_choice")
            if not isinstance(spec, Mapping):
                raise bad_request(f"{at} must be an object with a name", at, "invalid_type")
            name = get(spec, "name", (str,), f"{at}.", required=True)
            namespace = get(value, "namespace", (str,), "tool_choice.")
            chosen = [
                n for n in names if n == name or n == f"{namespace}.{name}" or (namespace is None and n.endswith(f".{name}"))
            ]
            if not chosen:
                raise bad_request(f"{at}.name {name!r} is not among the request's function tools", f"{at}.name", "invalid_value")
            return tuple(chosen[:1])
    raise bad_request(
        f'tool_choice {json.dumps(value)[:80]} is not supported: use auto, none, required or {{"type": "function", "name": ...}}',
        "tool_choice",
        "invalid_value",
    )
