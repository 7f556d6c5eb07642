"""The python tool's folder on the host: private to its user, and removed whatever the code left in it.

The working directory sits in a folder only its user may enter (0700), so nothing the code does
to the working directory itself (a ``chmod 0777``) opens it to anyone else. Removing it walks
the tree with one open folder at a time, never recursion nor whole paths, so it cannot fail on
what the code can make: trees thousands of levels deep, folders it took every permission from,
symbolic links (removed, never followed), sockets and fifos.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

OPEN_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def private_folder(parent: Path | None = None) -> Path:
    """A new folder only this user may enter (in ``parent``, else the temporary folder), holding an empty ``work`` folder."""
    home = Path(tempfile.mkdtemp(prefix="ossrun-python-", dir=parent))  # 0700
    (home / "work").mkdir(mode=0o700)
    return home


def remove_tree(path: Path) -> None:
    """Remove ``path`` and everything under it; a missing path is fine."""
    try:
        parent = os.open(os.path.dirname(os.path.abspath(path)), OPEN_FOLDER)
    except FileNotFoundError:
        return
    try:
        _remove_entry(parent, os.path.basename(os.path.abspath(path)))
    finally:
        os.close(parent)


def _remove_entry(parent: int, name: str) -> None:
    try:
        info = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        os.unlink(name, dir_fd=parent)
        return
    _empty(parent, name)
    os.rmdir(name, dir_fd=parent)


def _open_child(parent: int, name: str) -> int:
    """Open the folder ``name`` in ``parent``, giving its owner back every permission first."""
    info = os.stat(name, dir_fd=parent, follow_symlinks=False)
    if stat.S_IMODE(info.st_mode) & 0o700 != 0o700:
        os.chmod(name, 0o700, dir_fd=parent)  # a folder, just seen: chmod cannot skip symlinks here
    fd = os.open(name, OPEN_FOLDER, dir_fd=parent)
    if (os.fstat(fd).st_dev, os.fstat(fd).st_ino) != (info.st_dev, info.st_ino):
        os.close(fd)
        raise OSError(f"{name} changed while it was being removed")
    return fd


def _identity(fd: int) -> tuple[int, int]:
    info = os.fstat(fd)
    return info.st_dev, info.st_ino


def _empty(parent: int, name: str) -> None:
    """Empty the folder ``name`` in ``parent``: depth first, one open folder at a time.

    Each level remembers its name, its identity and the names of its folders still to empty;
    climbing back goes through "..", checked against the identity of the level above."""
    fd = _open_child(parent, name)
    stack: list[tuple[str, tuple[int, int], list[str]]] = [(name, _identity(fd), _clear_files(fd))]
    try:
        while True:
            folders = stack[-1][2]
            if folders:
                child = folders.pop()
                try:
                    child_fd = _open_child(fd, child)
                except FileNotFoundError:
                    continue
                os.close(fd)
                fd = child_fd
                stack.append((child, _identity(fd), _clear_files(fd)))
                continue
            if len(stack) == 1:
                return
            done, _, _ = stack.pop()
            up = os.open("..", OPEN_FOLDER, dir_fd=fd)
            os.close(fd)
            fd = up
            if _identity(fd) != stack[-1][1]:
                raise OSError(f"a folder moved while {done} was being removed")
            os.rmdir(done, dir_fd=fd)
    finally:
        os.close(fd)


def _clear_files(fd: int) -> list[str]:
    """Unlink everything in the open folder ``fd`` that is not a folder; return the folders' names."""
    folders = []
    with os.scandir(fd) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                folders.append(entry.name)
            else:
                try:
                    os.unlink(entry.name, dir_fd=fd)
                except FileNotFoundError:
                    pass
    return folders
