"""The memory planner: what a load needs, what the machine (or its container) has, --ctx auto, ossrun plan.

The machine's side is read from fake ``/proc`` and cgroup files (v1 and v2, limited and not,
unreadable); the model's side from small GGUF headers with gpt-oss-20b's attention shapes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

import ossrun
from ossrun import machine
from ossrun.cli.plan import size
from ossrun.engine import memory
from ossrun.engine.gguf_header import check_gpt_oss
from ossrun.errors import ModelError

GiB, MiB, KiB = 2**30, 2**20, 2**10
F16, Q8 = memory.CacheSettings(), memory.CacheSettings("q8_0", "q8_0")
SWA_FULL = memory.CacheSettings(swa_full=True)


# -- the machine: MemAvailable and the memory cgroup -------------------------------------------------------------


@pytest.fixture
def fake_proc(tmp_path, monkeypatch):
    """A /proc of our own: ``fake_proc(meminfo_gib, cgroup_lines, mounts)``; cgroup files go under tmp_path/cg."""
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    monkeypatch.setattr(machine, "_PROC", proc)

    def make(available_gib=60, cgroup="0::/\n", mounts=""):
        if available_gib is not None:
            (proc / "meminfo").write_text(f"MemTotal:       67108864 kB\nMemAvailable:   {int(available_gib * GiB // KiB)} kB\n")
        (proc / "self" / "cgroup").write_text(cgroup)
        (proc / "self" / "mountinfo").write_text(mounts)
        return tmp_path / "cg"

    return make


def files(folder: Path, **contents: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in contents.items():
        (folder / name.replace("_", ".", 1)).write_text(text)


def v2_mount(root: Path) -> str:
    return f"30 23 0:26 / {root} rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"


def v1_mount(root: Path, hierarchy_root: str = "/") -> str:
    return (
        f"31 23 0:28 / {root.parent}/cpu rw,relatime - cgroup cgroup rw,cpu\n"
        f"35 23 0:32 {hierarchy_root} {root} rw,nosuid - cgroup cgroup rw,memory\n"
    )


def test_a_16_gib_container_on_a_64_gib_host_has_what_its_cgroup_v2_leaves(fake_proc):
    root = fake_proc(60, "0::/ossrun.slice/box\n")
    (root.parent / "proc" / "self" / "mountinfo").write_text(v2_mount(root))
    files(
        root / "ossrun.slice" / "box",
        memory_max=f"{16 * GiB}\n",
        memory_current=f"{3 * GiB}\n",
        memory_stat=f"anon 1\ninactive_file {GiB}\nactive_file 5\n",
    )
    files(root / "ossrun.slice", memory_max="max\n", memory_current=f"{3 * GiB}\n")
    # 16 GiB - 3 GiB used + 1 GiB of page cache it can drop: 14 GiB, not the host's 60.
    assert machine.cgroup_available() == 14 * GiB
    assert machine.available_memory() == 14 * GiB


def test_a_limit_on_a_parent_cgroup_counts_too(fake_proc):
    root = fake_proc(60, "0::/ossrun.slice/box\n")
    (root.parent / "proc" / "self" / "mountinfo").write_text(v2_mount(root))
    files(root / "ossrun.slice" / "box", memory_max="max\n", memory_current=f"{GiB}\n")
    files(root / "ossrun.slice", memory_max=f"{8 * GiB}\n", memory_current=f"{2 * GiB}\n")
    assert machine.available_memory() == 6 * GiB


def test_an_unlimited_cgroup_v2_leaves_memavailable(fake_proc):
    root = fake_proc(60, "0::/user.slice\n")
    (root.parent / "proc" / "self" / "mountinfo").write_text(v2_mount(root))
    files(root / "user.slice", memory_max="max\n", memory_current=f"{40 * GiB}\n")
    assert machine.cgroup_available() is None
    assert machine.available_memory() == 60 * GiB


def test_a_cgroup_v1_limit_seen_from_inside_a_container(fake_proc):
    root = fake_proc(60, "12:pids:/docker/abc\n4:memory:/docker/abc\n0::/\n")
    # Inside the container, the memory hierarchy's root is the container's own cgroup.
    (root.parent / "proc" / "self" / "mountinfo").write_text(v1_mount(root, "/docker/abc"))
    files(
        root,
        memory_limit_in_bytes=f"{16 * GiB}\n",
        memory_usage_in_bytes=f"{4 * GiB}\n",
        memory_stat=f"cache 5\ntotal_inactive_file {2 * GiB}\n",
    )
    assert machine.available_memory() == 14 * GiB


def test_an_unlimited_cgroup_v1_leaves_memavailable(fake_proc):
    root = fake_proc(20, "4:memory:/process_api/abc\n")
    (root.parent / "proc" / "self" / "mountinfo").write_text(v1_mount(root))
    files(root / "process_api" / "abc", memory_limit_in_bytes="9223372036854771712\n", memory_usage_in_bytes=f"{GiB}\n")
    files(root / "process_api", memory_limit_in_bytes="9223372036854771712\n", memory_usage_in_bytes=f"{GiB}\n")
    files(root, memory_limit_in_bytes="9223372036854771712\n", memory_usage_in_bytes=f"{GiB}\n")
    assert machine.cgroup_available() is None
    assert machine.available_memory() == 20 * GiB


@pytest.mark.parametrize("limit, usage", [("", f"{GiB}"), ("lots", f"{GiB}"), (f"{GiB}", None), (None, f"{GiB}"), ("-1", "0")])
def test_a_limit_that_cannot_be_read_is_no_limit_never_zero(fake_proc, limit, usage):
    root = fake_proc(20, "0::/box\n")
    (root.parent / "proc" / "self" / "mountinfo").write_text(v2_mount(root))
    contents = {}
    if limit is not None:
        contents["memory_max"] = limit
    if usage is not None:
        contents["memory_current"] = usage
    files(root / "box", **contents)
    assert machine.cgroup_available() is None
    assert machine.available_memory() == 20 * GiB


def test_no_cgroup_files_at_all_and_no_mount(fake_proc, tmp_path):
    fake_proc(20, "4:memory:/x\n0::/y\n", mounts="")
    assert machine.cgroup_available() is None
    assert machine.available_memory() == 20 * GiB
    (tmp_path / "proc" / "self" / "cgroup").unlink()
    assert machine.available_memory() == 20 * GiB


def test_without_meminfo_the_cgroup_still_counts(fake_proc):
    root = fake_proc(None, "0::/box\n")
    (root.parent / "proc" / "self" / "mountinfo").write_text(v2_mount(root))
    files(root / "box", memory_max=f"{GiB}\n", memory_current="0\n")
    available = machine.available_memory()
    assert available is not None and 0 < available <= GiB


# -- the model: what a load needs -------------------------------------------------------------------------------


def write_model(
    path: Path,
    *,
    layers: int = 24,
    kv_heads: int = 8,
    head_dim: int = 64,
    window: int = 128,
    embd: int = 2880,
    vocab: int = 201088,
    experts_mib: int = 8,
) -> Path:
    """A GGUF header with gpt-oss-20b's attention shapes, an expert tensor and another tensor."""
    writer = gguf.GGUFWriter(str(path), "gpt-oss")
    writer.add_block_count(layers)
    writer.add_context_length(131072)
    writer.add_embedding_length(embd)
    writer.add_head_count(64)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_sliding_window(window)
    writer.add_token_list(["a"] * vocab)
    writer.add_tensor("blk.0.ffn_up_exps.weight", np.zeros(experts_mib * MiB, dtype=np.int8))
    writer.add_tensor("output.weight", np.zeros(2 * MiB, dtype=np.int8))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def header_20b(tmp_path_factory):
    return check_gpt_oss(write_model(tmp_path_factory.mktemp("plan") / "gpt-oss-20b.gguf", vocab=16))


