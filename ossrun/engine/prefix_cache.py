"""The KV state of a prompt's shared prefix, kept on disk between sessions.

Every prompt starts with the rendered system and developer messages. Their
keys and values depend only on the model file, the context settings, the
llama.cpp build and the exact token ids, so a file named by a hash of all of
those lets a new session skip re-processing them. Files are written atomically
and carry a checksum of the state: a damaged file is ignored and replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ossrun.home import write_atomically

DEFAULT_MAX_FILES = 16  # the newest files are kept; a prefix is a few MB for gpt-oss-20b
_MAGIC = b"ossrun-kv-prefix\n"
_SUFFIX = ".kv"


def _token_bytes(tokens: Sequence[int]) -> bytes:
    return struct.pack(f"<{len(tokens)}I", *tokens)


class PrefixCache:
    """Prefix states in ``directory`` for the engine described by ``identity``.

    ``identity`` holds everything besides the tokens that the state depends on
    (model file, context size, cache layout, llama.cpp version).
    """

    def __init__(self, directory: Path, identity: Mapping[str, Any], *, max_files: int = DEFAULT_MAX_FILES):
        self.directory = Path(directory)
        self._identity = json.dumps(dict(identity), sort_keys=True)
        self._max_files = max_files

    def path_for(self, tokens: Sequence[int]) -> Path:
        digest = hashlib.sha256(self._identity.encode() + b"\0" + _token_bytes(tokens)).hexdigest()
        return self.directory / f"{digest[:32]}{_SUFFIX}"

    def load(self, tokens: Sequence[int]) -> bytes | None:
        """The saved state of exactly ``tokens``, or None (a damaged file is removed)."""
        path = self.path_for(tokens)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        state = self._unpack(data, tokens)
        if state is None:
            self.discard(tokens)
            return None
        try:
            os.utime(path)  # most recently used: kept longest
        except OSError:
            pass
        return state

    def _unpack(self, data: bytes, tokens: Sequence[int]) -> bytes | None:
        if not data.startswith(_MAGIC):
            return None
        offset = len(_MAGIC)
        try:
            (header_size,) = struct.unpack_from("<I", data, offset)
            header = json.loads(data[offset + 4 : offset + 4 + header_size])
        except (struct.error, ValueError):
            return None
        offset += 4 + header_size
        expected_tokens = _token_bytes(tokens)
        if header.get("identity") != self._identity or data[offset : offset + len(expected_tokens)] != expected_tokens:
            return None
        state = data[offset + len(expected_tokens) :]
        if len(state) != header.get("state_size") or hashlib.sha256(state).hexdigest() != header.get("state_sha256"):
            return None
        return state

    def save(self, tokens: Sequence[int], state: bytes) -> Path | None:
        """Store ``state`` for ``tokens``; a cache that cannot be written is skipped, not fatal."""
        header = json.dumps(
            {
                "identity": self._identity,
                "n_tokens": len(tokens),
                "state_size": len(state),
                "state_sha256": hashlib.sha256(state).hexdigest(),
            }
        ).encode()
        path = self.path_for(tokens)
        try:
            write_atomically(path, _MAGIC + struct.pack("<I", len(header)) + header + _token_bytes(tokens) + state)
        except OSError:
            return None
        self._evict()
        return path

    def discard(self, tokens: Sequence[int]) -> None:
        self.path_for(tokens).unlink(missing_ok=True)

    def _evict(self) -> None:
        try:
            files = sorted(self.directory.glob(f"*{_SUFFIX}"), key=lambda p: p.stat().st_mtime, reverse=True)
            for old in files[self._max_files :]:
                old.unlink(missing_ok=True)
        except OSError:
            pass
