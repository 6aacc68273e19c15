"""Shifted convolutions and the gated residual block (PixelCNN++, Salimans et al. 2017).

Causality by construction instead of masks: pad only above (and to the left of) the input, then
run an unpadded convolution, so no output can read anything below (or to the right of) itself.
Every layer here states exactly which input positions output (i, j) reads, which is all a
cached sampler needs to know (each layer keeps the last `kernel_height` input rows):

- `DownShiftedConv2d`, kernel (kh, kw), kw odd: rows i-kh+1 .. i, columns j-(kw-1)/2 .. j+(kw-1)/2.
- `DownRightShiftedConv2d`, kernel (kh, kw): rows i-kh+1 .. i, columns j-kw+1 .. j.
- `down_shift` / `right_shift`: row i-1 / column j-1 (zeros enter at the top / left edge); they
  turn "reads rows <= i" into "reads rows < i", which is how a stream first becomes strictly causal.
- stride s: coarse output (i, j) reads fine rows s*i-kh+1 .. s*i (columns likewise); the coarse
  pixel stands for fine rows s*i .. s*i+s-1, so it sees nothing after the first fine pixel it
  stands for.
- the transposed ("deconv") versions with stride s: fine output (r, c) reads coarse rows
  (r-kh+1)/s .. r/s (rounded inwards) and, for the down-right one, columns likewise; together
  with the previous point, fine (r, c) never sees past what a stride-1 stream at (r, c) would.

A "down" stream (u in the paper) whose row i depends only on image rows < i, and a
"down-right" stream (ul) whose (i, j) depends only on image pixels before (i, j) in raster order,
both keep that property through any chain of these layers, which is what PixelCNN++ and
PixelSNAIL are built from.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from argen.nn.util import CausalLayer, CausalSpec, ClassEmbedding, conv_spec


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def down_shift(x: Tensor, rows: int = 1) -> Tensor:
    """Move a (B, C, H, W) map `rows` rows down; zeros fill the top rows."""
    return F.pad(x, (0, 0, rows, 0))[:, :, : x.shape[2], :]


def right_shift(x: Tensor, cols: int = 1) -> Tensor:
    """Move a (B, C, H, W) map `cols` columns right; zeros fill the left columns."""
    return F.pad(x, (cols, 0, 0, 0))[:, :, :, : x.shape[3]]


def concat_elu(x: Tensor) -> Tensor:
    """elu([x, -x]) along channels (doubles them): keeps both signs' information (PixelCNN++)."""
    return F.elu(torch.cat([x, -x], dim=1))


class _ShiftedConv2d(nn.Conv2d, CausalLayer):
    """An unpadded convolution behind a fixed one-sided zero padding `self.pad` (F.pad order:
    left, right, top, bottom). Subclasses choose the padding; `kernel()` lets a subclass mask
    the weight without touching the shift logic (and `kernel_mask()` says which taps it keeps)."""

    pad: tuple[int, int, int, int]

    def __init__(self, in_ch: int, out_ch: int, kernel_size: tuple[int, int], stride: int, pad: tuple[int, int, int, int]) -> None:
        if stride < 1:
            raise ValueError(f"stride must be >= 1, given {stride}")
        super().__init__(in_ch, out_ch, kernel_size, stride=stride, padding=0)
        self.pad = pad

    def kernel(self) -> Tensor:
        """The weight the convolution uses (subclasses may mask it)."""
        return self.weight

    def kernel_mask(self) -> Tensor | None:
        """The fixed 0/1 mask `kernel()` multiplies the weight by (None: no mask)."""
        return None

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(F.pad(x, self.pad), self.kernel(), self.bias, self.stride)

    def causal_spec(self) -> CausalSpec:
        left, _, top, _ = self.pad
        return conv_spec(self, weights=lambda: (self.kernel(), self.bias), mask=self.kernel_mask(),
                         extra_padding=(top, left))


class DownShiftedConv2d(_ShiftedConv2d):
    """Output (i, j) reads input rows i-kh+1..i and columns j-(kw-1)/2..j+(kw-1)/2 (default 2x3).

    With stride s the output has ceil(H/s) x ceil(W/s) pixels (PixelCNN++ downsampling).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int | tuple[int, int] = (2, 3), stride: int = 1) -> None:
        kh, kw = _pair(kernel_size)
        if kw % 2 == 0:
            raise ValueError(f"down-shifted convolution needs an odd kernel width, given {kw}")
        half = (kw - 1) // 2
        super().__init__(in_ch, out_ch, (kh, kw), stride, (half, half, kh - 1, 0))


class DownRightShiftedConv2d(_ShiftedConv2d):
    """Output (i, j) reads input rows i-kh+1..i and columns j-kw+1..j (default 2x2)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int | tuple[int, int] = (2, 2), stride: int = 1) -> None:
        kh, kw = _pair(kernel_size)
        super().__init__(in_ch, out_ch, (kh, kw), stride, (kw - 1, 0, kh - 1, 0))


