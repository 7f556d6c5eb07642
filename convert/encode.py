"""Turn one planned GGUF tensor into its bytes, as a sequence of independent chunks.

Each chunk reads its own slice of the checkpoint and encodes it, so chunks can be computed on
worker threads (numpy and ``os.preadv`` release the GIL) while the writer puts finished ones on
disk in order. A chunk never holds more than about ``chunk_bytes`` of input.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Iterator

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType, quants

from ossrun.errors import ConvertError

from . import mxfp4
from .mapping import Encoding, OutputTensor
from .safetensors import TensorEntry, TensorReader
from .writer import Chunk

DEFAULT_CHUNK_BYTES = 16 << 20

# --outtype: the type of the big matrices, and the general.file_type llama.cpp's tools write for it.
OUTTYPES: dict[str, GGMLQuantizationType] = {
    "q8_0": GGMLQuantizationType.Q8_0,
    "bf16": GGMLQuantizationType.BF16,
    "f16": GGMLQuantizationType.F16,
    "f32": GGMLQuantizationType.F32,
}
FILE_TYPES: dict[str, LlamaFileType] = {
    "q8_0": LlamaFileType.MOSTLY_MXFP4_MOE,
    "bf16": LlamaFileType.MOSTLY_BF16,
    "f16": LlamaFileType.MOSTLY_F16,
    "f32": LlamaFileType.ALL_F32,
}


def check_outtype(outtype: str) -> str:
    if outtype not in OUTTYPES:
        raise ConvertError(f"unknown outtype {outtype!r}: choose one of {', '.join(OUTTYPES)}")
    return outtype


def ggml_type(tensor: OutputTensor, outtype: str) -> GGMLQuantizationType:
    if tensor.encoding is Encoding.MXFP4:
        return GGMLQuantizationType.MXFP4
    if tensor.encoding is Encoding.F32:
        return GGMLQuantizationType.F32
    return OUTTYPES[outtype]


def ggml_nbytes(shape: tuple[int, ...], qtype: GGMLQuantizationType) -> int:
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    return math.prod(shape[:-1]) * (shape[-1] // block_size) * type_size


def widen(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Float32 values of raw checkpoint storage (BF16 is the top half of a float32)."""
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32, copy=False)


def encode_matrix(raw: np.ndarray, dtype: str, qtype: GGMLQuantizationType) -> np.ndarray:
    if qtype is GGMLQuantizationType.BF16 and dtype == "BF16":
        return raw  # already the exact bits
    if qtype is GGMLQuantizationType.F16 and dtype == "F16":
        return raw
    values = widen(raw, dtype)
    if qtype is GGMLQuantizationType.F32:
        return values
    if qtype is GGMLQuantizationType.F16:
        return values.astype(np.float16)
    return quants.quantize(values, qtype)


def _select(array: np.ndarray, tensor: OutputTensor) -> np.ndarray:
    if tensor.rows is None:
        return array
    rows = tensor.rows
    index = [slice(None)] * array.ndim
    index[rows.axis] = slice(rows.start, rows.stop, rows.step)
    return array[tuple(index)]


def tensor_chunks(
    tensor: OutputTensor,
    entries: dict[str, TensorEntry],
    reader: TensorReader,
    outtype: str,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Iterator[Chunk]:
    """Chunks whose results, concatenated, are the GGUF bytes of ``tensor``."""
    source = entries[tensor.source]
    if tensor.encoding is Encoding.F32:
        # Vectors, biases and the router are small: one chunk each.
        yield Chunk(lambda: np.ascontiguousarray(_select(widen(reader.read_all(source), source.dtype), tensor)))
        return
    step = max(1, chunk_bytes // source.row_bytes)  # rows (experts for MXFP4) per chunk
    if tensor.encoding is Encoding.MXFP4:
        scales = entries[tensor.scales]  # type: ignore[index]
        for first in range(0, source.shape[0], step):
            stop = min(first + step, source.shape[0])
            yield Chunk(
                lambda first=first, stop=stop: mxfp4.repack(
                    _select(reader.read_rows(source, first, stop), tensor),
                    _select(reader.read_rows(scales, first, stop), tensor),
                ),
                partial(reader.prefetch_rows, source, first, stop),
            )
        return
    qtype = OUTTYPES[outtype]
    start, stop = (tensor.rows.start, tensor.rows.stop) if tensor.rows else (0, source.shape[0])
    for first in range(start, stop, step):
        last = min(first + step, stop)
        yield Chunk(
            lambda first=first, last=last: encode_matrix(reader.read_rows(source, first, last), source.dtype, qtype),
            partial(reader.prefetch_rows, source, first, last),
        )
