"""convert(): read a checkpoint, map its tensors, and write one GGUF file llama.cpp loads."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_VERSION, MODEL_ARCH, MODEL_ARCH_NAMES, GGUFWriter, RopeScalingType

from ossrun.errors import ConvertError
from ossrun.units import format_size

from .encode import DEFAULT_CHUNK_BYTES, FILE_TYPES, ChunkPlanner, check_outtype, ggml_nbytes, ggml_type
from .layout import HyperParams, Layout, checkpoint_files, detect_layout, read_hyper_params, read_tensor_entries
from .mapping import OutputTensor, plan_tensors
from .safetensors import TensorEntry, TensorReader
from .tokenizer import PRE_TOKENIZER, Vocab, find_tokenizer_folder, read_vocab
from .writer import Progress, TensorData, data_bytes, part_path, write_gguf

DEFAULT_OUTTYPE = "q8_0"
ARCH = MODEL_ARCH_NAMES[MODEL_ARCH.GPT_OSS]
# Room for the header, metadata and vocabulary on top of the tensor data.
METADATA_ALLOWANCE = 32 << 20


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint folder understood: layout, hyper-parameters, tensors, GGUF plan and tokenizer."""

    src: Path
    layout: Layout
    hyper_params: HyperParams
    entries: dict[str, TensorEntry]
    tensors: list[OutputTensor]
    vocab: Vocab

    @property
    def name(self) -> str:
        """The model's name for ``general.name``: the repository's, not ``original`` or a commit hash."""
        folder = self.src.resolve()
        if self.layout is Layout.ORIGINAL and folder.name == "original":
            folder = folder.parent
        # A Hugging Face cache snapshot: .../models--openai--gpt-oss-20b/snapshots/<commit>/
        if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
            return folder.parent.parent.name.split("--")[-1]
        return folder.name


def open_checkpoint(src: str | os.PathLike[str], tokenizer_dir: str | os.PathLike[str] | None = None) -> Checkpoint:
    """Detect and check everything about ``src`` that can be checked before writing."""
    src = Path(src)
    layout, config = detect_layout(src)
    hp = read_hyper_params(layout, config, src / "config.json")
    entries = read_tensor_entries(checkpoint_files(src))
    tensors = plan_tensors(layout, hp, entries)
    folder = find_tokenizer_folder(src, layout, Path(tokenizer_dir) if tokenizer_dir is not None else None)
    return Checkpoint(src, layout, hp, entries, tensors, read_vocab(folder, hp.vocab_rows))


def _check_output(out: Path, force: bool) -> None:
    if out.is_dir():
        raise ConvertError(f"{out} is a folder: give the path of the .gguf file to write")
    if out.exists() and not force:
        raise ConvertError(f"{out} already exists: pass --force to overwrite it")
    if not out.parent.is_dir():
        raise ConvertError(f"folder {out.parent} does not exist: create it or write elsewhere")


def _check_free_space(out: Path, needed: int) -> None:
    free = shutil.disk_usage(out.parent).free
    part = part_path(out)
    if part.exists():
        free += part.stat().st_size  # a leftover .part is overwritten
    if free < needed:
        raise ConvertError(
            f"{out.parent} has {format_size(free)} free but the GGUF needs {format_size(needed)}: "
            "free some space or write elsewhere"
        )


def add_metadata(writer: GGUFWriter, checkpoint: Checkpoint, outtype: str) -> None:
    hp, vocab = checkpoint.hyper_params, checkpoint.vocab
    writer.add_name(checkpoint.name)
    writer.add_file_type(FILE_TYPES[outtype])
    writer.add_quantization_version(GGML_QUANT_VERSION)
    writer.add_block_count(hp.n_layers)
    writer.add_context_length(hp.context_length)
    writer.add_embedding_length(hp.hidden)
    writer.add_feed_forward_length(hp.expert_ff)
    writer.add_expert_feed_forward_length(hp.expert_ff)
    writer.add_head_count(hp.n_heads)
    writer.add_head_count_kv(hp.n_kv_heads)
    writer.add_key_length(hp.head_dim)
    writer.add_value_length(hp.head_dim)
    writer.add_layer_norm_rms_eps(hp.rms_norm_eps)
    writer.add_sliding_window(hp.sliding_window)
    writer.add_rope_freq_base(hp.rope_theta)
    writer.add_rope_scaling_type(RopeScalingType.YARN)
    writer.add_rope_scaling_factor(hp.rope_factor)
    writer.add_rope_scaling_orig_ctx_len(hp.rope_original_context)
    writer.add_rope_scaling_yarn_beta_fast(hp.rope_beta_fast)
    writer.add_rope_scaling_yarn_beta_slow(hp.rope_beta_slow)
    writer.add_expert_count(hp.n_experts)
    writer.add_expert_used_count(hp.n_experts_used)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(PRE_TOKENIZER)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    for kind, token_id in vocab.special_ids.items():
        getattr(writer, f"add_{kind}_token_id")(token_id)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)


def convert(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    outtype: str = DEFAULT_OUTTYPE,
    tokenizer_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
    progress: Progress | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Path:
    """Convert the gpt-oss checkpoint folder ``src`` (HF or original layout) into the GGUF ``out``.

    ``outtype`` is the type of the attention and embedding matrices: ``q8_0`` (default, the layout
    of the published gpt-oss GGUF), ``bf16``, ``f16`` or ``f32``; experts always keep their MXFP4
    bits, and norms, biases, sinks and the router are F32. ``tokenizer_dir`` overrides where the
    tokenizer files are read from (by default SRC, or its parent for the original layout).
    ``force`` overwrites an existing ``out``. ``progress(done, total)`` is called as bytes are
    written. Raises :class:`ConvertError` for every bad input; ``out`` appears only when complete.
    """
    out = Path(out)
    check_outtype(outtype)
    _check_output(out, force)
    checkpoint = open_checkpoint(src, tokenizer_dir)

    writer = GGUFWriter(path=None, arch=ARCH)
    add_metadata(writer, checkpoint, outtype)
    with TensorReader() as reader:
        planner = ChunkPlanner(checkpoint.entries, reader, outtype, chunk_bytes)
        tensors = []
        for tensor in checkpoint.tensors:
            qtype = ggml_type(tensor, outtype)
            nbytes = ggml_nbytes(tensor.shape, qtype)
            # tensor_dtype float32 tells GGUFWriter the shape is in values, not bytes.
            writer.add_tensor_info(tensor.name, tensor.shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)
            tensors.append(TensorData(nbytes, planner.chunks(tensor)))
        _check_free_space(out, data_bytes(tensors) + METADATA_ALLOWANCE)
        return write_gguf(writer, tensors, out, progress=progress)
