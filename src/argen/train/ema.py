"""Polyak (exponential moving) averaging of model weights.

The averaged copy is a full module of the same class, so `argen.save(model, ema=ema.module)`
stores it as `ema.safetensors` and `argen.load` restores it as an ordinary model.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """ema = d * ema + (1 - d) * weights after every optimizer step.

    With `warmup`, d is min(decay, (1 + n) / (10 + n)) at update n, so a short run's average is
    not dominated by the random initialisation (0.999 ** 1500 still weighs the init by 22%).
    Buffers (e.g. normalisation statistics) are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"expected EMA decay in (0, 1), given {decay}")
        self.decay, self.warmup = decay, warmup
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.num_updates = 0

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        ema_params = dict(self.module.named_parameters())
        for name, value in model.named_parameters():
            ema_params[name].lerp_(value.detach(), 1.0 - d)
        ema_buffers = dict(self.module.named_buffers())
        for name, value in model.named_buffers():
            ema_buffers[name].copy_(value)
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])
