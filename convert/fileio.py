"""Positional file reads and writes for worker threads, and page-cache advice.

``os.preadv`` / ``os.pwrite`` take an offset, so threads share one descriptor without seeking,
and they release the GIL. Where the OS lacks them (Windows), a lock around seek + read/write
stands in. ``posix_fadvise`` only exists on some systems; elsewhere the advice is skipped.
"""

from __future__ import annotations

import os
import threading

# Windows opens files in text mode unless told otherwise.
BINARY = getattr(os, "O_BINARY", 0)

_seek_lock = threading.Lock()


def read_into(fd: int, view: memoryview, offset: int) -> int:
    """Read up to ``len(view)`` bytes at ``offset`` into ``view``; the count read (0 at the end)."""
    if hasattr(os, "preadv"):
        return os.preadv(fd, [view], offset)
    if hasattr(os, "pread"):
        data = os.pread(fd, len(view), offset)
    else:
        with _seek_lock:
            os.lseek(fd, offset, os.SEEK_SET)
            data = os.read(fd, len(view))
    view[: len(data)] = data
    return len(data)


def write_from(fd: int, view: memoryview, offset: int) -> int:
    """Write ``view`` (or its start) at ``offset``; the count written."""
    if hasattr(os, "pwrite"):
        return os.pwrite(fd, view, offset)
    with _seek_lock:
        os.lseek(fd, offset, os.SEEK_SET)
        return os.write(fd, view)


def advise(fd: int, offset: int, length: int, advice: str) -> None:
    """``posix_fadvise(fd, offset, length, os.<advice>)`` where the system has it."""
    if length > 0 and hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, offset, length, getattr(os, advice))
