"""Tools in ``ossrun chat`` and ``ossrun run``: transcripts over scripted harmony streams, real functions and sandbox."""

from __future__ import annotations

import io
import json
import re
import textwrap

import pytest

from helpers.scripted import ScriptedEngine, invoke, reply
from ossrun.model import Model
from ossrun.terminal.conversation import Conversation
from ossrun.terminal.display import Screen
from ossrun.terminal.repl import Repl, StreamReader
from ossrun.tools import DEFAULT_MAX_TOOL_ROUNDS, PythonSandbox, Toolbox, load_functions

DATE = "2026-01-15"
FUNCTIONS = '''
    import json

    def get_weather(city: str, unit: str = "celsius") -> dict:
        """Get the current weather in a city."""
        return {"city": city, "temperature": 21 if city == "Paris" else 12, "unit": unit}

    def explode(reason: str) -> str:
        """Fail on purpose."""
        raise RuntimeError(reason)
    '''
WEATHER_CALL = (
    "<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>commentary "
    'to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}<|call|>'
)
WEATHER_ANSWER = reply("It is 21.", "21 °C in Paris.")
PYTHON_CALL = (
    "<|channel|>analysis<|message|>Compute it.<|end|><|start|>assistant<|channel|>analysis to=python code"
    "<|message|>print(6 * 7)<|call|>"
)


@pytest.fixture(autouse=True)
def _pinned_date(monkeypatch):
    monkeypatch.setenv("OSSRUN_DATE", DATE)


@pytest.fixture
def functions_file(tmp_path):
    path = tmp_path / "my_tools.py"
    path.write_text(textwrap.dedent(FUNCTIONS))
    return path


def mask(text: str) -> str:
    return re.sub(r"prompt \d+ tokens.*\n", "STATS\n", text)


def repl_session(encoding, scripts, lines, **repl_options):
    engine = ScriptedEngine(encoding, scripts)
    buffer = io.StringIO()
    repl = Repl(
        Model(engine, encoding, name="scripted"),
        Screen.create(buffer, buffer),
        StreamReader(io.StringIO(lines), echo=buffer),
        **repl_options,
    )
    assert repl.run() == 0
    return engine, repl, mask(buffer.getvalue())