def test_the_kv_cache_by_mode_and_type(header_20b):
    shape = memory.ModelShape.of(header_20b)
    assert (shape.n_layers, shape.n_swa_layers, shape.window) == (24, 12, 128)
    # f16: 8 KV heads x (64 + 64) x 2 bytes = 2 KiB per position and layer.
    assert shape.kv_cell_bytes(F16) == 2 * KiB
    # swa_full: every layer holds every position, 48 KiB per token: 6 GiB at 131072.
    assert memory.plan(header_20b, 131072, cache=SWA_FULL).kv_cache == 6 * GiB
    # The small cache: 12 full layers (24 KiB per token) and 12 layers of 768 cells (128 + a batch of 512, padded).
    assert shape.swa_cells(131072, 1, F16) == 768
    assert memory.plan(header_20b, 131072).kv_cache == 3 * GiB + 768 * 12 * 2 * KiB
    assert shape.swa_cells(131072, 4, F16) == 1024  # 4 sequences' windows beside the batch
    assert shape.swa_cells(300, 1, F16) == 512  # never more than the context (padded to 256)
    # q8_0: 34 bytes per 32 values, 17/32 of f16.
    assert shape.kv_cell_bytes(Q8) == 2 * 512 // 32 * 34
    assert memory.plan(header_20b, 131072, cache=Q8).kv_cache == (131072 + 768) * 12 * 1088
    assert shape.kv_cell_bytes(memory.CacheSettings("q8_0", "f16")) == 544 + 1024


