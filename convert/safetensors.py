"""A streaming safetensors reader: headers are parsed and checked, tensors are read piece by piece.

A safetensors file is an 8-byte little-endian header length, a JSON header mapping each tensor name
to its dtype, shape and byte range, then the raw data. Nothing here maps or reads a whole file:
callers ask for byte ranges of one tensor, read at their offset (``fileio``: the GIL is released,
so reader threads overlap) into buffers they own, so memory stays flat whatever the model size.
"""

from __future__ import annotations

import json
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ossrun.errors import ConvertError

from .fileio import BINARY, advise, read_into

# Headers of real checkpoints are a few hundred KB; anything far larger is a corrupt length field.
MAX_HEADER_BYTES = 100 * 1024 * 1024

# Raw storage of each safetensors dtype. BF16 stays as its 16 raw bits until someone widens it.
DTYPES: dict[str, np.dtype] = {
    "BF16": np.dtype("<u2"),
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "U8": np.dtype("u1"),
    "I8": np.dtype("i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "BOOL": np.dtype("?"),
    "F8_E4M3": np.dtype("u1"),
    "F8_E5M2": np.dtype("u1"),
    "F8_E8M0": np.dtype("u1"),
}


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor's bytes are: file, absolute offset, dtype and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    path: Path
    offset: int
    nbytes: int

    @property
    def itemsize(self) -> int:
        return DTYPES[self.dtype].itemsize

    @property
    def row_bytes(self) -> int:
        """Bytes of one index along the first axis."""
        return math.prod(self.shape[1:]) * self.itemsize


def _corrupt(path: Path, what: str) -> ConvertError:
    return ConvertError(f"{path}: {what}: the file is truncated or corrupt; download it again")


def _unreadable(path: Path, exc: OSError) -> ConvertError:
    return ConvertError(f"cannot read {path}: {exc.strerror or exc}")


def read_header(path: Path) -> dict[str, TensorEntry]:
    """Parse and check the header of one safetensors file."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            if len(prefix) < 8:
                raise _corrupt(path, "shorter than a safetensors header")
            header_len = int.from_bytes(prefix, "little")
            if header_len > min(size - 8, MAX_HEADER_BYTES):
                raise _corrupt(path, f"the header claims {header_len} bytes")
            raw = f.read(header_len)
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _corrupt(path, "the header is not valid JSON") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "the header is not a JSON object")
    data_start = 8 + header_len
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        entries[name] = _entry(path, name, info, data_start, size)
    return entries


def _entry(path: Path, name: str, info: object, data_start: int, size: int) -> TensorEntry:
    try:
        dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]  # type: ignore[index]
        shape = tuple(int(n) for n in shape)
        begin, end = int(begin), int(end)
    except (TypeError, KeyError, ValueError):
        raise _corrupt(path, f"tensor {name} has a malformed header entry") from None
    if dtype not in DTYPES:
        raise ConvertError(f"{path}: tensor {name} has dtype {dtype}, which ossrun cannot read")
    if any(n < 0 for n in shape) or not 0 <= begin <= end:
        raise _corrupt(path, f"tensor {name} has a negative shape or byte range")
    if end - begin != math.prod(shape) * DTYPES[dtype].itemsize:
        raise _corrupt(path, f"tensor {name} has {end - begin} bytes for shape {list(shape)} of {dtype}")
    if data_start + end > size:
        raise _corrupt(path, f"tensor {name} ends {data_start + end - size} bytes past the end of the file")
    return TensorEntry(name, dtype, shape, path, data_start + begin, end - begin)


class TensorReader:
    """Reads byte ranges of tensors from a set of safetensors files, one descriptor per file.

    A failed read is a ConvertError naming the checkpoint file: the writer, which sees every
    OSError of a conversion, would otherwise report it as a failure to write the GGUF.
    """

    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}
        self._lock = threading.Lock()  # reader threads share the descriptors

    def _fd(self, path: Path) -> int:
        with self._lock:
            fd = self._fds.get(path)
            if fd is None:
                try:
                    fd = self._fds[path] = os.open(path, os.O_RDONLY | BINARY)
                except OSError as exc:
                    raise _unreadable(path, exc) from exc
            return fd

    def read(self, entry: TensorEntry, start: int = 0, count: int | None = None) -> np.ndarray:
        """Bytes ``[start, start + count)`` of ``entry`` as a fresh uint8 array."""
        count = entry.nbytes - start if count is None else count
        out = np.empty(count, dtype=np.uint8)
        view, done = memoryview(out), 0  # type: ignore[arg-type]  # numpy's stubs give ndarray __buffer__ from 3.12 only
        fd = self._fd(entry.path)
        while done < count:
            try:
                got = read_into(fd, view[done:], entry.offset + start + done)
            except OSError as exc:
                raise _unreadable(entry.path, exc) from exc
            if got == 0:
                raise _corrupt(entry.path, f"tensor {entry.name} ends early")
            done += got
        advise(fd, entry.offset + start, count, "POSIX_FADV_DONTNEED")  # each byte is read once
        return out

    def read_rows(self, entry: TensorEntry, first: int, stop: int) -> np.ndarray:
        """Indices ``[first, stop)`` along the first axis, in the tensor's raw storage dtype."""
        raw = self.read(entry, first * entry.row_bytes, (stop - first) * entry.row_bytes)
        return raw.view(DTYPES[entry.dtype]).reshape((stop - first, *entry.shape[1:]))

    def read_all(self, entry: TensorEntry) -> np.ndarray:
        return self.read(entry).view(DTYPES[entry.dtype]).reshape(entry.shape)

    def prefetch_rows(self, entry: TensorEntry, first: int, stop: int) -> None:
        """Ask the kernel to start reading rows ``[first, stop)`` now (they are needed soon)."""
        start = entry.offset + first * entry.row_bytes
        advise(self._fd(entry.path), start, (stop - first) * entry.row_bytes, "POSIX_FADV_WILLNEED")

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
