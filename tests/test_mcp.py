"""MCP servers' tools (``--mcp``): real MCP servers written with the SDK (``mcp_weather.py``), over
stdio and streamable HTTP, real processes looked up in /proc; the demo model calls them through
chat, run, the Python API and serve (both APIs, through the openai client)."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from helpers.scripted import ScriptedEngine, invoke, reply
from ossrun.model import Model
from ossrun.options import ReplyOptions
from ossrun.terminal.display import Screen
from ossrun.terminal.repl import Repl, StreamReader
from ossrun.tools import McpServers, Toolbox
from ossrun.tools.mcp_servers import McpToolInfo
from ossrun.tools.mcp_tools import harmony_parameters, mcp_function_tools

SERVER = Path(__file__).parent / "helpers" / "mcp_weather.py"
QUESTION = [{"role": "user", "content": "What's the weather in Oslo?"}]
WEATHER_CALL = (
    "<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>commentary "
    'to=functions.get_weather <|constrain|>json<|message|>{"city": "Oslo"}<|call|>'
)
LINUX = sys.platform.startswith("linux")
STOPPED = "MCP server 'weather' stopped (was killed by signal 9)"
WEATHER = '{"city": "Oslo", "temperature_c": 14, "condition": "rainy"}'  # the server's indented JSON, on one line


def tag(tmp_path: Path) -> str:
    """What the command lines of a test's MCP server processes carry (and nothing else's)."""
    return f"{tmp_path}/mcp-servers"


def server(tmp_path: Path, mode: str = "ok", **extra) -> dict:
    """A stdio server of mcp_weather.py, tagged with the test's folder."""
    return {"command": sys.executable, "args": [str(SERVER), mode, "--tag", tag(tmp_path)], **extra}


