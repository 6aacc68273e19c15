"""The two-stack gated layer of Gated PixelCNN (van den Oord et al. 2016, "Conditional Image
Generation with PixelCNN Decoders", Figure 2).

A vertical stack sees everything above the current row (no mask needed: it only reaches the
horizontal stack shifted down one row), a horizontal stack sees the current row up to the
current pixel (masked by R, G, B channel group at the current pixel). Together they cover every
earlier pixel, which removes PixelCNN's blind spot.

Shift semantics, for a later cached sampler (nothing here keeps state between calls):

- vertical conv: a `DownShiftedConv2d` with kernel (k//2 + 1, k): output row i reads vertical
  input rows i-k//2 .. i (the current row included, so the vertical stack at row i depends on
  image rows <= i);
- vertical -> horizontal link: 1x1 conv of the vertical pre-activation, `down_shift`ed one row,
  so the horizontal stack at row i gets only rows < i; nothing flows back;
- horizontal conv: a `DownRightShiftedConv2d` with kernel (1, k//2 + 1) whose current-pixel tap
  is channel-group masked (A in the first layer, B after): reads columns j-k//2 .. j of row i.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from argen.nn.masked import MaskedConv2d, channel_group_mask
from argen.nn.shifted import DownRightShiftedConv2d, DownShiftedConv2d, down_shift
from argen.nn.util import ClassEmbedding


def gate_tanh_sigmoid(x: Tensor) -> Tensor:
    """tanh(a) * sigmoid(b) with (a, b) the two halves of the channels (the LSTM-like gate)."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class HorizontalMaskedConv2d(DownRightShiftedConv2d):
    """1 x width down-right-shifted conv whose current-pixel tap obeys the channel-group rule.

    With `halves=2` the output is two gate halves (tanh part, sigmoid part) of `out_ch // 2`
    features each, and each half carries the full R, G, B grouping: feature f and feature
    f + out_ch//2 belong to the same group. (A plain group mask over all `out_ch` features would
    put the whole tanh half in R/G and the sigmoid half in G/B, and the gate would mix groups.)
    """

    def __init__(self, in_ch: int, out_ch: int, width: int, mask_type: str, groups: int, halves: int = 1) -> None:
        if width < 1:
            raise ValueError(f"width must be >= 1, given {width}")
        if halves < 1 or out_ch % halves:
            raise ValueError(f"out_ch must be divisible by halves={halves}, given {out_ch}")
        super().__init__(in_ch, out_ch, (1, width))
        mask = channel_group_mask(out_ch // halves, in_ch, 1, width, mask_type, groups, centre=(0, width - 1))
        self.register_buffer("mask", mask.repeat(halves, 1, 1, 1), persistent=False)

    def kernel(self) -> Tensor:
        return self.weight * self.mask

    def kernel_mask(self) -> Tensor:
        return self.mask


class GatedStackLayer(nn.Module):
    """One vertical + horizontal gated layer; `forward(v, h, cond) -> (v, h, skip)`.

    Horizontal path: gate(h_conv(h) + link(down_shift(v_pre)) + class bias), then a 1x1 mask-B
    conv, plus the residual `h` when `residual` (not in the first layer, whose input is the
    image: a residual there would hand each pixel its own value). `skip` is a 1x1 mask-B
    projection of the horizontal gate output (None when `skip_channels` is 0).
    """

    def __init__(
        self,
        in_ch: int,
        hidden: int,
        kernel: int,
        mask_type: str,
        groups: int,
        *,
        residual: bool = True,
        skip_channels: int = 0,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if kernel < 3 or kernel % 2 == 0:
            raise ValueError(f"kernel must be odd and >= 3, given {kernel}")
        if hidden % groups:
            raise ValueError(f"hidden must be divisible by the {groups} channel groups, given {hidden}")
        if residual and in_ch != hidden:
            raise ValueError(f"a residual layer needs in_ch == hidden, given in_ch={in_ch}, hidden={hidden}")
        self.residual = residual
        self.v_conv = DownShiftedConv2d(in_ch, 2 * hidden, (kernel // 2 + 1, kernel))
        self.h_conv = HorizontalMaskedConv2d(in_ch, 2 * hidden, kernel // 2 + 1, mask_type, groups, halves=2)
        self.link = nn.Conv2d(2 * hidden, 2 * hidden, 1)  # vertical -> horizontal, rows above only
        self.h_out = MaskedConv2d(hidden, hidden, 1, "B", groups)
        self.skip = MaskedConv2d(hidden, skip_channels, 1, "B", groups) if skip_channels else None
        self.v_bias = ClassEmbedding(num_classes, 2 * hidden)
        self.h_bias = ClassEmbedding(num_classes, 2 * hidden)

    def forward(self, v: Tensor, h: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        v_pre = self.v_conv(v)
        vb = self.v_bias(cond)
        if vb is not None:
            v_pre = v_pre + vb
        h_pre = self.h_conv(h) + self.link(down_shift(v_pre))
        hb = self.h_bias(cond)
        if hb is not None:
            h_pre = h_pre + hb
        gated = gate_tanh_sigmoid(h_pre)
        h_new = self.h_out(gated)
        if self.residual:
            h_new = h + h_new
        skip = self.skip(gated) if self.skip is not None else None
        return gate_tanh_sigmoid(v_pre), h_new, skip


__all__ = ["gate_tanh_sigmoid", "HorizontalMaskedConv2d", "GatedStackLayer"]