def test_repl_shows_each_call_and_result_and_keeps_the_chain(encoding, functions_file, tmp_path):
    toolbox = Toolbox(load_functions(functions_file))
    saved = tmp_path / "chat.json"
    engine, repl, transcript = repl_session(
        encoding,
        [WEATHER_CALL, WEATHER_ANSWER, reply("Same as before.", "Still 21 °C.")],
        f"Weather in Paris?\nAnd now?\n/save {saved}\n",
        tools=toolbox,
    )
    assert transcript == (
        "ossrun chat · scripted · reasoning medium · tools functions.get_weather, functions.explode"
        " · /help for commands, Ctrl-D to leave\n"
        ">>> Weather in Paris?\n"
        "thinking\nNeed the weather.\n\n"
        '→ get_weather({"city": "Paris"})\n'
        '← get_weather: {"city": "Paris", "temperature": 21, "unit": "celsius"}\n'
        "thinking\nIt is 21.\n\n"
        "21 °C in Paris.\n"
        "STATS\n"
        ">>> And now?\n"
        "thinking\nSame as before.\n\nStill 21 °C.\n"
        "STATS\n"
        f">>> /save {saved}\nsaved 6 messages to {saved}\n"
        ">>> \n"
    )
    messages = json.loads(saved.read_text())["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant", "user", "assistant"]
    assert messages[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    # The next turn kept the call and its result but not the finished chain's reasoning.
    third = encoding.decode_utf8(engine.prompts[2])
    assert "Need the weather." not in third and '"temperature": 21' in third
    # A saved conversation with tool calls loads and continues.
    loaded = Conversation.load(saved)
    assert loaded.messages == messages


def test_repl_asks_before_each_python_run(encoding):
    with PythonSandbox() as sandbox:
        engine, repl, transcript = repl_session(
            encoding,
            [PYTHON_CALL, reply("It printed 42.", "42."), PYTHON_CALL, reply("Not allowed.", "I could not run it.")],
            "What is 6*7?\ny\nAgain?\nn\n",
            tools=Toolbox(python=sandbox),
        )
    assert transcript == (
        "ossrun chat · scripted · reasoning medium · tools python · /help for commands, Ctrl-D to leave\n"
        ">>> What is 6*7?\n"
        "thinking\nCompute it.\n\n"
        "→ python\n  print(6 * 7)\n"
        "run this code? [y/N] y\n"
        "← python: 42\n  [exit status 0]\n"
        "thinking\nIt printed 42.\n\n42.\nSTATS\n"
        ">>> Again?\n"
        "thinking\nCompute it.\n\n"
        "→ python\n  print(6 * 7)\n"
        "run this code? [y/N] n\n"
        "← python failed: [not run: the user declined to run this code]\n"
        "thinking\nNot allowed.\n\nI could not run it.\nSTATS\n"
        ">>> \n"
    )


def test_repl_with_yes_runs_without_asking_and_end_of_input_declines(encoding):
    with PythonSandbox() as sandbox:
        _, _, transcript = repl_session(
            encoding, [PYTHON_CALL, reply("ok", "42.")], "What is 6*7?\n", tools=Toolbox(python=sandbox), confirm_python=False
        )
        assert "run this code?" not in transcript and "← python: 42\n" in transcript
        _, _, transcript = repl_session(
            encoding, [PYTHON_CALL, reply("ok", "No.")], "What is 6*7?\n", tools=Toolbox(python=sandbox)
        )
        assert "run this code? [y/N] \n← python failed: [not run: the user declined to run this code]\n" in transcript


def test_repl_says_at_start_when_code_can_use_the_network(encoding):
    with PythonSandbox(isolate_network=False) as sandbox:
        _, _, transcript = repl_session(encoding, [], "", tools=Toolbox(python=sandbox))
    assert "note: the python tool's code can use the network (network isolation is off)\n" in transcript


def test_repl_round_limit(encoding, functions_file):
    _, repl, transcript = repl_session(
        encoding, [WEATHER_CALL] * 3, "Weather?\n", tools=Toolbox(load_functions(functions_file)), max_tool_rounds=2
    )
    assert transcript.count("→ get_weather") == 3 and transcript.count("← get_weather") == 2
    assert "note: stopped after 2 rounds of tool calls: allow more with max_tool_rounds (--max-tool-rounds)\n" in transcript


# --- ossrun run ----------------------------------------------------------------------------------


def test_run_json_lists_the_tool_calls(scripted, capsys, functions_file):
    explode = WEATHER_CALL.replace("get_weather", "explode").replace('{"city": "Paris"}', '{"reason": "boom"}')
    scripted(WEATHER_CALL, explode, WEATHER_ANSWER)
    code, out, err = invoke(capsys, "run", "--functions", str(functions_file), "--json", "Weather in Paris?")
    assert code == 0
    data = json.loads(out)
    assert data["final"] == "21 °C in Paris." and data["finish_reason"] == "stop"
    assert data["tool_calls"] == [
        {
            "name": "get_weather",
            "arguments": '{"city": "Paris"}',
            "result": '{"city": "Paris", "temperature": 21, "unit": "celsius"}',
            "error": False,
        },
        {
            "name": "explode",
            "arguments": '{"reason": "boom"}',
            "result": '{"error": "explode raised RuntimeError: boom"}',
            "error": True,
        },
    ]
    assert '→ get_weather({"city": "Paris"})\n' in err and "← explode failed:" in err


def test_run_answer_on_stdout_with_tools(scripted, capsys, functions_file):
    scripted(WEATHER_CALL, WEATHER_ANSWER)
    code, out, err = invoke(capsys, "run", "--functions", str(functions_file), "Weather in Paris?")
    assert (code, out) == (0, "21 °C in Paris.\n")
    assert err == ('→ get_weather({"city": "Paris"})\n← get_weather: {"city": "Paris", "temperature": 21, "unit": "celsius"}\n')


def test_run_refuses_python_without_a_terminal_unless_yes(scripted, capsys, monkeypatch):
    engines = scripted(PYTHON_CALL, reply("ok", "42."))
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    code, out, err = invoke(capsys, "run", "--tool", "python", "What is 6*7?")
    assert (code, out) == (1, "")
    assert err == (
        "error: --tool python asks before each run of the model's code and there is no terminal "
        "to ask on: add --yes to let it run without asking\n"
    )
    assert engines == []  # refused before the model loaded
    code, out, err = invoke(capsys, "run", "--tool", "python", "--yes", "--json", "What is 6*7?")
    data = json.loads(out)
    assert code == 0 and data["tool_calls"] == [
        {"name": "python", "arguments": "print(6 * 7)", "result": "42\n[exit status 0]", "error": False}
    ]


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    "answer, result", [("y\n", "42\n[exit status 0]"), ("\n", "[not run: the user declined to run this code]")]
)
def test_run_asks_on_a_terminal(scripted, capsys, monkeypatch, answer, result):
    scripted(PYTHON_CALL, reply("ok", "done."))
    monkeypatch.setattr("sys.stdin", FakeTerminal(answer))
    code, out, err = invoke(capsys, "run", "--tool", "python", "--json", "What is 6*7?")
    assert code == 0 and json.loads(out)["tool_calls"][0]["result"] == result
    assert "→ python\n  print(6 * 7)\nrun this code? [y/N] " in err


def test_run_max_tool_rounds(scripted, capsys, functions_file):
    scripted(WEATHER_CALL, WEATHER_CALL)
    code, out, err = invoke(capsys, "run", "--functions", str(functions_file), "--max-tool-rounds", "1", "--json", "Weather?")
    data = json.loads(out)
    assert code == 0 and data["finish_reason"] == "tool_calls" and len(data["tool_calls"]) == 1
    assert "note: stopped after 1 rounds of tool calls" in err


