"""Building plans (trace, lower to ops, check, schedule) and the stepper that runs them."""
from __future__ import annotations

import itertools
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from argen.sampling.conv_plan.graph import GraphBuilder
from argen.sampling.conv_plan.ops import ConvOp, InputOp
from argen.sampling.conv_plan.runtime import CacheState, check_plan
from argen.sampling.conv_plan.schedule import CachePlan, permute, schedule
from argen.sampling.conv_plan.support import UnsupportedLayer
from argen.sampling.conv_plan.trace import Recorder, graph_inputs, trace


def plan_network(module: nn.Module, example: Tensor, cond: Tensor | None = None, *, order: Tensor | None = None,
                 tentative: bool = False) -> CachePlan:
    """Trace `module`, check every cached operation against its own forward on `example`
    ((1, C, *positions): an image (1, C, H, W), a clip (1, C, T, H, W)), and schedule.

    `module.forward(x[, cond[, ...]])` must return one map of the input's spatial shape whose
    value at each position depends only on input positions before it in raster order (or in
    `order`, (Q, ndim) positions, passed to the forward as `order=`), or at it when `tentative`
    (the position's own earlier channels). Refused with `UnsupportedLayer` otherwise."""
    gm = trace(module, cond is not None, order)
    shape = tuple(int(s) for s in example.shape[2:])
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            rec = Recorder(gm)
            rec.run(*graph_inputs(gm, example, cond))
            builder = GraphBuilder(gm, rec.env)
            for op, node in zip(builder.ops, builder.node_of):
                if isinstance(op, ConvOp):
                    src = next(a for a in node.all_input_nodes if a in builder.data)
                    op.check(rec.env[src], rec.env[node])
    finally:
        module.train(was_training)
    ops, out = builder.ops, builder.out
    if ops[out].shape != shape or not isinstance(ops[0], InputOp):
        raise UnsupportedLayer(f"expected an output of spatial size {shape}, given {ops[out].shape}")
    perm = permute(ops, shape, order) if order is not None else None
    plan = schedule(gm, builder, shape, tentative, perm)
    check_plan(plan, example, cond, rec.env[builder.out_node])
    # keep only shapes of the example's feature maps (the memoized plan must not hold them)
    builder.env = {n: _to_meta(v) if n in builder.data else v for n, v in builder.env.items()}
    return plan


def build_plan(model: nn.Module, with_cond: bool, order: Tensor | None = None) -> CachePlan:
    """The plan of an AR model (`data_shape` (C, *positions), `levels`, `distribution`).

    `order` (Q, ndim): generate in this order, passed to the model's forward as `order=` (a model
    whose network depends on the order, such as LMConv); default: the raster order."""
    shape = tuple(model.data_shape)
    dev = next(model.parameters()).device
    g = torch.Generator().manual_seed(0)
    x1 = torch.randint(0, model.levels, (1, *shape), generator=g).to(dev)
    cond1 = torch.zeros(1, dtype=torch.long, device=dev) if with_cond else None
    tentative = bool(model.distribution.output_depends_on_current_pixel) and shape[0] > 1
    return plan_network(model, x1, cond1, order=order, tentative=tentative)


def _to_meta(v: Any) -> Any:
    if isinstance(v, Tensor):
        return torch.empty(v.shape, dtype=v.dtype, device="meta")
    return type(v)(_to_meta(e) for e in v)


_PLANS: "weakref.WeakKeyDictionary[nn.Module, dict[tuple, CachePlan]]" = weakref.WeakKeyDictionary()
_MAX_ORDER_PLANS = 8


def cache_plan(model: nn.Module, with_cond: bool, order: Tensor | None = None) -> CachePlan:
    """The (memoized) plan for this model, conditioning flag, device and order (a few orders are
    kept: completion builds one per mask)."""
    p = next(model.parameters())
    order_key = None if order is None else order.cpu().numpy().tobytes()
    key = (with_cond, p.device, p.dtype, tuple(model.data_shape), order_key)
    plans = _PLANS.setdefault(model, {})
    if key not in plans:
        if order is not None and sum(k[-1] is not None for k in plans) >= _MAX_ORDER_PLANS:
            del plans[next(k for k in plans if k[-1] is not None)]  # the oldest
        plans[key] = build_plan(model, with_cond, order)
    return plans[key]


class CachedStepper:
    """Stepper for `autoregressive_fill` that computes only what each step needs (exact).

    Positions come in the model's generation order, or in `order` ((Q, ndim) tensor or tuples)
    when given, which then also goes to the model's forward as `order=` (as `NaiveStepper(model,
    cond, order=order)` does; LMConv completes in per-mask orders). A model whose generation order
    is not the raster one must take such an `order` argument. `skip` costs nothing: the next call
    catches every map up in one batched pass, which makes completion with a large known region cheap.
    """

    def __init__(self, model: nn.Module, cond: Tensor | None, order: Tensor | Sequence[tuple[int, ...]] | None = None) -> None:
        spatial = tuple(model.data_shape)[1:]
        raster = list(itertools.product(*(range(s) for s in spatial)))
        seq = model.generation_order() if order is None else (order.tolist() if isinstance(order, Tensor) else order)
        positions = [tuple(int(v) for v in p) for p in seq]
        if sorted(positions) != raster:
            size = "x".join(map(str, spatial))
            raise ValueError(f"expected an order visiting each of the {size} pixels once, given {len(positions)} positions")
        self.raster = order is None and positions == raster
        plan_order = None if self.raster else torch.tensor(positions, dtype=torch.long)
        self.model, self.cond = model, cond
        self.rank = {p: t for t, p in enumerate(positions)}
        self.plan = cache_plan(model, cond is not None, plan_order)
        self.state: CacheState | None = None
        self.last = -1

    def params_at(self, x: Tensor, pos: tuple[int, ...], channel: int) -> Tensor:
        t = self.rank[tuple(map(int, pos))]
        if t < self.last:
            kind = "raster order" if self.raster else "its generation order"
            raise ValueError(
                f"cached sampling goes in {kind}: expected a position at or after step {self.last}, given {tuple(pos)}"
            )
        if self.state is None:
            self.state = CacheState(self.plan, x, self.cond)
        self.state.run(x, self.plan.ranges(t, self.last))
        self.last = t
        return self.state.params(t)

    def skip(self, x: Tensor, pos: tuple[int, ...]) -> None:
        """Position `pos` is known: nothing to do now (the next call computes what it needs)."""


__all__ = ["CachedStepper", "build_plan", "cache_plan", "plan_network"]
