"""Parallel-generation schedules for ARDMs (Hoogeboom et al. 2022): the dynamic programme.

An order-agnostic model records, per step t, the mean loss L_t (nats per dimension) of the
dimensions it still has to generate when t of them are known. Generating the dimensions with
sigma in [s, t) in one network call, all conditioned on the first s, costs about (t - s) * L_s
nats. Given a budget of k calls, the best split 0 = t_0 < t_1 < ... < t_k = D minimises
sum_i (t_{i+1} - t_i) * L_{t_i}; with k = D it is the full chain rule, sum_t L_t = -ELBO.

Upscale ARDMs have one such curve per stage and a call never spans two stages, so the budget is
first shared out between the stages (a small knapsack over each stage's optimal cost per
budget), then each stage is split optimally.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

#: t columns per block when minimising over s (bounds memory at D = 3072 and beyond).
_BLOCK = 1024


def _as_curve(step_loss: Tensor | Sequence[float]) -> Tensor:
    curve = torch.as_tensor(step_loss, dtype=torch.float64).flatten().cpu()
    if curve.numel() < 1:
        raise ValueError("expected a non-empty loss curve, given an empty one")
    if not torch.isfinite(curve).all():
        raise ValueError("expected a finite loss curve, given NaN or infinite values")
    return curve


def schedule_cost(step_loss: Tensor | Sequence[float], boundaries: Sequence[int]) -> float:
    """Cost sum_i (t_{i+1} - t_i) * L_{t_i} of a split given as boundaries [0, ..., D]."""
    curve = _as_curve(step_loss)
    b = list(boundaries)
    if len(b) < 2 or b[0] != 0 or b[-1] != curve.numel() or any(x >= y for x, y in zip(b, b[1:])):
        raise ValueError(f"expected strictly increasing boundaries from 0 to {curve.numel()}, given {b}")
    return float(sum((t - s) * curve[s] for s, t in zip(b, b[1:])))


def _dp(curve: Tensor, max_steps: int) -> tuple[Tensor, Tensor]:
    """cost[i, t]: least cost of covering [0, t) with exactly i calls; parent[i, t]: the last start.

    For a fixed start s the cost of the last call is linear in t: prev[s] - s*L_s + t*L_s, so each
    block of end points t is one fused outer product (torch.addr) and a min over s < t.
    """
    n = curve.numel()
    cost = torch.full((max_steps + 1, n + 1), math.inf, dtype=torch.float64)
    parent = torch.zeros((max_steps + 1, n + 1), dtype=torch.long)
    cost[0, 0] = 0.0
    s_idx = torch.arange(n, dtype=torch.float64)
    blocked = torch.full((_BLOCK, _BLOCK), math.inf, dtype=torch.float64).triu()  # [b, a] = inf where a >= b
    for i in range(1, max_steps + 1):
        intercept = cost[i - 1, :n] - s_idx * curve  # inf where s is unreachable with i - 1 calls
        for lo in range(i, n + 1, _BLOCK):  # t < i cannot be reached with i calls
            hi = min(lo + _BLOCK, n + 1)
            t = torch.arange(lo, hi, dtype=torch.float64)
            # total[b, s]: cost of ending at t = lo + b with the last call starting at s (rows t, columns s)
            total = torch.addr(intercept[None, : hi - 1].expand(hi - lo, hi - 1), t, curve[: hi - 1])
            total[:, lo:] += blocked[: hi - lo, : hi - 1 - lo]  # start s = lo + a serves only t = lo + b > s
            best, arg = total.min(1)
            cost[i, lo:hi] = best
            parent[i, lo:hi] = arg
    return cost, parent


def _backtrack(parent: Tensor, steps: int, end: int) -> list[int]:
    bounds = [end]
    for i in range(steps, 0, -1):
        bounds.append(int(parent[i, bounds[-1]]))
    return bounds[::-1]


def optimal_boundaries(step_loss: Tensor | Sequence[float], steps: int) -> list[int]:
    """The split [0, t_1, ..., D] into exactly `steps` calls with the least cost (see module doc)."""
    curve = _as_curve(step_loss)
    n = curve.numel()
    if not isinstance(steps, int) or not 1 <= steps <= n:
        raise ValueError(f"steps must be an integer in [1, {n}], given {steps!r}")
    if steps == n:
        return list(range(n + 1))
    _, parent = _dp(curve, steps)
    return _backtrack(parent, steps, n)


def costs_per_budget(step_loss: Tensor | Sequence[float], max_steps: int) -> Tensor:
    """(max_steps + 1,) least cost with exactly i calls (inf where impossible, i.e. i = 0 or i > D)."""
    curve = _as_curve(step_loss)
    k = min(max_steps, curve.numel())
    cost, _ = _dp(curve, k)
    out = torch.full((max_steps + 1,), math.inf, dtype=torch.float64)
    out[: k + 1] = cost[:, -1]
    return out


def allocate_steps(stage_costs: Sequence[Tensor], steps: int) -> list[int]:
    """Calls per stage (each >= 1, summing to `steps`) minimising the summed per-stage cost.

    `stage_costs[j][i]` is stage j's least cost with exactly i calls (costs_per_budget).
    """
    n_stages = len(stage_costs)
    if steps < n_stages:
        raise ValueError(f"steps must be at least the number of stages ({n_stages}), given {steps}")
    best = torch.full((n_stages + 1, steps + 1), math.inf, dtype=torch.float64)
    choice = torch.zeros((n_stages + 1, steps + 1), dtype=torch.long)
    best[0, 0] = 0.0
    for j, costs in enumerate(stage_costs, start=1):
        c = torch.full((steps + 1,), math.inf, dtype=torch.float64)
        m = min(steps, costs.numel() - 1)
        c[: m + 1] = costs[: m + 1]
        for total in range(steps + 1):
            cand = best[j - 1, : total + 1].flip(0) + c[: total + 1]  # cand[i] = best[j-1, total-i] + c[i]
            best[j, total], choice[j, total] = cand.min(0)
    if not math.isfinite(float(best[n_stages, steps])):
        raise ValueError(f"no split of {steps} calls fits the stages (each takes 1 to as many calls as it has "
                         f"steps), given costs for up to {[c.numel() - 1 for c in stage_costs]} calls")
    alloc, left = [], steps
    for j in range(n_stages, 0, -1):
        alloc.append(int(choice[j, left]))
        left -= alloc[-1]
    return alloc[::-1]


def even_boundaries(n: int, steps: int) -> list[int]:
    """Evenly spaced boundaries [0, ..., n] for `steps` calls: the plan when no loss was recorded."""
    if not 1 <= steps <= n:
        raise ValueError(f"steps must be in [1, {n}], given {steps}")
    return [(i * n) // steps for i in range(steps + 1)]


def plan_even(n_stages: int, n: int, steps: int | None) -> list[list[int]]:
    """Per-stage boundaries that share `steps` calls evenly (no recorded losses to optimise)."""
    if steps is None:
        steps = n_stages * n
    if not n_stages <= steps <= n_stages * n:
        raise ValueError(f"steps must be in [{n_stages}, {n_stages * n}], given {steps}")
    alloc = [steps // n_stages + (1 if j < steps % n_stages else 0) for j in range(n_stages)]
    return [even_boundaries(n, k) for k in alloc]


def plan_stages(step_losses: Tensor, steps: int | None) -> list[list[int]]:
    """Boundaries for each stage of an (S, n) loss curve under a total budget (None: every step)."""
    curves = torch.as_tensor(step_losses, dtype=torch.float64).cpu()
    if curves.dim() != 2 or curves.shape[1] < 1:
        raise ValueError(f"expected step losses of shape (stages, steps), given {tuple(curves.shape)}")
    n_stages, n = curves.shape
    if steps is None or steps >= n_stages * n:
        if steps is not None and steps > n_stages * n:
            raise ValueError(f"steps must be in [{n_stages}, {n_stages * n}], given {steps}")
        return [list(range(n + 1)) for _ in range(n_stages)]
    if steps < n_stages:
        raise ValueError(f"steps must be in [{n_stages}, {n_stages * n}], given {steps}")
    if n_stages == 1:
        return [optimal_boundaries(curves[0], steps)]
    per_stage = [costs_per_budget(c, steps - n_stages + 1) for c in curves]
    return [optimal_boundaries(c, k) for c, k in zip(curves, allocate_steps(per_stage, steps))]


def budget_bits_per_dim(step_losses: Tensor, budgets: Iterable[int | None], num_dims: int) -> dict[int, float]:
    """Approximate bits/dim of parallel generation for each budget of network calls.

    `step_losses` is (S, n) (or (n,)) in nats per dimension; None in `budgets` means every step
    (S * n calls, the ELBO itself). Keys are the budgets with None replaced by S * n.
    """
    curves = torch.as_tensor(step_losses, dtype=torch.float64).cpu()
    curves = curves[None] if curves.dim() == 1 else curves
    n_stages, n = curves.shape
    total_steps = n_stages * n
    ks = [total_steps if k is None else min(int(k), total_steps) for k in budgets]
    if any(k < n_stages for k in ks):
        raise ValueError(f"budgets must be at least the number of stages ({n_stages}), given {list(budgets)}")
    partial = [k for k in ks if k < total_steps]
    # one dynamic programme per stage up to the largest budget gives the optimum for every budget
    per_stage = [costs_per_budget(c, max(partial) - n_stages + 1) for c in curves] if partial else []
    out: dict[int, float] = {}
    for k in ks:
        if k == total_steps:
            nats = float(curves.sum())
        else:
            alloc = allocate_steps(per_stage, k)
            nats = sum(float(c[a]) for c, a in zip(per_stage, alloc))
        out[k] = nats / (num_dims * math.log(2.0))
    return out
