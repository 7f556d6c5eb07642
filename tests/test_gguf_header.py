"""The GGUF checks that run before llama.cpp sees a file: each bad file gets one clear line."""

from __future__ import annotations

import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest

from ossrun.engine.gguf_header import check_gpt_oss, read_header
from ossrun.errors import ModelError


def write_gguf(path: Path, arch: str = "gpt-oss", *, layers: int = 24, kv_heads: int = 8, head_dim: int = 64) -> Path:
    """A small GGUF with gpt-oss's attention hyper-parameters and two tensors (one quantized)."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(layers)
    writer.add_context_length(131072)
    writer.add_head_count(64)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_token_list(["a", "b", "ab"])
    writer.add_tensor("output_norm.weight", np.ones(64, dtype=np.float32))
    q8 = gguf.quants.quantize(np.ones((4, 64), dtype=np.float32), gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("output.weight", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_header_values_and_kv_cache_size(tmp_path):
    header = check_gpt_oss(write_gguf(tmp_path / "m.gguf"))
    assert header.architecture == "gpt-oss"
    assert header.context_length == 131072
    assert header.metadata["tokenizer.ggml.tokens"] == 3  # arrays are skipped, their length kept
    assert [t.name for t in header.tensors] == ["output_norm.weight", "output.weight"]
    assert header.tensors[1].n_bytes == 4 * 2 * 34  # 4 rows of two Q8_0 blocks of 34 bytes
    assert 0 <= header.file_size - header.required_size < 32  # the writer pads the last tensor
    # (the KV cache those attention shapes take: tests/test_memory.py)


def test_header_agrees_with_gguf_reader(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", layers=3)
    header = read_header(path)
    reader = gguf.GGUFReader(path)
    assert header.data_offset == reader.data_offset
    assert [(t.name, t.offset) for t in header.tensors] == [(t.name, t.data_offset - reader.data_offset) for t in reader.tensors]
    assert [t.n_bytes for t in header.tensors] == [int(t.n_bytes) for t in reader.tensors]
    assert header.metadata["gpt-oss.block_count"] == 3


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match=r"^model file not found: .*nothing\.gguf$"):
        check_gpt_oss(tmp_path / "nothing.gguf")


def test_directory_is_not_a_model(tmp_path):
    with pytest.raises(ModelError, match="is not a file"):
        check_gpt_oss(tmp_path)


@pytest.mark.parametrize("content", [b"", b"GG", b"hello, this is text and not a model\n" * 10])
def test_not_a_gguf(tmp_path, content):
    path = tmp_path / "notes.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelError, match="is not a GGUF model file"):
        check_gpt_oss(path)


def test_other_architecture_is_refused(tmp_path):
    with pytest.raises(ModelError, match=r"is a llama model, not gpt-oss: ossrun runs gpt-oss models only$"):
        check_gpt_oss(write_gguf(tmp_path / "llama.gguf", "llama"))


@pytest.mark.parametrize("keep", [0.9, 0.5, 0.05])
def test_truncated_file(tmp_path, keep):
    """Cut in the tensor data or in the header itself: both say the file is truncated."""
    whole = write_gguf(tmp_path / "whole.gguf")
    data = whole.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ModelError, match=r"is truncated \(.*\): the download or conversion did not finish"):
        check_gpt_oss(cut)


def test_one_byte_short_of_the_last_tensor_is_truncated(tmp_path):
    whole = write_gguf(tmp_path / "whole.gguf")
    cut = tmp_path / "cut.gguf"
    shutil.copy(whole, cut)
    with open(cut, "r+b") as file:
        file.truncate(read_header(whole).required_size)
    check_gpt_oss(cut)  # the last tensor's padding is not needed
    with open(cut, "r+b") as file:
        file.truncate(read_header(whole).required_size - 1)
    with pytest.raises(ModelError, match="is truncated"):
        check_gpt_oss(cut)
