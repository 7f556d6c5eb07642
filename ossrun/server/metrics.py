"""``GET /metrics``: what the server did and what the engine holds, in Prometheus' text format 0.0.4.

Counters start at zero with the server. Tokens and seconds come from every reply that ended,
cancelled ones included (a reply cancelled mid-prefill counts the prompt tokens it read as
prefill seconds, and its prompt as prompt tokens). The gauges are read from the engine when
the page is scraped. A scrape is counted once it is answered, so it never counts itself.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ossrun.events import Reply

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "ossrun_"


@dataclass(frozen=True)
class Capacity:
    """What the engine has: its sequences and KV cells."""

    sequences: int
    cells: int


class Metrics:
    """The server's counters; every method is safe from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: collections.Counter[tuple[str, str]] = collections.Counter()  # (endpoint, status)
        self._cancelled: collections.Counter[str] = collections.Counter()  # endpoint
        self._errors: collections.Counter[str] = collections.Counter()  # kind
        self._tokens = {"prompt": 0, "cached": 0, "generated": 0}
        self._seconds = {"prefill": 0.0, "decode": 0.0}

    def request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self._requests[(endpoint, str(status))] += 1

    def cancelled(self, endpoint: str) -> None:
        with self._lock:
            self._cancelled[endpoint] += 1

    def error(self, kind: str) -> None:
        with self._lock:
            self._errors[kind] += 1

    def reply(self, reply: Reply) -> None:
        with self._lock:
            self._tokens["prompt"] += reply.usage.prompt_tokens
            self._tokens["cached"] += reply.usage.cached_tokens
            self._tokens["generated"] += reply.usage.completion_tokens
            self._seconds["prefill"] += reply.timings.prefill_seconds
            self._seconds["decode"] += reply.timings.decode_seconds

    def render(self, occupancy: Any, capacity: Capacity) -> str:
        """The exposition text; ``occupancy`` is the engine's (busy, waiting, cells_used)."""
        with self._lock:
            requests, cancelled, errors = dict(self._requests), dict(self._cancelled), dict(self._errors)
            tokens, seconds = dict(self._tokens), dict(self._seconds)
        lines: list[str] = []
        _family(
            lines,
            "requests_total",
            "counter",
            "HTTP requests answered, by route and status code",
            ((({"endpoint": e, "status": s}), n) for (e, s), n in sorted(requests.items())),
        )
        _family(
            lines,
            "requests_cancelled_total",
            "counter",
            "Requests whose client went away before the reply ended: the reply was cancelled",
            (({"endpoint": e}, n) for e, n in sorted(cancelled.items())),
        )
        _family(
            lines,
            "errors_total",
            "counter",
            "Errors answered (as a status or inside a stream), by code",
            (({"kind": k}, n) for k, n in sorted(errors.items())),
        )
        _family(
            lines,
            "prompt_tokens_total",
            "counter",
            "Prompt tokens of the replies, cached ones included",
            [({}, tokens["prompt"])],
        )
        _family(
            lines,
            "cached_tokens_total",
            "counter",
            "Prompt tokens reused from the KV cache, not evaluated",
            [({}, tokens["cached"])],
        )
        _family(
            lines,
            "generated_tokens_total",
            "counter",
            "Tokens generated: reasoning, answers, tool calls",
            [({}, tokens["generated"])],
        )
        _family(
            lines,
            "prefill_seconds_total",
            "counter",
            "Seconds spent reading prompts (per reply, summed)",
            [({}, seconds["prefill"])],
        )
        _family(
            lines, "decode_seconds_total", "counter", "Seconds spent generating (per reply, summed)", [({}, seconds["decode"])]
        )
        _family(lines, "requests_waiting", "gauge", "Requests waiting for a free sequence", [({}, occupancy.waiting)])
        _family(lines, "sequences_busy", "gauge", "Sequences running a request", [({}, occupancy.busy)])
        _family(lines, "sequences", "gauge", "Sequences decoded together (--parallel)", [({}, capacity.sequences)])
        _family(
            lines,
            "kv_cells_used",
            "gauge",
            "KV cells holding tokens; a prefix several sequences share counts once",
            [({}, occupancy.cells_used)],
        )
        _family(
            lines,
            "kv_cells_free",
            "gauge",
            "KV cells free (--ctx minus those used)",
            [({}, max(capacity.cells - occupancy.cells_used, 0))],
        )
        return "\n".join(lines) + "\n"


def _family(lines: list[str], name: str, kind: str, help_text: str, samples: Iterable[tuple[dict[str, str], float]]) -> None:
    lines.append(f"# HELP {PREFIX}{name} {help_text}")
    lines.append(f"# TYPE {PREFIX}{name} {kind}")
    for labels, value in samples:
        shown = ",".join(f'{key}="{_escape(text)}"' for key, text in labels.items())
        lines.append(f"{PREFIX}{name}{{{shown}}} {_number(value)}" if shown else f"{PREFIX}{name} {_number(value)}")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))
