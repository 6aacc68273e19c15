"""Sampling for Autoregressive Diffusion Models (stepper kind "ardm"): parallel generation under a
budget of network calls, and the sequential reference.

An ARDM (`argen.models.image.ardm`) is one network that, given any subset of known sub-pixels,
predicts every other one. This module uses its public surface only: `forward(x, cond, known=)`,
`step_log_probs(x, known, stage, cond)`, `dim_ranks(order, batch)`, `generation_order()`,
`num_dims`, `num_stages`, `stages.low` (the bit offsets of the stages), and the per-step losses
recorded in training (`step_loss`, `step_loss_count`, `step_loss_curve()`).

- Parallel (`naive=False`): each example gets its own random order (or `order`); with a budget of
  `steps` calls the calls follow the dynamic programme over the recorded L_t
  (`argen.sampling.ardm_schedule`; evenly spaced when nothing was recorded), each call sampling
  all dims with sigma in [s, t). Plans are cached per recorded curve (the DP takes about a second
  at D = 3072).
- Sequential reference (`naive=True`): the generic loop (`autoregressive_fill`) with an
  `OrderStepper`, one network call per sub-pixel in one order (default: `generation_order()`).
  `sample(order=generation_order())` draws exactly the same images from the same generator.
  Plain ARDMs only: an upscale ARDM samples by stages.
"""
from __future__ import annotations

import hashlib
import weakref
from typing import Any

import torch
from einops import rearrange
from torch import Tensor
from tqdm.auto import tqdm

from argen.orders import resolve_order
from argen.positions import at
from argen.sampling import ardm_schedule
from argen.sampling.config import SamplingConfig
from argen.sampling.logits import draw, process_logits
from argen.sampling.naive import autoregressive_fill

#: model -> {(curve digest, start, calls): per-stage boundaries}
_PLANS: weakref.WeakKeyDictionary[Any, dict[tuple[str, int, int], list[list[int]]]] = weakref.WeakKeyDictionary()
_MAX_PLANS = 64


class OrderStepper:
    """Sequential reference sampler for the generic loop (`autoregressive_fill`).

    Walks one pixel order (default: the model's `generation_order()`) one sub-pixel at a time, one
    network call each, the dims before it known (and, when completing, the `known` (B, H, W)
    pixels too).
    """

    def __init__(self, model: Any, cond: Tensor | None, order: Any = None, known: Tensor | None = None) -> None:
        self.model, self.cond = model, cond
        order = model.generation_order() if order is None else order
        self.rank = model.dim_ranks(order, 1)[0].view(model.data_shape)
        self.known = None if known is None else known[:, None].expand(-1, model.channels, -1, -1)

    def params_at(self, x: Tensor, pos: tuple[int, ...], channel: int) -> Tensor:
        rank = self.rank.to(x.device)
        known = (rank < rank[(channel, *pos)]).expand(x.shape)
        if self.known is not None:
            known = known | self.known.to(x.device)
        return at(self.model(x, self.cond, known=known), pos)

    def skip(self, x: Tensor, pos: tuple[int, ...]) -> None:
        pass


def order_stepper(model: Any, cond: Tensor | None, order: Any = None) -> OrderStepper:
    """The per-sub-pixel stepper (plain ARDMs; an upscale ARDM has none)."""
    if model.num_stages > 1:
        raise ValueError(f"an upscale ARDM ({model.num_stages} stages) samples by stages: expected sample() or "
                         "complete(), given a request for a per-pixel stepper")
    return OrderStepper(model, cond, order)


def bpd_by_budget(model: Any, budgets: Any = (None, 100, 50, 20), curve: Tensor | None = None) -> dict[int, float]:
    """Approximate bits/dim of parallel sampling per budget of calls (None: every step).

    `curve` (S, D) defaults to the L_t recorded during training (`model.step_loss_curve()`);
    `model.measure_step_losses` gives a held-out estimate, which avoids the DP exploiting noise or
    stale early-training values.
    """
    return ardm_schedule.budget_bits_per_dim(model.step_loss_curve() if curve is None else curve, budgets,
                                             model.num_dims)


def plan(model: Any, start: int, steps: int | None) -> list[list[int]]:
    """Per-stage absolute boundaries covering steps [start, D) with at most `steps` calls."""
    d, n_stages = model.num_dims, model.num_stages
    n = d - start
    if n == 0:
        return [[start] for _ in range(n_stages)]
    k = None if steps is None else min(steps, n_stages * n)
    recorded = bool((model.step_loss_count > 0).any())
    if not recorded or k is None or k == n_stages * n:
        plans = ardm_schedule.plan_even(n_stages, n, k)
    else:
        digest = hashlib.sha1(model.step_loss.detach().cpu().numpy().tobytes()
                              + model.step_loss_count.detach().cpu().numpy().tobytes()).hexdigest()
        key = (digest, start, k)
        cache = _PLANS.setdefault(model, {})
        if key not in cache:
            if len(cache) > _MAX_PLANS:
                cache.clear()
            cache[key] = ardm_schedule.plan_stages(model.step_loss_curve()[:, start:], k)
        plans = cache[key]
    return [[start + v for v in p] for p in plans]


