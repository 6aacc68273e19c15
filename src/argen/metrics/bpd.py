"""Bits per dimension: the one function every model's likelihood goes through."""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from argen.conditioning import batch_condition


def bits_per_dim(log_prob: Tensor | float, num_dims: int) -> Tensor | float:
    """bits/dim = -log p(x) / (D ln 2), with log p in nats and D = C*H*W (*T for video)."""
    return -log_prob / (num_dims * math.log(2.0))


@torch.no_grad()
def evaluate_bpd(model: Any, batches: Iterable[tuple[Tensor, Tensor | None]], device: torch.device | str | None = None,
                 use_labels: bool = True, progress: bool = False, max_batches: int | None = None,
                 log_prob: Callable[[Tensor, Tensor | None], Tensor] | None = None) -> dict[str, float]:
    """Average exact test bits/dim (and nats per example) over an iterable of (x, label) batches.

    `log_prob(x, cond)` replaces `model.log_prob` (e.g. LMConv's average over several orders).
    """
    log_prob = log_prob or model.log_prob
    was_training = model.training
    model.eval()
    device = device or model.device
    total_lp, count = 0.0, 0
    try:
        for i, (x, y) in enumerate(tqdm(batches, desc="eval", disable=not progress, leave=False)):
            if max_batches is not None and i >= max_batches:
                break
            cond = batch_condition(model.cond_spec, y) if use_labels else None
            cond = None if cond is None else cond.to(device)
            lp = log_prob(x.to(device), cond)
            total_lp += float(lp.double().sum())
            count += x.shape[0]
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("expected at least one example to evaluate, given none")
    nats = -total_lp / count
    return {"bpd": float(bits_per_dim(-nats, model.num_dims)), "nats": nats, "n": count}
