"""An independent numpy forward pass of gpt-oss, written from the architecture (GPT-OSS.md).

It shares no code with the converter and does not use ``gguf``: it takes the weights as the test
checkpoint builder made them (HF names; dense float32 values, experts as MXFP4 blocks + E8M0
scales), decodes MXFP4 itself and computes in float64.

- pre-norm blocks: RMSNorm -> attention -> residual; RMSNorm -> MoE -> residual; final RMSNorm;
  untied unembedding;
- attention: biased q/k/v/o, grouped-query, RoPE NeoX style (rotate halves) with YaRN (the
  correction range from beta_fast/beta_slow, not rounded, as the model's config says
  ``truncate: false``; cos/sin scaled by the concentration 0.1 ln(factor) + 1), scores scaled by
  1/sqrt(head_dim), a learned sink logit per head joined to the softmax denominator, a sliding
  window of ``sliding_window`` tokens on even layers;
- MoE: router logits -> top-k -> softmax over the k selected; experts with interleaved gate/up rows
  and the clamped SwiGLU ``min(g, L) * sigmoid(1.702 min(g, L)) * (clip(u, -L, L) + 1)``.

llama.cpp differs in one detail: ggml rounds the YaRN correction range outwards
(``ggml_rope_yarn_corr_dims``: floor of the low end, ceil of the high end; 8.09..17.40 becomes 8..18
for gpt-oss), which the published config's ``truncate: false`` and OpenAI's reference do not. Over
a few hundred positions that moves the logits far less than the agreement tests' tolerance
(cosine 0.99999 between the two variants); past a thousand positions llama.cpp measurably follows
the rounded range.
"""

from __future__ import annotations

import math

import numpy as np

FP4_VALUES = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], dtype=np.float64)
SWIGLU_ALPHA = 1.702