class _ShiftedConvTranspose2d(nn.ConvTranspose2d, CausalLayer):
    """A transposed convolution cropped back to exactly stride * input size.

    The full output of a transposed convolution with kernel (kh, kw) and stride s is
    (s*H + kh - 1) x (s*W + kw - 1) (with output_padding s-1); keeping its first s*H rows means
    fine row r reads only coarse rows <= r/s. `col_offset` chooses which s*W columns are kept.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: tuple[int, int], stride: int, col_offset: int) -> None:
        if stride < 1:
            raise ValueError(f"stride must be >= 1, given {stride}")
        super().__init__(in_ch, out_ch, kernel_size, stride=stride, output_padding=stride - 1)
        self.col_offset = col_offset

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        h, w = x.shape[2] * self.stride[0], x.shape[3] * self.stride[1]
        y = super().forward(x)
        return y[:, :, :h, self.col_offset : self.col_offset + w]

    def causal_spec(self) -> CausalSpec:
        return conv_spec(self, offset=(0, self.col_offset))


class DownShiftedConvTranspose2d(_ShiftedConvTranspose2d):
    """Upsampling partner of DownShiftedConv2d (default 2x3, stride 2): fine row r reads coarse
    rows <= r/s, columns around c/s."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int | tuple[int, int] = (2, 3), stride: int = 2) -> None:
        kh, kw = _pair(kernel_size)
        if kw % 2 == 0:
            raise ValueError(f"down-shifted transposed convolution needs an odd kernel width, given {kw}")
        super().__init__(in_ch, out_ch, (kh, kw), stride, (kw - 1) // 2)


class DownRightShiftedConvTranspose2d(_ShiftedConvTranspose2d):
    """Upsampling partner of DownRightShiftedConv2d (default 2x2, stride 2): fine (r, c) reads
    coarse rows <= r/s and columns <= c/s."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int | tuple[int, int] = (2, 2), stride: int = 2) -> None:
        super().__init__(in_ch, out_ch, _pair(kernel_size), stride, 0)


ConvFactory = Callable[[int, int], nn.Module]


class GatedResidualBlock(nn.Module):
    """x + a * sigmoid(b) (PixelCNN++'s gated_resnet), the block PixelCNN++ and PixelSNAIL share.

        c = conv(concat_elu(x)) [+ 1x1(concat_elu(aux))]
        a, b = split(conv(dropout(concat_elu(c))) [+ class bias])
        out = x + a * sigmoid(b)

    `conv(in_ch, out_ch)` builds the spatial convolution and decides the block's causality (e.g.
    `DownShiftedConv2d`, `DownRightShiftedConv2d`, or a 1x1 `nn.Conv2d` after attention); the
    auxiliary input `aux` (another stream, a skip from the up pass, an attention output) enters
    through a 1x1 convolution and so must itself be causal for this stream at each pixel. The
    class bias is a learned vector per class added before the gate (zero at init). The second
    convolution starts scaled by 0.1 so that each block starts near the identity, as the
    reference's init_scale=0.1 does.
    """

    def __init__(
        self,
        channels: int,
        conv: ConvFactory,
        aux_channels: int = 0,
        num_classes: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if channels < 1 or aux_channels < 0:
            raise ValueError(f"channels must be >= 1 and aux_channels >= 0, given {channels}, {aux_channels}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), given {dropout}")
        self.channels = channels
        self.conv_in = conv(2 * channels, channels)
        self.aux = nn.Conv2d(2 * aux_channels, channels, 1) if aux_channels else None
        self.dropout = nn.Dropout(dropout)
        self.conv_out = conv(2 * channels, 2 * channels)
        self.class_bias = ClassEmbedding(num_classes, 2 * channels)
        with torch.no_grad():
            for p in self.conv_out.parameters():
                p.mul_(0.1)

    def forward(self, x: Tensor, aux: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
        c = self.conv_in(concat_elu(x))
        if self.aux is not None:
            if aux is None:
                raise ValueError("this block was built with aux_channels > 0: expected an aux tensor, given None")
            c = c + self.aux(concat_elu(aux))
        elif aux is not None:
            raise ValueError(f"this block was built without aux_channels: expected aux=None, given {tuple(aux.shape)}")
        c = self.conv_out(self.dropout(concat_elu(c)))
        bias = self.class_bias(cond)
        if bias is not None:
            c = c + bias
        a, b = c.chunk(2, dim=1)
        return x + a * torch.sigmoid(b)


__all__ = [
    "down_shift",
    "right_shift",
    "concat_elu",
    "DownShiftedConv2d",
    "DownRightShiftedConv2d",
    "DownShiftedConvTranspose2d",
    "DownRightShiftedConvTranspose2d",
    "GatedResidualBlock",
    "ConvFactory",
]