def config_file(tmp_path: Path, servers: dict, name: str = "mcp.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"mcpServers": servers}))
    return path


def processes(tag: str) -> list[str]:
    """The command lines of the live processes (zombies are dead) that carry ``tag``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if tag in command and state != "Z":
            found.append(command)
    return found


def wait_for(condition, seconds: float = 20.0):
    deadline = time.monotonic() + seconds
    while not (value := condition()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def assert_no_process_left(tmp_path: Path) -> None:
    left = wait_for(lambda: not processes(tag(tmp_path))) or processes(tag(tmp_path))
    assert left is True, left


@pytest.fixture
def http_server(tmp_path):
    """``mcp_weather.py ok --http``: streamable HTTP on 127.0.0.1; yields its URL."""
    process = subprocess.Popen(
        [sys.executable, str(SERVER), "ok", "--http", "--tag", f"http-{tmp_path.name}"], stdout=subprocess.PIPE, text=True
    )
    port = int(process.stdout.readline().split()[1])
    yield f"http://127.0.0.1:{port}/mcp"
    process.terminate()
    process.wait(10)


@pytest.fixture
def web_server():
    """A plain HTTP server that is not MCP: a page for every request."""

    class Page(BaseHTTPRequestHandler):
        def do_POST(self):
            body = b"<html><body>Welcome</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST

        def log_message(self, *args):
            pass

    web = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{web.server_port}/mcp"
    web.shutdown()
    web.server_close()


# --- configurations and starts that fail: one line, exit 1, before the model loads ----------------


@pytest.mark.parametrize(
    "content, message",
    [
        (
            "{not json",
            "{path}:1: not valid JSON (Expecting property name enclosed in double quotes): an MCP configuration is "
            '{{"mcpServers": {{"NAME": {{"command": ...}} or {{"url": ...}}}}}}',
        ),
        (
            '{"servers": {}}',
            '{path} has no "mcpServers" object: an MCP configuration is '
            '{{"mcpServers": {{"NAME": {{"command": ...}} or {{"url": ...}}}}}}',
        ),
        (
            '{"mcpServers": {"w": {"args": ["x"]}}}',
            "{path}: MCP server 'w': give either a command (a program ossrun starts) or a url (a streamable HTTP server)",
        ),
        (
            '{"mcpServers": {"w": {"url": "http://127.0.0.1:1/sse", "type": "sse"}}}',
            "{path}: MCP server 'w': transport 'sse' is not supported: use a command (stdio) or a url (streamable HTTP)",
        ),
        (
            '{"mcpServers": {"w": {"command": "x", "env": {"KEY": "${OSSRUN_TEST_UNSET}"}}}}',
            "{path}: MCP server 'w': env KEY names ${{OSSRUN_TEST_UNSET}}, which is not set: set it or write the value",
        ),
        (
            '{"mcpServers": {"w": {"command": "x", "timeout": 0}}}',
            "{path}: MCP server 'w': timeout must be a number of seconds above 0",
        ),
        (
            '{"mcpServers": {"w": {"command": "x", "cwd": "no-such-folder"}}}',
            "{path}: MCP server 'w': cwd 'no-such-folder' is not a folder",
        ),
        (
            '{"mcpServers": {"w": {"command": "ossrun-no-such-server"}}}',
            "MCP server 'w' cannot start: ossrun-no-such-server is not on its PATH: install it, or give its full path or a "
            "PATH in the server's env",
        ),
    ],
)
def test_a_bad_configuration_is_one_line_before_the_model_loads(scripted, capsys, tmp_path, content, message):
    engines = scripted()
    path = tmp_path / "mcp.json"
    path.write_text(content)
    for command in (["run", "--mcp", str(path), "--yes", "Hi"], ["chat", "--mcp", str(path)], ["serve", "--mcp", str(path)]):
        code, out, err = invoke(capsys, *command)
        assert (code, out, err) == (1, "", f"error: {message.format(path=path)}\n"), command
    assert engines == []


def test_a_server_named_twice_and_a_missing_file(scripted, capsys, tmp_path):
    scripted()
    first = config_file(tmp_path, {"weather": server(tmp_path)}, "a.json")
    second = config_file(tmp_path, {"weather": server(tmp_path)}, "b.json")
    code, out, err = invoke(capsys, "run", "--mcp", str(first), "--mcp", str(second), "--yes", "Hi")
    assert (code, err) == (
        1,
        f"error: MCP server 'weather' is configured twice ({first} and {second}): give each server its own name\n",
    )
    code, out, err = invoke(capsys, "run", "--mcp", str(tmp_path / "nope.json"), "--yes", "Hi")
    assert (code, err) == (
        1,
        f"error: no such file: {tmp_path / 'nope.json'}: give --mcp the path of an MCP configuration (JSON)\n",
    )
    assert processes(tag(tmp_path)) == []


@pytest.mark.parametrize(
    "mode, extra, message",
    [
        ("exit", {}, "MCP server 'weather' did not start (exited with code 3): weather: WEATHER_API_KEY is not set"),
        (
            "garbage",
            {},
            "MCP server 'weather' does not speak MCP: it wrote 'Welcome to the weather service! Type a city:' "
            "on stdout, where MCP messages go",
        ),
        (
            "silent",
            {"startup_timeout": 1},
            "MCP server 'weather' did not answer the MCP handshake within 1 s (its \"startup_timeout\" gives it longer)",
        ),
    ],
)
def test_a_server_that_does_not_start_is_one_line_and_leaves_no_process(scripted, capsys, tmp_path, mode, extra, message):
    engines = scripted()
    path = config_file(tmp_path, {"weather": server(tmp_path, mode, **extra)})
    started = time.monotonic()
    code, out, err = invoke(capsys, "chat", "--mcp", str(path))
    assert (code, out, err) == (1, "", f"error: {message}\n")
    assert time.monotonic() - started < 20  # a server that is not MCP fails at its first line, not at a timeout
    assert engines == []
    assert_no_process_left(tmp_path)


def test_an_http_server_that_is_not_reachable_or_not_mcp_is_one_line(scripted, capsys, tmp_path, web_server):
    scripted()
    for url, message in (
        (web_server, f"MCP server 'web' at {web_server} does not speak MCP: Unexpected content type: text/html"),
        (
            "http://127.0.0.1:9/mcp",
            "MCP server 'web' at http://127.0.0.1:9/mcp did not start: cannot connect (All connection attempts failed)",
        ),
    ):
        path = config_file(tmp_path, {"web": {"url": url}})
        code, out, err = invoke(capsys, "run", "--mcp", str(path), "--yes", "Hi")
        assert (code, out, err) == (1, "", f"error: {message}\n")


def test_run_without_a_terminal_refuses_servers_that_ask_unless_yes_or_trusted(scripted, capsys, monkeypatch, tmp_path):
    engines = scripted(reply("Hi.", "Hello."), reply("Hi.", "Hello."))
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    path = config_file(tmp_path, {"weather": server(tmp_path)})
    code, out, err = invoke(capsys, "run", "--mcp", str(path), "Hi")
    assert (code, out) == (1, "")
    assert err == (
        "error: MCP server 'weather' asks before each call and there is no terminal to ask on: add --yes, "
        'or "trust": true to the server\'s configuration, to let its tools run without asking\n'
    )
    assert engines == [] and processes(tag(tmp_path)) == []  # refused before any server started
    trusted = config_file(tmp_path, {"weather": server(tmp_path, trust=True)}, "trusted.json")
    code, out, err = invoke(capsys, "run", "--mcp", str(trusted), "Hi")
    assert (code, out) == (0, "Hello.\n")
    assert_no_process_left(tmp_path)


# --- processes: the environment, the end with ossrun --------------------------------------------


def test_a_stdio_server_gets_only_its_configured_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("OSSRUN_TEST_SECRET", "do-not-pass")
    monkeypatch.setenv("OSSRUN_TEST_KEY", "k-123")
    spec = server(tmp_path, "extras", env={"WEATHER_API_KEY": "${OSSRUN_TEST_KEY}", "UNIT": "celsius"})
    with McpServers({"mcpServers": {"weather": spec}}) as servers:
        result = servers.call("weather", "environment", {})
    environment = json.loads(result.content[0].text)
    environment.pop("LC_CTYPE", None)  # Python sets it in its own process when no locale is given (PEP 538)
    assert environment == {"PATH": os.environ["PATH"], "WEATHER_API_KEY": "k-123", "UNIT": "celsius"}
    assert_no_process_left(tmp_path)


@pytest.mark.skipif(not LINUX, reason="the parent-death signal is Linux's")
def test_killing_ossrun_ends_its_servers_and_what_they_started(tmp_path):
    """SIGKILL leaves no chance to clean up: the keeper's parent-death signal ends the server's
    process group, a child that ignores SIGTERM included (SIGKILL after 2 s)."""
    script = (
        "import json, os, time\nfrom ossrun.tools import McpServers\n"
        "servers = McpServers(json.loads(os.environ['MCP_CONFIG']))\nprint('ready', flush=True)\ntime.sleep(3600)\n"
    )
    config = json.dumps({"mcpServers": {"weather": server(tmp_path, "family")}})  # not on its command line
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env={**os.environ, "MCP_CONFIG": config}
    )
    try:
        assert process.stdout.readline() == "ready\n"
        running = wait_for(lambda: len(processes(tag(tmp_path))) == 3 and processes(tag(tmp_path)))
        assert running and any("mcp_child.py" in c for c in running) and any("child-" in c for c in running), running
    finally:
        process.kill()
        process.wait()
    assert_no_process_left(tmp_path)


def test_a_call_waits_within_its_timeout_and_stops_at_once_when_cancelled(tmp_path):
    """Ctrl-C in chat (or a client that goes away from serve) sets the reply's cancel event: the
    call ends at once and the server, told to cancel it, goes on serving."""
    from ossrun.tools.mcp_tools import McpTool

    with McpServers({"mcpServers": {"weather": server(tmp_path, "hang", timeout=30)}}) as servers:
        cancel = threading.Event()
        threading.Timer(0.5, cancel.set).start()
        started = time.monotonic()
        output, failed = McpTool(servers, "weather", "get_weather").run('{"city": "Oslo"}', cancel)
        assert (output, failed) == ('{"error": "the call to get_weather was interrupted"}', True)
        assert time.monotonic() - started < 5
        assert servers.down("weather") is None and servers.news() == []
    assert_no_process_left(tmp_path)


def test_closing_ends_the_servers_process_group(tmp_path):
    servers = McpServers({"mcpServers": {"weather": server(tmp_path, "family")}})
    assert wait_for(lambda: len(processes(tag(tmp_path))) == 3)
    servers.close()
    assert processes(tag(tmp_path)) == []  # close() returns once they are gone
    servers.close()  # twice is fine


# --- what the model sees -----------------------------------------------------------------------


class FakeServers:
    """The tools of several servers, for the naming rule alone."""

    def __init__(self, tools):
        self._tools = [McpToolInfo(server, name, "", {}) for server, name in tools]

    def tools(self):
        return self._tools


def test_tools_keep_their_names_in_functions_unless_offered_twice():
    tools = mcp_function_tools(
        FakeServers(
            [
                ("weather", "get_weather"),
                ("other", "get_weather"),
                ("weather", "get_time"),
                ("files", "fs.read/file"),
                ("my server", "search"),
            ]
        ),
        taken={"search"},
    )
    assert [t.recipient for t in tools] == [
        "functions.weather__get_weather",
        "functions.other__get_weather",
        "functions.get_time",
        "functions.fs_read_file",
        "functions.my_server__search",
    ]
    assert [(t.function.server, t.function.name) for t in tools][3] == ("files", "fs.read/file")  # called by its own name


def test_schemas_are_rewritten_into_what_harmony_shows():
    place = {
        "properties": {"name": {"title": "Name", "type": "string"}, "country": {"type": "string"}},
        "required": ["name", "country"],
        "title": "Place",
        "type": "object",
    }
    node = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}},
    }
    schema = {
        "type": "object",
        "title": "f",
        "$defs": {"Place": place, "Node": node},
        "properties": {
            "place": {"$ref": "#/$defs/Place", "description": "Where."},
            "when": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
            "either": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            "tree": {"$ref": "#/$defs/Node"},
        },
        "required": ["place"],
    }
    assert harmony_parameters(schema) == {
        "type": "object",
        "required": ["place"],
        "properties": {
            "place": {
                "type": "object",
                "description": "Where.",
                "required": ["name", "country"],
                "properties": {"name": {"type": "string"}, "country": {"type": "string"}},
            },
            "when": {"type": "string", "default": None},
            "either": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
            "tree": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "children": {"type": "array", "items": {}}},
            },  # recursion: any
        },
    }
    assert harmony_parameters({"type": "object", "properties": {}}) is None


def test_results_become_the_text_the_model_reads(tmp_path):
    with McpServers({"mcpServers": {"weather": server(tmp_path, "extras")}}) as servers:
        (picture,) = [t for t in mcp_function_tools(servers) if t.name == "picture"]
        assert picture.function.run("{}") == (
            "Here it is.\n[image (image/png, 68 bytes): not shown, the model reads text only]\n"
            "[resource file:///notes.txt]\nBring an umbrella.",
            False,
        )
        (weather,) = [t for t in mcp_function_tools(servers) if t.name == "get_weather"]
        assert weather.function.run('{"city": "Oslo"') == (
            '{"error": "the arguments are not valid JSON (Expecting \',\' delimiter: line 1 column 16 (char 15)): '
            'send one JSON object"}',
            True,
        )
        output, failed = weather.function.run('{"town": "Oslo"}')
        assert failed and json.loads(output)["error"].startswith("Error executing tool get_weather: 1 validation error")


# --- chat: confirmation, /tools, a server that dies ----------------------------------------------


def repl(encoding, scripts, lines, **options):
    engine = ScriptedEngine(encoding, scripts)
    buffer = io.StringIO()
    session = Repl(
        Model(engine, encoding, name="scripted"),
        Screen.create(buffer, buffer),
        StreamReader(io.StringIO(lines), echo=buffer),
        **options,
    )
    assert session.run() == 0
    return re.sub(r"prompt \d+ tokens.*\n", "STATS\n", buffer.getvalue())


def test_chat_asks_before_each_call_and_lists_the_tools(encoding, tmp_path):
    with McpServers({"mcpServers": {"weather": server(tmp_path, "extras")}}) as servers:
        transcript = repl(
            encoding,
            [WEATHER_CALL, reply("It rains.", "14 °C and rainy."), WEATHER_CALL, reply("Not allowed.", "I could not check.")],
            "Weather in Oslo?\ny\n/tools\nAgain?\nn\n",
            tools=Toolbox(mcp=servers),
        )
    command = f"{sys.executable} {SERVER} extras --tag {tag(tmp_path)}"
    assert transcript == (
        "ossrun chat · scripted · reasoning medium · tools functions.get_weather, functions.environment, "
        "functions.picture · /help for commands, Ctrl-D to leave\n"
        ">>> Weather in Oslo?\n"
        "thinking\nNeed the weather.\n\n"
        '→ get_weather({"city": "Oslo"})\n'
        "call get_weather on MCP server weather? [y/N] y\n"
        f"← get_weather: {WEATHER}\n"
        "thinking\nIt rains.\n\n14 °C and rainy.\nSTATS\n"
        ">>> /tools\n"
        f"MCP server weather ({command}), asks before each call:\n"
        "  get_weather(city): Get the current weather for a city.\n"
        "  environment(): This server's environment variables.\n"
        "  picture(): An image, a text resource and some text.\n"
        ">>> Again?\n"
        "thinking\nNeed the weather.\n\n"
        '→ get_weather({"city": "Oslo"})\n'
        "call get_weather on MCP server weather? [y/N] n\n"
        '← get_weather failed: {"error": "the user declined this call"}\n'
        "thinking\nNot allowed.\n\nI could not check.\nSTATS\n"
        ">>> \n"
    )
    assert_no_process_left(tmp_path)


def test_chat_says_once_that_a_server_died_and_its_calls_fail(encoding, tmp_path):
    """The server dies in the middle of a call: the call is an error the model reads, the REPL says
    so once, later calls fail at once without asking, and nothing is left running."""
    with McpServers({"mcpServers": {"weather": server(tmp_path, "crash")}}) as servers:
        transcript = repl(
            encoding,
            [
                WEATHER_CALL,
                reply("It failed.", "The weather service is down."),
                WEATHER_CALL,
                reply("Still down.", "Still down."),
            ],
            "Weather in Oslo?\ny\nAgain?\n/tools\n",
            tools=Toolbox(mcp=servers),
        )
        assert_no_process_left(tmp_path)  # before ossrun stops: the crash took the server's processes
    failed = f'← get_weather failed: {{"error": "{STOPPED}"}}\n'
    assert transcript.count(failed) == 2
    assert transcript.count(f"note: {STOPPED}: its tools answer with an error from now on\n") == 1
    assert transcript.count("[y/N]") == 1  # a call to a server that stopped is not asked about
    assert transcript.index("The weather service is down.") < transcript.index("note: ") < transcript.index(">>> Again?")
    assert f"{STOPPED} ({sys.executable} {SERVER} crash --tag {tag(tmp_path)}); its tools answer with an error:\n" in transcript


def test_a_call_to_a_tool_nobody_offers_is_an_error_the_model_reads(encoding, tmp_path):
    with McpServers({"mcpServers": {"weather": server(tmp_path, "renamed")}}) as servers:
        model = Model(ScriptedEngine(encoding, [WEATHER_CALL, reply("No such tool.", "I cannot.")]), encoding)
        reply_ = model.chat(QUESTION, mcp=servers)
    (result,) = reply_.tool_calls
    assert result.error and json.loads(result.output) == {
        "error": "unknown tool 'functions.get_weather': the available tools are functions.get_forecast"
    }
    assert reply_.final == "I cannot."


# --- the demo model calls real MCP servers -------------------------------------------------------


@pytest.fixture(scope="module")
def demo(demo_build, tmp_path_factory):
    import ossrun

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OSSRUN_HOME", str(tmp_path_factory.mktemp("mcp-home")))
        model = ossrun.load(str(demo_build), ctx=4096, threads=2)
    yield model
    model.close()


def demo_home(tmp_path: Path, demo_build: Path) -> Path:
    """An ossrun home holding the session's demo build, as a second run finds it."""
    home = tmp_path / "home"
    target = home / "cache" / "demo" / demo_build.name
    target.parent.mkdir(parents=True)
    os.link(demo_build, target)
    return home


@pytest.mark.slow
def test_chat_transcript_with_the_demo_model(demo, tmp_path):
    with McpServers({"mcpServers": {"weather": server(tmp_path)}}) as servers:
        buffer = io.StringIO()
        session = Repl(
            demo,
            Screen.create(buffer, buffer),
            StreamReader(io.StringIO("What's the weather in Oslo?\ny\n"), echo=buffer),
            sampling=ReplyOptions(temperature=0),
            tools=Toolbox(mcp=servers),
        )
        assert session.run() == 0
    transcript = buffer.getvalue()
    lines = [
        '→ get_weather({"city": "Oslo"})\n',
        "call get_weather on MCP server weather? [y/N] y\n",
        f"← get_weather: {WEATHER}\n",
        "It is 14°C and rainy in Oslo right now.\n",
    ]
    assert all(line in transcript for line in lines), transcript
    assert [transcript.index(line) for line in lines] == sorted(transcript.index(line) for line in lines)
    assert_no_process_left(tmp_path)


@pytest.mark.slow
def test_run_json_shows_the_call_and_nothing_is_left_running(demo_build, tmp_path):
    path = config_file(tmp_path, {"weather": server(tmp_path)})
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ossrun",
            "run",
            "--demo",
            "--mcp",
            str(path),
            "--yes",
            "--json",
            "--temperature",
            "0",
            "--threads",
            "1",
            "What's the weather in Oslo?",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OSSRUN_HOME": str(demo_home(tmp_path, demo_build))},
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["tool_calls"] == [
        {"name": "get_weather", "arguments": '{"city": "Oslo"}', "server": "weather", "error": False, "result": WEATHER}
    ]
    assert data["final"] == "It is 14°C and rainy in Oslo right now." and data["finish_reason"] == "stop"
    assert processes(tag(tmp_path)) == []  # stopped before ossrun exited


@pytest.mark.slow
def test_the_python_api_over_streamable_http_and_for_one_reply(demo, tmp_path, http_server):
    with McpServers({"mcpServers": {"weather": {"url": http_server}}}) as servers:
        answer = demo.chat(QUESTION, mcp=servers, temperature=0)
        assert servers.down("weather") is None  # the caller's servers outlive the reply
    (result,) = answer.tool_calls
    assert (result.call.recipient, result.error, result.output) == ("functions.get_weather", False, WEATHER)
    assert answer.final == "It is 14°C and rainy in Oslo right now."
    # A configuration instead: servers started for this reply and stopped after it.
    answer = demo.chat(QUESTION, mcp=config_file(tmp_path, {"weather": server(tmp_path)}), temperature=0)
    assert answer.final == "It is 14°C and rainy in Oslo right now."
    assert processes(tag(tmp_path)) == []


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode, extra, error",
    [
        ("crash", {}, STOPPED),
        ("hang", {"timeout": 2}, "get_weather on MCP server 'weather' did not answer within 2 s"),
        ("error", {}, "Error executing tool get_weather: no weather station reports for Oslo"),
        ("forgetful", {}, "Unknown tool: get_weather"),
        (
            "schema",
            {},
            "Error executing tool get_weather: 1 validation error for get_weatherArguments\ncity\n  Input should be "
            "a valid dictionary or instance of Place",
        ),
    ],
)
def test_a_call_that_fails_is_a_result_the_model_reads(demo, tmp_path, mode, extra, error):
    """A server that dies mid-call, one that hangs (the bound), a tool error, a tool the server no
    longer has, a schema the model cannot follow (the city must be an object): the conversation
    goes on with the error as the call's result, and no process is left."""
    started = time.monotonic()
    answer = demo.chat(
        QUESTION,
        mcp={"mcpServers": {"weather": server(tmp_path, mode, **extra)}},
        temperature=0,
        max_tool_rounds=1,
        max_tokens=256,
    )
    result = answer.tool_calls[0]
    assert result.error and json.loads(result.output)["error"].startswith(error), result.output
    assert answer.finish_reason in ("stop", "tool_calls", "length")
    assert time.monotonic() - started < 60
    assert_no_process_left(tmp_path)


