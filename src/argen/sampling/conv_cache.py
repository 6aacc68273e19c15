"""Cached (incremental) versions of the layers convolutional AR models are made of.

The Fast PixelCNN++ idea (Ramachandran et al. 2017): during sampling, each layer keeps its input
activations, and when a pixel is generated only the few outputs it affects are computed. Here
every spatial layer is described by one *index table*: output position q (raster index in the
layer's own output map) reads the input positions `table[q, 0..T-1]` (raster indices in the
input map, -1 for zero padding). With such a table any causal convolution (masked, down-shifted,
down-right-shifted, strided, transposed, 1x1) and any shift (pad, crop) is computed for a range
of output positions by ONE gather from a channel-last buffer (B, Q_in + 1, C_in) whose last row
is zero, and ONE matmul with the weight reshaped to (T * C_in, C_out), for the whole batch.

Taps that the causal mask zeroes for every (output, input) channel pair are dropped from the
table, so a 7x7 mask-A kernel costs 24 taps, not 49.

Everything here is checked against the module's own forward on an example input by
`argen.sampling.cached` before use, so a layer whose forward does something these adapters do
not describe is refused, never silently mis-computed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn


class UnsupportedLayer(NotImplementedError):
    """A layer or operation that has no cached version (the model keeps the naive sampler)."""


HW = tuple[int, int]


def _grid(out_hw: HW) -> tuple[np.ndarray, np.ndarray]:
    r, c = np.meshgrid(np.arange(out_hw[0]), np.arange(out_hw[1]), indexing="ij")
    return r.reshape(-1), c.reshape(-1)


def _raster(rows: np.ndarray, cols: np.ndarray, in_hw: HW) -> np.ndarray:
    """Raster indices of (rows, cols) in a map of size in_hw, -1 where outside it."""
    inside = (rows >= 0) & (rows < in_hw[0]) & (cols >= 0) & (cols < in_hw[1])
    return np.where(inside, rows * in_hw[1] + cols, -1)


def conv_table(in_hw: HW, out_hw: HW, taps: list[tuple[int, int]], stride: HW, dilation: HW, pad_tl: HW) -> np.ndarray:
    """(Q_out, T) table of a zero-padded convolution: out (r, c) reads in
    (r*s - pad_top + ki*d, c*s - pad_left + kj*d) for each tap (ki, kj)."""
    r, c = _grid(out_hw)
    cols = [
        _raster(r * stride[0] - pad_tl[0] + ki * dilation[0], c * stride[1] - pad_tl[1] + kj * dilation[1], in_hw)
        for ki, kj in taps
    ]
    return np.stack(cols, axis=1) if cols else np.zeros((len(r), 0), dtype=np.int64)


def conv_transpose_table(
    in_hw: HW, out_hw: HW, taps: list[tuple[int, int]], stride: HW, dilation: HW, padding: HW, crop_tl: HW
) -> np.ndarray:
    """(Q_out, T) table of a transposed convolution cropped at `crop_tl`: out (r, c) is full output
    (R, C) = (r + crop_top, c + crop_left), which tap (ki, kj) takes from input
    ((R + p - ki*d) / s, (C + p - kj*d) / s) when both divide exactly (else it reads zero)."""
    r, c = _grid(out_hw)
    rr, cc = r + crop_tl[0] + padding[0], c + crop_tl[1] + padding[1]
    cols = []
    for ki, kj in taps:
        nr, nc = rr - ki * dilation[0], cc - kj * dilation[1]
        ok = (nr % stride[0] == 0) & (nc % stride[1] == 0)
        idx = _raster(nr // stride[0], nc // stride[1], in_hw)
        cols.append(np.where(ok, idx, -1))
    return np.stack(cols, axis=1)


def shift_table(in_hw: HW, out_hw: HW, offset: HW, step: HW = (1, 1)) -> np.ndarray:
    """(Q_out, 1) table of a pad or crop: out (r, c) reads in (offset + (r, c) * step), zero outside."""
    r, c = _grid(out_hw)
    return _raster(offset[0] + r * step[0], offset[1] + c * step[1], in_hw)[:, None]


@dataclass
class CachedConv:
    """A convolution as (index table, weight matrix): `weights()` reads the module's current
    parameters, so one geometry serves a model whose weights keep training."""

    table: np.ndarray  # (Q_out, T) input raster indices, -1 = zero
    in_channels: int
    out_channels: int
    weights: Callable[[], tuple[Tensor, Tensor]]  # -> (T * C_in, C_out), (C_out,)
    identity: bool  # 1x1, stride 1, no padding: output q reads input q only

    @property
    def taps(self) -> int:
        return self.table.shape[1]


def _ints(v: object, name: str) -> HW:
    if isinstance(v, int):
        return (v, v)
    if isinstance(v, tuple) and len(v) == 2 and all(isinstance(e, int) for e in v):
        return (int(v[0]), int(v[1]))
    raise UnsupportedLayer(f"expected an int pair for {name}, given {v!r}")


def _effective_kernel(module: nn.Module) -> Tensor:
    """The kernel the module's forward actually uses: `kernel()` where the class defines one
    (shifted and horizontal masked convolutions), weight * mask for masked convolutions."""
    kernel = getattr(module, "kernel", None)
    if callable(kernel):
        return kernel()
    mask = getattr(module, "mask", None)
    if isinstance(mask, Tensor) and mask.shape == module.weight.shape:
        return module.weight * mask
    return module.weight


def _live_taps(module: nn.Module, kh: int, kw: int) -> list[tuple[int, int]]:
    """Kernel taps not zeroed by the module's causal mask for every channel pair (structural,
    so a tap is never dropped just because its trained weights happen to be zero)."""
    mask = getattr(module, "mask", None)
    if isinstance(mask, Tensor) and mask.shape == module.weight.shape:
        live = mask.detach().reshape(mask.shape[0] * mask.shape[1], kh, kw).ne(0).any(0).cpu().numpy()
        return [(ki, kj) for ki in range(kh) for kj in range(kw) if live[ki, kj]]
    return [(ki, kj) for ki in range(kh) for kj in range(kw)]


def cached_conv(module: nn.Module, in_hw: HW, out_hw: HW) -> CachedConv:
    """The cached version of a convolution module (nn.Conv2d / nn.ConvTranspose2d and the
    masked and shifted subclasses in `argen.nn`); `UnsupportedLayer` for anything else."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1 or module.padding_mode != "zeros":
            raise UnsupportedLayer(f"{type(module).__name__}: only groups=1 and zero padding are cached")
        if isinstance(module.padding, str):
            raise UnsupportedLayer(f"{type(module).__name__}: string padding {module.padding!r} is not cached")
        pad = getattr(module, "pad", (0, 0, 0, 0))  # one-sided F.pad of the shifted convolutions
        if not (isinstance(pad, tuple) and len(pad) == 4):
            raise UnsupportedLayer(f"{type(module).__name__}: expected pad (left, right, top, bottom), given {pad!r}")
        ph, pw = _ints(module.padding, "padding")
        kh, kw = _ints(module.kernel_size, "kernel_size")
        taps = _live_taps(module, kh, kw)
        table = conv_table(in_hw, out_hw, taps, _ints(module.stride, "stride"), _ints(module.dilation, "dilation"),
                           (ph + pad[2], pw + pad[0]))
        location_mask = getattr(module, "location_mask", None)
        if callable(location_mask):  # taps masked per output location (LMConv): masked taps read zero
            keep = location_mask().detach().cpu().numpy()  # (k*k, Q_out)
            if keep.shape != (kh * kw, table.shape[0]) or len(taps) != kh * kw:
                raise UnsupportedLayer(f"{type(module).__name__}: expected a location mask of shape "
                                       f"{(kh * kw, table.shape[0])}, given {keep.shape}")
            table = np.where(keep.T != 0, table, -1)
        cin, cout = module.in_channels, module.out_channels

        def weights() -> tuple[Tensor, Tensor]:
            k = _effective_kernel(module).detach()  # (C_out, C_in, kh, kw)
            w = torch.stack([k[:, :, ki, kj] for ki, kj in taps], 0)  # (T, C_out, C_in)
            return w.transpose(1, 2).reshape(len(taps) * cin, cout).contiguous(), _bias(module, cout, k)

    elif isinstance(module, nn.ConvTranspose2d):
        if module.groups != 1 or module.padding_mode != "zeros":
            raise UnsupportedLayer(f"{type(module).__name__}: only groups=1 and zero padding are cached")
        kh, kw = _ints(module.kernel_size, "kernel_size")
        taps = [(ki, kj) for ki in range(kh) for kj in range(kw)]
        crop = (0, int(getattr(module, "col_offset", 0)))  # argen's shifted transposed convs crop columns
        table = conv_transpose_table(in_hw, out_hw, taps, _ints(module.stride, "stride"),
                                     _ints(module.dilation, "dilation"), _ints(module.padding, "padding"), crop)
        cin, cout = module.in_channels, module.out_channels

        def weights() -> tuple[Tensor, Tensor]:
            k = _effective_kernel(module).detach()  # (C_in, C_out, kh, kw)
            w = torch.stack([k[:, :, ki, kj] for ki, kj in taps], 0)  # (T, C_in, C_out)
            return w.reshape(len(taps) * cin, cout).contiguous(), _bias(module, cout, k)

    else:
        raise UnsupportedLayer(f"{type(module).__name__} is not a convolution")
    identity = table.shape[1] == 1 and bool((table[:, 0] == np.arange(table.shape[0])).all()) and in_hw == out_hw
    return CachedConv(table, cin, cout, weights, identity)


