"""Bad input to `ossrun convert`: one clear line, exit code 1, no traceback, no file left behind."""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from helpers import checkpoints
from ossrun.cli import main


class Result:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run_convert(*args: str | Path) -> Result:
    """``ossrun convert ARGS`` through the CLI's real entry point, in this process (fast)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(["convert", *map(str, args)])
            code = 0
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
    return Result(code, out.getvalue(), err.getvalue())


def run_convert_process(*args: str | Path, preexec_fn=None) -> subprocess.CompletedProcess:
    """``ossrun convert ARGS`` as a separate process."""
    command = [sys.executable, "-m", "ossrun", "convert", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, preexec_fn=preexec_fn, timeout=300)


def assert_fails_cleanly(result, out: Path, *fragments: str) -> str:
    """Exit code 1, one ``error:`` line naming what is wrong, and neither OUT nor OUT.part on disk."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not out.exists()
    assert not out.with_name(out.name + ".part").exists()
    assert result.stdout == ""
    return lines[0]


@pytest.fixture
def broken(tmp_path, tiny_checkpoint) -> Path:
    """A private copy of the tiny HF checkpoint, free to damage."""
    return Path(shutil.copytree(tiny_checkpoint, tmp_path / "checkpoint"))


@pytest.fixture
def out(tmp_path) -> Path:
    return tmp_path / "out" / "model.gguf"


@pytest.fixture(autouse=True)
def _out_folder(out):
    out.parent.mkdir()


def test_missing_source(tmp_path, out):
    assert_fails_cleanly(run_convert(tmp_path / "nowhere", "-o", out), out, "nowhere does not exist")
    assert_fails_cleanly(run_convert_process(tmp_path / "nowhere", "-o", out), out, "nowhere does not exist")


def test_source_without_config_is_not_a_checkpoint(tmp_path, out):
    (tmp_path / "empty").mkdir()
    assert_fails_cleanly(run_convert(tmp_path / "empty", "-o", out), out, "is not a gpt-oss checkpoint", "no config.json")


def test_source_that_is_a_file(tmp_path, out):
    (tmp_path / "model.safetensors").write_bytes(b"x")
    assert_fails_cleanly(run_convert(tmp_path / "model.safetensors", "-o", out), out, "is not a folder")


def test_config_of_another_architecture(broken, out):
    checkpoints.set_config(broken, architectures=["LlamaForCausalLM"], model_type="llama")
    assert_fails_cleanly(run_convert(broken, "-o", out), out, "config.json describes LlamaForCausalLM, not gpt-oss")


def test_config_that_is_not_json(broken, out):
    (broken / "config.json").write_text("{ not json")
    assert_fails_cleanly(run_convert(broken, "-o", out), out, "config.json is not valid JSON")


def test_missing_shard(broken, out):
    shard = checkpoints.remove_shard(broken)
    assert_fails_cleanly(run_convert(broken, "-o", out), out, f"shard {shard} named by model.safetensors.index.json is missing")


def test_truncated_shard(broken, out):
    shard = checkpoints.shard_paths(broken)[0]
    checkpoints.truncate_file(shard, shard.stat().st_size - 1000)
    assert_fails_cleanly(run_convert(broken, "-o", out), out, str(shard), "past the end of the file", "truncated or corrupt")


def test_shard_cut_inside_its_header(broken, out):
    shard = checkpoints.shard_paths(broken)[0]
    checkpoints.truncate_file(shard, 200)
    assert_fails_cleanly(run_convert(broken, "-o", out), out, str(shard), "the header claims", "truncated or corrupt")


def test_corrupt_shard_header(broken, out):
    shard = checkpoints.corrupt_header(checkpoints.shard_paths(broken)[1])
    assert_fails_cleanly(run_convert(broken, "-o", out), out, str(shard), "header is not valid JSON")


def test_tensor_with_the_wrong_shape(broken, out, tiny_weights):
    name = "model.layers.1.self_attn.q_proj.weight"
    checkpoints.rewrite_shard_without(broken, name, replacement=tiny_weights[1][name][:-64])
    assert_fails_cleanly(
        run_convert(broken, "-o", out), out, f"tensor {name}", "has shape [192, 128], config.json implies [256, 128]"
    )


