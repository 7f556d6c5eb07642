"""The server wing: ``ossrun serve``, OpenAI's HTTP API (Chat Completions and Responses).

- :mod:`ossrun.server.chat` — a Chat Completions body to ``Model.stream`` calls, its events back to responses
- :mod:`ossrun.server.responses` — the same for the Responses API, with its item events
- :mod:`ossrun.server.fields` — request fields read and checked, errors in OpenAI's shape
- :mod:`ossrun.server.state` — what the server remembers: reasoning of tool chains, stored responses
- :mod:`ossrun.server.runner` — replies generated in threads, admitted into a bounded queue, cancelled
- :mod:`ossrun.server.app` — the HTTP layer (Starlette): routes, auth, streaming, the request log

The translations (``chat``, ``responses``) do not know HTTP: ``ossrun batch`` runs them too.
"""
