"""Edge maps of digits (`mnist-edges`), for edge-to-image synthesis (IQ-VAE), and the fixed edge
detector the benchmarks also apply to generated images (edge consistency).

The detector is deliberately simple and parameter-free, so "the edges of a generated image" mean the
same thing everywhere: binarize at the middle level, and a pixel is an edge when it is on and at
least one of its 4 neighbours is off (the inner boundary of the stroke; off-image neighbours count
as off). Items of `mnist-edges` are (grey digit (1, 28, 28) with 256 levels, its edge map
(1, 28, 28) in {0, 1}).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from argen.conditioning import CondSpec


def edge_map(x: np.ndarray | Tensor, levels: int = 256) -> np.ndarray | Tensor:
    """(..., 1, H, W) integer image -> its edge map of the same type and shape, values {0, 1}."""
    is_tensor = isinstance(x, Tensor)
    a = x.detach().cpu().numpy() if is_tensor else np.asarray(x)
    if a.ndim < 3 or a.shape[-3] != 1:
        raise ValueError(f"expected grey images (..., 1, H, W), given shape {tuple(a.shape)}")
    on = a.astype(np.int64) * 2 >= levels  # v >= levels / 2
    padded = np.pad(on, [(0, 0)] * (on.ndim - 2) + [(1, 1), (1, 1)], constant_values=False)
    inner = (padded[..., :-2, 1:-1] & padded[..., 2:, 1:-1] & padded[..., 1:-1, :-2] & padded[..., 1:-1, 2:])
    edges = (on & ~inner).astype(np.uint8)
    if is_tensor:
        return torch.from_numpy(edges).to(device=x.device, dtype=x.dtype)
    return edges.astype(a.dtype if np.issubdtype(a.dtype, np.integer) else np.uint8)


class EdgeSource:
    """Grey digits with their edge maps as the condition (see the module doc)."""

    num_classes = None

    def __init__(self, images: np.ndarray, levels: int = 256) -> None:
        self.images, self.levels = images, levels
        self.item_shape = tuple(images.shape[1:])
        self.edges = edge_map(images, levels)
        self.cond_spec = CondSpec.image(self.item_shape, 2)

    def __len__(self) -> int:
        return len(self.images)

    def get(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.images[index], self.edges[index]
