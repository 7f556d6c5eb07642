"""Ctrl-C during generation: cancel the answer, not the program; at the prompt: leave.

While a model generates, SIGINT sets a ``threading.Event`` that ``Model.stream``
polls (inside llama.cpp's prefill too), so the answer stops within a second and
the session goes on. A second Ctrl-C before it stops raises KeyboardInterrupt as
usual, so a stuck engine never traps the user. At the prompt, Ctrl-C raises
KeyboardInterrupt out of ``input()`` even when it comes as the prompt appears.
"""

from __future__ import annotations

import os
import select
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

RESEND_SECONDS = 0.1  # how often a Ctrl-C that input() has not seen yet is sent to it again
_STOP = b"\0"  # no signal has number 0: the byte that ends the watcher


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


@contextmanager
def sigint_reaches_input() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt out of ``input()``, whenever it comes.

    With readline, ``input()`` waits for a key in ``select()``, and only a SIGINT that
    interrupts that wait makes it run the Python handler. One that comes after ``input()``
    started but before the wait (the machine busy when the prompt is shown), or that the
    kernel hands to another thread, only sets Python's flag: the prompt then ignores it
    until Enter (python/cpython#112585). Python's C handler also writes the signal's
    number to the wakeup file; a thread reading it sends SIGINT to the main thread again,
    every ``RESEND_SECONDS``, until the handler has run. Nothing changes where SIGINT does
    not raise KeyboardInterrupt (ignored, or a handler of the caller's), nor off the main
    thread or without ``pthread_kill`` (Windows).
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or not hasattr(signal, "pthread_kill")
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    main = threading.get_ident()
    handled = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        if not handled.is_set():  # once: the copies sent after it are not a second Ctrl-C
            handled.set()
            raise KeyboardInterrupt

    def watch(wakeup: int) -> None:
        while not handled.is_set():
            select.select([wakeup], [], [])
            if signal.SIGINT in os.read(wakeup, 512):
                while not handled.wait(RESEND_SECONDS):
                    signal.pthread_kill(main, signal.SIGINT)

    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)  # the C handler must never block on it
    watcher = threading.Thread(target=watch, args=(read_end,), name="ossrun-sigint", daemon=True)
    previous_wakeup = -1
    # Ctrl-C may come at any line from here: the handler raises once, wherever that is (the
    # setup included), and the cleanup below runs all the same, with nothing left to raise.
    try:
        try:
            signal.signal(signal.SIGINT, handler)
            previous_wakeup = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
            watcher.start()
            yield
        finally:
            handled.set()
    finally:
        os.write(write_end, _STOP)
        if watcher.ident is not None:
            watcher.join()
        signal.set_wakeup_fd(previous_wakeup)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a copy still pending runs first: ignored
        os.close(read_end)
        os.close(write_end)
