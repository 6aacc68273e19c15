"""Positions: the one way to index a tensor at a generation position.

A model's data is `(B, *data_shape)`; its generation order walks `position_shape`: (H, W) for
images, (T, H, W) for video (the data shape without the channel axis). Every tensor the contract
hands around ends in the position dims: data (B, C, *P), per-position log-probs (B, *P),
distribution parameters (B, P, *P), conditional tables (B, C, L, *P). So a position is always
the trailing index, whatever comes before it:

    at(x, pos)               x[..., *pos]: (B, C) from data, (B,) from log-probs, (B, C, L) from tables
    at(x, pos, channel=c)    x[:, c, *pos]: one channel of data (B,)
    put(x, pos, v)           x[..., *pos] = v (in place), likewise with channel=

Samplers, the codec and tests use these instead of writing index tuples by hand, so the same
loop serves 2-D and 3-D positions.

Data in the contract's layout keeps the channel axis third from last: (B, C, H, W) for images,
(B, T, C, H, W) for video. `channels_first(x)` is the (B, C, *P) view of it (the image tensor
itself; for video a view whose writes reach `x`), the layout distributions and `at` take.
"""
from __future__ import annotations

import itertools
from typing import Any, Sequence

from torch import Tensor

Position = tuple[int, ...]


def index(pos: Sequence[int], channel: int | None = None) -> tuple[Any, ...]:
    """The index tuple of position `pos` (all leading dims), or of one `channel` (dim 1) there."""
    if channel is None:
        return (Ellipsis, *pos)
    return (slice(None), channel, *pos)


def at(x: Tensor, pos: Sequence[int], channel: int | None = None) -> Tensor:
    """`x` at position `pos` (the trailing dims); with `channel`, that channel (dim 1) only."""
    return x[index(pos, channel)]


def put(x: Tensor, pos: Sequence[int], value: Any, channel: int | None = None) -> None:
    """Write `value` into `x` at position `pos` (and `channel`), in place."""
    x[index(pos, channel)] = value


def channels_first(x: Tensor) -> Tensor:
    """(B, *lead, C, H, W) data -> its (B, C, *lead, H, W) view: `x` itself for images (B, C, H, W)."""
    return x if x.dim() <= 4 else x.movedim(-3, 1)


def raster(position_shape: Sequence[int]) -> list[Position]:
    """Every position of `position_shape` in raster order (last dim fastest)."""
    return list(itertools.product(*(range(int(s)) for s in position_shape)))


def frame_major(order: Sequence[Sequence[int]]) -> bool:
    """True when a video generation order over (t, h, w[, c]) positions never returns to an earlier
    frame: then the sum of a model's conditionals over frames >= k is -log p(those frames | the
    first k), which a subscale order (the Video Transformer's) does not give."""
    frames = [int(p[0]) for p in order]
    return all(a <= b for a, b in zip(frames, frames[1:]))