def test_checkpoints_are_planned_per_sequence_and_only_for_the_small_cache(header_20b):
    shape = memory.ModelShape.of(header_20b)
    assert shape.checkpoint_bytes(F16) == 12 * 128 * 2 * KiB  # 3 MiB: the window of 12 layers
    assert memory.plan(header_20b, 8192, parallel=4).checkpoints == 4 * memory.DEFAULT_MAX_CHECKPOINTS * 3 * MiB
    assert memory.plan(header_20b, 8192, parallel=4, cache=SWA_FULL).checkpoints == 0


def test_the_plan_adds_up_every_part(header_20b):
    plan = memory.plan(header_20b, 32768, parallel=2)
    assert plan.experts == 8 * MiB and plan.weights == 2 * MiB
    assert plan.outputs == 2 * 16 * 4  # a row of logits per sequence
    assert plan.total == sum(
        getattr(plan, part) for part in ("experts", "weights", "kv_cache", "checkpoints", "compute", "outputs", "runtime")
    )
    assert "\n" not in plan.describe() and "KV cache (f16)" in plan.describe()
    assert memory.plan(header_20b, 32768, cache=Q8).total < memory.plan(header_20b, 32768).total
    assert memory.plan(header_20b, 32768, cache=SWA_FULL).total > memory.plan(header_20b, 32768).total


def test_the_largest_context_that_fits(header_20b):
    shape = memory.ModelShape.of(header_20b)
    need = memory.plan_shape(shape, 40960).total
    assert memory.largest_context(shape, need + memory.AUTO_HEADROOM) == 40960
    assert memory.largest_context(shape, need + memory.AUTO_HEADROOM - 1) == 39936
    assert memory.largest_context(shape, 10**15) == 131072  # the model's limit
    assert memory.largest_context(shape, memory.plan_shape(shape, 1024).total) is None  # the headroom is kept
    # q8_0 fits more in the same memory; several sequences fewer.
    assert memory.largest_context(shape, need + memory.AUTO_HEADROOM, cache=Q8) > 40960
    assert memory.largest_context(shape, need + memory.AUTO_HEADROOM, parallel=4) < 40960


def test_a_context_that_does_not_fit_names_the_largest_that_does(header_20b):
    shape = memory.ModelShape.of(header_20b)
    plan = memory.plan_shape(shape, 131072, model="gpt-oss-20b")
    available = memory.plan_shape(shape, 16384).total + 1000
    with pytest.raises(ModelError) as error:
        memory.check(plan, available, shape)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(
        "gpt-oss-20b needs about 3.4 GiB at --ctx 131072 (experts 8.0 MiB + other weights 2.0 MiB + "
        "KV cache (f16) 3.0 GiB + checkpoints 96 MiB + buffers"
    )
    assert "the largest context that fits is 16384 (--ctx 16384, or --ctx auto)" in message
    memory.check(plan, plan.total, shape)  # exactly enough
    memory.check(plan, None, shape)  # unknown memory: not refused
    with pytest.raises(ModelError, match="not even --ctx 1024 fits; use a smaller model, or close other programs"):
        memory.check(plan, 1000, shape)


def test_cache_settings_from_what_users_write():
    assert memory.CacheSettings.parse("q8_0") == Q8
    assert memory.CacheSettings.parse("q8_0,f16") == memory.CacheSettings("q8_0", "f16")
    assert memory.CacheSettings.parse(("f16", "q8_0"), swa_full=True) == memory.CacheSettings("f16", "q8_0", True)
    assert memory.CacheSettings.parse(None) == F16
    assert memory.CacheSettings("q8_0", "f16", True).name == "q8_0,f16 swa-full"
    with pytest.raises(ModelError, match=r"unknown KV cache type 'q4_0': use f16\|q8_0"):
        memory.CacheSettings.parse("q4_0")
    with pytest.raises(ModelError, match="is not TYPE or KEY,VALUE"):
        memory.CacheSettings.parse("f16,f16,f16")


# -- through ossrun.load and the command line --------------------------------------------------------------------


