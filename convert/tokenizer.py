"""A checkpoint's tokenizer files (``tokenizer.json`` and friends) as GGUF vocabulary fields.

GGUF's ``gpt2`` tokenizer model stores byte-level BPE exactly as ``tokenizer.json`` does: token
strings in GPT-2's byte alphabet, ``"left right"`` merges, a type per token. The token list is
padded to the embedding's row count with ``[PAD<id>]`` entries, as llama.cpp's converter does.
The bos/eos/pad ids come from the checkpoint's own files, first to last: tokenizer_config.json,
special_tokens_map.json, config.json, generation_config.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gguf import TokenType

from ossrun.errors import ConvertError

from .layout import Layout, read_json

TOKENIZER_FILE = "tokenizer.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
SPECIAL_TOKEN_KINDS = ("bos", "eos", "pad")
# ``tokenizer.ggml.pre`` for o200k's pre-tokenizer regex, as llama.cpp names it.
PRE_TOKENIZER = "gpt-4o"


@dataclass(frozen=True)
class Vocab:
    """Everything GGUF's tokenizer keys hold."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    special_ids: dict[str, int]  # "bos"/"eos"/"pad" -> id
    chat_template: str | None


def find_tokenizer_folder(src: Path, layout: Layout, override: Path | None) -> Path:
    """The folder with tokenizer.json: ``override``, else SRC, else (original layout) its parent."""
    if override is not None:
        if not (override / TOKENIZER_FILE).is_file():
            raise ConvertError(f"--tokenizer {override} has no {TOKENIZER_FILE}: give the folder holding the tokenizer files")
        return override
    candidates = [src, src.resolve().parent] if layout is Layout.ORIGINAL else [src]
    for folder in candidates:
        if (folder / TOKENIZER_FILE).is_file():
            return folder
    where = " or ".join(str(c) for c in candidates)
    raise ConvertError(f"no {TOKENIZER_FILE} in {where}: pass --tokenizer DIR with the checkpoint's tokenizer files")


def _merge_text(merge: object, path: Path) -> str:
    if isinstance(merge, str):
        return merge
    if isinstance(merge, list) and len(merge) == 2 and all(isinstance(p, str) for p in merge):
        # tokenizer.json writes merges as pairs since spaces may occur in them; GGUF keeps one
        # string per merge, so a space inside a part is stored shifted by 256 (as gguf-py does).
        return " ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in merge)
    raise ConvertError(f"{path}: a merge is {merge!r}, neither 'a b' nor ['a', 'b']")


def _special_id(kind: str, documents: list[dict], by_text: dict[str, int]) -> int | None:
    for document in documents:
        value = document.get(f"{kind}_token")
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str) and value in by_text:
            return by_text[value]
        value = document.get(f"{kind}_token_id")
        if isinstance(value, list) and value:
            value = value[0]
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def read_vocab(folder: Path, n_rows: int) -> Vocab:
    """The GGUF vocabulary of the tokenizer in ``folder`` for an embedding of ``n_rows`` rows."""
    path = folder / TOKENIZER_FILE
    tokenizer = read_json(path, "the tokenizer is needed to convert")
    model = tokenizer.get("model")
    if not isinstance(model, dict) or model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise ConvertError(f"{path} is not a byte-level BPE tokenizer (model.type must be BPE with a vocab)")
    by_id: dict[int, str] = {}
    types: dict[int, int] = {}
    for text, token_id in model["vocab"].items():
        by_id[token_id] = text
        types[token_id] = TokenType.NORMAL
    for added in tokenizer.get("added_tokens") or []:
        token_id, text = added.get("id"), added.get("content")
        if not isinstance(token_id, int) or not isinstance(text, str):
            raise ConvertError(f"{path}: added token {added!r} has no integer id and text content")
        by_id[token_id] = text
        types[token_id] = TokenType.CONTROL if added.get("special", True) else TokenType.USER_DEFINED
    too_big = [i for i in by_id if not 0 <= i < n_rows]
    if too_big:
        raise ConvertError(
            f"{path}: token id {max(too_big)} does not fit the embedding's {n_rows} rows: the tokenizer is not this model's"
        )
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(n_rows)]
    token_types = [types.get(i, TokenType.UNUSED) for i in range(n_rows)]
    merges = [_merge_text(m, path) for m in model.get("merges") or []]
    if not merges:
        raise ConvertError(f"{path} has no merges: a byte-level BPE tokenizer needs them")

    def optional(name: str) -> dict:
        path = folder / name
        return read_json(path, "the special token ids are read from it") if path.is_file() else {}

    documents = [
        optional(n) for n in ("tokenizer_config.json", "special_tokens_map.json", "config.json", "generation_config.json")
    ]
    by_text = {text: i for i, text in by_id.items()}
    special_ids = {}
    for kind in SPECIAL_TOKEN_KINDS:
        token_id = _special_id(kind, documents, by_text)
        if token_id is not None and not 0 <= token_id < n_rows:
            raise ConvertError(f"{folder}: the {kind} token id {token_id} is outside the vocabulary of {n_rows} tokens")
        if token_id is not None:
            special_ids[kind] = token_id
    return Vocab(tokens, token_types, merges, special_ids, _chat_template(folder, documents[0]))


def _chat_template(folder: Path, tokenizer_config: dict) -> str | None:
    jinja = folder / CHAT_TEMPLATE_FILE
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = tokenizer_config.get("chat_template")
    return template if isinstance(template, str) else None
