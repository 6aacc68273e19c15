"""Small helpers every model needs."""
from __future__ import annotations

from torch import Tensor, nn


def scale_input(x: Tensor, levels: int) -> Tensor:
    """Integer pixels in [0, levels) to floats in [-1, 1] (the scaling PixelCNN++ uses)."""
    return x.float() * (2.0 / (levels - 1)) - 1.0


class ClassEmbedding(nn.Module):
    """Learned per-class vector added as a bias (conditional PixelCNN); a no-op without classes."""

    def __init__(self, num_classes: int | None, dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes, dim) if num_classes else None
        if self.embed is not None:
            nn.init.zeros_(self.embed.weight)

    def forward(self, cond: Tensor | None) -> Tensor | None:
        """(B, dim, 1, 1) bias, or None when the model is unconditional."""
        if self.embed is None or cond is None:
            return None
        return self.embed(cond)[:, :, None, None]
