"""MXFP4 for training: fake quantization with a straight-through gradient, and the packed form.

A block of 32 values shares one power-of-two scale 2^e (stored as the byte e + 127); each value is
an FP4 E2M1 code. The scale is the smallest power of two that fits the block's largest magnitude
into FP4's range (6), so nothing is clipped; values round to the nearest FP4 level. The training
forward pass uses exactly the values the packed blocks decode to, so llama.cpp runs the experts
the model was trained with.
"""

from __future__ import annotations

import numpy as np
import torch

BLOCK = 32
FP4_LEVELS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)  # codes 0..7; code | 8 is the negative
FP4_MAX = 6.0
# Tiny blocks round to zeros anyway; a floor keeps scale bytes far from E8M0's edge cases.
MIN_EXPONENT = -30
MAX_EXPONENT = 127
_MIDPOINTS = torch.tensor([(a + b) / 2 for a, b in zip(FP4_LEVELS, FP4_LEVELS[1:], strict=False)])
_LEVELS = torch.tensor(FP4_LEVELS)


def _blocks(weight: torch.Tensor) -> torch.Tensor:
    *lead, cols = weight.shape
    if cols % BLOCK:
        raise ValueError(f"MXFP4 needs the last dimension to be a multiple of {BLOCK}, got {cols}")
    return weight.reshape(*lead, cols // BLOCK, BLOCK)


def quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes uint8 [..., cols/32, 32] with the sign in bit 3, exponents int [..., cols/32])."""
    blocks = _blocks(weight.detach().float())
    amax = blocks.abs().amax(dim=-1)
    exponent = torch.ceil(torch.log2(amax / FP4_MAX)).clamp(MIN_EXPONENT, MAX_EXPONENT)
    exponent = torch.nan_to_num(exponent, nan=MIN_EXPONENT, neginf=MIN_EXPONENT)
    scaled = blocks / torch.exp2(exponent)[..., None]
    magnitude = torch.bucketize(scaled.abs(), _MIDPOINTS)
    sign = ((scaled < 0) & (magnitude > 0)).to(torch.uint8) << 3
    return (magnitude.to(torch.uint8) | sign), exponent.to(torch.int32)


def dequantize(codes: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
    magnitude = _LEVELS[(codes & 7).long()]
    values = torch.where((codes & 8) > 0, -magnitude, magnitude) * torch.exp2(exponent.float())[..., None]
    return values.reshape(*values.shape[:-2], -1)


def fake_quantize(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` rounded to MXFP4 in the forward pass; the gradient passes straight through."""
    quantized = dequantize(*quantize(weight))
    return weight + (quantized - weight).detach()


def pack(weight: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The checkpoint form: blocks uint8 [..., cols/32, 16] (low nibble = even element), scales uint8."""
    codes, exponent = quantize(weight)
    codes = codes.numpy()
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
    scales = (exponent.numpy() + 127).astype(np.uint8)
    return blocks.astype(np.uint8), scales


def unpack(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """An independent numpy decode of packed MXFP4, float32 [..., cols]."""
    table = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], dtype=np.float32)
    codes = np.stack([blocks & 0x0F, blocks >> 4], axis=-1).reshape(*blocks.shape[:-1], BLOCK)
    values = table[codes] * np.ldexp(np.float32(1), scales.astype(np.int32) - 127)[..., None]
    return values.reshape(*values.shape[:-2], -1).astype(np.float32)
