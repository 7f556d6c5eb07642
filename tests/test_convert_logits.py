"""llama.cpp's logits on a converted checkpoint agree with an independent numpy forward pass.

The test model (tests/checkpoints.py ``make_clear_margin_weights``) is random but built so that
router choices and the top-1 token win by margins far above the noise of llama.cpp's quantized
activations and Q8_0 weights; otherwise a near-tie flips on rounding alone and says nothing about
the converter. 260 positions cover both the sliding window (128, even layers) and full attention.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from helpers import reference_forward
from helpers.bare_llama import open_llama
from helpers.checkpoints import TinyConfig, make_clear_margin_weights, write_hf_checkpoint

pytestmark = pytest.mark.slow

N_POSITIONS = 260
MIN_MEAN_COSINE = 0.999
MIN_TOP1 = 0.97


@pytest.fixture(scope="module")
def model():
    config = TinyConfig()
    weights = make_clear_margin_weights(config, seed=3)
    tokens = [int(t) for t in np.random.default_rng(4).integers(0, 199998, N_POSITIONS)]
    return config, weights, tokens


@pytest.fixture(scope="module")
def reference_logits(model):
    config, weights, tokens = model
    return reference_forward.forward(config, weights, tokens)["logits"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, model, o200k_tokenizer_dir):
    config, weights, _ = model
    return write_hf_checkpoint(tmp_path_factory.mktemp("margins"), weights, config, o200k_tokenizer_dir)


def llama_logits(gguf_path, tokens):
    llama = open_llama(gguf_path, n_ctx=512, n_threads=2, logits_all=True, swa_full=True, verbose=False)
    try:
        llama.eval(tokens)
        return np.array(llama.scores[: len(tokens)], dtype=np.float64)
    finally:
        llama.close()


def agreement(reference, logits):
    cosine = (reference * logits).sum(axis=1) / np.linalg.norm(reference, axis=1) / np.linalg.norm(logits, axis=1)
    top1 = (reference.argmax(axis=1) == logits.argmax(axis=1)).mean()
    return cosine, top1


@pytest.fixture(scope="module")
def converted_logits(tmp_path_factory, checkpoint, model):
    """outtype -> llama.cpp's logits for the checkpoint converted with that outtype (made once)."""
    from ossrun.convert import convert

    cache: dict[str, np.ndarray] = {}

    def logits(outtype: str) -> np.ndarray:
        if outtype not in cache:
            out = convert(checkpoint, tmp_path_factory.mktemp("margins-gguf") / f"model-{outtype}.gguf", outtype=outtype)
            cache[outtype] = llama_logits(out, model[2])
        return cache[outtype]

    return logits


@pytest.mark.parametrize("outtype", ["bf16", "q8_0"])
def test_llama_cpp_logits_agree_with_the_reference(outtype, converted_logits, reference_logits):
    logits = converted_logits(outtype)
    cosine, top1 = agreement(reference_logits, logits)
    print(f"{outtype}: mean cosine {cosine.mean():.6f} (min {cosine.min():.6f}), top-1 agreement {top1:.1%}")
    assert cosine.mean() >= MIN_MEAN_COSINE, (
        f"{outtype}: mean cosine {cosine.mean():.6f}, worst positions {np.argsort(cosine)[:5]}"
    )
    assert top1 >= MIN_TOP1, f"{outtype}: top-1 agreement {top1:.1%}"
    # Past the window too: positions that no longer see the start still agree.
    assert cosine[128:].mean() >= MIN_MEAN_COSINE


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param(lambda c, w: (replace(c, sliding_window=10**6), w), id="no-sliding-window"),
        pytest.param(lambda c, w: (c, {**w, **{k: w[k] - 1e4 for k in w if k.endswith("sinks")}}), id="no-sinks"),
        pytest.param(lambda c, w: (replace(c, rope_factor=1.0), w), id="no-yarn"),
    ],
)
def test_the_agreement_detects_a_wrong_architecture(broken, model, converted_logits):
    # The same comparison against a deliberately wrong reference must fail: the test really
    # exercises the window, the sinks and YaRN.
    config, weights, tokens = model
    wrong_config, wrong_weights = broken(config, weights)
    wrong = reference_forward.forward(wrong_config, wrong_weights, tokens)["logits"]
    cosine, _ = agreement(wrong, converted_logits("bf16"))
    assert cosine.mean() < MIN_MEAN_COSINE
