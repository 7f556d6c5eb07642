"""The o200k vocabulary of gpt-oss and its codecs.

gpt-oss uses ``o200k_harmony``: the o200k_base byte-level BPE (ranks 0..199997, read from an
``o200k_base.tiktoken`` file of ``base64(bytes) rank`` lines) plus the harmony special tokens
199998..200018. This module turns such a file into the Hugging Face ``tokenizer.json`` (and its
companion files) that the published checkpoints carry: the merges are recovered by running BPE on
each token's bytes with lower-ranked merges only, which is exactly how a rank table encodes them.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

from ossrun.errors import VocabError

# The harmony special tokens as the published gpt-oss tokenizer.json names them; the other ids of
# FIRST_SPECIAL_ID..LAST_SPECIAL_ID are <|reserved_ID|>.
NAMED_SPECIAL_TOKENS = {
    199998: "<|startoftext|>",
    199999: "<|endoftext|>",
    200002: "<|return|>",
    200003: "<|constrain|>",
    200005: "<|channel|>",
    200006: "<|start|>",
    200007: "<|end|>",
    200008: "<|message|>",
    200012: "<|call|>",
    200018: "<|endofprompt|>",
}
FIRST_SPECIAL_ID = 199998
LAST_SPECIAL_ID = 200018
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|return|>"
PAD_TOKEN = "<|endoftext|>"
DEFAULT_MODEL_MAX_LENGTH = 131072

# tiktoken's o200k_base pre-tokenizer pattern.
O200K_PATTERN = "|".join(
    [
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"\p{N}{1,3}",
        r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
        r"\s*[\r\n]+",
        r"\s+(?!\S)",
        r"\s+",
    ]
)

# The files write_tokenizer_files() writes, as a Hugging Face checkpoint names them.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: every byte as a printable character (bytes of printable
    Latin-1 stand for themselves; the others are shifted to U+0100 and up)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shifted)
            shifted += 1
    return mapping


def token_to_text(token: bytes) -> str:
    """A token's bytes in the byte-level alphabet, as tokenizer.json and GGUF store them."""
    table = byte_to_unicode()
    return "".join(table[b] for b in token)


def read_tiktoken(path: str | os.PathLike[str]) -> dict[bytes, int]:
    """The ranks of a ``.tiktoken`` file (``base64(bytes) rank`` per line)."""
    path = Path(path)
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise VocabError(f"cannot read the vocabulary {path}: {exc.strerror or exc}") from exc
    ranks: dict[bytes, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            encoded, rank = line.split()
            ranks[base64.b64decode(encoded, validate=True)] = int(rank)
        except ValueError as exc:
            raise VocabError(f"{path}: line {number} is not 'base64 rank': the file is not a .tiktoken vocabulary") from exc
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise VocabError(f"{path}: the ranks are not 0..{len(ranks) - 1} without gaps: the file is damaged")
    return ranks


def _split_with_lower_ranks(token: bytes, ranks: Mapping[bytes, int]) -> list[bytes]:
    """BPE on ``token`` using only merges ranked below the token itself."""
    limit = ranks[token]
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best_rank, best_at = limit, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best_rank, best_at = rank, i
        if best_at < 0:
            break
        parts[best_at : best_at + 2] = [parts[best_at] + parts[best_at + 1]]
    return parts


def recover_merges(ranks: Mapping[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The BPE merges implied by a rank table, in the order of the tokens they produce."""
    merges = []
    for token, _ in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) < 2:
            continue
        parts = _split_with_lower_ranks(token, ranks)
        if len(parts) != 2:
            raise VocabError(f"token {token!r} (rank {ranks[token]}) cannot be built from two lower-ranked tokens")
        merges.append((parts[0], parts[1]))
    return merges


def special_tokens() -> dict[int, str]:
    """Every added token of o200k_harmony, by id."""
    return {
        token_id: NAMED_SPECIAL_TOKENS.get(token_id, f"<|reserved_{token_id}|>")
        for token_id in range(FIRST_SPECIAL_ID, LAST_SPECIAL_ID + 1)
    }


def _added_token(token_id: int, content: str) -> dict:
    return {
        "id": token_id,
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": True,
    }


def build_tokenizer_json(ranks: Mapping[bytes, int]) -> dict:
    """The Hugging Face ``tokenizer.json`` of o200k_harmony built from o200k_base ranks."""
    if len(ranks) != FIRST_SPECIAL_ID:
        raise VocabError(f"o200k_base has {FIRST_SPECIAL_ID} tokens, this vocabulary has {len(ranks)}")
    vocab = {token_to_text(token): rank for token, rank in sorted(ranks.items(), key=lambda item: item[1])}
    merges = [[token_to_text(a), token_to_text(b)] for a, b in recover_merges(ranks)]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [_added_token(i, content) for i, content in special_tokens().items()],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": O200K_PATTERN}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        },
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": vocab,
            "merges": merges,
        },
    }


def build_tokenizer_config() -> dict:
    """``tokenizer_config.json`` as published with gpt-oss (the chat template ships separately)."""
    decoder = {}
    for token_id, content in special_tokens().items():
        entry = _added_token(token_id, content)
        del entry["id"]
        decoder[str(token_id)] = dict(sorted(entry.items()))
    return {
        "added_tokens_decoder": decoder,
        "bos_token": BOS_TOKEN,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS_TOKEN,
        "extra_special_tokens": {},
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": DEFAULT_MODEL_MAX_LENGTH,
        "pad_token": PAD_TOKEN,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def build_special_tokens_map() -> dict:
    return {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN}


def write_tokenizer_files(tiktoken_path: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    contents = (build_tokenizer_json(read_tiktoken(tiktoken_path)), build_tokenizer_config(), build_special_tokens_map())
    documents = dict(zip(TOKENIZER_FILES, contents, strict=True))
    for name, document in documents.items():
        part = out_dir / f"{name}.part"
        indent = None if name == "tokenizer.json" else 2  # the 8 MB one stays compact
        part.write_text(json.dumps(document, ensure_ascii=False, indent=indent), encoding="utf-8")
        part.replace(out_dir / name)
    return out_dir
