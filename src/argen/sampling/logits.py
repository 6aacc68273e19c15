"""Temperature, top-k and top-p as small pure functions over the last dim, and one draw.

Draws use inverse-CDF sampling from one uniform number per row. A sampler consumes exactly one
uniform per (position, channel) step in a fixed order, so two samplers that compute the same
conditionals (naive and cached) produce identical samples from the same generator.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_temperature(temperature: Any) -> None:
    if not _is_number(temperature) or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, given {temperature!r}")


def _check_top_k(k: Any) -> None:
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ValueError(f"top_k must be None or an integer >= 1, given {k!r}")


def _check_top_p(p: Any) -> None:
    if p is not None and (not _is_number(p) or not math.isfinite(p) or not 0 < p <= 1):
        raise ValueError(f"top_p must be None or a finite number in (0, 1], given {p!r}")


def check_sampling_options(temperature: Any = 1.0, top_k: Any = None, top_p: Any = None,
                           generator: Any = None) -> None:
    """Raise ValueError (naming expected and given) unless the sampling options are usable.

    temperature: a finite number > 0; top_k: None or an integer >= 1 (not a bool or a float);
    top_p: None or a finite number in (0, 1]; generator: None or a torch.Generator. The one check
    behind every `sample` / `complete` and the command line.
    """
    _check_temperature(temperature)
    _check_top_k(top_k)
    _check_top_p(top_p)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be None or a torch.Generator, given {generator!r}")


def temperature_scale(logits: Tensor, temperature: float) -> Tensor:
    """logits / temperature, shifted so the largest is 0 first: a tiny temperature then tends to
    the greedy choice (the rest go to -inf) instead of overflowing to inf - inf = NaN."""
    _check_temperature(temperature)
    if temperature == 1.0:
        return logits
    return (logits - logits.amax(-1, keepdim=True)) / temperature


def top_k_filter(logits: Tensor, k: int | None) -> Tensor:
    """Keep the k largest logits per row (ties at the k-th value are kept)."""
    _check_top_k(k)
    if k is None or k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float | None) -> Tensor:
    """Keep the smallest set of most likely values whose probability reaches p (nucleus)."""
    _check_top_p(p)
    if p is None or p >= 1.0:
        return logits
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
