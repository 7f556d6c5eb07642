"""The terminal wing: the chat REPL and the renderers of ``ossrun chat`` and ``ossrun run``.

It consumes the typed events of :mod:`ossrun.events` and never talks to the engine or harmony.

- :mod:`ossrun.terminal.repl` — the chat loop: input, slash commands, answers
- :mod:`ossrun.terminal.conversation` — a chat session's history, effort and instructions; /save, /load
- :mod:`ossrun.terminal.display` — events to text on stdout (the answer) and stderr (the rest)
- :mod:`ossrun.terminal.markdown_stream` — the answer as markdown, repainting only its live tail
- :mod:`ossrun.terminal.interrupt` — Ctrl-C cancels the answer, not the program
"""
