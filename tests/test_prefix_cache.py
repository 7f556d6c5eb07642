"""The on-disk prefix cache: keyed by engine identity and exact tokens, damaged files ignored."""

from __future__ import annotations

import os

from ossrun.engine.prefix_cache import PrefixCache

IDENTITY = {"path": "/models/m.gguf", "size": 123, "mtime_ns": 1, "n_ctx": 8192, "kv_cache": "f16", "llama_cpp": "x"}
TOKENS = [200006, 17360, 200008, 3575, 553]
STATE = bytes(range(256)) * 40


def test_round_trip(tmp_path):
    cache = PrefixCache(tmp_path, IDENTITY)
    assert cache.load(TOKENS) is None
    path = cache.save(TOKENS, STATE)
    assert path == cache.path_for(TOKENS) and path.is_file()
    assert cache.load(TOKENS) == STATE
    assert not list(tmp_path.glob("*.part"))  # written to a temporary file, then renamed


def test_key_covers_identity_and_every_token(tmp_path):
    cache = PrefixCache(tmp_path, IDENTITY)
    cache.save(TOKENS, STATE)
    assert cache.load(TOKENS[:-1]) is None
    assert cache.load(TOKENS + [1]) is None
    assert cache.load(TOKENS[:-1] + [554]) is None
    for field, value in [
        ("n_ctx", 4096),
        ("mtime_ns", 2),
        ("llama_cpp", "y"),
        ("size", 124),
        ("kv_cache", "q8_0"),
        ("kv_cache", "f16 swa-full"),
    ]:
        assert PrefixCache(tmp_path, {**IDENTITY, field: value}).load(TOKENS) is None
    assert PrefixCache(tmp_path, dict(IDENTITY)).load(TOKENS) == STATE


def test_damaged_files_are_ignored_and_removed(tmp_path):
    cache = PrefixCache(tmp_path, IDENTITY)
    path = cache.save(TOKENS, STATE)
    whole = path.read_bytes()
    damaged = [
        whole[: len(whole) - 1],  # cut short
        whole[:-10] + b"0123456789",  # state bytes changed: the checksum catches it
        b"not a cache file",
        b"",
    ]
    for data in damaged:
        path.write_bytes(data)
        assert cache.load(TOKENS) is None
        assert not path.exists()
    assert cache.save(TOKENS, STATE) == path  # and replaced by the next save
    assert cache.load(TOKENS) == STATE


def test_a_file_saved_for_other_tokens_under_this_name_is_refused(tmp_path):
    cache = PrefixCache(tmp_path, IDENTITY)
    other = cache.save([1, 2, 3], STATE)
    os.replace(other, cache.path_for(TOKENS))
    assert cache.load(TOKENS) is None


def test_only_the_newest_files_are_kept(tmp_path):
    cache = PrefixCache(tmp_path, IDENTITY, max_files=3)
    paths = []
    for i in range(5):
        paths.append(cache.save([i], STATE))
        os.utime(paths[-1], (1000 + i, 1000 + i))
    cache.save([99], STATE)
    kept = sorted(p.name for p in tmp_path.glob("*.kv"))
    assert kept == sorted(p.name for p in [paths[3], paths[4], cache.path_for([99])])


def test_an_unwritable_cache_is_not_fatal(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("in the way")
    cache = PrefixCache(blocker / "prefix", IDENTITY)
    assert cache.save(TOKENS, STATE) is None
    assert cache.load(TOKENS) is None