def _bias(module: nn.Module, cout: int, like: Tensor) -> Tensor:
    b = module.bias
    return b.detach() if b is not None else torch.zeros(cout, dtype=like.dtype, device=like.device)


# ----- the pointwise (per position) operations a cached graph may contain ----------------------
# They act on each position on its own (channels may mix: cat, chunk, channel slicing), so they
# run unchanged on a (B, C, 1, n) tensor that holds n positions of a map.

POINTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ELU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Identity, nn.Dropout,
)


def _pointwise_functions() -> set[object]:
    import operator

    import torch.nn.functional as F

    return {
        operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.pos,
        torch.add, torch.sub, torch.mul, torch.div, torch.neg, torch.tanh, torch.sigmoid, torch.exp,
        torch.log, torch.sqrt, torch.rsqrt, torch.abs, torch.relu, torch.clamp, torch.maximum, torch.minimum,
        torch.ones_like, torch.zeros_like, torch.full_like, torch.square,
        F.relu, F.elu, F.leaky_relu, F.gelu, F.silu, F.softplus, F.dropout, F.sigmoid, F.tanh,
    }


POINTWISE_FUNCTIONS = _pointwise_functions()
POINTWISE_METHODS = {
    "float", "double", "half", "contiguous", "add", "sub", "mul", "div", "neg", "tanh", "sigmoid", "exp",
    "log", "sqrt", "rsqrt", "abs", "relu", "clamp", "square", "__add__", "__sub__", "__mul__", "__truediv__",
    "__radd__", "__rmul__", "__rsub__", "__neg__",
}
# functions / methods that split or join along a dimension: pointwise only along channels (dim 1)
# value: position of the `dim` argument in the traced call's args (a method's args start with self)
CHANNEL_FUNCTIONS = {torch.cat: 1, torch.concat: 1, torch.chunk: 2, torch.split: 2}
CHANNEL_METHODS = {"chunk": 2, "split": 2}

__all__ = [
    "UnsupportedLayer", "CachedConv", "cached_conv", "conv_table", "conv_transpose_table", "shift_table",
    "POINTWISE_MODULES", "POINTWISE_FUNCTIONS", "POINTWISE_METHODS", "CHANNEL_FUNCTIONS", "CHANNEL_METHODS",
]
