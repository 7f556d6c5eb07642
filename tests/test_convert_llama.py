"""The converted tiny model runs in the real llama.cpp engine (llama-cpp-python)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers.bare_llama import open_llama

pytestmark = pytest.mark.slow

REFERENCE = Path(__file__).parent / "data" / "gpt-oss-20b"
PROMPT = "The quick brown fox jumps over the lazy dog. Ünïcödé and 12345 numbers!"


@pytest.fixture(scope="module")
def tiny_llama(tiny_gguf):
    return open_llama(tiny_gguf, n_ctx=512, n_threads=2, logits_all=True, verbose=False)


def test_llama_cpp_loads_the_tiny_gguf_as_gpt_oss(tiny_llama):
    metadata = tiny_llama.metadata
    assert metadata["general.architecture"] == "gpt-oss"
    assert metadata["gpt-oss.block_count"] == "2"
    assert tiny_llama.n_vocab() == 201088
    assert tiny_llama.token_bos() == 199998
    assert tiny_llama.token_eos() == 200002
    # The published tokenizer files' ids and chat template, and llama.cpp's file type for the layout.
    assert metadata["tokenizer.ggml.padding_token_id"] == "199999"
    assert metadata["tokenizer.ggml.pre"] == "gpt-4o"
    assert metadata["tokenizer.chat_template"] == (REFERENCE / "chat_template.jinja").read_text()
    assert metadata["general.file_type"] == "38"


def test_llama_cpp_tokenizes_like_harmony(tiny_llama, encoding):
    # The GGUF vocabulary (tokens, merges, gpt-4o pre-tokenizer) reproduces o200k exactly.
    text = PROMPT + "\n\n  def f(x):\n\treturn x  # done"
    assert tiny_llama.tokenize(text.encode(), add_bos=False, special=False) == encoding.encode(text, allowed_special=set())
    special = "<|start|>user<|message|>Hi<|end|>"
    assert tiny_llama.tokenize(special.encode(), add_bos=False, special=True) == encoding.encode(special, allowed_special="all")


def test_llama_cpp_evaluates_tokens(tiny_llama, encoding):
    tokens = encoding.encode(PROMPT, allowed_special=set())
    tiny_llama.reset()
    tiny_llama.eval(tokens)
    logits = np.asarray(tiny_llama.scores[: len(tokens)])
    assert logits.shape == (len(tokens), 201088)
    assert np.isfinite(logits).all()
    # Real computation: every position predicts something different, with a spread of logits.
    assert len({int(i) for i in logits.argmax(axis=1)}) > len(tokens) // 2
    assert (logits.std(axis=1) > 0.1).all()
