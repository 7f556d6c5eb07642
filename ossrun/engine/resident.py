"""The weights every token reads, kept resident without a copy.

llama.cpp maps the GGUF, as llama-server does. Its CPU backend copies the MXFP4 experts into
anonymous memory (repacked for its kernels) while loading; the other tensors are used in
place, as pages of the file. Those pages are clean, so when memory runs short the kernel
drops them first, and every token then reads attention, router and output weights from disk
again: decode slows several-fold beside another program's memory.

So ossrun locks (``mlock``) the file ranges of the tensors every token reads in llama.cpp's
own mapping: everything but the experts, whose file pages llama.cpp no longer reads, and the
token embeddings, of which a token reads one row (1.3 GiB of gpt-oss-20b's 1.8 GiB of other
weights). The experts' pages are then dropped from the mapping, so the process's resident
memory is what it uses; they stay in the page cache for the next load, unless the machine has
less memory left than they take (:func:`drop_cached`): the kernel would then have to scan for
them while the first replies decode.

Locking needs room under ``RLIMIT_MEMLOCK`` (``ulimit -l``; or ``CAP_IPC_LOCK``, which root
has). :func:`lockable` says before the load whether there is; where there is not, the engine
reads the weights into anonymous memory instead: as resident, 0.5 GiB more of it (the token
embeddings), and not shared with the page cache.

The KV cache is held as it fills. llama.cpp clears its cache buffer when it creates a context,
which makes the whole cache resident at once: 3 GiB of zeros for gpt-oss-20b at 131,072 tokens.
:func:`release_zero_pages` gives the kernel back the pages of memory mapped by that call that
hold only zeros: they read as zeros again, and are taken back page by page as tokens are written.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import re
import resource
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ossrun.engine.gguf_header import GgufHeader, TensorInfo

# Read by every token: all but the experts (copied by llama.cpp) and the embeddings (a row each).
_COLD = re.compile(r"(_exps\.weight|^token_embd\.weight)$")
_CAP_IPC_LOCK = 14
_PAGE = mmap.PAGESIZE
_MADV_DONTNEED = 4
_ALIGNMENT = 64  # GGUF pads each tensor's data to its alignment (32 by default)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
for _name in ("mlock", "munlock", "madvise"):
    getattr(_libc, _name).argtypes = [ctypes.c_void_p, ctypes.c_size_t] + ([ctypes.c_int] if _name == "madvise" else [])
    getattr(_libc, _name).restype = ctypes.c_int

Range = tuple[int, int]  # [start, end) in bytes of the file
# Smaller new mappings are left alone: thread stacks and small buffers, whose zeros are few.
_RELEASE_AT_LEAST = 64 * 2**20
_RELEASE_CHUNK = 4 * 2**20


def hot_ranges(header: GgufHeader, tensors: Iterable[TensorInfo] | None = None) -> list[Range]:
    """The file ranges of the tensors every token reads, merged, in file order."""
    return _merged(_ranges(header, tensors, hot=True))


def expert_ranges(header: GgufHeader, tensors: Iterable[TensorInfo] | None = None) -> list[Range]:
    """The file ranges of the MXFP4 experts, which llama.cpp copied while loading and never reads again."""
    start = header.data_offset
    return _merged(
        [
            (start + t.offset, start + t.offset + t.n_bytes)
            for t in (header.tensors if tensors is None else tensors)
            if t.name.endswith("_exps.weight")
        ]
    )


def drop_cached(path: Path, ranges: Iterable[Range]) -> None:
    """Ask the kernel to drop these ranges of ``path`` from the page cache (pages mapped anywhere stay)."""
    try:
        with open(path, "rb") as file:
            for start, end in ranges:
                os.posix_fadvise(file.fileno(), start, end - start, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass  # only advice: the kernel drops them itself when it needs the memory


def cold_ranges(header: GgufHeader, tensors: Iterable[TensorInfo] | None = None) -> list[Range]:
    """The file ranges of the experts and the embeddings: what the process need not keep mapped."""
    return _merged(_ranges(header, tensors, hot=False))


def _ranges(header: GgufHeader, tensors: Iterable[TensorInfo] | None, *, hot: bool) -> list[Range]:
    start = header.data_offset
    return [
        (start + t.offset, start + t.offset + t.n_bytes)
        for t in (header.tensors if tensors is None else tensors)
        if (_COLD.search(t.name) is None) == hot
    ]


def _merged(ranges: Sequence[Range]) -> list[Range]:
    merged: list[Range] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1] + _ALIGNMENT:  # only the padding between tensors apart
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def size(ranges: Iterable[Range]) -> int:
    return sum(end - start for start, end in ranges)


def lockable(n_bytes: int) -> bool:
    """Whether this process may lock ``n_bytes`` more: CAP_IPC_LOCK, or room under RLIMIT_MEMLOCK
    (its soft limit is raised to the hard one when that gives the room)."""
    if _has_capability(_CAP_IPC_LOCK):
        return True
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    needed = _locked_bytes() + n_bytes
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return True
    if hard == resource.RLIM_INFINITY or hard >= needed:
        try:
            resource.setrlimit(resource.RLIMIT_MEMLOCK, (hard, hard))
        except (ValueError, OSError):
            return False
        return True
    return False


@dataclass
class Locked:
    """Ranges of a mapping this process locked; :meth:`release` unlocks them (before the unmap)."""

    spans: list[Range] = field(default_factory=list)  # addresses

    @property
    def n_bytes(self) -> int:
        return size(self.spans)

    def release(self) -> None:
        for start, end in self.spans:
            _libc.munlock(start, end - start)
        self.spans.clear()


def lock_mapped(path: Path, hot: Sequence[Range], cold: Sequence[Range] = ()) -> Locked | None:
    """Lock the ``hot`` file ranges of ``path`` where this process maps it, and drop the ``cold``
    ones from the mapping; None (nothing left locked) when the file is not mapped whole or a
    lock fails."""
    mappings = _mappings_of(Path(path))
    locked = Locked()
    for start, end in hot:
        span = _address(mappings, start, end)
        if span is None or _libc.mlock(span[0], span[1] - span[0]) != 0:
            locked.release()
            return None
        locked.spans.append(span)
    for start, end in cold:
        span = _address(mappings, start, end, inner=True)
        if span is not None and span[1] > span[0]:
            _libc.madvise(span[0], span[1] - span[0], _MADV_DONTNEED)  # clean file pages: read again if touched
    return locked


@dataclass(frozen=True)
class _Mapping:
    start: int  # address
    end: int
    offset: int  # of the file, at start


def _mappings_of(path: Path) -> list[_Mapping]:
    """The address ranges where this process maps ``path`` (by device and inode, or by name)."""
    try:
        stat = path.stat()
    except OSError:
        return []
    resolved = str(path.resolve())
    found = []
    for start, end, _perms, offset, device, inode, name in _maps():
        if (inode == stat.st_ino and device == stat.st_dev) or name == resolved:
            found.append(_Mapping(start, end, offset))
    return found


def _maps() -> list[tuple[int, int, str, int, int, int, str]]:
    """This process's mappings from /proc/self/maps: start, end, permissions, file offset, device,
    inode and name ("" for anonymous memory); none if it cannot be read."""
    try:
        text = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    found = []
    for line in text.splitlines():
        fields = line.split(maxsplit=5)
        addresses, perms, offset, device, inode = fields[:5]
        start, end = (int(part, 16) for part in addresses.split("-"))
        major, minor = (int(part, 16) for part in device.split(":"))
        name = fields[5] if len(fields) > 5 else ""
        found.append((start, end, perms, int(offset, 16), os.makedev(major, minor), int(inode), name))
    return found


def _address(mappings: Sequence[_Mapping], start: int, end: int, inner: bool = False) -> Range | None:
    """The addresses of file bytes [start, end) in one mapping, widened to whole pages (or, with
    ``inner``, narrowed to the pages wholly inside); None if no single mapping holds them."""
    if inner:
        start, end = -(-start // _PAGE) * _PAGE, end // _PAGE * _PAGE
    else:
        start, end = start // _PAGE * _PAGE, -(-end // _PAGE) * _PAGE
    for mapping in mappings:
        base = mapping.start - mapping.offset
        if mapping.offset <= start and base + end <= mapping.end:
            return base + start, base + end
    return None


def _has_capability(bit: int) -> bool:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> bit & 1)
    except (OSError, ValueError):
        pass
    return False


def _locked_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmLck:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def anonymous_mappings() -> list[Range]:
    """The address ranges of this process's writable anonymous mappings (no file, no ``[heap]`` or ``[stack]``)."""
    return [(start, end) for start, end, perms, _, _, inode, name in _maps() if not inode and not name and perms.startswith("rw")]


