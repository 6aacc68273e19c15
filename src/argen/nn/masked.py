"""Masked convolutions (PixelCNN, van den Oord et al. 2016, Figure 3 of the survey).

Feature maps are split into `groups` contiguous blocks (R, G, B). Taps at earlier pixels in raster
order (rows above; same row, left of centre) connect everything. At the centre tap, mask "A"
connects input group j to output group i only if j < i, mask "B" if j <= i. Contiguous blocks
match the categorical head's reshape (output feature f belongs to channel f // L).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _group_of(n: int, groups: int) -> Tensor:
    if n % groups:
        raise ValueError(f"feature count must be divisible by the {groups} channel groups, given {n}")
    return torch.arange(n) // (n // groups)


def channel_group_mask(
    out_ch: int, in_ch: int, kh: int, kw: int, mask_type: str, groups: int, centre: tuple[int, int] | None = None
) -> Tensor:
    """(out, in, kh, kw) 0/1 mask for a raster-order masked convolution.

    `centre` is the tap aligned with the output pixel (default: the kernel's centre). Taps in rows
    above it, and left of it in its row, are kept; taps after it are zeroed; the centre tap obeys
    the channel-group rule.
    """
    if mask_type not in ("A", "B"):
        raise ValueError(f"mask_type must be 'A' or 'B', given {mask_type!r}")
    ch, cw = centre if centre is not None else (kh // 2, kw // 2)
    mask = torch.zeros(out_ch, in_ch, kh, kw)
    mask[:, :, :ch, :] = 1
    mask[:, :, ch, :cw] = 1
    go = _group_of(out_ch, groups)[:, None]
    gi = _group_of(in_ch, groups)[None, :]
    allowed = gi < go if mask_type == "A" else gi <= go
    mask[:, :, ch, cw] = allowed.float()
    return mask


class MaskedConv2d(nn.Conv2d):
    """A same-size convolution whose kernel is multiplied by a causal mask at every call."""

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


def masked_output_head(width: int, head: int, out: int, groups: int) -> nn.Sequential:
    """The PixelCNN/PixelRNN output: ReLU, 1x1 mask-B conv, ReLU, 1x1 mask-B conv to `out` params."""
    return nn.Sequential(
        nn.ReLU(), MaskedConv2d(width, head, 1, "B", groups),
        nn.ReLU(), MaskedConv2d(head, out, 1, "B", groups),
    )
