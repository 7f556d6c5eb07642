"""ossrun.convert: what the GGUF holds, tensor by tensor and key by key."""

from __future__ import annotations

import filecmp
import json
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from helpers import checkpoints, reference_forward
from helpers.terminal import stderr_on_a_terminal
from ossrun.convert import OUTTYPES, convert
from ossrun.errors import ConvertError


def field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


def tensors_of(reader: gguf.GGUFReader) -> dict[str, gguf.ReaderTensor]:
    return {t.name: t for t in reader.tensors}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The tiny model with a 320-row embedding and a byte-level tokenizer, in the HF layout: its
    GGUF reads back in a moment (gguf's reader takes ~10 s for o200k's 200k tokens)."""
    config = checkpoints.TinyConfig(vocab_rows=320)
    folder = tmp_path_factory.mktemp("small") / "gpt-oss-small"
    weights = checkpoints.make_weights(config, seed=2)
    checkpoints.write_hf_checkpoint(folder, weights, config, tokenizer_dir=None)
    checkpoints.write_byte_tokenizer(folder)
    return config, weights, folder


@pytest.fixture(scope="module")
def small_gguf(small, tmp_path_factory):
    return convert(small[2], tmp_path_factory.mktemp("small-gguf") / "small.gguf")


@pytest.fixture(scope="module")
def small_reader(small_gguf):
    return gguf.GGUFReader(small_gguf)


def test_metadata_has_every_key_llama_cpp_reads(small_reader, small):
    config, _, folder = small
    expected = {
        "general.architecture": "gpt-oss",
        "general.name": folder.name,
        "general.file_type": gguf.LlamaFileType.MOSTLY_MXFP4_MOE,
        "general.quantization_version": 2,
        "gpt-oss.block_count": config.n_layers,
        "gpt-oss.context_length": 131072,
        "gpt-oss.embedding_length": config.hidden,
        "gpt-oss.feed_forward_length": config.expert_ff,
        "gpt-oss.expert_feed_forward_length": config.expert_ff,
        "gpt-oss.attention.head_count": config.n_heads,
        "gpt-oss.attention.head_count_kv": config.n_kv_heads,
        "gpt-oss.attention.key_length": 64,
        "gpt-oss.attention.value_length": 64,
        "gpt-oss.attention.sliding_window": 128,
        "gpt-oss.rope.freq_base": 150000.0,
        "gpt-oss.rope.scaling.type": "yarn",
        "gpt-oss.rope.scaling.factor": 32.0,
        "gpt-oss.rope.scaling.original_context_length": 4096,
        "gpt-oss.rope.scaling.yarn_beta_fast": 32.0,
        "gpt-oss.rope.scaling.yarn_beta_slow": 1.0,
        "gpt-oss.expert_count": config.n_experts,
        "gpt-oss.expert_used_count": config.n_experts_used,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-4o",
        "tokenizer.ggml.bos_token_id": 257,
        "tokenizer.ggml.eos_token_id": 258,
        "tokenizer.ggml.padding_token_id": 259,
    }
    for key, value in expected.items():
        assert field(small_reader, key) == value, key
    assert field(small_reader, "gpt-oss.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert "tokenizer.chat_template" not in small_reader.fields  # this checkpoint has none


def test_vocabulary_is_padded_to_the_embedding(small_reader):
    tokens = field(small_reader, "tokenizer.ggml.tokens")
    types = field(small_reader, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == 320
    assert tokens[:2] == ["Ā", "ā"] and tokens[ord("!")] == "!" and tokens[256] == "Ġt" and tokens[257] == "<|startoftext|>"
    assert tokens[260] == "[PAD260]" and tokens[319] == "[PAD319]"
    assert types[0] == gguf.TokenType.NORMAL and types[258] == gguf.TokenType.CONTROL and types[260] == gguf.TokenType.UNUSED
    assert field(small_reader, "tokenizer.ggml.merges") == ["Ġ t"]


def test_tensor_names_types_and_shapes(small_reader, small):
    config = small[0]
    H, E, F, V = config.hidden, config.n_experts, config.expert_ff, config.vocab_rows
    q, kv = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
    expected = {"token_embd.weight": (Q.Q8_0, (V, H)), "output_norm.weight": (Q.F32, (H,)), "output.weight": (Q.Q8_0, (V, H))}
    for b in range(config.n_layers):
        expected.update({
            f"blk.{b}.attn_norm.weight": (Q.F32, (H,)), f"blk.{b}.post_attention_norm.weight": (Q.F32, (H,)),
            f"blk.{b}.attn_q.weight": (Q.Q8_0, (q, H)), f"blk.{b}.attn_q.bias": (Q.F32, (q,)),
            f"blk.{b}.attn_k.weight": (Q.Q8_0, (kv, H)), f"blk.{b}.attn_k.bias": (Q.F32, (kv,)),
            f"blk.{b}.attn_v.weight": (Q.Q8_0, (kv, H)), f"blk.{b}.attn_v.bias": (Q.F32, (kv,)),
            f"blk.{b}.attn_output.weight": (Q.Q8_0, (H, q)), f"blk.{b}.attn_output.bias": (Q.F32, (H,)),
            f"blk.{b}.attn_sinks.weight": (Q.F32, (config.n_heads,)),
            f"blk.{b}.ffn_gate_inp.weight": (Q.F32, (E, H)), f"blk.{b}.ffn_gate_inp.bias": (Q.F32, (E,)),
            f"blk.{b}.ffn_gate_exps.weight": (Q.MXFP4, (E, F, H)), f"blk.{b}.ffn_gate_exps.bias": (Q.F32, (E, F)),
            f"blk.{b}.ffn_up_exps.weight": (Q.MXFP4, (E, F, H)), f"blk.{b}.ffn_up_exps.bias": (Q.F32, (E, F)),
            f"blk.{b}.ffn_down_exps.weight": (Q.MXFP4, (E, H, F)), f"blk.{b}.ffn_down_exps.bias": (Q.F32, (E, H)),
        })  # fmt: skip
    found = tensors_of(small_reader)
    assert set(found) == set(expected)
    for name, (qtype, shape) in expected.items():
        assert found[name].tensor_type == qtype, name
        assert tuple(int(n) for n in reversed(found[name].shape)) == shape, name  # GGUF lists dims innermost first


def expert_sources(weights: dict, block: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """GGUF expert tensor name -> (checkpoint blocks, scales), with gate/up taken from the even/odd rows."""
    e = f"model.layers.{block}.mlp.experts."
    gate_up, gate_up_scales = weights[e + "gate_up_proj_blocks"], weights[e + "gate_up_proj_scales"]
    return {
        f"blk.{block}.ffn_gate_exps.weight": (gate_up[:, 0::2], gate_up_scales[:, 0::2]),
        f"blk.{block}.ffn_up_exps.weight": (gate_up[:, 1::2], gate_up_scales[:, 1::2]),
        f"blk.{block}.ffn_down_exps.weight": (weights[e + "down_proj_blocks"], weights[e + "down_proj_scales"]),
    }


def test_every_mxfp4_tensor_dequantizes_to_the_checkpoint_values(small_reader, small):
    config, weights, _ = small
    found = tensors_of(small_reader)
    for block in range(config.n_layers):
        for name, (blocks, scales) in expert_sources(weights, block).items():
            raw = np.asarray(found[name].data)
            # Decoded by gguf.quants (ggml's definition) and, independently, from the checkpoint bytes.
            from_gguf = gguf.quants.dequantize(raw, Q.MXFP4)
            expected = reference_forward.decode_mxfp4(blocks, scales)
            assert from_gguf.shape == expected.shape
            assert np.array_equal(from_gguf, expected.astype(np.float32)), name
            # Scale bytes travel unchanged: the first byte of each 17-byte ggml block.
            assert np.array_equal(raw.reshape(-1, 17)[:, 0], scales.reshape(-1)), name


def test_mxfp4_repack_is_exact_for_every_byte_and_scale():
    from ossrun.convert import mxfp4

    rng = np.random.default_rng(0)
    # Every byte value in every position of a block (shuffled), under every E8M0 scale whose
    # values stay finite in float32 (0..252; 0 is the subnormal 2^-127).
    blocks = rng.permuted(np.tile(np.arange(256, dtype=np.uint8), (253, 1)).reshape(253, 16, 16), axis=1)
    scales = np.repeat(np.arange(0, 253, dtype=np.uint8), 16).reshape(253, 16)
    packed = mxfp4.repack(blocks, scales)
    assert packed.shape == (253, 16 * 17)
    assert np.array_equal(
        gguf.quants.dequantize(packed, Q.MXFP4), reference_forward.decode_mxfp4(blocks, scales).astype(np.float32)
    )


def test_q8_0_matrices_are_ggml_q8_0_of_the_checkpoint(small_reader, small):
    config, weights, _ = small
    found = tensors_of(small_reader)
    pairs = {"token_embd.weight": "model.embed_tokens.weight", "output.weight": "lm_head.weight"}
    for b in range(config.n_layers):
        for proj, gguf_name in (("q", "attn_q"), ("k", "attn_k"), ("v", "attn_v"), ("o", "attn_output")):
            pairs[f"blk.{b}.{gguf_name}.weight"] = f"model.layers.{b}.self_attn.{proj}_proj.weight"
    for name, source in pairs.items():
        raw = np.asarray(found[name].data).reshape(-1)
        assert np.array_equal(raw, gguf.quants.quantize(weights[source], Q.Q8_0).reshape(-1)), name
        restored = gguf.quants.dequantize(raw, Q.Q8_0).reshape(weights[source].shape)
        assert np.abs(restored - weights[source]).max() <= np.abs(weights[source]).max() / 127, name


def test_f32_tensors_hold_the_checkpoint_values(small_reader, small):
    config, weights, _ = small
    found = tensors_of(small_reader)

    def values(name):
        return np.asarray(found[name].data, dtype=np.float32).reshape(tuple(int(n) for n in reversed(found[name].shape)))

    assert np.array_equal(values("output_norm.weight"), weights["model.norm.weight"])
    for b in range(config.n_layers):
        p = f"model.layers.{b}."
        assert np.array_equal(values(f"blk.{b}.attn_sinks.weight"), weights[p + "self_attn.sinks"])
        assert np.array_equal(values(f"blk.{b}.ffn_gate_inp.weight"), weights[p + "mlp.router.weight"])
        assert np.array_equal(values(f"blk.{b}.attn_q.bias"), weights[p + "self_attn.q_proj.bias"])
        gate_up_bias = weights[p + "mlp.experts.gate_up_proj_bias"]
        assert np.array_equal(values(f"blk.{b}.ffn_gate_exps.bias"), gate_up_bias[:, 0::2])
        assert np.array_equal(values(f"blk.{b}.ffn_up_exps.bias"), gate_up_bias[:, 1::2])
        assert np.array_equal(values(f"blk.{b}.ffn_down_exps.bias"), weights[p + "mlp.experts.down_proj_bias"])


def test_original_layout_gives_the_same_file_as_the_hf_layout(tiny_checkpoint, tiny_gguf, tiny_weights, tmp_path):
    # The same weights in OpenAI's layout, under a repository of the same name (general.name),
    # with the tokenizer files in the parent folder as published: byte for byte the same GGUF.
    config, weights = tiny_weights
    repo = tmp_path / tiny_checkpoint.name
    folder = checkpoints.write_original_checkpoint(repo, weights, config, tokenizer_dir=tiny_checkpoint)
    assert filecmp.cmp(convert(folder, tmp_path / "original.gguf"), tiny_gguf, shallow=False)


def test_sharding_and_layout_make_no_difference(small, small_gguf, tmp_path):
    config, weights, folder = small
    repo = tmp_path / folder.name
    sharded = checkpoints.write_hf_checkpoint(repo, weights, config, tokenizer_dir=None, shards=3)
    checkpoints.write_byte_tokenizer(repo)
    assert filecmp.cmp(convert(sharded, tmp_path / "sharded.gguf"), small_gguf, shallow=False)
    original = checkpoints.write_original_checkpoint(repo, weights, config, tokenizer_dir=None)
    assert filecmp.cmp(convert(original, tmp_path / "original.gguf"), small_gguf, shallow=False)


def test_name_of_a_hugging_face_cache_snapshot(small, tmp_path):
    from ossrun.convert import open_checkpoint

    snapshot = tmp_path / "models--openai--gpt-oss-small" / "snapshots" / "0123abcd"
    shutil.copytree(small[2], snapshot)
    assert open_checkpoint(snapshot).name == "gpt-oss-small"


def test_original_layout_takes_the_tokenizer_option(small, small_gguf, tmp_path):
    config, weights, folder = small
    original = checkpoints.write_original_checkpoint(tmp_path / folder.name, weights, config, tokenizer_dir=None)
    with pytest.raises(ConvertError, match="no tokenizer.json in"):
        convert(original, tmp_path / "no-tokenizer.gguf")
    out = convert(original, tmp_path / "out.gguf", tokenizer_dir=folder)
    assert filecmp.cmp(out, small_gguf, shallow=False)


@pytest.mark.parametrize(
    "outtype, qtype, file_type",
    [
        ("bf16", Q.BF16, gguf.LlamaFileType.MOSTLY_BF16),
        ("f16", Q.F16, gguf.LlamaFileType.MOSTLY_F16),
        ("f32", Q.F32, gguf.LlamaFileType.ALL_F32),
        ("q8_0", Q.Q8_0, gguf.LlamaFileType.MOSTLY_MXFP4_MOE),
    ],
)
def test_outtypes(outtype, qtype, file_type, small, tmp_path):
    _, weights, folder = small
    reader = gguf.GGUFReader(convert(folder, tmp_path / f"{outtype}.gguf", outtype=outtype))
    assert field(reader, "general.file_type") == file_type
    found = tensors_of(reader)
    source = weights["model.layers.1.self_attn.o_proj.weight"]
    tensor = found["blk.1.attn_output.weight"]
    assert tensor.tensor_type == qtype
    assert found["blk.1.ffn_down_exps.weight"].tensor_type == Q.MXFP4
    assert found["blk.1.attn_output.bias"].tensor_type == Q.F32
    raw = np.asarray(tensor.data)
    expected = {
        "bf16": lambda: checkpoints.to_bf16(source),  # the checkpoint's own BF16 bits
        "f16": lambda: source.astype(np.float16),
        "f32": lambda: source,
        "q8_0": lambda: gguf.quants.quantize(source, Q.Q8_0),
    }[outtype]()
    assert np.array_equal(raw.view(np.uint8).reshape(-1), expected.view(np.uint8).reshape(-1))


@pytest.mark.parametrize("outtype", list(OUTTYPES))
def test_f16_checkpoint_matrices_take_every_outtype(outtype, small, tmp_path):
    # A checkpoint stored in F16 rather than BF16: each outtype holds that type's encoding of its values.
    config, weights, _ = small
    name = "model.layers.1.self_attn.o_proj.weight"
    source = weights[name].astype(np.float16)
    folder = checkpoints.write_hf_checkpoint(tmp_path / "f16", {**weights, name: source}, config, tokenizer_dir=None)
    checkpoints.write_byte_tokenizer(folder)
    tensor = tensors_of(gguf.GGUFReader(convert(folder, tmp_path / "f16.gguf", outtype=outtype)))["blk.1.attn_output.weight"]
    values = source.astype(np.float32)
    expected = {
        "bf16": lambda: checkpoints.to_bf16(values),
        "f16": lambda: source,
        "f32": lambda: values,
        "q8_0": lambda: gguf.quants.quantize(values, Q.Q8_0),
    }[outtype]()
    assert np.array_equal(np.asarray(tensor.data).view(np.uint8).reshape(-1), expected.view(np.uint8).reshape(-1))


def test_small_chunks_give_the_same_file(small, small_gguf, tmp_path):
    pieces = convert(small[2], tmp_path / "pieces.gguf", chunk_bytes=1000)  # one row or expert per chunk
    assert filecmp.cmp(small_gguf, pieces, shallow=False)


def test_progress_counts_every_byte(small, tmp_path):
    folder = small[2]
    calls = []
    out = convert(folder, tmp_path / "p.gguf", progress=lambda done, total: calls.append((done, total)), chunk_bytes=4096)
    dones = [done for done, _ in calls]
    assert dones == sorted(dones) and len(calls) > 50
    total = calls[-1][1]
    assert dones[-1] == total and {t for _, t in calls} == {total}
    assert gguf.GGUFReader(out).data_offset + total == out.stat().st_size  # the header, then the tensor data


def test_chat_template_from_tokenizer_config(small, tmp_path):
    folder = Path(shutil.copytree(small[2], tmp_path / "model"))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": "{{ messages }}"}))
    reader = gguf.GGUFReader(convert(folder, tmp_path / "t.gguf"))
    assert field(reader, "tokenizer.chat_template") == "{{ messages }}"


def test_force_overwrites(small, tmp_path):
    out = tmp_path / "o.gguf"
    out.write_bytes(b"old")
    with pytest.raises(ConvertError, match="already exists"):
        convert(small[2], out)
    convert(small[2], out, force=True)
    assert out.read_bytes()[:4] == b"GGUF"


def test_cli_prints_the_path_and_a_summary(small, tmp_path):
    out = tmp_path / "cli.gguf"
    result = subprocess.run(
        [sys.executable, "-m", "ossrun", "convert", str(small[2]), "-o", str(out), "--outtype", "bf16"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{out}\n"
    # Not a terminal: no progress bar, one summary line.
    assert result.stderr.startswith("wrote ") and result.stderr.count("\n") == 1 and "\r" not in result.stderr
    assert gguf.GGUFReader(out).tensors[0].name == "token_embd.weight"


def test_cli_outtype_choices_match_the_library():
    from ossrun.cli.convert import OutType

    assert [t.value for t in OutType] == list(OUTTYPES)


def test_cli_shows_a_progress_bar_on_a_terminal(small, tmp_path):
    out = tmp_path / "tty.gguf"
    command = [sys.executable, "-m", "ossrun", "convert", str(small[2]), "-o", str(out)]
    code, shown = stderr_on_a_terminal(command, timeout=60)
    assert code == 0
    text = shown.decode(errors="replace")
    assert "converting" in text and "━" in text  # rich's bar, with bytes written and the rate
    assert "MB" in text and "wrote " in text


def test_without_positional_io_or_fadvise(small, small_gguf, tmp_path, monkeypatch):
    # Systems without preadv/pread/pwrite/posix_fadvise (Windows) take the seek-under-a-lock path.
    import os

    for name in ("preadv", "pread", "pwrite", "posix_fadvise"):
        monkeypatch.delattr(os, name, raising=False)
    assert filecmp.cmp(convert(small[2], tmp_path / "portable.gguf", chunk_bytes=4096), small_gguf, shallow=False)