def release_zero_pages(before: Sequence[Range]) -> int:
    """Give back the all-zero pages of the anonymous memory mapped since ``before`` (from
    :func:`anonymous_mappings`), in new ranges of 64 MiB or more; the number of bytes given back.

    Call it right after the allocation, while nothing else in the process writes to memory it has
    just mapped (the engine does so only for a context created beside no other): a page is read,
    found to hold only zeros, and then released, and it reads as zeros afterwards.
    """
    released = 0
    for start, end in _new_ranges(before, anonymous_mappings()):
        if end - start >= _RELEASE_AT_LEAST:
            # a few MiB at a time: each page is released right after it was read
            for chunk in range(start, end, _RELEASE_CHUNK):
                released += _release_zeros(chunk, min(end, chunk + _RELEASE_CHUNK))
    return released


def _release_zeros(start: int, end: int) -> int:
    import numpy as np

    pages = np.ctypeslib.as_array((ctypes.c_uint64 * ((end - start) // 8)).from_address(start))
    zero = ~pages.reshape(-1, _PAGE // 8).any(axis=1)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], zero.view(np.int8), [0]))))
    released = 0
    for first, last in zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True):
        if _libc.madvise(start + first * _PAGE, (last - first) * _PAGE, _MADV_DONTNEED) == 0:
            released += (last - first) * _PAGE
    return released


def _new_ranges(before: Sequence[Range], after: Sequence[Range]) -> list[Range]:
    """The parts of ``after`` that no range of ``before`` covers (a mapping may have grown into a
    neighbour that existed before)."""
    found = []
    for start, end in after:
        pieces = [(start, end)]
        for old_start, old_end in before:
            pieces = [
                piece
                for low, high in pieces
                for piece in ((low, min(high, old_start)), (max(low, old_end), high))
                if piece[0] < piece[1]
            ]
        found.extend(pieces)
    return found
