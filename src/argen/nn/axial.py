"""Axial self-attention over a 3-D feature volume (VideoGPT's VQ-VAE residual blocks).

Full attention over T*H*W positions costs (THW)^2; axial attention attends along one axis at a time
(every row of t, of h and of w is a short sequence) and sums the three results, so each position
sees its whole row, column and time line at a cost of THW * (T + H + W). Each axis has its own
multi-head projections (as VideoGPT's AxialBlock); there is no positional encoding: the
convolutions around the block carry position. `causal_time` masks the time axis so a position only
attends to the same or earlier frames (a temporally causal encoder).
"""
from __future__ import annotations

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

#: (pattern folding the other two axes into the batch, its inverse) for axes t, h, w of (B, C, T, H, W)
_AXES = {
    "t": ("b c t h w -> (b h w) t c", "(b h w) t c -> b c t h w"),
    "h": ("b c t h w -> (b t w) h c", "(b t w) h c -> b c t h w"),
    "w": ("b c t h w -> (b t h) w c", "(b t h) w c -> b c t h w"),
}


class AxialAttention3d(nn.Module):
    """(B, C, T, H, W) -> (B, C, T, H, W): multi-head self-attention along t, h and w separately, summed."""

    def __init__(self, channels: int, heads: int, causal_time: bool = False) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"axial attention: channels ({channels}) must be divisible by heads, given heads={heads}")
        self.channels, self.heads, self.causal_time = channels, heads, bool(causal_time)
        self.qkv = nn.ModuleDict({a: nn.Linear(channels, 3 * channels) for a in _AXES})
        self.out = nn.ModuleDict({a: nn.Linear(channels, channels) for a in _AXES})

    def attend_axis(self, x: Tensor, axis: str) -> Tensor:
        """Self-attention along one axis ("t", "h" or "w") of x (B, C, T, H, W)."""
        fold, unfold = _AXES[axis]
        b, _, t, h, w = x.shape
        seq = rearrange(x, fold)
        q, k, v = rearrange(self.qkv[axis](seq), "n l (three k d) -> three n k l d", three=3, k=self.heads)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal_time and axis == "t")
        y = self.out[axis](rearrange(y, "n k l d -> n l (k d)"))
        return rearrange(y, unfold, b=b, t=t, h=h, w=w)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 5 or x.shape[1] != self.channels:
            raise ValueError(f"expected features (B, {self.channels}, T, H, W), given shape {tuple(x.shape)}")
        return sum(self.attend_axis(x, a) for a in _AXES)  # type: ignore[return-value]
