"""Running a command whose stderr is a terminal (a pty), as a person at a shell sees it."""

from __future__ import annotations

import os
import pty
import subprocess
from collections.abc import Sequence


def stderr_on_a_terminal(command: Sequence[str], *, timeout: float) -> tuple[int, bytes]:
    """Run ``command`` with stderr on a pty 120 columns wide; its exit code and all it drew there."""
    main_fd, terminal_fd = pty.openpty()
    process = subprocess.Popen(
        list(command),
        stdout=subprocess.PIPE,
        stderr=terminal_fd,
        env={**os.environ, "COLUMNS": "120", "TERM": "xterm"},
    )
    os.close(terminal_fd)
    shown = b""
    try:
        while True:
            try:
                data = os.read(main_fd, 4096)
            except OSError:  # the terminal closed when the process ended
                break
            if not data:
                break
            shown += data
        return process.wait(timeout=timeout), shown
    finally:
        os.close(main_fd)