def test_tensor_with_the_wrong_dtype(broken, out):
    name = "model.layers.0.input_layernorm.weight"
    checkpoints.rewrite_shard_without(broken, name, replacement=np.ones(128, dtype=np.int64))
    assert_fails_cleanly(run_convert(broken, "-o", out), out, f"tensor {name}", "has dtype I64, expected BF16 or F16 or F32")


def test_blocks_without_scales(broken, out):
    name = "model.layers.1.mlp.experts.down_proj_scales"
    checkpoints.rewrite_shard_without(broken, name)
    assert_fails_cleanly(run_convert(broken, "-o", out), out, "model.layers.1.mlp.experts.down_proj_blocks has no matching", name)


def test_missing_tensor(broken, out):
    checkpoints.rewrite_shard_without(broken, "model.norm.weight")
    assert_fails_cleanly(run_convert(broken, "-o", out), out, "tensor model.norm.weight is missing")


def test_missing_tokenizer(broken, out):
    (broken / "tokenizer.json").unlink()
    assert_fails_cleanly(run_convert(broken, "-o", out), out, "no tokenizer.json in", "--tokenizer DIR")


def test_tokenizer_folder_without_tokenizer(broken, out, tmp_path):
    assert_fails_cleanly(
        run_convert(broken, "-o", out, "--tokenizer", tmp_path), out, f"--tokenizer {tmp_path} has no tokenizer.json"
    )


def test_tokenizer_larger_than_the_embedding(tmp_path, out, o200k_tokenizer_dir):
    config = checkpoints.TinyConfig(vocab_rows=1000)
    folder = checkpoints.write_hf_checkpoint(tmp_path / "small", checkpoints.make_weights(config), config, o200k_tokenizer_dir)
    assert_fails_cleanly(run_convert(folder, "-o", out), out, "token id 200018 does not fit the embedding's 1000 rows")


def test_existing_output_needs_force(tiny_checkpoint, out):
    out.write_bytes(b"precious")
    result = run_convert(tiny_checkpoint, "-o", out)
    assert result.returncode == 1 and "already exists: pass --force to overwrite it" in result.stderr
    assert out.read_bytes() == b"precious"
    assert not out.with_name(out.name + ".part").exists()


def test_output_folder_missing(tiny_checkpoint, tmp_path):
    out = tmp_path / "no" / "such" / "model.gguf"
    assert_fails_cleanly(run_convert(tiny_checkpoint, "-o", out), out, "does not exist: create it or write elsewhere")


def test_unknown_outtype_is_a_usage_error(tiny_checkpoint, out):
    result = run_convert(tiny_checkpoint, "-o", out, "--outtype", "q4_k")
    assert result.returncode == 2 and "Usage:" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_file_size_limit_mid_write(tiny_checkpoint, out):
    # RLIMIT_FSIZE makes write() fail with EFBIG once the file reaches 8 MB (SIGXFSZ ignored).
    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8 << 20, 8 << 20))

    result = run_convert_process(tiny_checkpoint, "-o", out, preexec_fn=limit_file_size)
    assert_fails_cleanly(result, out, f"{out}.part grew past the largest file")


def _can_mount_in_a_namespace() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True)
    return probe.returncode == 0


needs_namespace = pytest.mark.skipif(not _can_mount_in_a_namespace(), reason="needs unshare --user --mount (util-linux)")


