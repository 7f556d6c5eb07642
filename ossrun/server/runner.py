"""Replies generated in threads for an asyncio server: admission, cancel, shutdown.

``Model.stream`` is a blocking generator; each admitted request runs it in a thread of its
own and hands the events to the event loop. At most ``parallel`` replies are decoded together
(the engine's sequences); up to ``max_waiting`` more wait in arrival order, and past that a
request is refused (429). A request whose client went away, or every request when the
server stops, is cancelled through the event ``Model.stream`` polls, prefill included.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ossrun.defaults import DEFAULT_MAX_WAITING
from ossrun.events import Done, Event, Reply
from ossrun.options import ReplyOptions

KEEPALIVE = object()  # yielded when nothing came for a while: the caller keeps the stream alive


class Busy(Exception):
    """Every sequence is busy and the queue is full."""


class Runner:
    def __init__(
        self,
        stream: Callable[..., Iterator[Event]],
        parallel: int,
        *,
        max_waiting: int = DEFAULT_MAX_WAITING,
        on_reply: Callable[[Reply], None] | None = None,
    ):
        self._stream = stream
        self._on_reply = on_reply  # sees every reply that ends, also those whose client went away
        self.capacity = parallel + max_waiting
        self._admitted = 0
        self._lock = threading.Lock()
        self._cancels: set[threading.Event] = set()
        self._stopping = False
        self._pool = ThreadPoolExecutor(max_workers=self.capacity, thread_name_prefix="ossrun-reply")

    @property
    def stopping(self) -> bool:
        return self._stopping

    def admit(self) -> threading.Event:
        """A cancel event for one more request, or Busy."""
        with self._lock:
            if self._stopping or self._admitted >= self.capacity:
                raise Busy()
            self._admitted += 1
            cancel = threading.Event()
            self._cancels.add(cancel)
            return cancel

    def release(self, cancel: threading.Event) -> None:
        with self._lock:
            if cancel in self._cancels:
                self._cancels.discard(cancel)
                self._admitted -= 1

    def cancel_all(self) -> None:
        """The server is stopping: every reply in flight ends as interrupted, no new one starts."""
        with self._lock:
            self._stopping = True
            cancels = list(self._cancels)
        for cancel in cancels:
            cancel.set()

    async def events(
        self, cancel: threading.Event, messages: Any, options: ReplyOptions, *, keepalive_seconds: float | None = None
    ) -> AsyncGenerator[Any, None]:
        """The reply's events, produced in a thread; KEEPALIVE after ``keepalive_seconds`` of silence.

        ``cancel`` comes from :meth:`admit`; the admission ends with the thread. Leaving the
        iteration early (the client went away) cancels the reply.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        done = object()

        def produce() -> None:
            try:
                for event in self._stream(messages, options, cancel=cancel):
                    if isinstance(event, Done) and self._on_reply is not None:
                        self._on_reply(event.reply)
                    loop.call_soon_threadsafe(queue.put_nowait, event)
            except BaseException as exc:  # handed to the request, which answers with it
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                self.release(cancel)  # the place in the queue is free once the reply has stopped
                loop.call_soon_threadsafe(queue.put_nowait, done)

        future = loop.run_in_executor(self._pool, produce)
        finished = False
        try:
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), keepalive_seconds)
                except asyncio.TimeoutError:
                    yield KEEPALIVE
                    continue
                if item is done:
                    finished = True
                    return
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                yield item
        finally:
            if not finished:
                cancel.set()  # the thread notices within a decode step, or aborts the prefill
            else:
                await future

    def close(self) -> None:
        self.cancel_all()
        self._pool.shutdown(wait=True)
