"""Scheduling, from the index tables alone.

`avail[op][n]` = how many leading positions (in the plan's order) of each map can be computed
once the first n input positions are known. At step t the parameters at position t are needed;
walking the graph backwards gives how much of each map is needed, rounded up to the end of the
map's row (its last spatial dim) where that is already computable (so a stream that only sees rows
above, like Gated PixelCNN's vertical stack or PixelCNN++'s `u`, is computed one whole row at a
time, and a half-resolution map only every other step and row, exactly when its inputs exist).
A step computes each map from where the last call stopped to what is needed, in graph order.
Maps read through a spatial kernel or at a later step than they are made are kept in full-size
channel-last buffers (B, Q + 1, C), whose last row is the zero padding; the rest live only within
the step.

Any generation order (LMConv): every map is re-indexed by generation rank instead of raster
index (index tables included, `permute`), and the same schedule runs unchanged in rank order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx
from torch import Tensor

from argen.sampling.conv_plan.graph import GraphBuilder
from argen.sampling.conv_plan.ops import AttentionOp, InputOp, Op
from argen.sampling.conv_plan.support import UnsupportedLayer

Ranges = list[tuple[int, int, int]]  # (op, start, stop)


@dataclass
class CachePlan:
    """Everything about cached sampling that depends on the architecture and input size only:
    the operations, which maps are kept, and per step which range of each map to compute."""

    gm: fx.GraphModule
    builder: GraphBuilder
    ops: list[Op]
    out: int
    shape: tuple[int, ...]  # spatial shape of the input and of the output: (H, W), (T, H, W), ...
    perm: Tensor | None  # position t of every map = raster index perm[t] (None: raster order)
    tentative: bool  # the parameters at position t depend on earlier channels of position t
    storage: list[str]  # per op: "x" (read from the input), "buffer", "step" (lives within a step)
    needed: np.ndarray  # (n_ops, Q): positions of each map computed by the call at step t
    done: np.ndarray  # (n_ops, Q): positions final (not to be recomputed) after the call at step t
    first: list[Ranges]  # per step: (op, start, stop) when the last call was t-1
    repeat: list[Ranges]  # per step: the same step again (next channel)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def ranges(self, t: int, last: int) -> Ranges:
        """(op, start, stop) to compute at step t when the last call was at step `last`."""
        if last == t:
            return self.repeat[t]
        if last == t - 1:
            return self.first[t]
        start = self.done[:, last] if last >= 0 else np.zeros(len(self.ops), dtype=np.int64)
        stop = self.needed[:, t]
        return [(i, int(a), int(b)) for i, (a, b) in enumerate(zip(start, stop)) if a < b]


def prefix_max_reads(op: Op, k: int, src_size: int) -> np.ndarray:
    """For each output position q: the largest input position read by positions <= q (-1 when
    none), so 'output q is computable' <=> this < number of computed input positions."""
    table = op.tables[k]
    if table is None:
        if src_size != op.size:
            raise UnsupportedLayer(f"{op.name}: pointwise read of a map of another size")
        return np.arange(op.size, dtype=np.int64)
    reads = table.max(axis=1) if table.shape[1] else np.full(op.size, -1)
    return np.maximum.accumulate(reads.astype(np.int64))


def permute(ops: list[Op], shape: tuple[int, ...], order: Tensor) -> Tensor:
    """Re-index every map by generation rank instead of raster index (tables and all), so the
    raster-order schedule serves any order; only full-size maps can be re-indexed. `order` is
    (Q, ndim): the positions in generation order. Returns the raster index of each rank."""
    order_np = order.cpu().numpy().astype(np.int64)
    if order_np.ndim != 2 or order_np.shape != (math.prod(shape), len(shape)):
        raise UnsupportedLayer(f"expected an order of shape {(math.prod(shape), len(shape))}, given {order_np.shape}")
    perm = np.ravel_multi_index(tuple(order_np.T), shape).astype(np.int64)
    rank = np.empty_like(perm)
    rank[perm] = np.arange(len(perm))
    rank_or_pad = np.append(rank, -1)  # table entry -1 (padding) stays -1
    for op in ops:
        if op.shape != shape:
            raise UnsupportedLayer(f"{op.name}: a map of size {op.shape} cannot follow a generation order over {shape}")
        if isinstance(op, AttentionOp):
            raise UnsupportedLayer(f"{op.name}: cached attention follows the raster order only")
        op.tables = [None if t is None else rank_or_pad[t[perm]] for t in op.tables]
    return torch.as_tensor(perm)


def schedule(gm: fx.GraphModule, builder: GraphBuilder, shape: tuple[int, ...], tentative: bool,
             perm: Tensor | None = None) -> CachePlan:
    ops, out = builder.ops, builder.out
    n_ops, q = len(ops), math.prod(shape)
    consumers: list[list[tuple[int, int]]] = [[] for _ in ops]
    for i, op in enumerate(ops):
        for k, j in enumerate(op.inputs):
            consumers[j].append((i, k))
    reads = [[prefix_max_reads(op, k, ops[j].size) for k, j in enumerate(op.inputs)] for op in ops]

    # avail[i][n]: leading positions of map i computable from the first n input positions
    avail = np.zeros((n_ops, q + 1), dtype=np.int64)
    for i, op in enumerate(ops):
        if isinstance(op, InputOp):
            avail[i] = np.arange(q + 1)
            continue
        a = np.full(q + 1, op.size, dtype=np.int64)
        for k, j in enumerate(op.inputs):
            a = np.minimum(a, np.searchsorted(reads[i][k], avail[j], side="left"))
        avail[i] = a

    steps = np.arange(q)
    now = avail[:, steps + (1 if tentative else 0)]  # position t's own earlier channels are usable
    final = avail[:, steps]
    needed = np.zeros((n_ops, q), dtype=np.int64)
    for i in reversed(range(n_ops)):
        need = steps + 1 if i == out else np.zeros(q, dtype=np.int64)
        for c, k in consumers[i]:
            stop = needed[c]
            need = np.maximum(need, np.where(stop > 0, reads[c][k][np.maximum(stop - 1, 0)] + 1, 0))
        bad = np.nonzero(need > now[i])[0]
        if bad.size:
            t = int(bad[0])
            raise UnsupportedLayer(
                f"{ops[i].name} is not causal in {'raster' if perm is None else 'the given'} order: the parameters at "
                f"step {t} need "
                f"{int(need[t])} of its positions, only {int(now[i][t])} are computable"
            )
        width = ops[i].shape[-1] if perm is None else 1  # rows mean nothing in another order
        row_end = -(-need // width) * width  # finish the row where that is already computable
        needed[i] = np.maximum(need, np.minimum(final[i], row_end))
    done = np.minimum(needed, final)
    done_before = np.concatenate([np.zeros((n_ops, 1), dtype=np.int64), done[:, :-1]], axis=1)

    storage = []
    for j, op in enumerate(ops):
        spatial = any(ops[i].tables[k] is not None for i, k in consumers[j])
        if isinstance(op, InputOp):
            storage.append("buffer" if spatial else "x")
        elif j == out or spatial:
            storage.append("buffer")
        else:
            ok = True
            for start in (done_before, done) if tentative else (done_before,):
                pa, pb = start[j], needed[j]
                for i, _ in consumers[j]:
                    ca, cb = start[i], needed[i]
                    run = ca < cb
                    if np.any(run & ((ca < pa) | (cb > pb))):
                        ok = False
            storage.append("step" if ok else "buffer")

    def lists(start: np.ndarray) -> list[Ranges]:
        res: list[Ranges] = []
        for t in range(q):
            a, b = start[:, t], needed[:, t]
            res.append([(i, int(a[i]), int(b[i])) for i in np.nonzero(a < b)[0].tolist()])
        return res

    return CachePlan(gm, builder, ops, out, tuple(shape), perm, tentative, storage, needed, done,
                     lists(done_before), lists(done) if tentative else [[] for _ in range(q)])


__all__ = ["CachePlan", "Ranges", "prefix_max_reads", "permute", "schedule"]
