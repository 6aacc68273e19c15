"""Cached sampling for models whose logits follow from a running state over earlier sub-pixels
(stepper kind "subpixel_state"): NADE, whose hidden pre-activation a_d = c + W[:, <d] x_<d gains
one column per sub-pixel (O(H) per step instead of an O(D H) pass), and FVSBN, whose logits at d
are one linear regression on the earlier sub-pixels (O(D) per step instead of O(D^2)).

The model offers `subpixel_steps(cond, batch)`: an object over the sub-pixels in generation order
(the model's `generation_order()`, channels of a pixel in turn) with

- `absorb(values)`: fold the next n sub-pixels' integer values (B, n) into the state;
- `peek(values)`: (B, n, L) logits of the next n sub-pixels, sub-pixel k seeing the state and
  values[:, :k] (the state is not changed).

This stepper does the bookkeeping: per position it peeks at the pixel's C sub-pixels with the
values `x` holds there (the channels drawn so far; the rest as the loop left them, exactly what a
full forward pass would read), and absorbs a pixel once a later position is asked for, so known
pixels (completion) are folded in one call on the way. The parameters equal a full forward's up to
float round-off (sums in another order), not bitwise; samples from the same uniforms are identical
unless a uniform falls within round-off of a bin edge.
"""
from __future__ import annotations

from typing import Any

import torch
from einops import rearrange
from torch import Tensor

from argen.positions import channels_first
from argen.sampling.steppers import own_order_factory, register_stepper_kind


class SubpixelStateStepper:
    """Stepper for `autoregressive_fill` over a model declaring `subpixel_steps(cond, batch)`.

    Uses the model's public surface only: `channels`, `generation_order()` and `subpixel_steps`.
    """

    def __init__(self, model: Any, cond: Tensor | None) -> None:
        self.model, self.cond = model, cond
        self.channels = model.channels
        self.order = [tuple(int(v) for v in p) for p in model.generation_order()]
        self.rank = {p: t for t, p in enumerate(self.order)}
        self.index = torch.tensor(self.order, dtype=torch.long).T  # (ndim, P): positions in order
        self.steps: Any = None
        self.batch = 0
        self.next = 0  # positions [0, next) of the order are folded into the state

    def _position(self, x: Tensor, pos: tuple[int, ...]) -> int:
        if self.steps is None:
            self.batch = x.shape[0]
            self.steps = self.model.subpixel_steps(self.cond, self.batch)
        elif x.shape[0] != self.batch:
            raise ValueError(f"expected a batch of {self.batch} (the carried state's size), given {x.shape[0]}")
        key = tuple(int(v) for v in pos)
        if key not in self.rank:
            raise ValueError(f"expected a position of the model's generation order, given {key}")
        t = self.rank[key]
        if t < self.next:
            raise ValueError(f"cached sampling walks the generation order: expected a position at or after "
                             f"{self.order[self.next]}, given {key}")
        return t

    def _values(self, x: Tensor, start: int, stop: int) -> Tensor:
        """(B, n*C) values of the positions [start, stop) of the order, channels of a pixel in turn."""
        xc = channels_first(x)
        picked = xc[(slice(None), slice(None), *self.index[:, start:stop].to(x.device))]  # (B, C, n)
        return rearrange(picked, "b c n -> b (n c)")

    def _catch_up(self, x: Tensor, t: int) -> None:
        if self.next < t:
            self.steps.absorb(self._values(x, self.next, t))
            self.next = t

    @torch.no_grad()
    def params_at(self, x: Tensor, pos: tuple[int, ...], channel: int) -> Tensor:
        if not 0 <= channel < self.channels:
            raise ValueError(f"expected a channel in [0, {self.channels}), given {channel}")
        t = self._position(x, pos)
        self._catch_up(x, t)
        logits = self.steps.peek(self._values(x, t, t + 1))  # (B, C, L)
        return rearrange(logits, "b c l -> b (c l)")

    @torch.no_grad()
    def skip(self, x: Tensor, pos: tuple[int, ...]) -> None:
        """`pos` is known: it is folded in with the next position asked for (one call for a run of them)."""
        self._position(x, pos)


register_stepper_kind("subpixel_state", own_order_factory("subpixel_state", SubpixelStateStepper),
                      doc="a running state over earlier sub-pixels, one update per sub-pixel (model.subpixel_steps)")

__all__ = ["SubpixelStateStepper"]
