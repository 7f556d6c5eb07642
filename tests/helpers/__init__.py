"""What the tests share and are not tests themselves: scripted engines, servers, checkpoints, shapes.

- ``scripted``: an engine that "samples" harmony text from a script, and running the CLI in-process
- ``serving``: ``ossrun serve`` over any model, in a thread or a subprocess
- ``openai_shapes``: the OpenAI SDK's types as the shapes responses must have
- ``browser``: Debian's Chromium through Playwright, with screenshots
- ``checkpoints``, ``reference_forward``, ``bare_llama``: tiny gpt-oss checkpoints, a numpy forward pass,
  llama.cpp without ossrun
- ``hubserver``: a Hugging Face hub on 127.0.0.1
- ``rpc_helpers``: ``ossrun worker`` processes and a byte-counting relay
- ``sandboxes``: the python sandbox's fixtures (a pytest plugin, see ``conftest.py``)
- ``mcp_weather``: an MCP server written with the SDK, run as a script
"""
