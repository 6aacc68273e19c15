"""Temperature, top-k and top-p as small pure functions over the last dim, and one draw.

Draws use inverse-CDF sampling from one uniform number per row. A sampler consumes exactly one
uniform per (position, channel) step in a fixed order, so two samplers that compute the same
conditionals (naive and cached) produce identical samples from the same generator.
"""
from __future__ import annotations

import torch
from torch import Tensor


def temperature_scale(logits: Tensor, temperature: float) -> Tensor:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, given {temperature}")
    return logits if temperature == 1.0 else logits / temperature


def top_k_filter(logits: Tensor, k: int | None) -> Tensor:
    """Keep the k largest logits per row (ties at the k-th value are kept)."""
    if k is None or k >= logits.shape[-1]:
        return logits
    if k < 1:
        raise ValueError(f"top_k must be >= 1, given {k}")
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float | None) -> Tensor:
    """Keep the smallest set of most likely values whose probability reaches p (nucleus)."""
    if p is None or p >= 1.0:
        return logits
    if not 0.0 < p:
        raise ValueError(f"top_p must be in (0, 1], given {p}")
    sorted_logits, idx = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    # drop a value when the mass strictly before it already reaches p (the first is always kept)
    drop_sorted = (probs.cumsum(-1) - probs) >= p
    drop = drop_sorted.scatter(-1, idx, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def process_logits(logits: Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    return top_p_filter(top_k_filter(temperature_scale(logits, temperature), top_k), top_p)


def draw(logits: Tensor, u: Tensor) -> Tensor:
    """Inverse-CDF draw: logits (B, L), uniforms u (B,) in [0, 1) -> values (B,) long."""
    probs = logits.float().softmax(-1)
    cdf = probs.cumsum(-1)
    target = (u.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
    idx = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    # never land on a zero-probability value (possible only through float round-off at the top)
    idx = idx.clamp_(max=logits.shape[-1] - 1)
    bad = probs.gather(-1, idx[:, None]).squeeze(-1) <= 0
    if bad.any():
        idx[bad] = probs[bad].argmax(-1)
    return idx