def decode_mxfp4(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """``[..., rows, n, 16]`` blocks and ``[..., rows, n]`` E8M0 scales -> ``[..., rows, 32 n]`` values.

    Byte k of a block holds element 2k in its low nibble and element 2k+1 in its high nibble; the
    block's value scale is 2^(scale - 127).
    """
    nibbles = np.stack([blocks & 0x0F, blocks >> 4], axis=-1)  # [..., n, 16, 2]: (2k, 2k+1)
    values = FP4_VALUES[nibbles].reshape(*blocks.shape[:-1], 32)
    values = values * np.ldexp(1.0, scales.astype(np.int64) - 127)[..., None]
    return values.reshape(*scales.shape[:-1], scales.shape[-1] * 32)


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def yarn_rope(config, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin ``[T, head_dim/2]`` of YaRN-scaled RoPE, already multiplied by the concentration."""
    d, base, factor = config.head_dim, config.rope_theta, config.rope_factor
    half = d // 2
    extrapolation = base ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    interpolation = extrapolation / factor

    def correction_dim(rotations: float) -> float:
        # The dimension pair whose wavelength fits ``rotations`` times into the original context.
        return half * math.log(config.rope_original_context / (rotations * 2 * math.pi)) / math.log(base)

    low, high = correction_dim(config.rope_beta_fast), correction_dim(config.rope_beta_slow)
    ramp = np.clip((np.arange(half) - low) / (high - low), 0.0, 1.0)
    extrapolate = 1.0 - ramp  # 1 for the fast (high-frequency) pairs, 0 for the slow ones
    inv_freq = interpolation * (1 - extrapolate) + extrapolation * extrapolate
    concentration = 0.1 * math.log(factor) + 1.0
    angles = positions[:, None].astype(np.float64) * inv_freq[None, :]
    return np.cos(angles) * concentration, np.sin(angles) * concentration


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """NeoX style: the first half of each head rotates with the second half. x is ``[T, heads, d]``."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


def attention(config, w: dict, layer: int, x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    p = f"model.layers.{layer}.self_attn."
    T, hd = x.shape[0], config.head_dim
    q = (x @ w[p + "q_proj.weight"].T + w[p + "q_proj.bias"]).reshape(T, config.n_heads, hd)
    k = (x @ w[p + "k_proj.weight"].T + w[p + "k_proj.bias"]).reshape(T, config.n_kv_heads, hd)
    v = (x @ w[p + "v_proj.weight"].T + w[p + "v_proj.bias"]).reshape(T, config.n_kv_heads, hd)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    group = config.n_heads // config.n_kv_heads
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)  # head h uses KV head h // group
    scores = np.einsum("thd,shd->hts", q, k) / math.sqrt(hd)
    t, s = np.arange(T)[:, None], np.arange(T)[None, :]
    allowed = s <= t
    if layer % 2 == 0:
        allowed &= t - s < config.sliding_window
    scores = np.where(allowed[None], scores, -np.inf)
    sinks = w[p + "sinks"].astype(np.float64)[:, None, None]
    top = np.maximum(scores.max(axis=-1, keepdims=True), sinks)
    weights = np.exp(scores - top)
    probs = weights / (weights.sum(axis=-1, keepdims=True) + np.exp(sinks - top))  # the sink takes mass, gives nothing
    out = np.einsum("hts,shd->thd", probs, v).reshape(T, config.n_heads * hd)
    return out @ w[p + "o_proj.weight"].T + w[p + "o_proj.bias"]


def experts(config, w: dict, layer: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The MoE output ``[T, hidden]`` and the router logits ``[T, experts]``."""
    p = f"model.layers.{layer}.mlp."
    logits = x @ w[p + "router.weight"].T + w[p + "router.bias"]
    chosen = np.argsort(-logits, axis=-1, kind="stable")[:, : config.n_experts_used]
    picked = np.take_along_axis(logits, chosen, axis=-1)
    gates = np.exp(picked - picked.max(axis=-1, keepdims=True))
    gates /= gates.sum(axis=-1, keepdims=True)
    up_w = decode_mxfp4(w[p + "experts.gate_up_proj_blocks"], w[p + "experts.gate_up_proj_scales"])
    down_w = decode_mxfp4(w[p + "experts.down_proj_blocks"], w[p + "experts.down_proj_scales"])
    up_b, down_b = w[p + "experts.gate_up_proj_bias"], w[p + "experts.down_proj_bias"]
    limit = config.swiglu_limit
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        for slot, e in enumerate(chosen[t]):
            h = up_w[e] @ x[t] + up_b[e]
            gate, up = np.minimum(h[0::2], limit), np.clip(h[1::2], -limit, limit)
            glu = gate / (1.0 + np.exp(-SWIGLU_ALPHA * gate)) * (up + 1.0)
            out[t] += gates[t, slot] * (down_w[e] @ glu + down_b[e])
    return out, logits


def forward(config, weights: dict, tokens: list[int]) -> dict[str, np.ndarray]:
    """Logits ``[T, vocab]`` for ``tokens`` at positions 0..T-1, plus the router logits per layer."""
    w = {name: np.asarray(a, dtype=np.float64) if a.dtype == np.float32 else a for name, a in weights.items()}
    eps = config.rms_norm_eps
    x = w["model.embed_tokens.weight"][np.asarray(tokens)]
    cos, sin = yarn_rope(config, np.arange(len(tokens)))
    routers = []
    for layer in range(config.n_layers):
        p = f"model.layers.{layer}."
        x = x + attention(config, w, layer, rms_norm(x, w[p + "input_layernorm.weight"], eps), cos, sin)
        moe, router_logits = experts(config, w, layer, rms_norm(x, w[p + "post_attention_layernorm.weight"], eps))
        x = x + moe
        routers.append(router_logits)
    hidden = rms_norm(x, w["model.norm.weight"], eps)
    return {"logits": hidden @ w["lm_head.weight"].T, "hidden": hidden, "routers": np.stack(routers)}
