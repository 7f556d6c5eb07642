"""Is a downloaded file the one the hub published? Hashes, and a record of files already checked.

The hub publishes a sha256 for large (LFS) files and a git blob SHA-1 for small ones, and names
the blobs of its download cache after them. Hashing a 12 GB file takes a while, so a file that
passed is recorded (path, size, mtime, expected hash) in the ossrun home and not hashed again
until it changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ossrun import home as ossrun_home

RECORD_FILE_NAME = "verified.json"
RECORD_VERSION = 1
HASH_CHUNK_BYTES = 8 * 1024 * 1024

SHA256 = "sha256"
GIT_SHA1 = "git-sha1"  # sha1 of b"blob <size>\0" + content: git's object id of the file
_HEX = re.compile(r"^[0-9a-f]+$")


@dataclass(frozen=True)
class ExpectedHash:
    algorithm: str  # SHA256 or GIT_SHA1
    digest: str  # lowercase hex

    @classmethod
    def from_etag(cls, etag: str) -> ExpectedHash | None:
        """The hash a hub ETag (or a cache blob name) stands for: 64 hex digits sha256, 40 a git id."""
        etag = etag.strip('"').lower()
        if not _HEX.match(etag):
            return None
        if len(etag) == 64:
            return cls(SHA256, etag)
        if len(etag) == 40:
            return cls(GIT_SHA1, etag)
        return None

    def __str__(self) -> str:
        return f"{self.algorithm} {self.digest}"


def file_digest(path: Path, algorithm: str, progress: Callable[[int], None] | None = None) -> str:
    """Hex digest of the file; ``progress`` is called with the number of bytes read after each chunk."""
    if algorithm == SHA256:
        digest = hashlib.sha256()
    elif algorithm == GIT_SHA1:
        digest = hashlib.sha1()
        digest.update(b"blob %d\0" % path.stat().st_size)
    else:
        raise ValueError(f"unknown hash algorithm {algorithm!r}")
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
            if progress is not None:
                progress(len(chunk))
    return digest.hexdigest()


def record_path() -> Path:
    return ossrun_home.home() / RECORD_FILE_NAME


def _key(path: Path) -> str:
    return os.path.realpath(path)


def _fingerprint(path: Path) -> dict:
    stat = os.stat(path)
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _load() -> dict:
    try:
        data = json.loads(record_path().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != RECORD_VERSION or not isinstance(data.get("files"), dict):
        return {}
    return data["files"]


def _save(files: dict) -> None:
    record = json.dumps({"version": RECORD_VERSION, "files": files}, indent=1, sort_keys=True)
    ossrun_home.write_atomically(record_path(), record.encode())  # readers never see half a record


def recorded_hash(path: Path) -> ExpectedHash | None:
    """The hash ``path`` was verified against, if it was and has not changed since."""
    entry = _load().get(_key(path))
    if not isinstance(entry, dict):
        return None
    try:
        if {"size": entry["size"], "mtime_ns": entry["mtime_ns"]} != _fingerprint(path):
            return None
        return ExpectedHash(entry["algorithm"], entry["digest"])
    except (KeyError, OSError):
        return None


def is_verified(path: Path, expected: ExpectedHash) -> bool:
    return recorded_hash(path) == expected


def record_verified(path: Path, expected: ExpectedHash) -> None:
    files = {key: value for key, value in _load().items() if os.path.exists(key)}  # drop deleted files
    files[_key(path)] = {**_fingerprint(path), "algorithm": expected.algorithm, "digest": expected.digest}
    _save(files)


def forget(paths: list[Path]) -> None:
    files = _load()
    keys = {_key(p) for p in paths}
    if keys & files.keys():
        _save({k: v for k, v in files.items() if k not in keys})


def verify(path: Path, expected: ExpectedHash, progress: Callable[[int], None] | None = None) -> bool:
    """True if the file's bytes hash to ``expected``: from the record, or hashed now and recorded."""
    if is_verified(path, expected):
        return True
    if file_digest(path, expected.algorithm, progress) != expected.digest:
        return False
    record_verified(path, expected)
    return True
