"""Ctrl-C at the chat prompt (``TerminalReader``: ``input()`` with readline) on a pseudo-terminal.

A SIGINT that comes after ``input()`` started but before readline waits for a key, or that
the kernel hands to another thread, never interrupts that wait: before ``sigint_reaches_input``
the prompt ignored it until Enter. The child below puts itself in that state on purpose: a
second thread takes the SIGINT while the main thread waits for a key.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

CHILD = r"""
import os, signal, sys, threading, time
from pathlib import Path
from ossrun.terminal.repl import TerminalReader

reading = threading.Event()


def main_waits_for_a_key() -> bool:
    task = Path(f"/proc/self/task/{threading.main_thread().native_id}")
    wchan = (task / "wchan").read_text()  # where it sleeps ("0" while it runs)
    return "poll" in wchan or "select" in wchan  # in readline's select(), the only one it makes


def interrupt_beside_the_wait() -> None:
    reading.wait()
    while not main_waits_for_a_key():
        time.sleep(0.01)
    signal.pthread_kill(threading.get_ident(), signal.SIGINT)  # this thread runs the C handler
    print("sent", flush=True)


threading.Thread(target=interrupt_beside_the_wait, daemon=True).start()
reader = TerminalReader(Path(sys.argv[1]))
reading.set()
try:
    line = reader.read(">>> ")
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
else:
    print(f"read {line!r}", flush=True)
print("handler restored:", signal.getsignal(signal.SIGINT) is signal.default_int_handler, flush=True)
print("wakeup fd restored:", signal.set_wakeup_fd(-1) == -1, flush=True)
"""


ANY_MOMENT = r"""
import random, signal, sys, threading, time
from pathlib import Path
from ossrun.terminal.repl import TerminalReader

go, sent = threading.Event(), threading.Event()


def interrupt_soon() -> None:
    while True:
        go.wait()
        go.clear()
        time.sleep(random.random() * 0.004)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        sent.set()


threading.Thread(target=interrupt_soon, daemon=True).start()
reader = TerminalReader(Path(sys.argv[1]))
interrupted = clean = 0
for _ in range(int(sys.argv[2])):
    try:
        go.set()
        reader.read(">>> ")
    except KeyboardInterrupt:
        interrupted += 1
    sent.wait()
    sent.clear()
    clean += signal.getsignal(signal.SIGINT) is signal.default_int_handler and signal.set_wakeup_fd(-1) == -1
print(f"interrupted {interrupted}, clean {clean}", flush=True)
"""


def run_on_a_terminal(code: str, *args: str, keys: dict[str, str] | None = None, timeout: float = 30) -> str:
    """Run ``code`` with a pseudo-terminal as stdin and stdout; send ``keys[text]`` once ``text``
    shows; the output (the child's exit is awaited)."""
    main_fd, child_fd = pty.openpty()
    process = subprocess.Popen([sys.executable, "-c", code, *args], stdin=child_fd, stdout=child_fd, stderr=child_fd)
    os.close(child_fd)
    keys = dict(keys or {})
    shown, deadline = "", time.monotonic() + timeout
    try:
        while process.poll() is None or select.select([main_fd], [], [], 0)[0]:
            assert time.monotonic() < deadline, f"no exit within {timeout} s; output so far:\n{shown}"
            if not select.select([main_fd], [], [], 0.1)[0]:
                continue
            try:
                data = os.read(main_fd, 4096)
            except OSError:  # the child closed the terminal
                break
            shown += data.decode(errors="replace").replace("\r", "")
            for text in [t for t in keys if t in shown]:
                os.write(main_fd, keys.pop(text).encode())
    finally:
        if process.poll() is None:
            process.kill()
        os.close(main_fd)
    assert process.wait(5) == 0, shown
    return shown


def test_ctrl_c_that_the_prompts_wait_does_not_see_still_leaves_it(tmp_path):
    shown = run_on_a_terminal(CHILD, str(tmp_path / "history"))
    assert ">>> " in shown and "sent\n" in shown
    assert "KeyboardInterrupt\n" in shown  # not stuck until Enter
    assert "handler restored: True\nwakeup fd restored: True\n" in shown


def test_the_prompt_still_reads_a_line_and_its_signals_are_restored(tmp_path):
    code = CHILD.replace("threading.Thread(target=interrupt_beside_the_wait, daemon=True).start()", "")
    shown = run_on_a_terminal(code, str(tmp_path / "history"), keys={">>> ": "hello\r"})
    assert "read 'hello'\n" in shown
    assert "handler restored: True\nwakeup fd restored: True\n" in shown


def test_ctrl_c_at_any_moment_around_the_prompt_leaves_it_and_restores_the_signals(tmp_path):
    # Before, during and after the set-up of the prompt's wait: each Ctrl-C is one KeyboardInterrupt.
    shown = run_on_a_terminal(ANY_MOMENT, str(tmp_path / "history"), "40", timeout=60)
    assert "interrupted 40, clean 40\n" in shown
