"""Integer pixels <-> the [-1, 1] floats networks read, and per-batch statistics in the trainer's
(sum, count) form: shared by the tokenizers, the frame predictor and the video models."""
from __future__ import annotations

import torch
from torch import Tensor


def to_unit(x: Tensor, levels: int) -> Tensor:
    """Long pixels in [0, levels) -> floats in [-1, 1]."""
    return x.float() * (2.0 / (levels - 1)) - 1.0


def to_levels(y: Tensor, levels: int) -> Tensor:
    """Floats on the [-1, 1] scale -> long pixels in [0, levels) (rounded, clamped)."""
    return torch.round((y.float() + 1.0) * ((levels - 1) / 2.0)).clamp(0, levels - 1).long()


def mean_stat(value: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """(value * n, n): a per-example mean the trainer averages over micro-batches and ranks."""
    count = torch.tensor(float(n), device=value.device)
    return value.detach().float() * count, count


def one_stat(value: Tensor | float, device: torch.device) -> tuple[Tensor, Tensor]:
    """(value, 1): a number every micro-batch and rank reports; its logged mean is the number."""
    return torch.as_tensor(float(value), device=device), torch.ones((), device=device)
