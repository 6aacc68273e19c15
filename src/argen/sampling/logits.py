"""Temperature, top-k, top-p and classifier-free guidance as small pure functions over the last
dim, and one draw.

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


def classifier_free_guidance(cond_logits: Tensor, uncond_logits: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance (Ho & Salimans; as in Parti / LlamaGen): uncond + scale * (cond - uncond).

    In logit space, over the last dim. Why not log-softmax space: the two differ by a constant
    per row (log_softmax(z) = z - logsumexp(z), and the guided sum of two per-row constants is
    another one), so after softmax they are the same distribution; logit space skips two
    normalizations and keeps scale 1 returning `cond_logits` and scale 0 `uncond_logits` exactly
    (returned as given, no round-off from u + (c - u)). scale > 1 sharpens towards the condition.
    Apply it before temperature / top-k / top-p (`process_logits`), which expect one row of logits.

    For scales other than 0 and 1, a value impossible (-inf) under either input stays impossible
    (instead of inf - inf = NaN).
    Raises ValueError unless both are floating-point tensors of one shape and scale is a finite
    number >= 0.
    """
    if not _is_number(scale) or not math.isfinite(scale) or scale < 0:
        raise ValueError(f"scale must be a finite number >= 0, given {scale!r}")
    for name, t in (("cond_logits", cond_logits), ("uncond_logits", uncond_logits)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, given "
                             f"{t.dtype if isinstance(t, Tensor) else type(t).__name__}")
    if cond_logits.shape != uncond_logits.shape:
        raise ValueError(f"expected uncond_logits of the shape of cond_logits {tuple(cond_logits.shape)}, "
                         f"given {tuple(uncond_logits.shape)}")
    if scale == 1:
        return cond_logits
    if scale == 0:
        return uncond_logits
    guided = uncond_logits + scale * (cond_logits - uncond_logits)
    impossible = (cond_logits == float("-inf")) | (uncond_logits == float("-inf"))
    return guided.masked_fill(impossible, float("-inf"))
