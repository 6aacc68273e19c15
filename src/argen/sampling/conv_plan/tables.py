"""Index tables over N-d positions: every spatial layer as "output position q reads input
positions table[q, 0..T-1]".

A map of spatial shape S = (S_0, ..., S_{n-1}) ((H, W) for images, (T, H, W) for video) has
prod(S) positions; a position is a tuple (p_0, ..., p_{n-1}) and is stored by its raster index
(row-major: the last dim fastest), and -1 stands for "outside the map" (zero padding). Tables map
raster indices of a layer's output to raster indices of its input, so the planner and the runtime
never look at coordinates again: one gather from a channel-last buffer (B, Q_in + 1, C_in) whose
last row is zero and one matmul with the weight reshaped to (T * C_in, C_out) compute any range of
output positions of a convolution (masked, shifted, strided, transposed, 1x1) for the whole batch.

Taps that a fixed causal mask zeroes for every (output, input) channel pair are dropped from the
table, so a 7x7 mask-A kernel costs 24 taps, not 49.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from argen.nn.util import CausalSpec
from argen.sampling.conv_plan.support import UnsupportedLayer

Shape = tuple[int, ...]


def grid(shape: Shape) -> tuple[np.ndarray, ...]:
    """Coordinates (one array per dim) of every position of a map, in raster order."""
    mesh = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    return tuple(m.reshape(-1) for m in mesh)


def raster_index(coords: Sequence[np.ndarray], shape: Shape) -> np.ndarray:
    """Raster indices of positions `coords` (one array per dim) in a map of `shape`, -1 outside it."""
    inside = np.ones(np.shape(coords[0]), dtype=bool)
    index = np.zeros(np.shape(coords[0]), dtype=np.int64)
    for c, s in zip(coords, shape):
        inside &= (c >= 0) & (c < s)
        index = index * s + c
    return np.where(inside, index, -1)


def conv_table(in_shape: Shape, out_shape: Shape, taps: Sequence[Shape], stride: Shape, dilation: Shape,
               padding: Shape) -> np.ndarray:
    """(Q_out, T) table of a zero-padded convolution: out o reads in o * s - padding + tap * d
    for each tap."""
    out = grid(out_shape)
    cols = [
        raster_index([o * s - p + k * d for o, s, p, k, d in zip(out, stride, padding, tap, dilation)], in_shape)
        for tap in taps
    ]
    return np.stack(cols, axis=1) if cols else np.zeros((len(out[0]), 0), dtype=np.int64)


def conv_transpose_table(in_shape: Shape, out_shape: Shape, taps: Sequence[Shape], stride: Shape, dilation: Shape,
                         padding: Shape, offset: Shape) -> np.ndarray:
    """(Q_out, T) table of a transposed convolution cropped at `offset`: out o is full output
    O = o + offset, which tap k takes from input (O + padding - k * d) / s where every dim divides
    exactly (else it reads zero)."""
    full = [o + c + p for o, c, p in zip(grid(out_shape), offset, padding)]
    cols = []
    for tap in taps:
        num = [f - k * d for f, k, d in zip(full, tap, dilation)]
        ok = np.logical_and.reduce([n % s == 0 for n, s in zip(num, stride)])
        cols.append(np.where(ok, raster_index([n // s for n, s in zip(num, stride)], in_shape), -1))
    return np.stack(cols, axis=1) if cols else np.zeros((len(full[0]), 0), dtype=np.int64)


def shift_table(in_shape: Shape, out_shape: Shape, offset: Shape, step: Shape | None = None) -> np.ndarray:
    """(Q_out, 1) table of a pad or crop: out o reads in offset + o * step, zero outside."""
    step = step if step is not None else (1,) * len(out_shape)
    return raster_index([f + o * s for o, f, s in zip(grid(out_shape), offset, step)], in_shape)[:, None]


@dataclass
class CachedConv:
    """A convolution as (index table, weight matrix): `weights()` reads the layer's current
    parameters, so one geometry serves a model whose weights keep training."""

    table: np.ndarray  # (Q_out, T) input raster indices, -1 = zero
    in_channels: int
    out_channels: int
    weights: Callable[[], tuple[Tensor, Tensor]]  # -> (T * C_in, C_out), (C_out,)
    identity: bool  # 1x1, stride 1, no padding: output q reads input q only

    @property
    def taps(self) -> int:
        return self.table.shape[1]


def cached_conv(spec: CausalSpec, in_shape: Shape, out_shape: Shape) -> CachedConv:
    """The cached version of a convolution layer described by `spec` (`argen.nn.causal_spec`),
    between maps of spatial shapes `in_shape` and `out_shape`; `UnsupportedLayer` if it has none."""
    n = spec.ndim
    if len(in_shape) != n or len(out_shape) != n:
        raise UnsupportedLayer(f"a {n}-d convolution between maps of shapes {in_shape} and {out_shape}")
    if spec.groups != 1 or spec.padding_mode != "zeros":
        raise UnsupportedLayer(f"only groups=1 and zero padding are cached, given groups={spec.groups}, "
                               f"padding_mode={spec.padding_mode!r}")
    every = list(itertools.product(*(range(k) for k in spec.kernel_size)))
    taps = [tuple(t) for t in spec.taps] if spec.taps is not None else every
    if spec.transposed:
        if spec.location_mask is not None:
            raise UnsupportedLayer("a transposed convolution masked per location has no cached version")
        offset = spec.offset if spec.offset is not None else (0,) * n
        table = conv_transpose_table(in_shape, out_shape, taps, spec.stride, spec.dilation, spec.padding, offset)
    else:
        table = conv_table(in_shape, out_shape, taps, spec.stride, spec.dilation, spec.padding)
        if spec.location_mask is not None:  # taps masked per output location (LMConv): masked taps read zero
            keep = spec.location_mask.detach().cpu().numpy()  # (prod(k), Q_out)
            if keep.shape != (len(every), table.shape[0]) or len(taps) != len(every):
                raise UnsupportedLayer(f"expected a location mask of shape {(len(every), table.shape[0])}, "
                                       f"given {keep.shape}")
            table = np.where(keep.T != 0, table, -1)
    cin, cout, transposed = spec.in_channels, spec.out_channels, spec.transposed

    def weights() -> tuple[Tensor, Tensor]:
        k, b = spec.weights()
        k = k.detach()  # convolution: (C_out, C_in, *kernel); transposed: (C_in, C_out, *kernel)
        w = torch.stack([k[(slice(None), slice(None), *t)] for t in taps], 0)
        w = w.reshape(len(taps) * cin, cout) if transposed else w.transpose(1, 2).reshape(len(taps) * cin, cout)
        bias = b.detach() if b is not None else torch.zeros(cout, dtype=k.dtype, device=k.device)
        return w.contiguous(), bias

    identity = (table.shape[1] == 1 and bool((table[:, 0] == np.arange(table.shape[0])).all())
                and tuple(in_shape) == tuple(out_shape))
    return CachedConv(table, cin, cout, weights, identity)


__all__ = ["Shape", "grid", "raster_index", "conv_table", "conv_transpose_table", "shift_table", "CachedConv",
           "cached_conv"]