def test_show_prompt_declares_the_tools(scripted, capsys, functions_file):
    scripted()
    code, out, err = invoke(capsys, "run", "--show-prompt", "--functions", str(functions_file), "--tool", "python", "Hi")
    assert code == 0
    assert "## python\n\nUse this tool to execute Python code in your chain of thought." in out
    assert "namespace functions {\n\n// Get the current weather in a city.\ntype get_weather = (_: {\ncity: string," in out
    assert "type explode = (_: {\nreason: string,\n}) => any;" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--functions", "nope.py"], "error: no such file: nope.py: give --functions the path of a Python file\n"),
        (["--tool", "browser"], "error: unknown tool 'browser': the builtin tools are python\n"),
    ],
)
def test_bad_tool_options_are_one_line(scripted, capsys, args, message):
    engines = scripted()
    for command in (["run", *args, "Hi"], ["chat", *args]):
        code, out, err = invoke(capsys, *command)
        assert (code, out, err) == (1, "", message)
    assert engines == []


def test_a_broken_functions_file_is_one_line(scripted, capsys, tmp_path):
    scripted()
    broken = tmp_path / "broken.py"
    broken.write_text("def f(:\n")
    code, out, err = invoke(capsys, "run", "--functions", str(broken), "Hi")
    assert (code, out) == (1, "") and err.startswith(f"error: {broken}:1: syntax error (") and err.count("\n") == 1


@pytest.mark.parametrize("command", ["run", "chat"])
def test_cli_default_round_limit_matches_the_library(capsys, command):
    # One home for the default (ossrun.defaults): the commands' help says the library's figure.
    code, out, _ = invoke(capsys, command, "--help")
    assert code == 0
    assert re.search(rf"--max-tool-rounds.*?\[default: {DEFAULT_MAX_TOOL_ROUNDS};", out, re.S)


def test_repl_counts_the_tool_declarations_in_what_a_change_costs(encoding, functions_file):
    from ossrun.engine.protocol import common_prefix_length

    toolbox = Toolbox(load_functions(functions_file))
    engine, repl, transcript = repl_session(encoding, [WEATHER_CALL, WEATHER_ANSWER], "Weather?\n/effort high\n", tools=toolbox)
    (announced,) = [int(n) for n in re.findall(r"re-processes (\d+) tokens", transcript)]
    prompt = repl.model.render(repl.conversation.messages, reasoning_effort="high", tools=toolbox)
    assert announced == len(prompt) - common_prefix_length(engine.evaluated, prompt)


# Code that hides a line from the person who approves it (cursor up, erase line: raw in a
# comment), then prints an escape sequence that writes the clipboard (OSC 52).
HIDING_CODE = "import os  # \x1b[1A\x1b[2K\r\nprint('\\x1b]52;c;aGk=\\x07done')"
HIDING_CALL = (
    "<|channel|>analysis<|message|>Run it.<|end|><|start|>assistant<|channel|>analysis to=python code"
    f"<|message|>{HIDING_CODE}<|call|>"
)


def test_repl_on_a_terminal_shows_the_codes_escape_sequences_and_its_outputs_instead_of_obeying_them(encoding):
    from rich.console import Console

    engine = ScriptedEngine(encoding, [HIDING_CALL, reply("It ran.", "Done\x1b]52;c;aGk=\x07.")])
    buffer = io.StringIO()
    console = Console(file=buffer, width=100, force_terminal=True, color_system=None)
    with PythonSandbox() as sandbox:
        repl = Repl(
            Model(engine, encoding, name="scripted"),
            Screen(console, console),
            StreamReader(io.StringIO("Run it\ny\n"), echo=buffer),
            tools=Toolbox(python=sandbox),
        )
        assert repl.run() == 0
    live = re.compile(r"\x1b\[(\?25[lh]|2K|1A)|\r")  # the live answer's own redrawing
    shown = live.sub("", buffer.getvalue())
    assert "\x1b" not in shown and "\x07" not in shown
    # The code as it will run, every line of it, before the question; then its output, written out.
    assert (
        "→ python\n  import os  # \\x1b[1A\\x1b[2K\\x0d\n  print('\\x1b]52;c;aGk=\\x07done')\n"
        "run this code? [y/N] y\n← python: \\x1b]52;c;aGk=\\x07done\n"
    ) in shown
    assert "Done\\x1b]52;c;aGk=\\x07." in shown


def test_run_keeps_the_text_as_it_is_in_a_pipe_and_in_json(scripted, capsys):
    scripted(reply("Think.", "Done\x1b]52;c;aGk=\x07."))
    code, out, _ = invoke(capsys, "run", "What?")
    assert code == 0 and out == "Done\x1b]52;c;aGk=\x07.\n"
    scripted(reply("Think.", "Done\x1b]52;c;aGk=\x07."))
    code, out, _ = invoke(capsys, "run", "--json", "What?")
    assert code == 0 and json.loads(out)["final"] == "Done\x1b]52;c;aGk=\x07."