def test_ctx_auto_takes_the_largest_context_that_fits(tiny_gguf, monkeypatch):
    """Nothing is loaded when the choice fails; the plan of the chosen context fits what is available."""
    shape = memory.ModelShape.of(check_gpt_oss(tiny_gguf))
    available = memory.plan_shape(shape, 20480).total + memory.AUTO_HEADROOM + 5000
    monkeypatch.setattr(machine, "available_memory", lambda: available)
    with ossrun.load(tiny_gguf, threads=1) as model:
        assert (model.n_ctx, model.auto_ctx) == (20480, True)
    with ossrun.load(tiny_gguf, threads=1, kv_type="q8_0", parallel=2) as model:
        assert model.n_ctx == memory.largest_context(shape, available, parallel=2, cache=Q8)
        assert model.n_ctx > 20480
    monkeypatch.setattr(machine, "available_memory", lambda: 100 * MiB)
    with pytest.raises(ModelError, match=r"needs about .* even at --ctx 1024 .* but only 100 MiB is available"):
        ossrun.load(tiny_gguf)
    with pytest.raises(ModelError, match=r"at --ctx 65536 .* but only 100 MiB is available: not even --ctx 1024 fits"):
        ossrun.load(tiny_gguf, ctx=65536)


def test_an_explicit_ctx_that_does_not_fit_names_the_largest_that_does(tiny_gguf, monkeypatch):
    shape = memory.ModelShape.of(check_gpt_oss(tiny_gguf))
    monkeypatch.setattr(machine, "available_memory", lambda: memory.plan_shape(shape, 8704).total)
    with pytest.raises(ModelError) as error:
        ossrun.load(tiny_gguf, ctx=131072)
    assert "the largest context that fits is 8192 (--ctx 8192, or --ctx auto)" in str(error.value)
    with ossrun.load(tiny_gguf, ctx=8192, threads=1) as model:
        assert (model.n_ctx, model.auto_ctx) == (8192, False)


def test_bad_contexts_and_cache_types_in_the_python_api(tiny_gguf):
    for ctx in (0, -5, 131073):
        with pytest.raises(ModelError, match=f"context size {ctx} is out of range: use a --ctx between 1 and 131072"):
            ossrun.load(tiny_gguf, ctx=ctx)
    with pytest.raises(ModelError, match="context size 'big' is not a number of tokens or auto"):
        ossrun.load(tiny_gguf, ctx="big")
    with pytest.raises(ModelError, match="unknown KV cache type 'f32'"):
        ossrun.load(tiny_gguf, kv_type="f32")


def ossrun_cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "OSSRUN_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "ossrun", *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("command", ["run", "chat", "serve", "batch", "plan"])
def test_bad_ctx_and_kv_type_on_the_command_line(command, tiny_gguf, tmp_path):
    """Usage errors exit with 2, a context beyond the model's limit with 1; nothing is loaded."""
    extra = {
        "run": ["hi"],
        "serve": ["--port", "0"],
        "batch": [str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl")],
    }.get(command, [])
    (tmp_path / "in.jsonl").write_text('{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n')
    model = ["-m", str(tiny_gguf)]
    for args, code, text in [
        (["--ctx", "0"], 2, "0 is less than 1"),
        (["--ctx", "lots"], 2, "'lots' is not a number of tokens"),
        (["--kv-type", "q4"], 2, "'q4' is not a KV cache type: use f16|q8_0"),
    ]:
        result = ossrun_cli(command, *model, *args, *extra, home=tmp_path / "home")
        assert result.returncode == code and text in result.stderr, (args, result.stderr)
    if command != "plan":
        result = ossrun_cli(command, *model, "--ctx", "200000", *extra, home=tmp_path / "home")
        assert result.returncode == 1, result.stderr
        assert result.stderr == "error: context size 200000 is out of range: use a --ctx between 1 and 131072\n"


def test_plan_prints_each_context_per_cache_type(tiny_gguf, tmp_path):
    result = ossrun_cli("plan", str(tiny_gguf), "--parallel", "2", home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("tiny-gpt-oss, 2 sequences on this machine: ") and "available" in lines[0]
    assert lines[1].split() == ["context", "f16", "q8_0"]
    header = check_gpt_oss(tiny_gguf)
    for line, n in zip(lines[2:8], (4096, 8192, 16384, 32768, 65536, 131072), strict=True):
        f16, q8 = memory.plan(header, n, parallel=2), memory.plan(header, n, parallel=2, cache=Q8)
        assert line.split()[0] == str(n)
        assert f"{size(f16.total)} fits" in line and f"{size(q8.total)} fits" in line
    assert lines[-1] == "--ctx auto: 131072 with f16, 131072 with q8_0 (keeps 512 MiB of the available memory free)"
    one = ossrun_cli("plan", str(tiny_gguf), "--kv-type", "q8_0", "--ctx", "8192", "--swa-full", home=tmp_path / "home")
    assert one.returncode == 0 and one.stdout.splitlines()[1].split() == ["context", "q8_0", "swa-full"]
    assert len(one.stdout.splitlines()) == 5
