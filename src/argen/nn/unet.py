"""A non-causal U-Net with a per-example embedding (time step, class, stage), DDPM style.

Models that hide information at the *input* (ARDM's absorbing mask) rather than inside the
network need no causal masking: any ordinary image-to-image network works, and a U-Net gives
every output position a view of the whole image. The embedding vector (B, emb_dim) is added to
every residual block, which is how the network learns how much of the input is visible.

Sizes that do not halve evenly (5 x 6) are fine: downsampling rounds up and upsampling returns
to the exact size of the matching skip connection.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _norm(ch: int, groups: int = 8) -> nn.GroupNorm:
    # GroupNorm normalises each example on its own, so batching never mixes examples
    # (BatchNorm would leak information between the copies of one image at different steps).
    return nn.GroupNorm(math.gcd(groups, ch), ch)


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """(B,) float positions -> (B, dim) sin/cos features at geometrically spaced frequencies."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / max(half, 1))
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([args.cos(), args.sin()], dim=1)
    return F.pad(emb, (0, dim - 2 * half))


class TimestepEmbedding(nn.Module):
    """Sinusoidal features of a step in [0, 1] (scaled by `scale`) followed by a two-layer MLP."""

    def __init__(self, dim: int, scale: float = 1000.0) -> None:
        super().__init__()
        self.dim, self.scale = dim, scale
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, frac: Tensor) -> Tensor:
        return self.mlp(sinusoidal_embedding(frac * self.scale, self.dim))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the embedding added in between; 1x1 skip when widths differ."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(in_ch), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2, self.conv2 = _norm(out_ch), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Global (non-causal) self-attention over all positions, residual."""

    def __init__(self, ch: int, heads: int = 4) -> None:
        super().__init__()
        heads = math.gcd(heads, ch)
        self.norm = _norm(ch)
        self.attn = nn.MultiheadAttention(ch, heads, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        seq = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        out, _ = self.attn(seq, seq, seq, need_weights=False)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class UNet(nn.Module):
    """Image-to-image U-Net: `forward(h, emb)` with h (B, in_ch, H, W), emb (B, emb_dim).

    `channel_mults` gives the width of each resolution level (hidden * mult); there are
    len(channel_mults) - 1 stride-2 downsamplings. `attention` adds global self-attention in the
    middle block (the lowest resolution), where it is cheapest.
    """

    def __init__(self, in_ch: int, out_ch: int, hidden: int, emb_dim: int, channel_mults: Sequence[int] = (1, 2),
                 blocks_per_level: int = 2, attention: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        if hidden < 1 or blocks_per_level < 1 or not channel_mults or min(channel_mults) < 1:
            raise ValueError(f"expected hidden >= 1, blocks_per_level >= 1 and positive channel_mults, given "
                             f"{hidden}, {blocks_per_level}, {tuple(channel_mults)}")
        self.input = nn.Conv2d(in_ch, hidden, 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips, ch = [hidden], hidden
        for i, mult in enumerate(channel_mults):
            blocks = nn.ModuleList()
            for _ in range(blocks_per_level):
                blocks.append(ResBlock(ch, hidden * mult, emb_dim, dropout))
                ch = hidden * mult
                skips.append(ch)
            self.down.append(blocks)
            last = i == len(channel_mults) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(ch, ch, 3, stride=2, padding=1))
            if not last:
                skips.append(ch)
        self.mid1 = ResBlock(ch, ch, emb_dim, dropout)
        self.mid_attn = AttentionBlock(ch) if attention else nn.Identity()
        self.mid2 = ResBlock(ch, ch, emb_dim, dropout)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, mult in reversed(list(enumerate(channel_mults))):
            blocks = nn.ModuleList()
            for _ in range(blocks_per_level + 1):
                blocks.append(ResBlock(ch + skips.pop(), hidden * mult, emb_dim, dropout))
                ch = hidden * mult
            self.up.append(blocks)
            self.upsample.append(nn.Conv2d(ch, ch, 3, padding=1) if i > 0 else nn.Identity())
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, out_ch, 3, padding=1))

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        h = self.input(h)
        skips = [h]
        for blocks, down in zip(self.down, self.downsample):
            for block in blocks:
                h = block(h, emb)
                skips.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for blocks, up in zip(self.up, self.upsample):
            for block in blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if not isinstance(up, nn.Identity):
                h = up(F.interpolate(h, size=skips[-1].shape[-2:], mode="nearest"))
        return self.out(h)
