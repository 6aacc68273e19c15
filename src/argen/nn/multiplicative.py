"""Multiplicative units and residual multiplicative blocks (Video Pixel Network, Kalchbrenner et al. 2017).

    MU(h) = sigmoid(W1 h) * tanh(sigmoid(W2 h) * h + sigmoid(W3 h) * tanh(W4 h))

with W1..W4 3x3 convolutions: an LSTM-like gated update without a recurrence (g2, g3 play the
forget and input gates, W4 the candidate, g1 the output gate), so depth behaves like time steps.
A residual multiplicative block (RMB) is 1x1 2c -> c, MU, MU, 1x1 c -> 2c, plus the input.

Two variants:

- unmasked (`MultiplicativeUnit`, `ResidualMultiplicativeBlock`): the per-frame encoder; the 3x3
  convolutions take a dilation (VPN cycles 1, 2, 4, 8 through the encoder's blocks);
- masked (`MaskedMultiplicativeUnit`, `MaskedResidualMultiplicativeBlock`): the decoder, every
  convolution a mask-B `argen.nn.MaskedConv2d` with the R < G < B channel groups, so features at a
  pixel see only earlier pixels and the earlier (or same) colour groups of the current one. The
  masked block optionally adds a 1x1 projection of a context map (VPN's ConvLSTM state of the
  earlier frames) to its narrow stream: the context is already causal (it sees only frames before
  the current one), so every position may read it unmasked.

The four gate convolutions are separate layers rather than one 4c-wide one: a masked conv groups
its output features in contiguous colour blocks, and splitting one wide output into four would
cut across those blocks.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from argen.nn.masked import MaskedConv2d


def multiplicative_update(h: Tensor, w1: Tensor, w2: Tensor, w3: Tensor, w4: Tensor) -> Tensor:
    """The MU formula from the four pre-activations W1 h .. W4 h (each the shape of `h`)."""
    return torch.sigmoid(w1) * torch.tanh(torch.sigmoid(w2) * h + torch.sigmoid(w3) * torch.tanh(w4))


class MultiplicativeUnit(nn.Module):
    """MU with four unmasked 3x3 convolutions (dilation `dilation`, same-size maps)."""

    def __init__(self, channels: int, dilation: int = 1) -> None:
        super().__init__()
        if channels < 1 or dilation < 1:
            raise ValueError(f"MultiplicativeUnit needs channels >= 1 and dilation >= 1, given {channels}, {dilation}")
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation) for _ in range(4))

    def forward(self, h: Tensor) -> Tensor:
        w1, w2, w3, w4 = (conv(h) for conv in self.convs)
        return multiplicative_update(h, w1, w2, w3, w4)


class MaskedMultiplicativeUnit(nn.Module):
    """MU with four 3x3 mask-B convolutions over `groups` colour groups (causal in raster order)."""

    def __init__(self, channels: int, groups: int = 1) -> None:
        super().__init__()
        self.convs = nn.ModuleList(MaskedConv2d(channels, channels, 3, "B", groups) for _ in range(4))

    def forward(self, h: Tensor) -> Tensor:
        w1, w2, w3, w4 = (conv(h) for conv in self.convs)
        return multiplicative_update(h, w1, w2, w3, w4)


class ResidualMultiplicativeBlock(nn.Module):
    """h (2c) -> 1x1 to c -> MU -> MU -> 1x1 to 2c, plus h (the encoder's block)."""

    def __init__(self, channels: int, dilation: int = 1) -> None:
        super().__init__()
        self.down = nn.Conv2d(2 * channels, channels, 1)
        self.mu1 = MultiplicativeUnit(channels, dilation)
        self.mu2 = MultiplicativeUnit(channels, dilation)
        self.up = nn.Conv2d(channels, 2 * channels, 1)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.up(self.mu2(self.mu1(self.down(h))))


class MaskedResidualMultiplicativeBlock(nn.Module):
    """The decoder's block: mask-B 1x1 down, two masked MUs, mask-B 1x1 up, plus h; with
    `context_channels`, a 1x1 projection of the (causal, earlier-frame) context is added after `down`."""

    def __init__(self, channels: int, groups: int = 1, context_channels: int = 0) -> None:
        super().__init__()
        self.down = MaskedConv2d(2 * channels, channels, 1, "B", groups)
        self.context = nn.Conv2d(context_channels, channels, 1) if context_channels else None
        self.mu1 = MaskedMultiplicativeUnit(channels, groups)
        self.mu2 = MaskedMultiplicativeUnit(channels, groups)
        self.up = MaskedConv2d(channels, 2 * channels, 1, "B", groups)

    def forward(self, h: Tensor, context: Tensor | None = None) -> Tensor:
        u = self.down(h)
        if self.context is not None:
            if context is None:
                raise ValueError("this block was built with context_channels: expected a context map, given None")
            u = u + self.context(context)
        return h + self.up(self.mu2(self.mu1(u)))


__all__ = [
    "multiplicative_update", "MultiplicativeUnit", "MaskedMultiplicativeUnit", "ResidualMultiplicativeBlock",
    "MaskedResidualMultiplicativeBlock",
]
