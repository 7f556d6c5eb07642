"""``ossrun batch``: offline jobs in OpenAI's Batch API format, run by the server's translations.

Each input line is ``{"custom_id", "method": "POST", "url": "/v1/chat/completions",
"/v1/responses" or "/v1/messages" (Anthropic's Messages API), "body"}``; each output line
``{"id", "custom_id", "response": {"status_code", "body"}, "error"}``, appended and flushed as
it finishes, so a crash loses at most the lines in flight. Run again with the same output, a
batch skips what was answered: a torn last line is dropped and done again, and lines that ended
in an error are retried.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ossrun.errors import OssrunError
from ossrun.events import Done, Event
from ossrun.server import chat, messages, responses
from ossrun.server.errors import api_error
from ossrun.server.fields import ApiError, check_unicode, parse_json
from ossrun.server.output import new_id
from ossrun.server.served import ServedModel
from ossrun.server.state import ServerState

if TYPE_CHECKING:
    from ossrun.model import Model

URLS = ("/v1/chat/completions", "/v1/responses", "/v1/messages")


@dataclass
class BatchLine:
    number: int  # 1-based, as editors count
    custom_id: str | None = None
    url: str = ""
    body: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None  # why the line cannot be run


@dataclass
class Summary:
    total: int = 0
    skipped: int = 0  # answered by an earlier run
    done: int = 0
    failed: int = 0  # written with an error (or a status other than 200)
    invalid: int = 0  # lines that were not requests
    completion_tokens: int = 0
    seconds: float = 0.0
    interrupted: bool = False

    def line(self, out: Path) -> str:
        rate = f", {self.completion_tokens / self.seconds:.1f} tokens/s" if self.seconds > 0 else ""
        parts = [f"{self.done} answered", f"{self.failed} failed"]
        if self.skipped:
            parts.append(f"{self.skipped} already in {out.name}")
        if self.invalid:
            parts.append(f"{self.invalid} invalid lines")
        ending = "interrupted: " if self.interrupted else ""
        return f"{ending}{', '.join(parts)} of {self.total} in {self.seconds:.1f}s{rate}"


def read_input(path: Path) -> list[BatchLine]:
    """Every line of the input, checked; a duplicate custom_id stops the batch before it starts."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise OssrunError(f"no such input file: {path}") from None
    except UnicodeDecodeError:
        raise OssrunError(f"{path} is not UTF-8 text: give a JSON Lines file") from None
    except OSError as exc:
        raise OssrunError(f"cannot read {path}: {exc.strerror or exc}") from None
    lines: list[BatchLine] = []
    seen: dict[str, int] = {}  # custom_id: its line
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        line = parse_line(number, raw)
        if line.custom_id is not None:
            if line.custom_id in seen:
                raise OssrunError(
                    f"{path}: lines {seen[line.custom_id]} and {number} have the same custom_id "
                    f"{line.custom_id!r}: give every request its own"
                )
            seen[line.custom_id] = number
        lines.append(line)
    if not lines:
        raise OssrunError(f"{path} holds no requests: one JSON object per line, as OpenAI's Batch API takes")
    return lines


def parse_line(number: int, raw: str) -> BatchLine:
    line = BatchLine(number)
    try:
        data = parse_json(raw, f"line {number}")  # the server's own rules: no NaN, bounded nesting
    except ApiError as exc:
        line.problem = exc.message
        return line
    custom_id = data.get("custom_id")
    if isinstance(custom_id, str) and custom_id:
        line.custom_id = custom_id
    else:
        line.problem = f"line {number} has no custom_id (a non-empty string)"
        return line
    if data.get("method", "POST") != "POST":
        line.problem = f"line {number}: method {data.get('method')!r} is not POST"
    elif data.get("url") not in URLS:
        line.problem = f"line {number}: url {data.get('url')!r} is not one of {', '.join(URLS)}"
    elif not isinstance(data.get("body"), dict):
        line.problem = f"line {number}: body must be a JSON object"
    elif data["body"].get("stream"):
        line.problem = f"line {number}: stream is not possible in a batch: leave it out"
    else:
        line.url, line.body = data["url"], data["body"]
    return line


def answered(out: Path) -> set[str]:
    """The custom_ids ``out`` answered; it is rewritten without its error lines and a torn last line."""
    if not out.exists():
        return set()
    try:
        raw_lines = out.read_text(encoding="utf-8").splitlines(keepends=True)
    except (OSError, UnicodeDecodeError) as exc:
        raise OssrunError(f"cannot read the earlier output {out}: {exc}: move it away or remove it") from None
    kept, ids = [], set()
    for raw in raw_lines:
        try:
            data = json.loads(raw)
        except ValueError:
            continue  # a line torn by a crash: done again
        if isinstance(data, dict) and data.get("error") is None and isinstance(data.get("custom_id"), str):
            kept.append(raw if raw.endswith("\n") else raw + "\n")
            ids.add(data["custom_id"])
    if len(kept) != len(raw_lines):
        part = out.with_name(out.name + ".part")
        part.write_text("".join(kept), encoding="utf-8")
        os.replace(part, out)
    return ids


