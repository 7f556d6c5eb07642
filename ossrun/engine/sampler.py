"""Sampling with llama.cpp: the sampler chain of OpenAI's gpt-oss settings, and grammars.

The scheduler's thread draws every token through a :class:`ConstrainedSampler` (one per
sequence): temperature, top_p and a seed, a constraint's banned tokens, and a grammar that
checks the drawn token and redraws only when it is refused.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

import llama_cpp

from ossrun.engine.protocol import Sampling
from ossrun.errors import ModelError


def build_sampler_chain(sampling: Sampling, vocab: Any = None) -> Any:
    """llama.cpp's sampler chain for OpenAI's gpt-oss settings: temperature and top_p, nothing else.

    No top-k or min-p stage (llama-cpp-python's own defaults add top_k 40 and min_p 0.05);
    temperature 0 is greedy decoding. A constraint's banned tokens come first (its grammar is
    a sampler of its own: see :class:`ConstrainedSampler`).
    """
    params = llama_cpp.llama_sampler_chain_default_params()
    params.no_perf = True
    chain = llama_cpp.llama_sampler_chain_init(params)
    if sampling.constraint is not None and sampling.constraint.banned:
        banned = sorted(sampling.constraint.banned)
        biases = (llama_cpp.llama_logit_bias * len(banned))()
        for i, token in enumerate(banned):
            # llama_cpp annotates the fields with their ctypes types; ctypes converts the int as it stores it
            biases[i].token, biases[i].bias = token, float("-inf")  # type: ignore[assignment]
        n_vocab = llama_cpp.llama_vocab_n_tokens(vocab) if vocab is not None else max(banned) + 1
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(biases), biases))
    if sampling.temperature <= 0:
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        return chain
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_temp(sampling.temperature))
    if sampling.top_p < 1.0:
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_p(sampling.top_p, 1))
    seed = llama_cpp.LLAMA_DEFAULT_SEED if sampling.seed is None else sampling.seed % 2**32
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(seed))
    return chain


def build_grammar(grammar_text: str, triggers: Sequence[str], vocab: Any) -> Any:
    """llama.cpp's grammar sampler for a GBNF grammar (lazy when it has triggers)."""
    grammar, root = grammar_text.encode(), b"root"
    if triggers:
        patterns = (ctypes.c_char_p * len(triggers))(*(p.encode() for p in triggers))
        sampler = llama_cpp.llama_sampler_init_grammar_lazy_patterns(vocab, grammar, root, patterns, len(patterns), None, 0)
    else:
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar, root)
    if not sampler:
        raise ModelError("llama.cpp could not parse the grammar for this request's output format: run with --verbose to see why")
    return sampler


_TOKEN_DATA = None  # numpy dtype of llama_token_data, made on first use


class ConstrainedSampler:
    """A sampler chain and, for a constrained request, a grammar checked after the draw.

    Applying a grammar to all 201k candidates costs far more than a decode step of a small
    model, so, as llama.cpp's own samplers do, the token is drawn first and checked alone;
    only when the grammar rejects it is the draw made again over the candidates it allows.
    """

    def __init__(self, sampling: Sampling, vocab: Any):
        self.chain = build_sampler_chain(sampling, vocab)
        self.grammar: Any = None
        constraint = sampling.constraint
        if constraint is not None and constraint.grammar is not None:
            try:
                self.grammar = build_grammar(constraint.grammar, constraint.triggers, vocab)
            except BaseException:
                llama_cpp.llama_sampler_free(self.chain)
                raise
        self._single = llama_cpp.llama_token_data_array(
            data=(llama_cpp.llama_token_data * 1)(), size=1, selected=-1, sorted=False
        )

    def sample(self, ctx: Any, index: int, n_vocab: int) -> int:
        token = llama_cpp.llama_sampler_sample(self.chain, ctx, index)
        if self.grammar is None:
            return token
        single = self._single
        single.data[0].id, single.data[0].logit, single.data[0].p = token, 0.0, 0.0
        single.size, single.selected = 1, -1
        llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(single))
        if single.data[0].logit != float("-inf"):
            llama_cpp.llama_sampler_accept(self.grammar, token)
            return token
        token = self._resample(ctx, index, n_vocab)
        llama_cpp.llama_sampler_accept(self.grammar, token)
        return token

    def _resample(self, ctx: Any, index: int, n_vocab: int) -> int:
        import numpy as np

        global _TOKEN_DATA
        if _TOKEN_DATA is None:
            _TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, index), shape=(n_vocab,))
        candidates = np.empty(n_vocab, dtype=_TOKEN_DATA)
        candidates["id"], candidates["logit"], candidates["p"] = np.arange(n_vocab, dtype=np.int32), logits, 0.0
        array = llama_cpp.llama_token_data_array(
            data=candidates.ctypes.data_as(llama_cpp.llama_token_data_p), size=n_vocab, selected=-1, sorted=False
        )
        llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(array))
        llama_cpp.llama_sampler_apply(self.chain, ctypes.byref(array))
        if array.selected < 0:
            raise ModelError("no token fits this request's output format: the grammar allows nothing here")
        return int(array.data[array.selected].id)

    def free(self) -> None:
        llama_cpp.llama_sampler_free(self.chain)
        if self.grammar is not None:
            llama_cpp.llama_sampler_free(self.grammar)
