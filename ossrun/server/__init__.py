"""The server wing: ``ossrun serve``, OpenAI's HTTP API (Chat Completions and Responses) and Anthropic's Messages API.

- :mod:`ossrun.server.chat` — a Chat Completions body to ``Model.stream`` calls, its events back to responses
- :mod:`ossrun.server.responses` — the same for the Responses API, with its item events
- :mod:`ossrun.server.messages` — the same for Anthropic's Messages API, with its content blocks
- :mod:`ossrun.server.fields` — request fields read and checked, errors in OpenAI's shape (or Anthropic's)
- :mod:`ossrun.server.state` — what the server remembers: reasoning of tool chains, stored responses
- :mod:`ossrun.server.runner` — replies generated in threads, admitted into a bounded queue, cancelled
- :mod:`ossrun.server.app` — the HTTP layer (Starlette): routes, auth, streaming, the request log
- :mod:`ossrun.server.edge` — before any route: connection bounds and timeouts, Host, Origin and body type
- :mod:`ossrun.server.batch` — ``ossrun batch``: a Batch API file answered offline, resumable
- :mod:`ossrun.server.output` — a reply as the APIs show it, harmony markup taken out
- :mod:`ossrun.server.served` — the model served: the names it answers to, its defaults
- :mod:`ossrun.server.page` — the chat page at ``/``: the files of ``static/``, a client of the API
- :mod:`ossrun.server.metrics` — ``/metrics``: counters and the engine's occupancy, Prometheus' text
- :mod:`ossrun.server.tokens` — ``/tokenize`` and ``/detokenize`` bodies read

The translations (``chat``, ``responses``, ``messages``) do not know HTTP: ``ossrun batch`` runs them too.
"""
