"""gpt-oss in float32 torch, computed the way llama.cpp computes it, over a reduced vocabulary.

Pre-norm blocks (RMSNorm, eps 1e-5); attention with biases, grouped KV heads, NeoX RoPE with YaRN
as ggml applies it (correction dims floored/ceiled, cos and sin scaled by 0.1·ln(factor)+1), one
learned sink logit per head, a 128-token sliding window on even layers; a mixture of experts routed
top-k with a softmax over the selected logits and the clamped SwiGLU (alpha 1.702, limit 7);
experts fake-quantized to MXFP4. Untied unembedding, no bias.

Residual dimension 0 is a constant: every embedding row holds ``constant`` there and nothing
writes to it (its rows of the attention output and expert down projections, and their biases,
are zero), so after the final norm it is constant/rms(x) > 0. At export the unembedding rows of
the ~200k unused tokens become -S·e0, giving them logits far below every real token's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .mxfp4 import fake_quantize


@dataclass(frozen=True)
class Config:
    vocab: int  # reduced vocabulary, UNK (index 0) included
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 64
    experts: int = 4
    experts_used: int = 2
    expert_ff: int = 256
    sliding_window: int = 128
    rope_theta: float = 150000.0
    rope_factor: float = 32.0
    rope_original_context: int = 4096
    rope_beta_fast: float = 32.0
    rope_beta_slow: float = 1.0
    swiglu_alpha: float = 1.702
    swiglu_limit: float = 7.0
    rms_eps: float = 1e-5
    constant: float = 1.0  # the value of residual dimension 0

    def to_dict(self) -> dict:
        return asdict(self)


def yarn_cos_sin(config: Config, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [T, head_dim/2] of ggml's rope_yarn (NeoX pairs i and i + head_dim/2)."""
    dims = config.head_dim
    freq_scale = 1.0 / config.rope_factor

    def corr_dim(rotations: float) -> float:
        return dims * math.log(config.rope_original_context / (rotations * 2 * math.pi)) / (2 * math.log(config.rope_theta))

    low = max(0.0, math.floor(corr_dim(config.rope_beta_fast)))
    high = min(dims - 1.0, math.ceil(corr_dim(config.rope_beta_slow)))
    pair = torch.arange(dims // 2, dtype=torch.float64)
    ramp = 1.0 - ((pair - low) / max(0.001, high - low)).clamp(0.0, 1.0)  # 1: extrapolate, 0: interpolate
    inv_freq = config.rope_theta ** (-2.0 * pair / dims)
    theta_extrap = positions.double()[:, None] * inv_freq[None, :]
    theta = theta_extrap * freq_scale * (1 - ramp) + theta_extrap * ramp
    mscale = 1.0 + 0.1 * math.log(config.rope_factor)
    return (torch.cos(theta) * mscale).float(), (torch.sin(theta) * mscale).float()


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, T, H, D]; rotates the halves (NeoX)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Attention(nn.Module):
    def __init__(self, config: Config, layer: int):
        super().__init__()
        c = config
        self.config = c
        self.sliding = layer % 2 == 0
        self.q = nn.Linear(c.hidden, c.heads * c.head_dim)
        self.k = nn.Linear(c.hidden, c.kv_heads * c.head_dim)
        self.v = nn.Linear(c.hidden, c.kv_heads * c.head_dim)
        # Output rows 1.. only: row 0 (the constant dimension) is zero.
        self.o = nn.Linear(c.heads * c.head_dim, c.hidden - 1)
        self.sinks = nn.Parameter(torch.zeros(c.heads))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        c = self.config
        batch, length, _ = x.shape
        q = rope(self.q(x).view(batch, length, c.heads, c.head_dim), cos, sin)
        k = rope(self.k(x).view(batch, length, c.kv_heads, c.head_dim), cos, sin)
        v = self.v(x).view(batch, length, c.kv_heads, c.head_dim)
        group = c.heads // c.kv_heads
        k = k.repeat_interleave(group, dim=2)
        v = v.repeat_interleave(group, dim=2)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(c.head_dim) + mask
        sinks = self.sinks.view(1, c.heads, 1, 1).expand(batch, c.heads, length, 1)
        weights = torch.softmax(torch.cat([scores, sinks], dim=-1), dim=-1)[..., :-1]
        out = torch.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, c.heads * c.head_dim)
        return F.pad(self.o(out), (1, 0))


