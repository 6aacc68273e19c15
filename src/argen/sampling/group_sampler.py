"""Sampling by conditionally independent groups (stepper kind "group"): the parallel multiscale
model of Reed et al., whose pixels of one group depend only on earlier groups.

The model offers
- `groups()`: the (h, w) positions of each group of a frame, in generation order (the same for
  every frame; `generation_order()` walks them frame by frame, a group's positions in a row);
- `frame_context(x, t, cond)`: the features of frame t's previous frames (computed once a frame);
- `group_logits(x, t, g, cond, context=)`: one network call, parameters (B, P, H, W) of frame t
  that are exact at the positions of group g given the earlier groups and frames in `x`.

This stepper makes one `group_logits` call per group and serves every position of the group (and
every channel) from it. The generic loop still draws the group's positions one by one in the
model's generation order with one uniform each, so the naive reference (a full pass per
position) draws the same samples from the same generator: within a group the conditionals do not
depend on each other, so they are the same whether read before or after a group-mate is drawn.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor

from argen.positions import at
from argen.sampling.steppers import own_order_factory, register_stepper_kind


class GroupStepper:
    """Stepper for `autoregressive_fill` over a model declaring `groups`, `frame_context` and
    `group_logits`; `calls` counts the network calls made (one per group reached)."""

    def __init__(self, model: Any, cond: Tensor | None) -> None:
        self.model, self.cond = model, cond
        self.group_of: dict[tuple[int, int], int] = {}
        for g, members in enumerate(model.groups()):
            for p in members:
                self.group_of[(int(p[0]), int(p[1]))] = g
        self.calls = 0
        self._key: tuple[int, int] | None = None
        self._params: Tensor | None = None
        self._frame: int | None = None
        self._context: Tensor | None = None

    def params_at(self, x: Tensor, pos: tuple[int, ...], channel: int) -> Tensor:
        if len(pos) != 3:
            raise ValueError(f"expected a (t, h, w) position, given {tuple(pos)}")
        t, h, w = (int(v) for v in pos)
        if (h, w) not in self.group_of:
            raise ValueError(f"expected a position of the model's groups, given {(t, h, w)}")
        key = (t, self.group_of[(h, w)])
        if key != self._key or self._params is None:
            if self._frame != t or self._context is None:
                self._context = self.model.frame_context(x, t, self.cond)
                self._frame = t
            self._params = self.model.group_logits(x, t, key[1], self.cond, context=self._context)
            self._key = key
            self.calls += 1
        return at(self._params, (h, w))

    def skip(self, x: Tensor, pos: tuple[int, ...]) -> None:
        pass  # nothing carried: a known position needs no call


register_stepper_kind("group", own_order_factory("group", GroupStepper),
                      doc="conditionally independent pixel groups: one network call per group (model.group_logits)")

__all__ = ["GroupStepper"]
