"""MCP server configurations: the ``{"mcpServers": {...}}`` files Claude Desktop, Cursor, LM Studio and
llama-server read, checked before anything starts.

A server is either a command (stdio) or a URL (streamable HTTP)::

    {"mcpServers": {
        "weather": {"command": "python", "args": ["weather.py"], "env": {"API_KEY": "${WEATHER_KEY}"}, "cwd": "tools"},
        "search": {"url": "http://127.0.0.1:8000/mcp", "headers": {"Authorization": "Bearer ${SEARCH_TOKEN}"}}
    }}

``${NAME}`` in ``env`` and ``headers`` values is ossrun's environment variable NAME: a key can be
handed to one server without writing it in the file. Besides, ossrun reads ``trust`` (true: its
calls run without asking), ``timeout`` (seconds a call may take), ``startup_timeout`` (seconds it
may take to start and answer the handshake) and ``disabled``; other keys other applications write
(``alwaysAllow``, ``description``, ...) are left alone. The standard library only: no MCP SDK is
loaded to read a file.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ossrun.defaults import DEFAULT_MCP_TIMEOUT
from ossrun.errors import McpError

DEFAULT_TIMEOUT = DEFAULT_MCP_TIMEOUT  # seconds a server may take to answer one call
DEFAULT_STARTUP_TIMEOUT = 60.0  # seconds it may take to start and answer the handshake (npx may download first)
HTTP_TYPES = ("http", "streamable-http", "streamable_http", "streamableHttp")
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

McpSource = str | os.PathLike | Mapping[str, Any]  # a file, or a configuration already read


@dataclass(frozen=True)
class McpServerConfig:
    """One server: ``command`` (stdio) or ``url`` (streamable HTTP)."""

    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)  # the whole environment of the command, with PATH
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    trust: bool = False  # its calls run without asking the user
    timeout: float = DEFAULT_TIMEOUT
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT

    @property
    def transport(self) -> str:
        return "stdio" if self.command is not None else "http"

    def describe(self) -> str:
        """``python weather.py`` or the URL: how /tools and error messages show where it runs."""
        if self.command is None:
            return str(self.url)
        return " ".join([self.command, *self.args])


def read_configs(sources: McpSource | Sequence[McpSource], *, timeout: float | None = None) -> list[McpServerConfig]:
    """The servers of one or more configurations (files or dicts), in order; names must be unique."""
    if isinstance(sources, (str, os.PathLike, Mapping)):
        sources = [sources]
    servers: list[McpServerConfig] = []
    seen: dict[str, str] = {}
    for source in sources:
        where = str(source) if not isinstance(source, Mapping) else "the MCP configuration"
        for server in parse_config(_load(source), where, base=_folder(source), timeout=timeout):
            if server.name in seen:
                raise McpError(
                    f"MCP server {server.name!r} is configured twice ({seen[server.name]} and {where}): "
                    f"give each server its own name"
                )
            seen[server.name] = where
            servers.append(server)
    return servers


def _load(source: McpSource) -> Any:
    if isinstance(source, Mapping):
        return source
    path = Path(source).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise McpError(f"no such file: {path}: give --mcp the path of an MCP configuration (JSON)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise McpError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise McpError(
            f"{path}:{exc.lineno}: not valid JSON ({exc.msg}): an MCP configuration is "
            '{"mcpServers": {"NAME": {"command": ...} or {"url": ...}}}'
        ) from None


def _folder(source: McpSource) -> Path | None:
    return None if isinstance(source, Mapping) else Path(source).expanduser().resolve().parent


def parse_config(data: Any, where: str, *, base: Path | None = None, timeout: float | None = None) -> list[McpServerConfig]:
    """The servers of one configuration; a relative ``cwd`` is taken from ``base`` (the file's folder)."""
    servers = data.get("mcpServers") if isinstance(data, Mapping) else None
    if not isinstance(servers, Mapping):
        raise McpError(
            f'{where} has no "mcpServers" object: an MCP configuration is '
            '{"mcpServers": {"NAME": {"command": ...} or {"url": ...}}}'
        )
    out = []
    for name, spec in servers.items():
        if not isinstance(spec, Mapping):
            raise McpError(f"{where}: MCP server {name!r} must be an object with a command or a url")
        if spec.get("disabled") is True:
            continue
        out.append(_server(str(name), spec, f"{where}: MCP server {name!r}", base, timeout))
    return out


def _server(name: str, spec: Mapping[str, Any], where: str, base: Path | None, timeout: float | None) -> McpServerConfig:
    if not name.strip():
        raise McpError(f"{where}: give the server a name")
    kind = spec.get("type", spec.get("transport"))
    command, url = spec.get("command"), spec.get("url")
    if kind == "sse" or (kind is not None and kind not in ("stdio", *HTTP_TYPES)):
        raise McpError(f"{where}: transport {kind!r} is not supported: use a command (stdio) or a url (streamable HTTP)")
    if (command is None) == (url is None):
        raise McpError(f"{where}: give either a command (a program ossrun starts) or a url (a streamable HTTP server)")
    trust = spec.get("trust", False)
    if not isinstance(trust, bool):
        raise McpError(f"{where}: trust must be true or false")
    call_bound = _timeout(spec.get("timeout"), "timeout", where, timeout or DEFAULT_TIMEOUT)
    start_bound = _timeout(spec.get("startup_timeout"), "startup_timeout", where, DEFAULT_STARTUP_TIMEOUT)
    if url is not None:
        if not isinstance(url, str) or not re.match(r"^https?://[^/\s]+", url):
            raise McpError(f"{where}: url {url!r} is not an http:// or https:// address")
        return McpServerConfig(
            name,
            url=url,
            headers=_strings(spec.get("headers"), "headers", where),
            trust=trust,
            timeout=call_bound,
            startup_timeout=start_bound,
        )
    if not isinstance(command, str) or not command.strip():
        raise McpError(f'{where}: command must be the program to run, e.g. "python" or "npx"')
    args = spec.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise McpError(f"{where}: args must be a list of strings")
    env = _strings(spec.get("env"), "env", where)
    env.setdefault("PATH", os.environ.get("PATH", os.defpath))  # only what the file gives, plus PATH
    cwd = spec.get("cwd")
    if cwd is not None:
        if not isinstance(cwd, str):
            raise McpError(f"{where}: cwd must be a folder's path")
        folder = Path(cwd).expanduser()
        if not folder.is_absolute() and base is not None:
            folder = base / folder
        if not folder.is_dir():
            raise McpError(f"{where}: cwd {cwd!r} is not a folder")
        cwd = str(folder)
    return McpServerConfig(
        name, command=command, args=tuple(args), env=env, cwd=cwd, trust=trust, timeout=call_bound, startup_timeout=start_bound
    )


def _strings(value: Any, key: str, where: str) -> dict[str, str]:
    """``env`` or ``headers``: text values, ``${NAME}`` taken from ossrun's environment."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
        raise McpError(f"{where}: {key} must be an object of text values")
    return {str(k): _expand(v, f"{where}: {key} {k}") for k, v in value.items()}


def _expand(text: str, where: str) -> str:
    def variable(match: re.Match) -> str:
        value = os.environ.get(match.group(1))
        if value is None:
            raise McpError(f"{where} names ${{{match.group(1)}}}, which is not set: set it or write the value")
        return value

    return _VARIABLE.sub(variable, text)


def _timeout(value: Any, key: str, where: str, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise McpError(f"{where}: {key} must be a number of seconds above 0")
    return float(value)
