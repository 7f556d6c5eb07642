"""Tools the model may call: Python functions (or JSON schemas) and a sandboxed python tool.

- :mod:`ossrun.tools.schema` — JSON Schemas from type hints and docstrings
- :mod:`ossrun.tools.functions` — function tools, ``--functions FILE.py``
- :mod:`ossrun.tools.sandbox` — the python tool's limited, offline process
- :mod:`ossrun.tools.mcp_servers` — MCP servers (``--mcp FILE``), their sessions on one event loop thread;
  :mod:`ossrun.tools.mcp_config` reads their configuration, :mod:`ossrun.tools.mcp_tools` declares their tools
- :mod:`ossrun.tools.toolbox` — the tools of one conversation, declared and run
- :mod:`ossrun.tools.loop` — generate, run the calls, send back the results, repeat
"""

from ossrun.tools.functions import FunctionTool, function_tools, load_functions
from ossrun.tools.loop import DEFAULT_MAX_TOOL_ROUNDS, run_tool_loop
from ossrun.tools.mcp_servers import McpServers
from ossrun.tools.sandbox import PythonSandbox, SandboxLimits, SandboxResult
from ossrun.tools.toolbox import Toolbox

__all__ = [
    "DEFAULT_MAX_TOOL_ROUNDS",
    "FunctionTool",
    "McpServers",
    "PythonSandbox",
    "SandboxLimits",
    "SandboxResult",
    "Toolbox",
    "function_tools",
    "load_functions",
    "run_tool_loop",
]