@pytest.mark.slow
def test_what_the_model_sees_of_a_schema_with_references(demo, tmp_path):
    with McpServers({"mcpServers": {"weather": server(tmp_path, "schema")}}) as servers:
        prompt = demo.decode(demo.render(QUESTION, mcp=servers))
    assert (
        "// Get the current weather for a city.\ntype get_weather = (_: {\ncity: {\n    name: string,\n"
        "    country: string,\n    },\n}) => any;"
    ) in prompt


@pytest.mark.slow
def test_chat_leaves_no_process_on_ctrl_c(demo_build, tmp_path):
    path = config_file(tmp_path, {"weather": server(tmp_path, "family")})
    process = subprocess.Popen(
        [sys.executable, "-m", "ossrun", "chat", "--demo", "--mcp", str(path), "--threads", "1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OSSRUN_HOME": str(demo_home(tmp_path, demo_build))},
    )
    try:
        banner = process.stderr.readline()
        assert re.match(r"ossrun chat · demo · reasoning medium · ctx \d+ \(auto\) · tools functions\.get_weather ", banner), (
            banner
        )
        assert wait_for(lambda: len(processes(tag(tmp_path))) == 3)
        process.send_signal(signal.SIGINT)  # Ctrl-C at the prompt leaves
        assert process.wait(60) == 0
    finally:
        process.kill()
        process.communicate()
    assert_no_process_left(tmp_path)