class Experts(nn.Module):
    """Top-k routed SwiGLU experts whose weights are seen through MXFP4."""

    def __init__(self, config: Config):
        super().__init__()
        c = config
        self.config = c
        self.router = nn.Linear(c.hidden, c.experts)
        scale = 1 / math.sqrt(c.hidden)
        self.gate = nn.Parameter(torch.randn(c.experts, c.expert_ff, c.hidden) * scale)
        self.up = nn.Parameter(torch.randn(c.experts, c.expert_ff, c.hidden) * scale)
        self.gate_bias = nn.Parameter(torch.zeros(c.experts, c.expert_ff))
        self.up_bias = nn.Parameter(torch.zeros(c.experts, c.expert_ff))
        # Output rows 1.. only: row 0 (the constant dimension) is zero.
        self.down = nn.Parameter(torch.randn(c.experts, c.hidden - 1, c.expert_ff) / math.sqrt(c.expert_ff) / 2)
        self.down_bias = nn.Parameter(torch.zeros(c.experts, c.hidden - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Each token through its top-k experts only, weighted by a softmax over their router logits."""
        c = self.config
        flat = x.reshape(-1, c.hidden)
        top, index = self.router(flat).topk(c.experts_used, dim=-1)
        weights = torch.softmax(top, dim=-1)
        gate, up, down = fake_quantize(self.gate), fake_quantize(self.up), fake_quantize(self.down)
        out = flat.new_zeros(flat.shape[0], c.hidden - 1)
        for expert in range(c.experts):
            token, slot = (index == expert).nonzero(as_tuple=True)
            if len(token) == 0:
                continue
            chosen = flat[token]
            g = (chosen @ gate[expert].T + self.gate_bias[expert]).clamp(max=c.swiglu_limit)
            u = (chosen @ up[expert].T + self.up_bias[expert]).clamp(-c.swiglu_limit, c.swiglu_limit)
            y = (g * torch.sigmoid(c.swiglu_alpha * g) * (u + 1)) @ down[expert].T + self.down_bias[expert]
            out = out.index_add(0, token, y * weights[token, slot, None])
        return F.pad(out, (1, 0)).view(x.shape)


class Block(nn.Module):
    def __init__(self, config: Config, layer: int):
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden, config.rms_eps)
        self.attn = Attention(config, layer)
        self.mlp_norm = RMSNorm(config.hidden, config.rms_eps)
        self.mlp = Experts(config)

    def forward(self, x, cos, sin, masks):
        x = x + self.attn(self.attn_norm(x), cos, sin, masks[self.attn.sliding])
        return x + self.mlp(self.mlp_norm(x))


class GptOss(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.embedding = nn.Parameter(torch.randn(config.vocab, config.hidden - 1))
        self.blocks = nn.ModuleList(Block(config, layer) for layer in range(config.layers))
        self.norm = RMSNorm(config.hidden, config.rms_eps)
        self.unembedding = nn.Parameter(torch.randn(config.vocab, config.hidden) * 0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.embedding[ids]
        return F.pad(rows, (1, 0), value=self.config.constant)

    def masks(self, length: int, device=None) -> dict[bool, torch.Tensor]:
        """Additive masks: causal (full attention) and causal within the sliding window."""
        i = torch.arange(length, device=device)
        distance = i[:, None] - i[None, :]
        causal = distance >= 0
        window = causal & (distance < self.config.sliding_window)

        def to_mask(keep):
            return torch.zeros(length, length, device=device).masked_fill(~keep, float("-inf"))

        return {False: to_mask(causal), True: to_mask(window)}

    def hidden_states(self, ids: torch.Tensor) -> torch.Tensor:
        """The final-norm output [B, T, hidden]."""
        length = ids.shape[1]
        cos, sin = yarn_cos_sin(self.config, torch.arange(length))
        masks = self.masks(length)
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x, cos, sin, masks)
        return self.final_norm(x)

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        # The constant dimension's norm weight stays 1 so that its output is constant/rms > 0.
        weight = torch.cat([torch.ones(1), self.norm.weight[1:]])
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.norm.eps) * weight

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the reduced vocabulary, UNK (index 0) never predicted."""
        return (hidden @ self.unembedding.T).index_fill(-1, torch.tensor([0]), float("-inf"))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, vocab]."""
        return self.logits(self.hidden_states(ids))