class Batch:
    """Runs the lines of a batch on a model, ``parallel`` at a time."""

    def __init__(self, model: Model, served: ServedModel, out: Path, *, parallel: int):
        self.model = model
        self.served = served
        self.out = out
        self.parallel = parallel
        self.state = ServerState()
        self._lock = threading.Lock()
        self._cancel = threading.Event()

    def run(self, lines: list[BatchLine], progress: Callable[[Summary], None] | None = None) -> Summary:
        summary = Summary(total=len(lines))
        done_before = answered(self.out)
        todo = [line for line in lines if line.custom_id not in done_before or line.custom_id is None]
        summary.skipped = len(lines) - len(todo)
        started = time.perf_counter()
        try:
            with open(self.out, "a", encoding="utf-8") as output, ThreadPoolExecutor(self.parallel) as pool:
                pending: set[Future] = set()
                queue = iter(todo)
                try:
                    for line in queue:
                        pending.add(pool.submit(self._one, line, output, summary))
                        if len(pending) >= self.parallel:
                            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                            self._report(finished, summary, started, progress)
                    while pending:
                        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                        self._report(finished, summary, started, progress)
                except KeyboardInterrupt:
                    self._cancel.set()  # lines in flight stop; what was written stays
                    summary.interrupted = True
                    for future in pending:
                        future.cancel()
                    wait(pending)
        except OSError as exc:
            raise OssrunError(f"cannot write {self.out}: {exc.strerror or exc}") from None
        summary.seconds = time.perf_counter() - started
        return summary

    def _report(
        self, finished: set[Future], summary: Summary, started: float, progress: Callable[[Summary], None] | None
    ) -> None:
        for future in finished:
            future.result()  # a bug in a line is a bug of the batch
        summary.seconds = time.perf_counter() - started
        if progress is not None:
            progress(summary)

    def _one(self, line: BatchLine, output: Any, summary: Summary) -> None:
        if self._cancel.is_set():
            return
        if line.problem is not None:
            self._write(output, line, None, {"code": "invalid_request", "message": line.problem}, summary, invalid=True)
            return
        try:
            status, body, tokens = self._answer(line)
        except _Interrupted:
            return  # not written: a later run does it again
        except Exception as exc:  # one failing line does not stop the batch
            self._write(output, line, None, {"code": "server_error", "message": f"{type(exc).__name__}: {exc}"}, summary)
            return
        self._write(
            output, line, {"status_code": status, "request_id": new_id("req"), "body": body}, None, summary, tokens=tokens
        )

    def _answer(self, line: BatchLine) -> tuple[int, dict[str, Any], int]:
        try:
            check_unicode(line.body, "body")
            call: chat.ChatCall | responses.ResponsesCall | messages.MessagesCall
            translate: Callable[[list[Event]], dict[str, Any]]
            if line.url == URLS[0]:
                call = chat.parse(line.body, self.served, self.state)
                translate = chat.Completion(call, self.state).completion
            elif line.url == URLS[1]:
                call = responses.parse(line.body, self.served, self.state)
                translate = responses.Response(call, self.state).run
            else:
                call = messages.parse(line.body, self.served, self.state)
                translate = messages.Message(call, self.state).message
            events = list(self.model.stream(call.messages, call.options, cancel=self._cancel))
        except (ApiError, OssrunError) as exc:
            return (*api_error(exc).answer(line.url), 0)
        last = events[-1] if events else None
        if self._cancel.is_set() or (isinstance(last, Done) and last.reply.finish_reason == "interrupted"):
            raise _Interrupted()
        return 200, translate(events), last.reply.usage.completion_tokens if isinstance(last, Done) else 0

    def _write(
        self,
        output: Any,
        line: BatchLine,
        response: dict | None,
        error: dict | None,
        summary: Summary,
        *,
        invalid: bool = False,
        tokens: int = 0,
    ) -> None:
        record = {"id": new_id("batch_req"), "custom_id": line.custom_id, "response": response, "error": error}
        text = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            output.write(text)
            output.flush()
            os.fsync(output.fileno())
            if invalid:
                summary.invalid += 1
            if error is None and response is not None and response["status_code"] == 200:
                summary.done += 1
            else:
                summary.failed += 1
            summary.completion_tokens += tokens


class _Interrupted(Exception):
    pass
