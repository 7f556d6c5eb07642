"""Ctrl-C during generation: cancel the answer, not the program.

While a model generates, SIGINT sets a ``threading.Event`` that ``Model.stream``
polls (inside llama.cpp's prefill too), so the answer stops within a second and
the session goes on. A second Ctrl-C before it stops raises KeyboardInterrupt as
usual, so a stuck engine never traps the user.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def cancel_on_sigint() -> Iterator[threading.Event]:
    """Yield an event that Ctrl-C sets; the previous SIGINT handler is restored on exit."""
    cancel = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield cancel  # signal handlers can only be installed from the main thread
        return

    def handler(signum, frame):
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield cancel
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def sigint_raises() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt at once, e.g. while asking the user something mid-answer
    (inside :func:`cancel_on_sigint` it would only set the event and the prompt would wait on)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
