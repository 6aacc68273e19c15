"""Masked convolutions (PixelCNN, van den Oord et al. 2016, Figure 3 of the survey).

Feature maps are split into `groups` contiguous blocks (R, G, B). Taps at earlier pixels in raster
order (rows above; same row, left of centre) connect everything. At the centre tap, mask "A"
connects input group j to output group i only if j < i, mask "B" if j <= i. Contiguous blocks
match the categorical head's reshape (output feature f belongs to channel f // L).

The same rule over any number of spatial dims (`causal_kernel_mask`): a tap is kept when it comes
before the centre in raster order of the kernel, so `MaskedConv3d` is causal in raster order of
(t, h, w) (a video's frames in turn, each in raster order).
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from argen.nn.util import CausalLayer, CausalSpec, conv_spec


def _group_of(n: int, groups: int) -> Tensor:
    if n % groups:
        raise ValueError(f"feature count must be divisible by the {groups} channel groups, given {n}")
    return torch.arange(n) // (n // groups)


def causal_kernel_mask(
    out_ch: int, in_ch: int, kernel_size: tuple[int, ...], mask_type: str, groups: int,
    centre: tuple[int, ...] | None = None,
) -> Tensor:
    """(out, in, *kernel_size) 0/1 mask for a raster-order masked convolution over any number of
    spatial dims.

    `centre` is the tap aligned with the output position (default: the kernel's centre). Taps
    before it in raster order of the kernel are kept, taps after it are zeroed, the centre tap
    obeys the channel-group rule.
    """
    if mask_type not in ("A", "B"):
        raise ValueError(f"mask_type must be 'A' or 'B', given {mask_type!r}")
    centre = centre if centre is not None else tuple(k // 2 for k in kernel_size)
    if len(centre) != len(kernel_size) or not all(0 <= c < k for c, k in zip(centre, kernel_size)):
        raise ValueError(f"expected a centre tap inside the kernel {tuple(kernel_size)}, given {tuple(centre)}")
    mask = torch.zeros(out_ch, in_ch, *kernel_size)
    for tap in itertools.product(*(range(k) for k in kernel_size)):
        if tap < tuple(centre):  # tuples compare in raster order
            mask[(slice(None), slice(None), *tap)] = 1
    go = _group_of(out_ch, groups)[:, None]
    gi = _group_of(in_ch, groups)[None, :]
    allowed = gi < go if mask_type == "A" else gi <= go
    mask[(slice(None), slice(None), *centre)] = allowed.float()
    return mask


def channel_group_mask(
    out_ch: int, in_ch: int, kh: int, kw: int, mask_type: str, groups: int, centre: tuple[int, int] | None = None
) -> Tensor:
    """(out, in, kh, kw) 0/1 mask for a raster-order masked convolution.

    `centre` is the tap aligned with the output pixel (default: the kernel's centre). Taps in rows
    above it, and left of it in its row, are kept; taps after it are zeroed; the centre tap obeys
    the channel-group rule.
    """
    return causal_kernel_mask(out_ch, in_ch, (kh, kw), mask_type, groups, centre)


class MaskedConv2d(nn.Conv2d, CausalLayer):
    """A same-size convolution whose kernel is multiplied by a causal mask at every call."""

    mask: Tensor

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int | tuple[int, int], mask_type: str, groups: int = 1, bias: bool = True
    ) -> None:
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f"masked convolution needs odd kernel sizes, given {(kh, kw)}")
        super().__init__(in_ch, out_ch, (kh, kw), padding=(kh // 2, kw // 2), bias=bias)
        self.mask_type = mask_type
        self.channel_groups = groups
        self.register_buffer("mask", channel_group_mask(out_ch, in_ch, kh, kw, mask_type, groups), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, self.stride, self.padding)

    def causal_spec(self) -> CausalSpec:
        return conv_spec(self, weights=lambda: (self.weight * self.mask, self.bias), mask=self.mask)


class MaskedConv3d(nn.Conv3d, CausalLayer):
    """`MaskedConv2d` over (T, H, W): causal in raster order of (t, h, w) (all earlier frames, then
    the rows above and the pixels to the left in the current frame; mask "A" / "B" at the centre)."""

    mask: Tensor

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int | tuple[int, int, int], mask_type: str, groups: int = 1,
        bias: bool = True,
    ) -> None:
        ks = (kernel_size,) * 3 if isinstance(kernel_size, int) else tuple(int(k) for k in kernel_size)
        if len(ks) != 3 or any(k % 2 == 0 or k < 1 for k in ks):
            raise ValueError(f"masked 3-D convolution needs three odd kernel sizes, given {kernel_size!r}")
        super().__init__(in_ch, out_ch, ks, padding=tuple(k // 2 for k in ks), bias=bias)
        self.mask_type = mask_type
        self.channel_groups = groups
        self.register_buffer("mask", causal_kernel_mask(out_ch, in_ch, ks, mask_type, groups), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv3d(x, self.weight * self.mask, self.bias, self.stride, self.padding)

    def causal_spec(self) -> CausalSpec:
        return conv_spec(self, weights=lambda: (self.weight * self.mask, self.bias), mask=self.mask)


def masked_output_head(width: int, head: int, out: int, groups: int) -> nn.Sequential:
    """The PixelCNN/PixelRNN output: ReLU, 1x1 mask-B conv, ReLU, 1x1 mask-B conv to `out` params."""
    return nn.Sequential(
        nn.ReLU(), MaskedConv2d(width, head, 1, "B", groups),
        nn.ReLU(), MaskedConv2d(head, out, 1, "B", groups),
    )
