"""A real MCP server for the tests, written with the MCP SDK (``MCPServer``, FastMCP's name in mcp 2).

``python mcp_weather.py MODE [--http] [--tag TAG]``: ``--tag`` only marks the command line so a
test can find its processes. Over stdio by default; with ``--http`` it serves streamable HTTP on
127.0.0.1 on a free port and prints ``port N`` on stdout once it listens. MODE says how
``get_weather(city)`` behaves, or how the server misbehaves:

- ``ok``: the weather (14 °C and rainy, what the demo model must repeat), the only tool, as the
  demo model was trained (unknown tools beside it put it off);
- ``extras``: ``get_weather``, ``environment`` (this server's environment) and ``picture``
  (an image, a text resource and text);
- ``crash``: the server kills itself (SIGKILL) in the middle of the call;
- ``hang``: the call never returns;
- ``error``: the tool fails with a message;
- ``renamed``: the server offers ``get_forecast`` instead;
- ``forgetful``: it lists ``get_weather``, then no longer has it (as when a server's tools change);
- ``schema``: the city must be an object ``{"name", "country"}``, which the demo model never sends;
- ``exit``: the server says on stderr what is missing and exits 3 before the handshake;
- ``garbage``: it writes text that is not MCP on stdout and waits;
- ``silent``: it never answers the handshake;
- ``family``: as ``ok``, with a child process that ignores SIGTERM (for the process-group tests).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from pydantic import BaseModel

WEATHER = {"city": "Oslo", "temperature_c": 14, "condition": "rainy"}
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAAC0lEQVR4nGNgAAIAAAUAAXpeqz8AAAAASUVORK5CYII="  # 1x1 PNG, 68 bytes


class Place(BaseModel):
    name: str
    country: str


def build(mode: str):
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError
    from mcp.types import EmbeddedResource, ImageContent, TextContent, TextResourceContents

    server = MCPServer("weather", log_level="WARNING")

    if mode == "renamed":

        @server.tool()
        def get_forecast(city: str) -> dict:
            """Get tomorrow's forecast for a city."""
            return {**WEATHER, "city": city}
    elif mode == "schema":

        @server.tool()
        def get_weather(city: Place) -> dict:
            """Get the current weather for a city."""
            return {**WEATHER, "city": city.name}
    else:

        @server.tool()
        def get_weather(city: str) -> dict:
            """Get the current weather for a city."""
            if mode == "crash":
                os.kill(os.getpid(), signal.SIGKILL)
            if mode == "hang":
                time.sleep(3600)
            if mode == "error":
                raise ToolError(f"no weather station reports for {city}")
            return {**WEATHER, "city": city}

    if mode == "forgetful":
        listed = server.list_tools

        async def list_then_forget():
            tools = await listed()
            if any(tool.name == "get_weather" for tool in tools):
                server.remove_tool("get_weather")
            return tools

        server.list_tools = list_then_forget

    if mode == "extras":

        @server.tool()
        def environment() -> dict:
            """This server's environment variables."""
            return dict(os.environ)

        @server.tool()
        def picture() -> list:
            """An image, a text resource and some text."""
            resource = TextResourceContents(uri="file:///notes.txt", mime_type="text/plain", text="Bring an umbrella.")
            return [
                TextContent(type="text", text="Here it is."),
                ImageContent(type="image", data=PIXEL, mime_type="image/png"),
                EmbeddedResource(type="resource", resource=resource),
            ]

    return server


def serve_http(server) -> None:
    """Streamable HTTP on a free port of 127.0.0.1, announced on stdout once the socket listens."""
    import anyio
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    print(f"port {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(server.streamable_http_app(), log_level="warning", lifespan="on")
    anyio.run(lambda: uvicorn.Server(config).serve(sockets=[sock]))


def main(argv: list[str]) -> None:
    mode = argv[1]
    if mode == "exit":
        sys.stderr.write("weather: WEATHER_API_KEY is not set\n")
        sys.exit(3)
    if mode == "garbage":
        print("Welcome to the weather service! Type a city:", flush=True)
        time.sleep(3600)
    if mode == "silent":
        time.sleep(3600)
    if mode == "family":  # a child that outlives SIGTERM: only SIGKILL ends it
        tag = argv[argv.index("--tag") + 1] if "--tag" in argv else ""
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)",
                f"child-{tag}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
    server = build("ok" if mode == "family" else mode)
    if "--http" in argv:
        serve_http(server)
    else:
        server.run("stdio")


if __name__ == "__main__":
    main(sys.argv)