# --- serve: the server runs the tools itself ------------------------------------------------------


@pytest.mark.slow
def test_serve_runs_mcp_tools_and_shows_their_calls_in_both_apis(demo_build, tmp_path):
    from openai import OpenAI

    from helpers.serving import ServerProcess

    path = config_file(tmp_path, {"weather": server(tmp_path)})
    process = ServerProcess("--demo", "--mcp", str(path), home=demo_home(tmp_path, demo_build))
    try:
        assert process.log_lines("MCP server weather (") == [
            f"MCP server weather ({sys.executable} {SERVER} ok --tag {tag(tmp_path)}): 1 tool: get_weather"
        ]
        client = OpenAI(base_url=process.base_url, api_key="unused", max_retries=0, timeout=120)
        completion = client.chat.completions.create(model="demo", messages=QUESTION, temperature=0)
        choice = completion.choices[0]
        assert choice.finish_reason == "stop" and not choice.message.tool_calls
        assert choice.message.content == "It is 14°C and rainy in Oslo right now."
        assert f'[MCP weather: get_weather]\n{{"city": "Oslo"}}\n[output]\n{WEATHER}\n' in choice.message.reasoning_content
        (run,) = choice.message.tool_runs  # the same run apart, as the chat page shows it
        assert run == {
            "name": "get_weather",
            "arguments": '{"city": "Oslo"}',
            "server": "weather",
            "output": WEATHER,
            "error": False,
        }
        # A tool the request declares is the client's: returned, not run; the server's is renamed beside it.
        own = {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Get the current weather for a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        }
        completion = client.chat.completions.create(model="demo", messages=QUESTION, tools=[own], temperature=0)
        assert completion.choices[0].finish_reason == "tool_calls"
        assert completion.choices[0].message.tool_calls[0].function.name == "get_weather"
        # Responses: an mcp_call item, then the answer; streamed, the SDK accepts the events.
        response = client.responses.create(model="demo", input=QUESTION[0]["content"], temperature=0)
        call = next(item for item in response.output if item.type == "mcp_call")
        assert (call.server_label, call.name, call.arguments, call.status, call.error) == (
            "weather",
            "get_weather",
            '{"city": "Oslo"}',
            "completed",
            None,
        )
        assert '"temperature_c": 14' in call.output and response.output_text == "It is 14°C and rainy in Oslo right now."
        with client.responses.stream(model="demo", input=QUESTION[0]["content"], temperature=0) as stream:
            kinds = [event.type for event in stream]
            final = stream.get_final_response()
        assert [k for k in kinds if k.startswith("response.mcp_call")] == [
            "response.mcp_call_arguments.delta",
            "response.mcp_call_arguments.done",
            "response.mcp_call.in_progress",
            "response.mcp_call.completed",
        ]
        assert final.output_text == "It is 14°C and rainy in Oslo right now."
    finally:
        assert process.stop() == 0
    assert_no_process_left(tmp_path)


