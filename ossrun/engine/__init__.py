"""The engine wing: the only code that talks to llama.cpp, through llama-cpp-python or ctypes.

- :mod:`ossrun.engine.protocol` — what ossrun needs from an engine: token ids in, token ids out
- :mod:`ossrun.engine.llama` — that protocol on llama.cpp's C API
- :mod:`ossrun.engine.ggml` — ggml's backend registry, which llama-cpp-python does not bind
- :mod:`ossrun.engine.gguf_header` — a GGUF file's header, read fast and checked before loading
- :mod:`ossrun.engine.prefix_cache` — the KV state of a prompt's shared prefix, kept on disk
"""
