"""Sampling scale by scale (stepper kind "scales"): ImageBART's coarse-to-fine reverse process.

The model offers
- `scales` (n), `top` (an ordinary model over the code grid: p(x_{n-1}), sampled through
  `generate` with its own stepper, KV-cached for a token GPT);
- `forward_chain(x_0, generator) -> [x_0, ..., x_{n-1}]` (for completion);
- per lower scale t in [1, n-1]: `scale_context(t, x_t, cond)` (the encoding, once per sample),
  `scale_embed(t, x_prev, start, end)`, `scale_trunk(t, h, context, cache=, start=)`,
  `scale_new_cache(t, batch)` and `scale_logits(t, x_prev, x_t, cond, context=)` (a full pass).

Sampling is exact ancestral sampling: x_{n-1} from the top model, then for t = n-1 .. 1 the codes of
x_{t-1} one at a time in raster order through the generic loop `autoregressive_fill`, with one
uniform per drawn code, so the cached stepper (the encoder once; the decoder's cross-attention K/V
projected once at the first prefill; a static self-attention cache, one slot per code) and the
naive one (`naive=True`: a full decoder pass per code) draw identical samples from one generator.

Completion (`known` (B, h, w)): the forward chain of the given codes is drawn first, so every scale
has "observed" values at the known positions (x_t there drawn from q(x_t | x_0) jointly, as the
forward process would), and each scale's output is clamped to them: the top model completes
x_{n-1} around its known codes, then every decoder generates the unknown codes of x_{t-1} while its
bidirectional encoder reads all of x_t, including known codes that come later in raster order (the
bottom half when completing the top), and the last scale keeps the true codes. What is exact: each
filled code is drawn from the model's conditional given x_t and the codes before it (known or
filled). What is not: conditioning the known codes' noisy versions on q alone (the replacement
method of diffusion inpainting) is an approximation of the posterior p(x_unknown | x_known), which
no single pass computes. Known codes come back unchanged.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from argen.sampling.config import SamplingConfig
from argen.sampling.naive import autoregressive_fill
from argen.sampling.steppers import register_stepper_kind


class ScaleStepper:
    """Stepper for `autoregressive_fill` over x_{t-1} of scale t, given x_t: the encoding once, then
    (cached) each code's slot decoded from the static cache, or (naive) a full decoder pass per code.
    `calls` counts decoder calls; `encodings` counts encoder runs (one)."""

    def __init__(self, model: Any, t: int, x_t: Tensor, cond: Tensor | None, cached: bool = True) -> None:
        self.model, self.t, self.x_t, self.cond, self.cached = model, t, x_t, cond, cached
        self.width = model.position_shape[1]
        self.context = model.scale_context(t, x_t, cond)
        self.encodings, self.calls = 1, 0
        self.cache = model.scale_new_cache(t, x_t.shape[0]) if cached else None
        self.next = 0  # the first slot not yet in the cache

    def params_at(self, x: Tensor, pos: tuple[int, ...], channel: int) -> Tensor:
        r, c = (int(v) for v in pos)
        slot = r * self.width + c
        self.calls += 1
        if not self.cached:
            return self.model.scale_logits(self.t, x, self.x_t, self.cond, context=self.context)[:, :, r, c]
        if slot < self.next:
            raise ValueError(f"expected positions in raster order, given slot {slot} after slot {self.next - 1}")
        h = self.model.scale_embed(self.t, x, self.next, slot + 1)  # every code before `slot` is final
        out = self.model.scale_trunk(self.t, h, self.context if self.next == 0 else None, cache=self.cache,
                                     start=self.next)
        self.next = slot + 1
        return out[:, -1]

    def skip(self, x: Tensor, pos: tuple[int, ...]) -> None:
        pass  # a known code enters the cache with the next slot that is drawn


def _refuse(model: Any, cond: Tensor | None, order: Any = None) -> Any:
    raise ValueError(f"{model.model_name} samples scale by scale, not position by position over its data: "
                     "expected sample()/complete(), given a request for a per-position stepper")


def generate_scales(model: Any, x: Tensor, known: Tensor | None, cond: Tensor | None, config: SamplingConfig,
                    **options: Any) -> Tensor:
    """Fill `x` (B, 1, h, w) from the top scale down (module doc); known codes are kept."""
    from argen.sampling.generate import generate

    n = model.scales
    chain = model.forward_chain(x, config.generator) if known is not None else None
    cur = chain[n - 1].clone() if chain is not None else torch.zeros_like(x)
    cur = generate(model.top, cur, known, cond, config)
    for t in range(n - 1, 0, -1):
        prev = chain[t - 1].clone() if chain is not None else torch.zeros_like(x)
        stepper = ScaleStepper(model, t, cur, cond, cached=not config.naive)
        cur = autoregressive_fill(model, prev, known, cond, stepper, config=config)
    return cur


register_stepper_kind("scales", _refuse, generate_scales,
                      doc="coarse-to-fine reverse diffusion (ImageBART): a top model, then one AR decoder per scale")

__all__ = ["ScaleStepper", "generate_scales"]
