"""``o200k_base.tiktoken`` for harmony, derived from the model file itself.

openai-harmony reads the o200k vocabulary from a ``.tiktoken`` file (and would
download it otherwise). A gpt-oss GGUF holds the same 199,998 ranked tokens, so
the file is rebuilt from the GGUF's own token bytes (``base64(bytes) rank`` lines)
and accepted only if its sha256 is the published one: a GGUF with any other
vocabulary is refused. The file is cached in the ossrun home, and each model file
already checked is remembered there, so later loads skip the derivation.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ossrun import home
from ossrun.errors import VocabError

VOCAB_FILE = "o200k_base.tiktoken"
O200K_BASE_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
O200K_BASE_TOKENS = 199998  # ranks 0..199997; the harmony special tokens follow


def vocab_dir() -> Path:
    return home.cache_dir() / "vocab"


def tiktoken_text(pieces: Sequence[bytes]) -> bytes:
    """The ``.tiktoken`` file for tokens ranked in order: ``base64(bytes) rank`` per line."""
    return b"".join(base64.b64encode(piece) + b" %d\n" % rank for rank, piece in enumerate(pieces))


def _sha256_of(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _marker(identity: Mapping[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(dict(identity), sort_keys=True).encode()).hexdigest()
    return vocab_dir() / "checked" / f"{digest[:32]}.json"


def ensure_o200k(identity: Mapping[str, Any], read_pieces: Callable[[], Sequence[bytes]], model_name: str) -> Path:
    """The folder holding a verified ``o200k_base.tiktoken`` for the model file ``identity`` names.

    ``read_pieces`` returns the model's token bytes for ranks 0..199997; it is only
    called when this model file has not been checked before or the cached file is damaged.
    """
    folder = vocab_dir()
    target = folder / VOCAB_FILE
    marker = _marker(identity)
    cached_ok = _sha256_of(target) == O200K_BASE_SHA256
    if cached_ok and marker.is_file():
        return folder
    pieces = read_pieces()
    data = tiktoken_text(pieces[:O200K_BASE_TOKENS])
    if len(pieces) < O200K_BASE_TOKENS or hashlib.sha256(data).hexdigest() != O200K_BASE_SHA256:
        raise VocabError(
            f"{model_name} does not use the o200k vocabulary of gpt-oss "
            f"(its first {O200K_BASE_TOKENS} tokens differ): ossrun runs gpt-oss models converted from the published tokenizer"
        )
    try:
        if not cached_ok:
            home.write_atomically(target, data)
        home.write_atomically(marker, json.dumps(dict(identity), sort_keys=True).encode())
    except OSError as exc:
        raise VocabError(f"cannot write the vocabulary cache in {folder}: {exc.strerror or exc}") from exc
    return folder