def check_options(model: Any, config: SamplingConfig, steps: Any) -> None:
    n_stages, d = model.num_stages, model.num_dims
    if config.naive and steps is not None:
        raise ValueError(f"naive sampling makes one call per dim; expected steps=None with naive, given steps={steps}")
    if config.naive and n_stages > 1:
        raise ValueError(f"naive sampling walks one sub-pixel at a time, which an upscale ARDM "
                         f"({n_stages} stages) does not: expected naive=False, given naive=True")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int)
                              or not n_stages <= steps <= n_stages * d):
        raise ValueError(f"steps must be None or an integer in [{n_stages}, {n_stages * d}], given {steps!r}")


def generate(model: Any, x: Tensor, known: Tensor | None, cond: Tensor | None, config: SamplingConfig,
             steps: int | None = None, order: Any = None) -> Tensor:
    """Fill `x` (where `known` is False): the parallel sampler, or with `config.naive` the reference."""
    check_options(model, config, steps)
    if config.naive:
        return generate_sequential(model, x, known, cond, config, order)
    return generate_parallel(model, x, known, cond, config, steps, order)


def generate_sequential(model: Any, x: Tensor, known: Tensor | None, cond: Tensor | None, config: SamplingConfig,
                        order: Any = None) -> Tensor:
    """The reference: `autoregressive_fill` with an `OrderStepper`, one call per sub-pixel."""
    positions = resolve_order(model.generation_order() if order is None else order, *model.spatial_shape)
    if positions.dim() != 2:
        raise ValueError(f"naive sampling walks one order for the whole batch: expected an (H*W, 2) order, "
                         f"given per-example orders of shape {tuple(positions.shape)}")
    stepper = OrderStepper(model, cond, positions, known)
    return autoregressive_fill(model, x, known, cond, stepper, config=config,
                               order=[tuple(p) for p in positions.tolist()])


def generate_parallel(model: Any, x: Tensor, known: Tensor | None, cond: Tensor | None, config: SamplingConfig,
                      steps: int | None = None, order: Any = None) -> Tensor:
    """Known dims come first in every order; the others follow in a random order per example (or
    `order`), at most `steps` calls (None: one per dim and stage)."""
    b, d, n_stages = x.shape[0], model.num_dims, model.num_stages
    generator = config.generator
    gdev = generator.device if generator is not None else x.device
    known_dims = (torch.zeros(b, d, dtype=torch.bool, device=x.device) if known is None
                  else known[:, None].expand(x.shape).reshape(b, d))
    flat = x.view(b, d)
    flat.masked_fill_(~known_dims, 0)  # unknown bits start at zero and are OR-ed in digit by digit
    starts = known_dims.sum(1)
    plans = {int(s0): plan(model, int(s0), steps) for s0 in starts.unique()}
    base_rank = None if order is None else model.dim_ranks(order, b).double()
    low = model.stages.low
    n_calls = max(sum(len(p) - 1 for p in pl) for pl in plans.values())
    bar = tqdm(total=n_calls, desc="sampling", disable=not config.progress, leave=False)
    for s in range(n_stages):
        width = max(len(pl[s]) for pl in plans.values())
        bounds = torch.tensor([plans[int(s0)][s] + [d] * (width - len(plans[int(s0)][s])) for s0 in starts],
                              dtype=torch.long, device=x.device)  # (B, calls + 1), padded with D
        key = (torch.rand(b, d, generator=generator, device=gdev).to(x.device).double()
               if base_rank is None else base_rank)
        sigma = (key - 2.0 * d * known_dims.double()).argsort(dim=1, stable=True)  # known dims first
        rank = sigma.argsort(1)
        stage = torch.full((b,), s, dtype=torch.long, device=x.device)
        for j in range(width - 1):
            lo, hi = bounds[:, j], bounds[:, j + 1]
            active = torch.nonzero(hi > lo).flatten()
            if active.numel() == 0:
                continue
            known_now = (rank[active] < lo[active, None]).view(-1, *model.data_shape)
            table = model.step_log_probs(x[active], known_now, stage[active], None if cond is None else cond[active])
            table = rearrange(table, "n c k h w -> n (c h w) k")
            size = hi[active] - lo[active]
            for m in range(int(size.max())):
                u = torch.rand(b, generator=generator, device=gdev).to(x.device)
                rows = torch.nonzero(size > m).flatten()
                ex = active[rows]
                dims = sigma[ex, lo[ex] + m]
                logits = process_logits(table[rows, dims], config.temperature, config.top_k, config.top_p)
                value = draw(logits, u[ex])
                flat[ex, dims] |= value << low[s + 1]
            bar.update(1)
    bar.close()
    return x


__all__ = ["OrderStepper", "order_stepper", "bpd_by_budget", "plan", "generate", "generate_sequential",
           "generate_parallel"]
