"""Function tools: schemas from signatures and docstrings, --functions files, calls whose errors go to the model."""

from __future__ import annotations

import collections.abc
import enum
import json
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import pytest

from ossrun.errors import ToolError
from ossrun.tools import FunctionTool, function_tools, load_functions
from ossrun.tools.schema import function_schema, parse_docstring


class Unit(enum.Enum):
    CELSIUS = "celsius"
    FAHRENHEIT = "fahrenheit"


def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius", days: int = 1) -> dict:
    """Get the current weather in a city.

    Args:
        city: The city's name,
            in English.
        unit (str): Temperature unit.
        days: How many days to forecast.

    Returns:
        The forecast.
    """
    return {"city": city, "unit": unit, "days": days}


def test_schema_from_hints_defaults_and_google_docstring():
    description, parameters = function_schema(get_weather)
    assert description == "Get the current weather in a city."
    assert parameters == {
        "type": "object",
        "properties": {
            "city": {"description": "The city's name, in English.", "type": "string"},
            "unit": {
                "description": "Temperature unit.",
                "type": "string",
                "enum": ["celsius", "fahrenheit"],
                "default": "celsius",
            },
            "days": {"description": "How many days to forecast.", "type": "integer", "default": 1},
        },
        "required": ["city"],
    }


