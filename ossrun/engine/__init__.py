"""The engine wing: the only code that talks to llama.cpp, through llama-cpp-python or ctypes.

- :mod:`ossrun.engine.protocol` — what ossrun needs from an engine: token ids in, token ids out
- :mod:`ossrun.engine.llama` — that protocol on llama.cpp's C API
- :mod:`ossrun.engine.ggml` — ggml's backend registry, which llama-cpp-python does not bind
- :mod:`ossrun.engine.gguf_header` — a GGUF file's header, read fast and checked before loading
- :mod:`ossrun.engine.prefix_cache` — the KV state of a prompt's shared prefix, kept on disk
- :mod:`ossrun.engine.rpc` — llama.cpp's RPC backend: workers checked, devices and layer split set
- :mod:`ossrun.engine.placement` — which layers each machine holds, and the memory check over them
- :mod:`ossrun.engine.watchdog` — a worker that dies or hangs ends the process with one line
- :mod:`ossrun.engine.rpc_server` — llama.cpp's RPC server run in this process (``ossrun worker``)
"""
