"""Running a plan: buffers and compiled per-operation kernels for one batch (one sampling run).

Per step the runtime calls, in graph order, each op's runner on the range the schedule gives:
one gather + one matmul per convolution for the whole batch, nothing else between them but the
per-position operations on (B, n, C) rows.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.fx as fx
from torch import Tensor

from argen.sampling.conv_plan.ops import AttentionOp, Runner, Writer
from argen.sampling.conv_plan.schedule import CachePlan, Ranges
from argen.sampling.conv_plan.support import UnsupportedLayer
from argen.sampling.conv_plan.trace import Recorder, graph_inputs


class CacheState:
    """Buffers and compiled per-operation kernels for one batch (one sampling run)."""

    def __init__(self, plan: CachePlan, x: Tensor, cond: Tensor | None) -> None:
        self.plan = plan
        b = x.shape[0]
        self.batch, dev = b, x.device
        ops = plan.ops
        builder = plan.builder
        # static values (class biases, shapes) for this batch and cond; maps stand in as meta tensors
        metas: dict[fx.Node, Any] = {}
        for n in builder.data:
            v = builder.env[n]
            if n is builder.x_node:
                continue
            metas[n] = (
                torch.empty((b, *v.shape[1:]), dtype=v.dtype, device="meta")
                if isinstance(v, Tensor)
                else type(v)(torch.empty((b, *e.shape[1:]), dtype=e.dtype, device="meta") for e in v)
            )
        rec = Recorder(plan.gm, metas)
        with torch.no_grad():
            rec.run(*graph_inputs(plan.gm, torch.empty((b, *x.shape[1:]), dtype=x.dtype, device="meta"), cond))
        self.static = rec.env
        # every position is written before it is read; only the padding row must be zero
        self.buffers: dict[int, Tensor] = {
            j: torch.empty((b, op.size + 1, op.channels), dtype=op.dtype, device=dev)
            for j, op in enumerate(ops)
            if plan.storage[j] == "buffer"
        }
        for buf in self.buffers.values():
            buf[:, -1].zero_()
        self.perm = plan.perm.to(dev) if plan.perm is not None else None
        self.xflat = self._flat(x)
        self.fresh: dict[int, int] = {}  # op -> first position computed by the current call
        self.track_fresh = any(isinstance(op, AttentionOp) for op in ops)
        self.runners: list[Runner] = [op.runner(self, j) for j, op in enumerate(ops)]

    def _flat(self, x: Tensor) -> Tensor:
        """(B, C, positions) of the input, positions in the plan's order."""
        flat = x.reshape(self.batch, x.shape[1], -1)
        return flat if self.perm is None else flat.index_select(2, self.perm)

    # -- reading and writing ranges of maps; a range of a map is a (B, n, C) "rows" tensor --
    def reader(self, j: int) -> Callable[[int, int, dict], Tensor]:
        kind = self.plan.storage[j]
        if kind == "x":
            return lambda a, b, vals: self.xflat[:, :, a:b].transpose(1, 2)
        if kind == "buffer":
            buf = self.buffers[j]
            return lambda a, b, vals: buf.narrow(1, a, b - a)
        name = self.plan.ops[j].name

        def read(a: int, b: int, vals: dict) -> Tensor:
            got = vals.get(j)
            if got is None or a < got[0] or b > got[1]:
                raise RuntimeError(f"cached sampling: {name} was not computed for positions [{a}, {b}) in this step")
            a0, b0, v = got
            return v if a == a0 and b == b0 else v[:, a - a0 : b - a0]

        return read

    def writer(self, j: int) -> Writer:
        if self.plan.storage[j] == "buffer":
            buf = self.buffers[j]

            def write(a: int, b: int, vals: dict, rows: Tensor) -> None:
                buf.narrow(1, a, b - a).copy_(rows)
        else:

            def write(a: int, b: int, vals: dict, rows: Tensor) -> None:
                vals[j] = (a, b, rows)

        return write

    def index(self, j: int, k: int) -> Tensor:
        """Op j's table for input k, flat, padding pointing at the input buffer's zero row."""
        op = self.plan.ops[j]
        table = op.tables[k]
        assert table is not None
        src = self.plan.ops[op.inputs[k]]
        if self.plan.storage[op.inputs[k]] != "buffer":
            raise RuntimeError(f"cached sampling: {op.name} gathers from {src.name}, which is not kept")
        flat = np.where(table < 0, src.size, table).reshape(-1)  # -1 -> the zero row
        return torch.as_tensor(flat, dtype=torch.long, device=self.xflat.device)

    def rows_constant(self, v: Any) -> Any:
        """A constant that broadcasts against (B, C, *S) maps, re-shaped to broadcast against
        (B, n, C) rows (the graph builder made sure it has no spatial extent)."""
        nd = self.plan.ndim
        if not isinstance(v, Tensor) or v.dim() < nd:
            return v
        if v.dim() > nd + 2:
            raise UnsupportedLayer(f"a constant of shape {tuple(v.shape)} cannot be applied per position")
        v = v.reshape(v.shape[:-nd])  # drop the spatial dims (all 1)
        return v.unsqueeze(-2) if v.dim() == 2 else v  # (B, C) -> (B, 1, C)

    def const_reader(self, n: fx.Node) -> Callable[[int, int, dict], Tensor]:
        """A static map with spatial extent (a coordinate grid) read as rows of positions."""
        v = self.static[n]
        rows = v.flatten(2).transpose(1, 2).expand(self.batch, -1, -1)
        rows = (rows if self.perm is None else rows.index_select(1, self.perm)).contiguous()
        return lambda a, b, vals: rows[:, a:b]

    def run(self, x: Tensor, ranges: Ranges) -> None:
        """Compute the given (op, start, stop) ranges, in graph order, from the input `x`."""
        self.xflat = self._flat(x)
        vals: dict[int, tuple[int, int, Tensor]] = {}
        runners = self.runners
        if self.track_fresh:
            self.fresh = {i: a for i, a, _ in ranges}
        for i, a, b in ranges:
            runners[i](a, b, vals)

    def params(self, t: int) -> Tensor:
        """(B, C_out) output at position t (in the plan's order) once step t has run."""
        return self.buffers[self.plan.out][:, t]


def check_plan(plan: CachePlan, x: Tensor, cond: Tensor | None, want: Tensor) -> None:
    """Computing the whole example input through the cache must give the network's own output."""
    state = CacheState(plan, x, cond)
    with torch.no_grad():
        state.run(x, plan.ranges(len(plan.first) - 1, -1))
    got = state.buffers[plan.out][:, :-1]
    if plan.perm is not None:
        got = torch.empty_like(got).index_copy_(1, plan.perm.to(got.device), got)
    got = got.transpose(1, 2).reshape(want.shape)
    tol = 1e-3 * (1 + float(want.abs().max()))  # float round-off of deep nets, far below a wrong layer
    if not torch.allclose(got, want, atol=tol, rtol=0):
        err = float((got - want).abs().max())
        raise UnsupportedLayer(f"the cached graph does not reproduce the forward pass (max error {err:.3g})")


__all__ = ["CacheState", "check_plan"]
