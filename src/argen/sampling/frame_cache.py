"""Cached sampling for video models that decode each frame from a per-frame context (stepper kind
"frame_cache"; the Video Pixel Network).

Such a model factorises a clip as: a context for frame t computed from frames < t only (an encoder
and a recurrence over time, which the conv planner cannot cache), and a per-frame convolutional
decoder over the current frame given that context. The model offers:

- `frame_context(x, t, state, cond) -> (context, state)`: the context of frame t of clips `x`
  (reading frames < t) from the carried recurrent `state` after frame t - 1 (None for t = 0);
- `decoder`: a module whose `forward(frame (B, C, H, W), context)` gives the distribution
  parameters (B, P, H, W) of that frame, causal in raster / colour order over `frame` and free to
  read `context` anywhere;
- `data_shape` (T, C, H, W), `levels`, `distribution`, a raster `generation_order()` over (t, h, w).

Per frame this stepper calls `frame_context` once (when the first position of the frame is asked
for; frames that are wholly known, as in prediction, cost one context step and no decoding), then
runs the frame's pixels through the conv planner's cached version of `decoder`
(`argen.sampling.conv_plan.plan_network`, planned once per decoder, device and dtype) with the
context as a fixed side input: per pixel only the decoder outputs that the new pixel affects are
computed. The cost of a clip is one encoder + ConvLSTM pass per frame plus about one decoder pass
per frame, instead of one pass of the whole network over the whole clip per sub-pixel.

Exactness: the parameters equal the naive ones up to float round-off (batched convolutions and the
planner's matmuls sum in other orders), not bitwise; samples from the same uniforms are identical
unless a uniform falls within round-off of a bin edge.
"""
from __future__ import annotations

import itertools
import weakref
from typing import Any

import torch
from torch import Tensor, nn

from argen.sampling.steppers import own_order_factory, register_stepper_kind

_PLANS: "weakref.WeakKeyDictionary[nn.Module, dict[tuple, Any]]" = weakref.WeakKeyDictionary()


def decoder_plan(model: Any, cond: Tensor | None) -> Any:
    """The (memoized) conv plan of `model.decoder` with a context as side input, checked against
    the decoder's own forward on one random frame and the context `frame_context` gives for it."""
    from argen.sampling.conv_plan import plan_network

    decoder = model.decoder
    p = next(decoder.parameters())
    _, c, h, w = model.data_shape
    tentative = bool(model.distribution.output_depends_on_current_pixel) and c > 1
    key = (p.device, p.dtype, (c, h, w), tentative)
    plans = _PLANS.setdefault(decoder, {})
    if key not in plans:
        g = torch.Generator().manual_seed(0)
        clip = torch.randint(0, model.levels, (1, *model.data_shape), generator=g).to(p.device)
        cond1 = cond[:1] if cond is not None else None
        with torch.no_grad():
            context, _ = model.frame_context(clip, 0, None, cond1)
            # a context with spatial structure checks the side input's per-position path too
            context = context + torch.randn(context.shape, generator=g).to(context)
        plans[key] = plan_network(decoder, clip[:, 0], context, tentative=tentative)
    return plans[key]


class FrameCacheStepper:
    """Stepper for `autoregressive_fill` over a model declaring `frame_context` and `decoder`."""

    def __init__(self, model: Any, cond: Tensor | None) -> None:
        frames, _, height, width = model.data_shape
        self.shape = (frames, height, width)
        raster = list(itertools.product(range(frames), range(height), range(width)))
        if [tuple(int(v) for v in p) for p in model.generation_order()] != raster:
            raise ValueError("frame-cached sampling needs the raster generation order over (t, h, w)")
        self.model, self.cond = model, cond
        self.plan = decoder_plan(model, cond)
        self.frame = -1  # the frame whose context `self.cache` holds
        self.state: Any = None  # the recurrent state after `self.frame`
        self.cache: Any = None  # the planner's buffers for the current frame
        self.last = -1  # last position (raster within the frame) computed
        self.batch = 0

    def _advance(self, x: Tensor, t: int) -> None:
        """Make frame t current: context steps for every frame up to t (earlier frames are final)."""
        from argen.sampling.conv_plan import CacheState

        if self.frame < 0:
            self.batch = x.shape[0]
        elif x.shape[0] != self.batch:
            raise ValueError(f"expected a batch of {self.batch} (the carried state's size), given {x.shape[0]}")
        context = None
        while self.frame < t:
            self.frame += 1
            context, self.state = self.model.frame_context(x, self.frame, self.state, self.cond)
        self.cache = CacheState(self.plan, x[:, t], context)
        self.last = -1

    def _locate(self, x: Tensor, pos: tuple[int, ...]) -> tuple[int, int]:
        t, i, j = (int(v) for v in pos)
        frames, height, width = self.shape
        if not (0 <= t < frames and 0 <= i < height and 0 <= j < width):
            raise ValueError(f"expected a position in the {frames}x{height}x{width} clip, given {tuple(pos)}")
        p = i * width + j
        if t < self.frame or (t == self.frame and p < self.last):
            raise ValueError(f"frame-cached sampling goes in raster order: expected a position at or after "
                             f"{(self.frame, *divmod(max(self.last, 0), width))}, given {tuple(pos)}")
        if t > self.frame:
            self._advance(x, t)
        return t, p

    @torch.no_grad()
    def params_at(self, x: Tensor, pos: tuple[int, ...], channel: int) -> Tensor:
        t, p = self._locate(x, pos)
        self.cache.run(x[:, t], self.plan.ranges(p, self.last))
        self.last = p
        return self.cache.params(p)

    def skip(self, x: Tensor, pos: tuple[int, ...]) -> None:
        """`pos` is known: nothing to do now (the next call catches the frame, or the context, up)."""


register_stepper_kind("frame_cache", own_order_factory("frame_cache", FrameCacheStepper),
                      doc="per-frame context once per frame (model.frame_context), the frame's decoder "
                          "through the conv planner (model.decoder)")

__all__ = ["FrameCacheStepper", "decoder_plan"]