def run_in_small_filesystem(size: str, folder: Path, script: str) -> subprocess.CompletedProcess:
    """Run ``script`` (Python) with a private ``size`` tmpfs mounted on ``folder``: a real full disk."""
    shell = 'mount -t tmpfs -o size="$1" ossrun-test "$2" && exec "$3" -c "$4"'
    command = [
        "unshare",
        "--user",
        "--map-root-user",
        "--mount",
        "sh",
        "-c",
        shell,
        "sh",
        size,
        str(folder),
        sys.executable,
        script,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@needs_namespace
def test_not_enough_free_space_is_found_before_writing(tiny_checkpoint, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    out = disk / "model.gguf"
    script = f"import sys; from ossrun.cli import main; main(['convert', {str(tiny_checkpoint)!r}, '-o', {str(out)!r}])"
    result = run_in_small_filesystem("20m", disk, script)
    line = assert_fails_cleanly(result, out, "free but the GGUF needs", "free some space or write elsewhere")
    assert str(disk) in line


@needs_namespace
def test_disk_filling_up_mid_write(tiny_checkpoint, tmp_path):
    # A genuine ENOSPC: the tmpfs has room for the GGUF when the conversion starts, then another
    # writer fills it after the first chunk (the CLI's progress hook is where it steps in).
    disk = tmp_path / "disk"
    disk.mkdir()
    out = disk / "model.gguf"
    script = textwrap.dedent(
        f"""
        import contextlib, os
        import ossrun.cli.convert as command
        from ossrun.cli import main

        def fill_disk(done, total):
            with open({str(disk / "filler")!r}, "ab") as filler:
                with contextlib.suppress(OSError):
                    while True:
                        filler.write(bytes(1 << 20))
                        filler.flush()

        @contextlib.contextmanager
        def reporter(label):
            yield fill_disk

        command.progress_reporter = reporter
        main(["convert", {str(tiny_checkpoint)!r}, "-o", {str(out)!r}])
        """
    )
    result = run_in_small_filesystem("120m", disk, script)
    assert_fails_cleanly(result, out, f"the disk filled up while writing {out}.part", "free some space and try again")


def test_shard_gone_mid_conversion_is_a_read_error(broken, out):
    # The last shard disappears after the first chunk is written (before it is opened): the
    # message names the shard that cannot be read, not the GGUF being written.
    from ossrun.convert import convert
    from ossrun.errors import ConvertError

    shard = checkpoints.shard_paths(broken)[-1]
    with pytest.raises(ConvertError) as error:
        convert(broken, out, chunk_bytes=4096, progress=lambda done, total: shard.unlink(missing_ok=True))
    assert str(error.value) == f"cannot read {shard}: No such file or directory"
    assert not out.exists() and not out.with_name(out.name + ".part").exists()


def test_original_layout_without_tokenizer_names_both_folders(tmp_path, tiny_weights, out):
    config, weights = tiny_weights
    folder = checkpoints.write_original_checkpoint(tmp_path / "repo", weights, config, tokenizer_dir=None)
    line = assert_fails_cleanly(run_convert(folder, "-o", out), out, "no tokenizer.json in")
    assert str(folder) in line and str(folder.parent) in line


def test_config_without_a_needed_key(broken, out):
    config = json.loads((broken / "config.json").read_text())
    del config["num_local_experts"]
    (broken / "config.json").write_text(json.dumps(config))
    assert_fails_cleanly(run_convert(broken, "-o", out), out, "has no num_local_experts")


def test_debug_shows_the_traceback(tmp_path, out):
    result = subprocess.run(
        [sys.executable, "-m", "ossrun", "convert", str(tmp_path / "nowhere"), "-o", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "OSSRUN_DEBUG": "1"},
    )
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "ConvertError" in result.stderr


def test_interrupt_leaves_no_file(tiny_checkpoint, out):
    # Ctrl-C after the first chunk is written: exit code 130, no traceback, and OUT.part removed.
    script = textwrap.dedent(
        f"""
        import contextlib, os, signal
        import ossrun.cli.convert as command
        from ossrun.cli import main

        @contextlib.contextmanager
        def reporter(label):
            yield lambda done, total: os.kill(os.getpid(), signal.SIGINT)

        command.progress_reporter = reporter
        # As in a terminal, whatever the test runner's parent did with SIGINT (a background job ignores it).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        main(["convert", {str(tiny_checkpoint)!r}, "-o", {str(out)!r}])
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists() and not out.with_name(out.name + ".part").exists()


def test_dequantized_experts_are_named(broken, out):
    # A checkpoint whose experts were dequantized to BF16 (no _blocks/_scales) is not converted.
    name = "model.layers.0.mlp.experts.down_proj"
    checkpoints.rewrite_shard_without(broken, name + "_scales")
    checkpoints.rewrite_shard_without(broken, name + "_blocks", add={name: np.zeros((4, 128, 128), dtype=np.float32)})
    assert_fails_cleanly(run_convert(broken, "-o", out), out, f"tensor {name} in ", f"is not MXFP4 (no {name}_blocks)")


def test_config_with_rows_that_are_not_whole_blocks(broken, out):
    checkpoints.set_config(broken, hidden_size=100)
    assert_fails_cleanly(run_convert(broken, "-o", out), out, "hidden_size 100 is not a multiple of 32")
