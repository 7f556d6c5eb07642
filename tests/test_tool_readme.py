"""The README's tools examples work as written (over a scripted engine: the tiny model does not call tools)."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import ossrun
from helpers.scripted import ScriptedEngine, reply
from ossrun.model import Model
from ossrun.tools import load_functions

README = Path(__file__).resolve().parents[1] / "README.md"


def tools_examples() -> list[str]:
    section = README.read_text().split("## Tools: functions and a python sandbox", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_functions_file_example_loads(tmp_path):
    path = tmp_path / "my_tools.py"
    path.write_text(tools_examples()[0])
    (tool,) = load_functions(path)
    assert tool.name == "get_weather" and tool.parameters["properties"]["city"]["description"] == "The city's name, e.g. Paris."
    assert json.loads(tool.call('{"city": "Paris"}')[0]) == {"city": "Paris", "temperature": 21, "unit": "celsius"}


def test_the_api_example_runs_functions_and_hands_schema_calls_to_the_caller(encoding, monkeypatch):
    engine = ScriptedEngine(
        encoding,
        [
            "<|channel|>analysis<|message|>Weather first.<|end|><|start|>assistant<|channel|>commentary "
            'to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}<|call|>',
            "<|channel|>analysis<|message|>Now the price.<|end|><|start|>assistant<|channel|>commentary "
            'to=functions.get_stock_price <|constrain|>json<|message|>{"symbol": "ACME"}<|call|>',
            reply("Both known.", "Paris: 21 °C. ACME: 12.5."),
        ],
    )
    monkeypatch.setattr(ossrun, "load", lambda name, **kwargs: Model(engine, encoding, name=name), raising=False)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(tools_examples()[1], {"__name__": "__main__"})
    assert out.getvalue() == "Paris: 21 °C. ACME: 12.5.\n"
    last = encoding.decode_utf8(engine.prompts[2])
    # The third turn saw both calls and both results, and the reasoning of the whole chain.
    assert '{"city": "Paris", "temperature": 21}' in last and '{"symbol": "ACME", "price": 12.5}' in last
    assert "Weather first." in last and "Now the price." in last
    assert engine.closed
