"""Write a GGUF file safely: into ``OUT.part``, chunk by chunk, then fsync and rename.

``gguf.GGUFWriter`` lays out the header, the metadata and the tensor table; the tensor data is
streamed after it here, so no tensor has to be whole in memory. Chunks are computed by a small
thread pool (bounded, so memory stays flat) and written by the calling thread in order.
"""

from __future__ import annotations

import errno
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from gguf import GGUF_DEFAULT_ALIGNMENT, GGUFWriter

from ossrun.errors import ConvertError

# Both cores compute while this thread writes; a few chunks ahead keeps the disk busy.
DEFAULT_WORKERS = max(1, min(4, os.cpu_count() or 1))
DEFAULT_AHEAD = 4  # chunks queued per worker (their input is read ahead meanwhile)

Progress = Callable[[int, int], None]  # (bytes written, bytes in all)


def part_path(out: Path) -> Path:
    return out.with_name(out.name + ".part")


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    raise AssertionError("unreachable")


def _disk_error(exc: OSError, path: Path, total: int) -> ConvertError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ConvertError(f"the disk filled up while writing {path} ({human_bytes(total)} needed): free some space and try again")
    if exc.errno == errno.EFBIG:
        return ConvertError(f"{path} grew past the largest file this filesystem or limit allows ({human_bytes(total)} needed): write elsewhere")
    return ConvertError(f"cannot write {path}: {exc.strerror or exc}")


@dataclass(frozen=True)
class Chunk:
    """A piece of a tensor's bytes: ``compute()`` makes them (on a worker thread); ``prefetch()``
    asks the kernel to start reading its input as soon as the chunk is queued."""

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
        with open(part, "ab") as f:
            f.write(bytes(_pad(f.tell())))
            _write_data(f, tensors, progress, workers, total)
            f.flush()
            os.fsync(f.fileno())
        os.replace(part, out)
        _fsync_folder(out.parent)
    except OSError as exc:
        _remove(part)
        raise _disk_error(exc, part, total) from exc
    except BaseException:
        _remove(part)
        raise
    return out


def _write_data(f, tensors: list[TensorData], progress: Progress | None, workers: int, total: int) -> None:
    done = 0
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ossrun-convert")
    queue: deque[tuple[Future, int]] = deque()  # (chunk, padding to write after it)
    try:
        for chunk, pad in _submit_all(pool, tensors, queue, workers * DEFAULT_AHEAD):
            data = chunk.result()
            f.write(memoryview(np.ascontiguousarray(data)).cast("B"))
            if pad:
                f.write(bytes(pad))
            done += data.nbytes + pad
            if progress is not None:
                progress(done, total)
    finally:
        for future, _ in queue:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
    if done != total:
        raise RuntimeError(f"wrote {done} bytes of tensor data, planned {total}")


def _chunks(tensors: list[TensorData]) -> Iterator[tuple[Chunk, int]]:
    """Every chunk in file order, with the padding that follows it (after a tensor's last chunk)."""
    for tensor in tensors:
        chunks = iter(tensor.chunks)
        chunk = next(chunks, None)
        while chunk is not None:
            following = next(chunks, None)
            yield chunk, _pad(tensor.nbytes) if following is None else 0
            chunk = following


def _submit_all(pool, tensors, queue, ahead) -> Iterator[tuple[Future, int]]:
    """Submit chunks ``ahead`` in front of the writer; yield them back in file order."""
    for chunk, pad in _chunks(tensors):
        chunk.prefetch()
        queue.append((pool.submit(chunk.compute), pad))
        while len(queue) > ahead:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


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
