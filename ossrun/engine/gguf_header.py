"""A GGUF file's header, read fast and checked before llama.cpp sees the file.

``gguf.GGUFReader`` parses every array of the header into numpy objects, which
takes ~25 s for gpt-oss's 201k-token vocabulary. Checking a model file needs only
a few scalars and the tensor table, so this walks the header with ``struct`` over
a memory map and skips the big arrays (strings by their lengths, numbers by size).
Type codes and sizes come from the ``gguf`` package.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from ossrun.errors import ModelError
from ossrun.units import format_size

ARCHITECTURE = "gpt-oss"

_VT = gguf.GGUFValueType
_SCALAR_FORMATS = {vt: "<" + np.dtype(t).char for vt, t in gguf.GGUFReader.gguf_scalar_to_np.items()}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order: fastest-varying dimension first
    type: gguf.GGMLQuantizationType
    offset: int  # from the start of the tensor data

    @property
    def n_bytes(self) -> int:
        block_size, type_size = gguf.GGML_QUANT_SIZES[self.type]
        return int(np.prod(self.shape, dtype=np.int64)) // block_size * type_size


@dataclass(frozen=True)
class GgufHeader:
    path: Path
    file_size: int
    mtime_ns: int
    metadata: Mapping[str, Any]  # scalars and strings; arrays as their length
    tensors: tuple[TensorInfo, ...]
    data_offset: int  # where tensor data begins

    @property
    def identity(self) -> dict[str, Any]:
        """What names this exact file for caches derived from it: a changed file is a new one."""
        return {"path": str(self.path.resolve()), "size": self.file_size, "mtime_ns": self.mtime_ns}

    @property
    def architecture(self) -> str:
        return str(self.metadata.get(gguf.Keys.General.ARCHITECTURE, ""))

    def arch_value(self, key_template: str) -> Any:
        """An architecture-scoped value, ``key_template`` like ``gguf.Keys.LLM.BLOCK_COUNT``."""
        return self.metadata.get(key_template.format(arch=self.architecture))

    @property
    def required_size(self) -> int:
        """The file size the tensor table asks for."""
        ends = [self.data_offset + t.offset + t.n_bytes for t in self.tensors]
        return max(ends, default=self.data_offset)

    @property
    def vocab_size(self) -> int:
        """Tokens in the vocabulary (arrays are kept as their length)."""
        return int(self.metadata.get(gguf.Keys.Tokenizer.LIST) or 0)

    @property
    def context_length(self) -> int:
        return int(self.arch_value(gguf.Keys.LLM.CONTEXT_LENGTH) or 0)


class _Truncated(Exception):
    pass


class _Cursor:
    """Reads little-endian GGUF values from a buffer, advancing an offset."""

    def __init__(self, buffer: Any):
        self.buffer = buffer
        self.offset = 0

    def unpack(self, fmt: str) -> Any:
        try:
            (value,) = struct.unpack_from(fmt, self.buffer, self.offset)
        except struct.error:
            raise _Truncated from None
        self.offset += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = self.unpack("<Q")
        end = self.offset + length
        if end > len(self.buffer):
            raise _Truncated
        text = bytes(self.buffer[self.offset : end]).decode("utf-8", errors="replace")
        self.offset = end
        return text

    def skip_strings(self, count: int) -> None:
        buffer, offset, unpack = self.buffer, self.offset, struct.unpack_from
        try:
            for _ in range(count):
                offset += 8 + unpack("<Q", buffer, offset)[0]
        except struct.error:
            raise _Truncated from None
        if offset > len(buffer):
            raise _Truncated
        self.offset = offset

    def value(self, value_type: int) -> Any:
        if value_type == _VT.STRING:
            return self.string()
        if value_type == _VT.ARRAY:
            item_type, count = self.unpack("<I"), self.unpack("<Q")
            if item_type == _VT.STRING:
                self.skip_strings(count)
            elif item_type in _SCALAR_FORMATS:
                self.offset += count * struct.calcsize(_SCALAR_FORMATS[_VT(item_type)])
            else:  # arrays of arrays: walk them
                for _ in range(count):
                    self.value(item_type)
            return count
        try:
            return self.unpack(_SCALAR_FORMATS[_VT(value_type)])
        except (ValueError, KeyError):
            raise ValueError(f"unknown GGUF value type {value_type}") from None


def read_header(path: Path) -> GgufHeader:
    """Parse ``path``'s header; ModelError if the file is missing, not a GGUF or cut short."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelError(f"{path} is not a file: give the path of a .gguf model file")
    try:
        with open(path, "rb") as file:
            stat = os.fstat(file.fileno())
            size = stat.st_size
            if size < 4:
                raise ModelError(f"{path} is not a GGUF model file (it is {size} bytes long)")
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
                return _parse(path, stat, buffer)
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _parse(path: Path, stat: os.stat_result, buffer: Any) -> GgufHeader:
    size = stat.st_size
    cursor = _Cursor(buffer)
    if cursor.unpack("<I") != gguf.GGUF_MAGIC:
        raise ModelError(f"{path} is not a GGUF model file: convert a checkpoint with `ossrun convert` first")
    truncated = ModelError(
        f"{path} is truncated ({format_size(size)}): the download or conversion did not finish; fetch or convert it again"
    )
    try:
        version = cursor.unpack("<I")
        if version < 2:
            raise ModelError(f"{path} is GGUF version {version}, too old for llama.cpp: convert the checkpoint again")
        n_tensors, n_kv = cursor.unpack("<Q"), cursor.unpack("<Q")
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cursor.string()
            metadata[key] = cursor.value(cursor.unpack("<I"))
        tensors = []
        for _ in range(n_tensors):
            name = cursor.string()
            n_dims = cursor.unpack("<I")
            shape = tuple(cursor.unpack("<Q") for _ in range(n_dims))
            type_code, offset = cursor.unpack("<I"), cursor.unpack("<Q")
            tensors.append(TensorInfo(name, shape, gguf.GGMLQuantizationType(type_code), offset))
    except _Truncated:
        raise truncated from None
    except ValueError as exc:  # an unknown type code: damaged, or written by something newer
        raise ModelError(f"{path} has a damaged or unsupported GGUF header ({exc}): convert the checkpoint again") from None
    alignment = int(metadata.get(gguf.Keys.General.ALIGNMENT, gguf.GGUF_DEFAULT_ALIGNMENT))
    data_offset = -(-cursor.offset // alignment) * alignment
    header = GgufHeader(path, size, stat.st_mtime_ns, metadata, tuple(tensors), data_offset)
    if header.required_size > size:
        raise truncated
    return header


def check_gpt_oss(path: Path) -> GgufHeader:
    """The header of a GGUF that holds a gpt-oss model, or one ModelError line saying why not."""
    header = read_header(path)
    if header.architecture != ARCHITECTURE:
        found = header.architecture or "no architecture"
        raise ModelError(f"{path} is a {found} model, not gpt-oss: ossrun runs gpt-oss models only")
    if not header.tensors:
        raise ModelError(f"{path} holds no tensors (a vocabulary-only GGUF?): use a full gpt-oss model file")
    return header
