"""The one entry point from models into sampling: `generate(model, x, known, cond, config, **options)`.

`ARModel.sample` / `complete` check their inputs, build a `SamplingConfig` and call this; it reads
only what the model declares (`model.capabilities`) and its public methods:

- the stepper kind (`argen.sampling.steppers`): a kind with its own sampler (ARDM) runs it;
  otherwise the generic loop `autoregressive_fill` drives the kind's stepper, or the naive one
  with `config.naive`;
- `any_order`: completion walks `model.completion_order(mask)` per distinct mask, the model's
  forward taking `order=` (LMConv visits the known pixels first);
- `sample_options`: the extra keywords the model's family takes (ARDM: steps, order);
- `guidance`: only then may `config.cfg_scale` differ from 1; the unconditional stepper runs on
  `model.null_cond(batch)`.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from argen.sampling.config import SamplingConfig
from argen.sampling.naive import NaiveStepper, Stepper, autoregressive_fill
from argen.sampling.steppers import build_stepper, stepper_kind


def check_options(model: Any, config: SamplingConfig, options: dict[str, Any]) -> None:
    """TypeError for options the model does not declare; ValueError for guidance it cannot do."""
    caps = model.capabilities
    unknown = sorted(set(options) - set(caps.sample_options))
    if unknown:
        takes = f" and {', '.join(caps.sample_options)}" if caps.sample_options else ""
        raise TypeError(f"{model.model_name} sample()/complete() got unexpected option(s) {', '.join(unknown)}: "
                        f"it takes the SamplingConfig options{takes}")
    if config.cfg_scale != 1.0 and not caps.guidance:
        raise ValueError(f"cfg_scale must be 1.0 for model {model.model_name!r}: it has no null (unconditional) "
                         f"input for classifier-free guidance, given cfg_scale={config.cfg_scale}")


def _uncond(model: Any, config: SamplingConfig, batch: int, order: Any = None) -> Stepper | None:
    if config.cfg_scale == 1.0:
        return None
    null = model.null_cond(batch)
    if config.naive:
        return NaiveStepper(model, null) if order is None else NaiveStepper(model, null, order=order)
    return build_stepper(model, null, order=order)


def _fill(model: Any, x: Tensor, known: Tensor | None, cond: Tensor | None, config: SamplingConfig,
          order: Any = None) -> Tensor:
    if config.naive:
        stepper = NaiveStepper(model, cond) if order is None else NaiveStepper(model, cond, order=order)
    else:
        stepper = build_stepper(model, cond, order=order)
    walk = None if order is None else [tuple(int(v) for v in p) for p in order.tolist()]
    return autoregressive_fill(model, x, known, cond, stepper, config=config, order=walk,
                               uncond_stepper=_uncond(model, config, x.shape[0], order))


def _complete_in_orders(model: Any, x: Tensor, known: Tensor, cond: Tensor | None, config: SamplingConfig) -> Tensor:
    """Examples sharing a mask are completed together in `model.completion_order(mask)`; groups run
    one after another in the order of their first example."""
    masks, group = torch.unique(known.flatten(1), dim=0, return_inverse=True)
    first = [int((group == g).nonzero()[0]) for g in range(len(masks))]
    for g in sorted(range(len(masks)), key=first.__getitem__):
        idx = (group == g).nonzero().squeeze(1)
        order = model.completion_order(masks[g].view(model.spatial_shape))
        sub_cond = cond[idx] if cond is not None else None
        x[idx] = _fill(model, x[idx], known[idx], sub_cond, config, order)
    return x


def generate(model: Any, x: Tensor, known: Tensor | None, cond: Tensor | None, config: SamplingConfig,
             **options: Any) -> Tensor:
    """Fill `x` (all of it, or where `known` (B, *positions) is False) and return it.

    Inputs are the model's to check (`sample` / `complete` do); this checks the options against
    what the model declares, then runs the model in eval mode (its training flag restored after).
    """
    if not isinstance(config, SamplingConfig):
        raise ValueError(f"config must be a SamplingConfig, given {type(config).__name__}")
    check_options(model, config, options)
    caps = model.capabilities
    kind = stepper_kind(caps.stepper_kind)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if kind.generate is not None:
                return kind.generate(model, x, known, cond, config, **options)
            if caps.any_order and known is not None:
                return _complete_in_orders(model, x, known, cond, config)
            return _fill(model, x, known, cond, config)
    finally:
        model.train(was_training)


__all__ = ["generate", "check_options"]
