"""Evaluation of models judged by reconstruction (tokenizers, frame predictors): their own
`eval_stats(x)` summed over batches, then their `summarize(totals)`. The trainer (which all-reduces
the sums across ranks in between) and `argen eval` share it, as they share `evaluate_bpd`."""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor
from tqdm.auto import tqdm


@torch.no_grad()
def sum_eval_stats(model: Any, batches: Iterable[tuple[Tensor, Any]], device: torch.device | str,
                   progress: bool = False) -> tuple[dict[str, tuple[Tensor, Tensor]] | None, int]:
    """({name: (sum, count)} over every batch or None without batches, examples seen), in eval mode."""
    from argen.train.distributed import add_stats, check_stats

    was_training = model.training
    model.eval()
    stats, examples = None, 0
    try:
        with_y = bool(getattr(type(model), "uses_condition", False))  # a tokenizer that encodes y too (IQ-VAE)
        for x, y in tqdm(batches, desc="reconstruct", unit="batch", disable=not progress, dynamic_ncols=True):
            extra = {"cond": y.to(device)} if with_y else {}
            stats = add_stats(stats, check_stats(model.eval_stats(x.to(device), **extra), type(model).__name__,
                                                 "eval_stats"))
            examples += x.shape[0]
    finally:
        model.train(was_training)
    return stats, examples


def summarize_stats(model: Any, stats: dict[str, tuple[Tensor, Tensor]] | None, examples: int) -> dict[str, float]:
    """The model's `summarize` of summed statistics, as floats, with the example count `n`."""
    if stats is None or examples == 0:
        raise ValueError("expected at least one example to evaluate, given none")
    return {k: float(v) for k, v in model.summarize(stats).items()} | {"n": examples}
