"""The defaults every wing shares, in one place.

Only constants: the command line reads this module for its help texts, so it imports nothing
(``ossrun --help`` stays fast). Each wing's own tuning (the engine's batch size, the sandbox's
bounds, the server's timeouts) stays beside the code it tunes.
"""

from __future__ import annotations

from typing import Literal

# The model
DEFAULT_CTX: Literal["auto"] = "auto"  # the largest context the model and the memory allow
DEFAULT_KV_TYPE = "f16"  # the KV cache's type; "q8_0" takes half the memory
KV_TYPES = ("f16", "q8_0")
DEFAULT_PARALLEL = 1  # sequences decoded together by the Python API, chat and run
DEFAULT_SERVE_PARALLEL = 4  # ... by ossrun serve and ossrun batch
# Tokens kept free for the reply when deciding whether the history fits (at most a
# quarter of the context): a reasoning model needs room to think before it answers.
DEFAULT_REPLY_RESERVE = 1024

# A reply (models.toml may give a model other defaults: see ossrun.store.registry)
DEFAULT_REASONING_EFFORT: Literal["medium"] = "medium"
DEFAULT_TEMPERATURE = 1.0  # OpenAI's recommendation for gpt-oss: temperature 1.0, top_p 1.0
DEFAULT_TOP_P = 1.0
DEFAULT_MAX_TOOL_ROUNDS = 8
DEFAULT_MCP_TIMEOUT = 60.0  # seconds an MCP server may take to answer one call

# ossrun serve (the server's own tuning, its timeouts and bounds, stays in ossrun/server/)
DEFAULT_SERVE_HOST = "127.0.0.1"  # loopback: another machine reaches it only when asked to
DEFAULT_SERVE_PORT = 8080
DEFAULT_MAX_WAITING = 16  # requests that wait for a sequence before the next one gets a 429
DEFAULT_MAX_CONNECTIONS = 512  # open connections; when full the longest idle one is closed

# ossrun worker (llama.cpp's RPC server) and --rpc
DEFAULT_WORKER_HOST = "127.0.0.1"
DEFAULT_WORKER_PORT = 50052
