"""The weights every token reads stay resident: locked in llama.cpp's mapping of the file, or read
into memory where the process may not lock them (engine/resident.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from ossrun.engine import resident
from ossrun.engine.gguf_header import check_gpt_oss

pytestmark = pytest.mark.slow

# Loads the model, answers greedily, and prints the answer with the process's memory.
CHILD = textwrap.dedent("""
    import json, sys
    import ossrun
    model = ossrun.load(sys.argv[1], ctx=int(sys.argv[2]) if len(sys.argv) > 2 else 4096)
    reply = model.chat([{"role": "user", "content": "Name a colour."}], temperature=0, max_tokens=24)
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    memory = {key: int(status[key].split()[0]) * 1024 for key in ("VmLck", "RssAnon", "RssFile")}
    print(json.dumps({"text": reply.reasoning + "|" + reply.final, **memory}))
""")
PR_CAPBSET_DROP, CAP_IPC_LOCK = 24, 14


def load_in_a_child(path, *, may_lock: bool = True, ctx: int = 4096) -> dict:
    def without_lock_rights() -> None:  # no CAP_IPC_LOCK after exec, and ulimit -l of 64 KiB
        import ctypes
        import resource

        ctypes.CDLL(None, use_errno=True).prctl(PR_CAPBSET_DROP, CAP_IPC_LOCK, 0, 0, 0)
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (65536, 65536))

    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(ctx)],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=None if may_lock else without_lock_rights,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_token_reads_all_but_the_experts_and_the_embeddings(demo_build):
    header = check_gpt_oss(demo_build)
    hot, cold = resident.hot_ranges(header), resident.cold_ranges(header)
    start = header.data_offset
    where = {t.name: (start + t.offset, start + t.offset + t.n_bytes) for t in header.tensors}

    def inside(span, ranges):
        return any(low <= span[0] and span[1] <= high for low, high in ranges)

    for name, span in where.items():
        expected_cold = name.endswith("_exps.weight") or name == "token_embd.weight"
        assert inside(span, cold if expected_cold else hot), name
        assert not inside(span, hot if expected_cold else cold), name
    assert inside(where["output.weight"], hot) and inside(where["blk.0.attn_q.weight"], hot)
    tensors = sum(t.n_bytes for t in header.tensors)  # and the padding between neighbours of a kind
    assert tensors <= resident.size(hot) + resident.size(cold) <= tensors + 64 * len(header.tensors)


@pytest.mark.skipif(os.geteuid() != 0, reason="locking the demo's 26 MiB needs CAP_IPC_LOCK or a larger ulimit -l")
def test_the_weights_every_token_reads_are_locked_else_read_into_memory(demo_build):
    hot = resident.size(resident.hot_ranges(check_gpt_oss(demo_build)))
    locked = load_in_a_child(demo_build, may_lock=True)
    copied = load_in_a_child(demo_build, may_lock=False)
    assert locked["text"] == copied["text"] and len(copied["text"]) > 1  # the same greedy reply either way
    assert hot <= locked["VmLck"] <= hot + 64 * 4096  # whole pages around each range
    assert copied["VmLck"] == 0
    # Read into memory, every weight is anonymous; mapped, the locked ones are file pages instead.
    weights = sum(t.n_bytes for t in check_gpt_oss(demo_build).tensors)
    assert copied["RssAnon"] - locked["RssAnon"] > 0.8 * weights
    assert locked["RssFile"] - copied["RssFile"] > 0.9 * hot


def test_the_kv_cache_is_held_as_it_fills(demo_build):
    from ossrun.engine import memory

    shape = memory.ModelShape.of(check_gpt_oss(demo_build))
    cache = memory.CacheSettings.parse("f16")
    small, large = 4096, 131072
    kv = [memory.plan_shape(shape, n, cache=cache).kv_cache for n in (small, large)]
    assert kv[1] - kv[0] > 60 * 2**20  # llama.cpp clears the whole cache when it creates the context
    replies = [load_in_a_child(demo_build, ctx=n) for n in (small, large)]
    assert replies[0]["text"] == replies[1]["text"] and len(replies[0]["text"]) > 1
    # After a short reply the large context holds no more than the small one: its cleared pages were given back.
    assert replies[1]["RssAnon"] - replies[0]["RssAnon"] < 8 * 2**20, replies


def test_only_memory_mapped_since_is_released():
    new = resident._new_ranges([(100, 200), (300, 400)], [(50, 450), (100, 200), (500, 600)])
    assert new == [(50, 100), (200, 300), (400, 450), (500, 600)]


def test_a_file_not_mapped_locks_nothing(demo_build, tmp_path):
    copy = tmp_path / demo_build.name  # the demo file itself may be mapped by a model another test loaded
    shutil.copyfile(demo_build, copy)
    assert resident.lock_mapped(copy, resident.hot_ranges(check_gpt_oss(copy))) is None


def cached_share(path, start: int, end: int) -> float:
    """The share of ``path``'s pages in [start, end) that are in the page cache (mincore over a fresh
    mapping: mapping a file reads nothing)."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    size, page = os.path.getsize(path), mmap.PAGESIZE
    pages = (ctypes.c_ubyte * (-(-size // page)))()
    with open(path, "rb") as file:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, file.fileno(), 0)
        assert address not in (None, ctypes.c_void_p(-1).value)
        try:
            assert libc.mincore(address, size, pages) == 0
        finally:
            libc.munmap(address, size)
    chosen = range(start // page, -(-end // page))
    return sum(pages[i] & 1 for i in chosen) / len(chosen)


def test_dropped_ranges_leave_the_page_cache_and_the_rest_stays(tmp_path):
    path, half = tmp_path / "model.bin", 8 * 2**20
    with open(path, "wb") as file:
        file.write(os.urandom(2 * half))
        file.flush()
        os.fsync(file.fileno())  # clean pages: only those can be dropped
    path.read_bytes()
    assert cached_share(path, 0, 2 * half) == 1.0
    resident.drop_cached(path, [(0, half)])
    assert cached_share(path, 0, half) < 0.05 and cached_share(path, half, 2 * half) == 1.0