# --- the README's MCP section -------------------------------------------------------------------


README = Path(__file__).resolve().parents[1] / "README.md"


def readme_section() -> str:
    return README.read_text().split("## MCP servers: `--mcp`", 1)[1].split("\n## ", 1)[0]


def test_the_readme_configuration_is_one_ossrun_reads(monkeypatch):
    from ossrun.tools.mcp_config import parse_config

    monkeypatch.setenv("WEATHER_API_KEY", "w-key")
    monkeypatch.setenv("SEARCH_TOKEN", "s-token")
    (text,) = re.findall(r"```json\n(.*?)```", readme_section(), re.S)
    weather, notes, search = parse_config(json.loads(text), "README")
    assert (weather.command, weather.args, weather.env["WEATHER_API_KEY"], weather.trust) == (
        "python",
        ("weather_server.py",),
        "w-key",
        False,
    )
    assert set(weather.env) == {"WEATHER_API_KEY", "PATH"}
    assert (notes.command, notes.trust) == ("npx", True)
    assert (search.url, search.headers, search.timeout) == ("http://127.0.0.1:8000/mcp", {"Authorization": "Bearer s-token"}, 30)


def test_the_readme_shows_what_the_model_sees(scripted, capsys, tmp_path):
    scripted()
    (shown,) = [
        body
        for kind, body in re.findall(r"^```(\w*)\n(.*?)^```", readme_section(), re.S | re.M)
        if not kind and "namespace functions" in body
    ]
    path = config_file(tmp_path, {"weather": server(tmp_path)})
    code, out, err = invoke(capsys, "run", "--show-prompt", "--mcp", str(path), "Hi")
    assert code == 0 and shown.strip() in out
    assert_no_process_left(tmp_path)


@pytest.mark.slow
def test_the_readme_python_example_runs(demo_build, tmp_path, monkeypatch):
    import contextlib

    import ossrun

    (example,) = re.findall(r"```python\n(.*?)```", readme_section(), re.S)
    config_file(tmp_path, {"weather": server(tmp_path)})
    monkeypatch.chdir(tmp_path)
    load = ossrun.load
    monkeypatch.setattr(ossrun, "load", lambda name, **options: load(str(demo_build), ctx=4096, threads=2))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(example, {"__name__": "__main__"})
    assert out.getvalue().startswith(f"get_weather {WEATHER}\n")
    assert_no_process_left(tmp_path)
