"""Learning-rate schedules as a pure function of the step.

The trainer sets each step's learning rate from `lr_at(step, config)`, so the schedule has no
state of its own: resuming at step s continues exactly where an uninterrupted run would be, and
`--steps` can be raised on resume without a scheduler object remembering the old total.
"""
from __future__ import annotations

import math

from argen.train.config import TrainConfig


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of `config.lr` for the update that takes the model from `step` to `step + 1`.

    Linear warmup over `warmup_steps` updates ((s+1)/warmup), then
    constant: 1; cosine: from 1 to `min_lr_ratio` over the remaining steps;
    exponential: `lr_decay ** (s - warmup)` (PixelCNN++ uses 0.999995 per step).
    """
    if step < 0:
        raise ValueError(f"expected step >= 0, given {step}")
    warmup = config.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    after = step - warmup
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "exponential":
        return config.lr_decay ** after
    if config.schedule == "cosine":
        span = max(1, config.steps - warmup)
        progress = min(1.0, after / span)
        return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"expected schedule in ('constant', 'cosine', 'exponential'), given {config.schedule!r}")


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate of the update at `step` (0-based)."""
    return config.lr * lr_factor(step, config)
