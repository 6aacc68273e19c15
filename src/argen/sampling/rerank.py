"""Reranking: draw k candidates per requested sample and keep the one the model scores best.

Parti samples several images per prompt and keeps the best by a contrastive text-image score
(CoCa in the paper). argen uses a score the generating model computes itself, from its exact
likelihood, so no second network is needed:

  "pmi"         log p(x | cond) - log p(x | null cond): pointwise mutual information between the
                sample and its condition, the contrastive score (how much more likely the caption
                makes the sample than no caption). Needs a model with a null condition
                (`capabilities.guidance`, `null_cond(batch)`), and a cond.
  "likelihood"  log p(x | cond): the most likely candidate under the condition (favours simple,
                typical samples; it tends to over-smooth where pmi favours faithfulness).

The score is the model's own `log_prob` of the candidate it returns: for a two-stage model
(`LatentModel`) that is the prior's likelihood of the candidate image's codes (the image encoded
again), i.e. of exactly what the caller gets.

    x = rerank_sample(model, n, cond, k, config)     # (n, *data_shape): best of k per output
    s = score_samples(model, x, cond, "pmi")         # (n,) the scores it ranks by
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from argen.sampling.config import SamplingConfig

SCORES = ("pmi", "likelihood")


def _check(model: Any, cond: Tensor | None, score: str) -> None:
    if score not in SCORES:
        raise ValueError(f"score must be one of {list(SCORES)}, given {score!r}")
    if score == "pmi":
        if not model.capabilities.guidance:
            raise ValueError(f"score 'pmi' needs a model with a null condition (classifier-free guidance); "
                             f"{getattr(model, 'model_name', type(model).__name__)!r} has none: expected "
                             f"score='likelihood', given 'pmi'")
        if cond is None:
            raise ValueError("score 'pmi' compares the sample under its condition and under the null condition: "
                             "expected a cond, given None (use score='likelihood' for unconditional sampling)")


@torch.no_grad()
def score_samples(model: Any, x: Tensor, cond: Tensor | None, score: str = "pmi") -> Tensor:
    """(B,) the rerank score of each sample x (B, *data_shape) under its cond (see the module doc),
    computed in eval mode (no caption / label dropout), the model's mode restored after."""
    _check(model, cond, score)
    was_training = model.training
    model.eval()
    try:
        value = model.log_prob(x, cond)
        if score == "pmi":
            value = value - model.log_prob(x, model.null_cond(x.shape[0]))
    finally:
        model.train(was_training)
    return value


@torch.no_grad()
def rerank_sample(model: Any, n: int, cond: Tensor | None, k: int, config: SamplingConfig | None = None,
                  score: str = "pmi", **options: Any) -> Tensor:
    """(n, *data_shape): for each of the n outputs (cond[i] for output i), k candidates drawn with
    `config` and the model's declared sampling `options` (e.g. ARDM's steps; one `model.sample` call
    of n * k), the one with the highest `score` kept (ties: the first drawn). k = 1 is plain
    sampling. ValueError for bad n, k, score or cond; TypeError for an option the model lacks."""
    for name, value in (("n", n), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, given {value!r}")
    if config is not None and not isinstance(config, SamplingConfig):
        raise ValueError(f"config must be None or a SamplingConfig, given {type(config).__name__}")
    _check(model, cond, score)
    model.cond_spec.check(cond, n)  # one cond per output, before the n * k draw
    many = None if cond is None else cond.repeat_interleave(k, 0)
    x = model.sample(n * k, many, config, **options)
    if k == 1:
        return x
    values = score_samples(model, x, many, score).view(n, k)
    best = values.argmax(1)
    return x.view(n, k, *x.shape[1:])[torch.arange(n, device=x.device), best.to(x.device)]


__all__ = ["SCORES", "rerank_sample", "score_samples"]
