"""ossrun.harmony.vocab: the o200k_harmony tokenizer.json built from o200k_base.tiktoken."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tokenizers

from ossrun.errors import VocabError
from ossrun.harmony import vocab
from ossrun.store.demo import vocab_file

REFERENCE_TOKENIZER_CONFIG = Path(__file__).parent / "data" / "gpt-oss-20b" / "tokenizer_config.json"

TEXTS = [
    "Hello, world! It's 12345 dogs and 3.14159 cats.\n\n    indented\tcode  ",
    "Ünïcödé: 日本語のテキスト, Ελληνικά, русский 🤖🎉 — “quotes”",
    "def f(x):\r\n    return x ** 2  # it'll RETURN, won't it?\n\n\n",
    "<|start|>user<|message|>What is 2+2?<|end|><|start|>assistant<|channel|>final<|message|>4<|return|>",
    "   leading spaces and trailing   \n",
    "URL: https://example.com/a/b?c=d&e=f#g  and an e-mail: someone@example.org",
]


@pytest.fixture(scope="module")
def hf_tokenizer(o200k_tokenizer_dir):
    return tokenizers.Tokenizer.from_file(str(o200k_tokenizer_dir / "tokenizer.json"))


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_json_encodes_like_harmony(hf_tokenizer, encoding, text):
    ids = hf_tokenizer.encode(text).ids
    expected = encoding.encode(text, allowed_special="all")
    assert ids == expected, f"{ids} != {expected}: {[encoding.decode([i]) for i in ids]}"
    assert hf_tokenizer.decode(ids, skip_special_tokens=False) == text


def test_every_rank_is_one_token(hf_tokenizer, encoding):
    # Every o200k token decodes to its own bytes and re-encodes to itself (checks vocab and merges).
    ranks = vocab.read_tiktoken(vocab_file())  # the vocabulary ossrun ships
    sample = [token for token, rank in ranks.items() if rank % 97 == 0]
    for token in sample:
        text = token.decode("utf-8", errors="strict") if _is_utf8(token) else None
        if text is None:
            continue
        assert hf_tokenizer.encode(text).ids == encoding.encode(text, allowed_special=set())


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_added_tokens_match_the_published_tokenizer(o200k_tokenizer_dir):
    published = json.loads(REFERENCE_TOKENIZER_CONFIG.read_text())
    built_config = json.loads((o200k_tokenizer_dir / "tokenizer_config.json").read_text())
    assert built_config == {**published, "model_max_length": vocab.DEFAULT_MODEL_MAX_LENGTH}
    tokenizer = json.loads((o200k_tokenizer_dir / "tokenizer.json").read_text())
    added = {t["id"]: t for t in tokenizer["added_tokens"]}
    assert sorted(added) == list(range(199998, 200019))
    for token_id, entry in published["added_tokens_decoder"].items():
        assert {k: v for k, v in added[int(token_id)].items() if k != "id"} == entry
    assert json.loads((o200k_tokenizer_dir / "special_tokens_map.json").read_text()) == {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|return|>",
        "pad_token": "<|endoftext|>",
    }


def test_vocab_and_merges_sizes(o200k_tokenizer_dir):
    model = json.loads((o200k_tokenizer_dir / "tokenizer.json").read_text())["model"]
    assert len(model["vocab"]) == 199998
    assert sorted(model["vocab"].values()) == list(range(199998))
    # Every multi-byte token is one merge of two lower-ranked tokens: 199998 - 256 single bytes.
    assert len(model["merges"]) == 199998 - 256
    assert model["merges"][0] == ["Ġ", "Ġ"]


def test_recover_merges_of_a_small_rank_table():
    ranks = {b"a": 0, b"b": 1, b"c": 2, b"ab": 3, b"abc": 4, b"bc": 5, b"abcbc": 6}
    assert vocab.recover_merges(ranks) == [(b"a", b"b"), (b"ab", b"c"), (b"b", b"c"), (b"abc", b"bc")]


def test_a_token_without_two_parents_is_an_error():
    with pytest.raises(VocabError, match="cannot be built from two lower-ranked tokens"):
        vocab.recover_merges({b"a": 0, b"b": 1, b"c": 2, b"abc": 3})


def test_byte_alphabet_is_gpt2s():
    table = vocab.byte_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("A")] == "A"


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not base64!! 0\n", "line 1 is not 'base64 rank'"),
        (b"IQ== 0\nIg== 2\n", "not 0..1 without gaps"),
    ],
)
def test_damaged_tiktoken_files_are_reported(tmp_path, content, message):
    path = tmp_path / "bad.tiktoken"
    path.write_bytes(content)
    with pytest.raises(VocabError, match=message):
        vocab.read_tiktoken(path)


def test_missing_tiktoken_file_is_reported(tmp_path):
    with pytest.raises(VocabError, match="cannot read the vocabulary"):
        vocab.read_tiktoken(tmp_path / "absent.tiktoken")
