"""Write a GGUF file safely: into ``OUT.part``, chunk by chunk, then fsync and rename.

``gguf.GGUFWriter`` lays out the header, the metadata and the tensor table; the tensor data is
streamed after it here, so no tensor has to be whole in memory. Every chunk's place in the file is
known in advance, so worker threads compute a chunk and write it at its offset (``fileio``):
computing, reading and writing overlap on all cores, and memory holds only the chunks in flight.
The kernel is told to read the input of coming chunks ahead, to start writing finished ones back
at once, and to drop them from the page cache once written, so a 12 GB conversion does not push
everything else out of memory.
"""

from __future__ import annotations

import errno
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGUF_DEFAULT_ALIGNMENT, GGUFWriter

from ossrun.errors import ConvertError
from ossrun.units import format_size

from .fileio import BINARY, advise, write_from

# More threads than cores: each also waits on reads and writes.
DEFAULT_WORKERS = min(8, (os.cpu_count() or 1) + 2)
DEFAULT_AHEAD = 4  # chunks in flight per worker
DEFAULT_READ_AHEAD = 16  # chunks whose input the kernel reads ahead (page cache, not our memory)
DROP_BEHIND = 256 << 20  # written bytes kept in the page cache before asking the kernel to drop them

Progress = Callable[[int, int], None]  # (bytes written, bytes in all)


def part_path(out: Path) -> Path:
    return out.with_name(out.name + ".part")


def _disk_error(exc: OSError, path: Path, total: int) -> ConvertError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ConvertError(
            f"the disk filled up while writing {path} ({format_size(total)} needed): free some space and try again"
        )
    if exc.errno == errno.EFBIG:
        return ConvertError(
            f"{path} grew past the largest file this filesystem or limit allows ({format_size(total)} needed): write elsewhere"
        )
    return ConvertError(f"cannot write {path}: {exc.strerror or exc}")


@dataclass(frozen=True)
class Chunk:
    """``nbytes`` of a tensor: ``compute()`` makes them on a worker thread; ``prefetch()`` asks the
    kernel to start reading their input as soon as the chunk is planned."""

    nbytes: int
    compute: Callable[[], np.ndarray]
    prefetch: Callable[[], None] = lambda: None


@dataclass(frozen=True)
class TensorData:
    """One tensor's place in the file: its size and the chunks that make its bytes, in order."""

    nbytes: int
    chunks: Iterable[Chunk]


def _pad(n: int) -> int:
    return -n % GGUF_DEFAULT_ALIGNMENT


def data_bytes(tensors: list[TensorData]) -> int:
    return sum(t.nbytes + _pad(t.nbytes) for t in tensors)


def write_gguf(
    writer: GGUFWriter,
    tensors: list[TensorData],
    out: Path,
    *,
    progress: Progress | None = None,
    workers: int = DEFAULT_WORKERS,
) -> Path:
    """Write ``writer``'s metadata and tensor table, then the tensors, to ``out`` atomically.

    ``writer`` must already hold the metadata and one tensor info per entry of ``tensors``, in the
    same order. On any failure the ``.part`` file is removed and nothing is left at ``out``.
    """
    part = part_path(out)
    total = data_bytes(tensors)
    try:
        writer.write_header_to_file(part)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        writer.close()
        fd = os.open(part, os.O_WRONLY | BINARY)
        try:
            start = os.lseek(fd, 0, os.SEEK_END)
            start += _pad(start)
            _write_data(fd, start, tensors, progress, workers, total)
            os.ftruncate(fd, start + total)  # the padding after the last tensor
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(part, out)
        _fsync_folder(out.parent)
    except OSError as exc:
        _remove(part)
        raise _disk_error(exc, part, total) from exc
    except BaseException:
        _remove(part)
        raise
    return out


def _placed_chunks(tensors: list[TensorData], start: int) -> Iterator[tuple[Chunk, int]]:
    """Every chunk in file order with its offset; tensors start on alignment boundaries."""
    offset = start
    for tensor in tensors:
        end = offset + tensor.nbytes
        for chunk in tensor.chunks:
            yield chunk, offset
            offset += chunk.nbytes
        if offset != end:
            raise RuntimeError(f"chunks of {tensor.nbytes} bytes added up to {offset - end + tensor.nbytes}")
        offset += _pad(tensor.nbytes)


def _compute_and_write(fd: int, chunk: Chunk, offset: int) -> int:
    data = chunk.compute()
    if data.nbytes != chunk.nbytes:
        raise RuntimeError(f"a chunk planned as {chunk.nbytes} bytes came out as {data.nbytes}")
    view = memoryview(np.ascontiguousarray(data)).cast("B")  # type: ignore[arg-type]  # numpy stubs: __buffer__ from 3.12
    done = 0
    while done < len(view):
        done += write_from(fd, view[done:], offset + done)
    # Start writing it back now, rather than when the kernel runs short of clean memory.
    advise(fd, offset, chunk.nbytes, "POSIX_FADV_DONTNEED")
    return chunk.nbytes


def _write_data(fd: int, start: int, tensors: list[TensorData], progress: Progress | None, workers: int, total: int) -> None:
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ossrun-convert")
    in_flight: deque[tuple[Future, int]] = deque()  # (chunk written, its offset), in file order
    upcoming: deque[tuple[Chunk, int]] = deque()
    placed = _placed_chunks(tensors, start)
    done = dropped = 0

    def read_ahead() -> None:
        while len(upcoming) < DEFAULT_READ_AHEAD and (item := next(placed, None)) is not None:
            item[0].prefetch()
            upcoming.append(item)

    def finish_oldest() -> None:
        nonlocal done, dropped
        future, offset = in_flight.popleft()
        written = future.result()
        done = offset + written - start
        if progress is not None:
            progress(done, total)
        if done - dropped > 2 * DROP_BEHIND:
            # Long written back by now: drop those pages from the cache.
            advise(fd, start + dropped, done - DROP_BEHIND - dropped, "POSIX_FADV_DONTNEED")
            dropped = done - DROP_BEHIND

    try:
        read_ahead()
        while upcoming:
            chunk, offset = upcoming.popleft()
            read_ahead()
            in_flight.append((pool.submit(_compute_and_write, fd, chunk, offset), offset))
            while len(in_flight) > workers * DEFAULT_AHEAD:
                finish_oldest()
        while in_flight:
            finish_oldest()
    finally:
        for future, _ in in_flight:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
    if progress is not None:
        progress(total, total)


def _remove(path: Path) -> None:
    with suppress(FileNotFoundError):
        path.unlink()


def _fsync_folder(folder: Path) -> None:
    # The rename is durable only once the folder is synced (not possible on every platform).
    with suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