def test_schema_for_every_supported_type():
    def f(
        a: str,
        b: int,
        c: float,
        d: bool,
        e: list[str],
        f: dict[str, int],
        g: list,
        h: dict,
        i: int | None,
        j: list[int] | None = None,
        k: int | None = None,
        u: Unit = Unit.CELSIUS,
        t: tuple[float, float] = (0.0, 1.0),
        anything=None,
        flag: Literal[True, False] = True,
        **extra: Any,
    ):
        """Sphinx style.

        :param a: the a
        :param int b: the b
            continued
        :returns: nothing
        """

    description, parameters = function_schema(f)
    props = parameters["properties"]
    assert description == "Sphinx style."
    assert props["a"] == {"description": "the a", "type": "string"}
    assert props["b"] == {"description": "the b continued", "type": "integer"}
    assert props["c"] == {"type": "number"} and props["d"] == {"type": "boolean"}
    assert props["e"] == {"type": "array", "items": {"type": "string"}}
    assert props["f"] == {"type": "object"} and props["h"] == {"type": "object"}
    assert props["g"] == {"type": "array"}
    assert props["i"] == {"type": ["integer", "null"]}  # required but may be null
    assert props["j"] == {"type": "array", "items": {"type": "integer"}}  # optional: not required, no "null"
    assert props["k"] == {"type": "integer"}
    assert props["u"] == {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"}
    assert props["t"] == {"type": "array", "items": {"type": "number"}, "default": [0.0, 1.0]}
    assert props["anything"] == {}
    assert props["flag"] == {"type": "boolean", "enum": [True, False], "default": True}
    assert "extra" not in props
    assert parameters["required"] == ["a", "b", "c", "d", "e", "f", "g", "h", "i"]


def test_function_without_parameters_declares_none():
    def now() -> str:
        """The time."""
        return "noon"

    assert function_schema(now) == ("The time.", None)
    tool = FunctionTool.from_callable(now)
    assert tool.call("") == ("noon", False)
    assert tool.call("{}") == ("noon", False)


@pytest.mark.parametrize(
    "annotation, message",
    [
        ("set[bytes]", "bytes, which JSON cannot carry"),
        ("object", "object, which JSON cannot carry"),
        ("int | str", "union type"),
        ("dict[int, str]", "keys are strings"),
        ('Literal[b"x"]', "choices"),
    ],
)
def test_unsupported_types_name_the_function_and_parameter(annotation, message):
    namespace: dict = {}
    exec(f"from typing import Literal\ndef bad(x: {annotation}): pass", namespace)
    with pytest.raises(ToolError, match=rf"bad: parameter 'x' .*{message}"):
        function_schema(namespace["bad"])


def test_docstring_parsing_keeps_description_paragraphs():
    summary, params = parse_docstring("First line.\n\nSecond paragraph.\n\nArgs:\n    x: an x\n")
    assert summary == "First line.\n\nSecond paragraph."
    assert params == {"x": "an x"}


def test_json_schemas_openai_and_flat_shapes():
    schema = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
    nested = {"type": "function", "function": {"name": "search", "description": "Search.", "parameters": schema}}
    flat = {"name": "lookup", "parameters": {"type": "object", "properties": {}}}
    search, lookup = function_tools([nested, flat])
    assert (search.name, search.description, search.parameters, search.runnable) == ("search", "Search.", schema, False)
    assert (lookup.name, lookup.description, lookup.parameters) == ("lookup", "", None)
    with pytest.raises(ToolError, match="needs a name"):
        function_tools([{"type": "function", "function": {"description": "x"}}])
    with pytest.raises(ToolError, match="two tools are named 'search'"):
        function_tools([nested, nested])
    with pytest.raises(ToolError, match="not valid"):
        function_tools([{"name": "has space"}])
    with pytest.raises(ToolError, match="a function or a JSON schema"):
        function_tools([42])


def test_calls_return_text_or_json():
    tool = FunctionTool.from_callable(get_weather)
    output, error = tool.call('{"city": "Paris", "days": 2}')
    assert not error and json.loads(output) == {"city": "Paris", "unit": "celsius", "days": 2}
    assert FunctionTool.from_callable(lambda: "plain text", name="text").call("{}") == ("plain text", False)
    assert FunctionTool.from_callable(lambda: None, name="nothing").call("{}") == ("null", False)
    assert FunctionTool.from_callable(lambda: "é", name="accent").call("") == ("é", False)


@pytest.mark.parametrize(
    "arguments, expected",
    [
        ('{"city": ', "the arguments are not valid JSON"),
        ("[1, 2]", "the arguments must be a JSON object, not list"),
        ('{"town": "Paris"}', "bad arguments for get_weather: missing a required argument: 'city'"),
        ('{"city": "Paris", "zip": 1}', "bad arguments for get_weather: got an unexpected keyword argument 'zip'"),
    ],
)
def test_bad_arguments_become_an_error_for_the_model(arguments, expected):
    output, error = FunctionTool.from_callable(get_weather).call(arguments)
    assert error
    assert expected in json.loads(output)["error"]


def test_an_exception_becomes_an_error_for_the_model():
    def explode(city: str) -> str:
        raise ValueError(f"no weather in {city}")

    output, error = FunctionTool.from_callable(explode).call('{"city": "Atlantis"}')
    assert error and json.loads(output) == {"error": "explode raised ValueError: no weather in Atlantis"}


def test_a_schema_only_tool_is_not_called_here():
    tool = FunctionTool.from_schema({"name": "remote"})
    with pytest.raises(ToolError, match="the caller runs it"):
        tool.call("{}")


def write(tmp_path, text: str, name: str = "tools.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_load_functions_takes_public_functions_defined_in_the_file(tmp_path):
    path = write(
        tmp_path,
        '''
        from __future__ import annotations
        import json
        from os.path import join
        from dataclasses import dataclass

        LIMIT = 3

        def add(a: int, b: int = 2) -> int:
            """Add two numbers."""
            return a + b

        def _helper():
            pass

        class NotAFunction:
            pass

        def shout(text: str) -> str:
            """Upper-case the text."""
            return text.upper()
        ''',
    )
    tools = load_functions(path)
    assert [t.name for t in tools] == ["add", "shout"]
    add = tools[0]
    assert add.description == "Add two numbers."
    assert add.parameters == {
        "type": "object",
        "required": ["a"],
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer", "default": 2}},
    }
    assert add.call('{"a": 40}') == ("42", False)


def test_load_functions_errors_are_one_clear_line(tmp_path):
    with pytest.raises(ToolError, match=r"no such file: .*missing.py: give --functions the path of a Python file"):
        load_functions(tmp_path / "missing.py")
    with pytest.raises(ToolError, match=r"broken.py:2: syntax error \(.*\): fix the file"):
        load_functions(write(tmp_path, "def ok(): pass\ndef broken(:\n", "broken.py"))
    with pytest.raises(ToolError, match=r"importing .*raises.py failed: ModuleNotFoundError: No module named 'nope_not_here'"):
        load_functions(write(tmp_path, "import nope_not_here\n", "raises.py"))
    with pytest.raises(ToolError, match=r"empty.py defines no public functions"):
        load_functions(write(tmp_path, "from os.path import join\ndef _private(): pass\nX = 1\n", "empty.py"))
    with pytest.raises(ToolError, match="is not a Python file"):
        load_functions(write(tmp_path, "x", "notes.txt"))
    with pytest.raises(ToolError, match=r"badtype.py|bad: parameter 'x'"):
        load_functions(write(tmp_path, "def bad(x: bytes): pass\n", "badtype.py"))


def test_a_functions_file_imports_its_sibling_modules(tmp_path):
    (tmp_path / "weather_backend_for_test.py").write_text("def lookup(city):\n    return {'city': city, 't': 21}\n")
    path = write(
        tmp_path,
        """
        from weather_backend_for_test import lookup

        def get_weather(city: str) -> dict:
            \"\"\"Get the weather.\"\"\"
            return lookup(city)
        """,
    )
    (tool,) = load_functions(path)  # lookup is imported, not defined here: not a tool
    assert tool.call('{"city": "Oslo"}') == ('{"city": "Oslo", "t": 21}', False)


def test_sequence_and_mapping_hints():
    """typing's and collections.abc's abstract containers: their origin is the collections.abc class."""

    def f(a: Sequence[str], b: collections.abc.Sequence[int], c: Mapping[str, float], d: collections.abc.Mapping[str, str]):
        pass

    _, parameters = function_schema(f)
    assert parameters["properties"] == {
        "a": {"type": "array", "items": {"type": "string"}},
        "b": {"type": "array", "items": {"type": "integer"}},
        "c": {"type": "object"},
        "d": {"type": "object"},
    }

    def g(x: Mapping[int, str]):
        pass

    with pytest.raises(ToolError, match=r"g: parameter 'x' .*JSON object keys are strings"):
        function_schema(g)
