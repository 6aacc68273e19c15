"""Exact cached sampling for convolutional AR models (PixelCNN, Gated PixelCNN, PixelCNN++).

`CachedStepper` replaces `NaiveStepper` in `autoregressive_fill`: instead of rerunning the
network for every pixel, it keeps every layer's activations and computes, per step, only the
outputs the next distribution parameters need (Fast PixelCNN++, Ramachandran et al. 2017).

How it stays generic: the model's own `forward` is traced once with torch.fx (convolution modules
as leaves) into a graph of
  - convolutions (masked, shifted, strided, transposed, 1x1): index table + one matmul,
  - shifts (F.pad, spatial slicing): index table,
  - pointwise operations (activations, gates, sums, channel cat/chunk, class biases), which run
    as traced on (B, n, C) rows holding n positions of a map (channel-dim arguments and
    (B, C, 1, 1) constants re-aimed at the last dim).
  - attention between pixels (`argen.nn.attention.map_attention`, PixelSNAIL): the queries of the
    positions computed now attend to a growing buffer of keys/values, each projected once,
  - convolutions masked per location (LMConv's `location_mask()`): masked taps read zero.
Nothing here knows a model; a graph with anything else (recurrences) is refused with
`UnsupportedLayer` when the stepper is created (such a model keeps `NaiveStepper`).

Any generation order (LMConv): every map is re-indexed by generation rank instead of raster
index (index tables included), and the schedule below runs unchanged in rank order.

Scheduling, from the index tables alone: `avail[op][n]` = how many leading positions (raster
order) of each map can be computed once the first n image pixels are known. At step t the
parameters at pixel t are needed; walking the graph backwards gives how much of each map is needed,
rounded up to the end of the map's row where that is already computable (so a stream that only
sees rows above, like Gated PixelCNN's vertical stack or PixelCNN++'s `u`, is computed one whole
row at a time, and a half-resolution map only every other step and row, exactly when its inputs
exist). A step computes each map from where the last call stopped to what is needed, in graph
order: one gather + one matmul per layer for the whole batch. Maps read through a spatial kernel or
at a later step than they are made are kept in full-size channel-last buffers (B, H*W + 1, C),
whose last row is the zero padding; the rest live only within the step.

For categorical heads over several channels the network sees earlier channels of the current
pixel, so the outputs that depend on that pixel are recomputed for each channel (as the naive
sampler reruns the whole network), and only outputs that depend on finished pixels are kept.

The parameters equal the naive ones up to float round-off (a matmul sums in a different order than
a convolution), not bitwise; samples drawn from the same uniforms are identical unless a uniform
falls within round-off of a bin edge.
"""
from __future__ import annotations

import inspect
import operator
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from argen.nn.attention import attend, map_attention
from argen.sampling.conv_cache import (
    CHANNEL_FUNCTIONS,
    CHANNEL_METHODS,
    POINTWISE_FUNCTIONS,
    POINTWISE_METHODS,
    POINTWISE_MODULES,
    CachedConv,
    UnsupportedLayer,
    cached_conv,
    shift_table,
)

# ----- tracing --------------------------------------------------------------------------------


class _Tracer(fx.Tracer):
    """Convolutions are leaves (their cached versions come from `cached_conv`); everything else
    is traced through down to torch functions. Buffers are proxied, so a constant buffer may be
    expanded to the batch size (PixelSNAIL's coordinate grid) and stays a static value."""

    proxy_buffer_attributes = True

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) or super().is_leaf_module(m, qualname)


class _Recorder(fx.Interpreter):
    """Runs a traced graph keeping every value; nodes in `fixed` return the given value instead
    (meta tensors standing in for image-dependent maps when only the static values are wanted)."""

    def __init__(self, gm: fx.GraphModule, fixed: dict[fx.Node, Any] | None = None) -> None:
        super().__init__(gm, garbage_collect_values=False)
        self.fixed = fixed or {}

    def run_node(self, n: fx.Node) -> Any:
        if n in self.fixed:
            return self.fixed[n]
        return super().run_node(n)


def _trace(model: nn.Module, with_cond: bool, order: Tensor | None = None) -> fx.GraphModule:
    """forward(x, cond, *rest): x is traced; cond too when given, else fixed to None; further
    parameters keep their defaults (e.g. a model's default generation order), except `order`
    when one is given (fixed to it: the graph is that order's network)."""
    params = list(inspect.signature(model.forward).parameters.values())
    concrete = {p.name: p.default for p in params[2:] if p.default is not inspect.Parameter.empty}
    if order is not None:
        if "order" not in concrete:
            raise UnsupportedLayer(f"{type(model).__name__}.forward takes no `order`: it samples in its own order only")
        concrete["order"] = order
    if len(params) > 1 and not with_cond:
        concrete[params[1].name] = None
    try:
        with warnings.catch_warnings():  # fx cannot guard a specialised tensor argument (the order): we never vary it
            warnings.filterwarnings("ignore", message="Was not able to add assertion")
            graph = _Tracer().trace(model, concrete_args=concrete or None)
    except Exception as e:  # data-dependent control flow and the like
        raise UnsupportedLayer(f"{type(model).__name__}.forward cannot be traced for cached sampling: {e}") from e
    return fx.GraphModule(model, graph)


# ----- the graph of cached operations --------------------------------------------------------------


@dataclass
class _Op:
    """One map of the network: how to compute a range of its positions from its inputs' maps."""

    name: str
    kind: str  # "input" | "conv" | "gather" | "pointwise"
    hw: tuple[int, int]
    channels: int
    dtype: torch.dtype
    inputs: list[int] = field(default_factory=list)
    tables: list[np.ndarray | None] = field(default_factory=list)  # None: reads its own position
    conv: CachedConv | None = None
    node: fx.Node | None = None  # pointwise: the traced call
    tuple_node: fx.Node | None = None  # pointwise: call producing a tuple, of which `node` picks one
    slots: dict[fx.Node, int] = field(default_factory=dict)  # data node -> index into `inputs`
    channels_picked: slice | None = None  # pointwise channel selection x[:, channels_picked]
    consts: dict[fx.Node, int] = field(default_factory=dict)  # pointwise: static map -> extra read slot
    attn: nn.Module | None = None  # attention: the MultiHeadAttention
    pattern: Any = None  # attention: its AttentionPattern

    @property
    def size(self) -> int:
        return self.hw[0] * self.hw[1]


def _is_tensors(v: Any) -> bool:
    return isinstance(v, Tensor) or (isinstance(v, (tuple, list)) and bool(v) and all(isinstance(e, Tensor) for e in v))


def _dim_arg(node: fx.Node, pos: int) -> Any:
    return node.kwargs["dim"] if "dim" in node.kwargs else (node.args[pos] if len(node.args) > pos else 0)


def _full(s: Any, size: int) -> bool:
    return isinstance(s, slice) and s.indices(size) == (0, size, 1)


def _split_index(idx: Any) -> tuple[Any, ...]:
    idx = idx if isinstance(idx, tuple) else (idx,)
    if any(e is Ellipsis for e in idx):
        i = next(k for k, e in enumerate(idx) if e is Ellipsis)
        idx = idx[:i] + (slice(None),) * (4 - len(idx) + 1) + idx[i + 1:]
    idx = idx + (slice(None),) * (4 - len(idx))
    if len(idx) != 4 or any(e is None or isinstance(e, Tensor) for e in idx):
        raise UnsupportedLayer(f"indexing {idx!r} of a feature map has no cached version")
    return idx


class _GraphBuilder:
    """Turns a traced forward and one example run into the list of cached operations."""

    def __init__(self, gm: fx.GraphModule, env: dict[fx.Node, Any]) -> None:
        self.gm, self.env = gm, env
        nodes = list(gm.graph.nodes)
        placeholder = [n for n in nodes if n.op == "placeholder"]
        self.x_node = placeholder[0]
        data: set[fx.Node] = {self.x_node}
        for n in nodes:
            if n.op in ("call_function", "call_method", "call_module") and any(a in data for a in n.all_input_nodes):
                if _is_tensors(env.get(n)):
                    data.add(n)
        self.data = data
        out = next(n for n in nodes if n.op == "output")
        self.out_node = out.args[0]
        if not isinstance(self.out_node, fx.Node) or self.out_node not in data:
            raise UnsupportedLayer("the traced forward does not return one image-dependent tensor")
        needed: set[fx.Node] = set()
        stack = [self.out_node]
        while stack:
            n = stack.pop()
            if n in needed:
                continue
            needed.add(n)
            stack.extend(a for a in n.all_input_nodes if a in data)
        self.ops: list[_Op] = []
        self.op_of: dict[fx.Node, int] = {}
        for n in nodes:
            if n in needed and isinstance(env[n], Tensor):
                self.op_of[n] = len(self.ops)
                self.ops.append(self._make(n))
        self.out = self.op_of[self.out_node]

    # -- helpers --
    def _shape(self, n: fx.Node) -> tuple[int, tuple[int, int]]:
        v = self.env[n]
        if not isinstance(v, Tensor) or v.dim() != 4:
            shape = tuple(getattr(v, "shape", ()))
            raise UnsupportedLayer(f"{n.name}: expected a (B, C, H, W) feature map, given shape {shape}")
        return int(v.shape[1]), (int(v.shape[2]), int(v.shape[3]))

    def _static(self, a: Any) -> Any:
        return fx.node.map_arg(a, lambda m: self.env[m])

    def _new(self, n: fx.Node, kind: str) -> _Op:
        c, hw = self._shape(n)
        return _Op(n.name, kind, hw, c, self.env[n].dtype)

    def _data_input(self, n: fx.Node) -> int:
        srcs = [a for a in n.all_input_nodes if a in self.data]
        if len(srcs) != 1 or srcs[0] not in self.op_of:
            raise UnsupportedLayer(f"{n.name}: expected exactly one feature-map input")
        return self.op_of[srcs[0]]

    def _make(self, n: fx.Node) -> _Op:
        if n is self.x_node:
            return self._new(n, "input")
        if n.op == "placeholder":
            raise UnsupportedLayer(f"{n.name}: a second image-dependent input is not supported")
        if n.op == "call_module":
            mod = self.gm.get_submodule(str(n.target))
            if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d)):
                op = self._new(n, "conv")
                src = self._data_input(n)
                if len(n.args) != 1 or n.kwargs:
                    raise UnsupportedLayer(f"{n.name}: a convolution called with extra arguments")
                op.conv = cached_conv(mod, self.ops[src].hw, op.hw)
                op.inputs, op.tables = [src], [None if op.conv.identity else op.conv.table]
                return op
            if isinstance(mod, POINTWISE_MODULES):
                return self._pointwise(n)
            raise UnsupportedLayer(f"{n.name}: module {type(mod).__name__} has no cached version")
        if n.op == "call_function" and n.target is map_attention:
            return self._attention(n)
        if n.op == "call_function" and n.target is operator.getitem:
            return self._getitem(n)
        if n.op == "call_function" and n.target is F.pad:
            return self._pad(n)
        if n.op == "call_function" and n.target in CHANNEL_FUNCTIONS:
            self._check_channel_dim(n, CHANNEL_FUNCTIONS[n.target])
            return self._pointwise(n)
        if n.op == "call_method" and n.target in CHANNEL_METHODS:
            self._check_channel_dim(n, CHANNEL_METHODS[n.target])
            return self._pointwise(n)
        if (n.op == "call_function" and n.target in POINTWISE_FUNCTIONS) or (
            n.op == "call_method" and n.target in POINTWISE_METHODS
        ):
            return self._pointwise(n)
        raise UnsupportedLayer(f"{n.name}: {n.op} {getattr(n.target, '__name__', n.target)} has no cached version")

    def _check_channel_dim(self, n: fx.Node, pos: int) -> None:
        dim = self._static(_dim_arg(n, pos))
        if not isinstance(dim, int) or dim % 4 != 1:
            raise UnsupportedLayer(f"{n.name}: {n.target} along dim {dim} (only channels, dim 1, are per position)")

    def _pointwise(self, n: fx.Node, tuple_node: fx.Node | None = None) -> _Op:
        op = self._new(n, "pointwise")
        call = tuple_node if tuple_node is not None else n
        for a in call.all_input_nodes:
            if a in self.data:
                if a not in self.op_of:
                    raise UnsupportedLayer(f"{n.name}: reads {a.name}, which has no cached version")
                src = self.op_of[a]
                if self.ops[src].hw != op.hw:
                    raise UnsupportedLayer(f"{n.name}: combines maps of sizes {self.ops[src].hw} and {op.hw}")
                op.slots[a] = len(op.inputs)
                op.inputs.append(src)
                op.tables.append(None)
            else:
                v = self.env[a]
                if isinstance(v, Tensor) and v.dim() == 4 and tuple(v.shape[-2:]) == op.hw and op.hw != (1, 1):
                    op.consts[a] = -1  # a static map of the same size: read position by position
                elif isinstance(v, Tensor) and v.dim() >= 1 and v.shape[-2:].numel() != 1:
                    raise UnsupportedLayer(f"{n.name}: a constant with spatial extent {tuple(v.shape)} has no cached version")
        op.node, op.tuple_node = n, tuple_node
        return op

    def _attention(self, n: fx.Node) -> _Op:
        """map_attention(attn, pattern, x, kv): the query at position q reads x at q and the key/value
        map at the positions its pattern allows (the table holds the last one; -1: none)."""
        names = ["attn", "pattern", "x", "kv"]
        bound = dict(zip(names, n.args))
        bound.update(n.kwargs)
        attn, pattern = self._static(bound.get("attn")), self._static(bound.get("pattern"))
        x, kv = bound.get("x"), bound.get("kv", None)
        kv = x if kv is None else kv
        if not isinstance(x, fx.Node) or not isinstance(kv, fx.Node) or x not in self.op_of or kv not in self.op_of:
            raise UnsupportedLayer(f"{n.name}: map_attention of values that have no cached version")
        op = self._new(n, "attention")
        qs, ks = self.op_of[x], self.op_of[kv]
        if self.ops[qs].hw != op.hw or self.ops[ks].hw != op.hw or getattr(pattern, "length", None) != op.size:
            raise UnsupportedLayer(f"{n.name}: attention between maps of sizes {self.ops[qs].hw}, {self.ops[ks].hw} "
                                   f"with a pattern of length {getattr(pattern, 'length', None)}; expected {op.hw}")
        with torch.no_grad():
            dense = pattern.dense().cpu().numpy()  # (N, N) queries x keys
        last = np.where(dense.any(1), dense.shape[1] - 1 - np.argmax(dense[:, ::-1], axis=1), -1)
        op.inputs, op.tables = [qs, ks], [None, last[:, None].astype(np.int64)]
        op.attn, op.pattern = attn, pattern
        return op

    def _getitem(self, n: fx.Node) -> _Op:
        src_node = n.args[0]
        if isinstance(self.env[src_node], (tuple, list)):  # a chunk/split result: fuse the pick
            tn = src_node
            if not (
                (tn.op == "call_function" and tn.target in CHANNEL_FUNCTIONS)
                or (tn.op == "call_method" and tn.target in CHANNEL_METHODS)
            ):
                raise UnsupportedLayer(f"{n.name}: picks from {tn.name}, which has no cached version")
            dim_pos = CHANNEL_FUNCTIONS[tn.target] if tn.op == "call_function" else CHANNEL_METHODS[str(tn.target)]
            self._check_channel_dim(tn, dim_pos)
            return self._pointwise(n, tuple_node=tn)
        src = self._data_input(n)
        in_hw = self.ops[src].hw
        idx = _split_index(self._static(n.args[1]))
        if not _full(idx[0], 1 << 62):
            raise UnsupportedLayer(f"{n.name}: indexing the batch dimension has no cached version")
        if _full(idx[2], in_hw[0]) and _full(idx[3], in_hw[1]):  # channel selection: per position
            if not isinstance(idx[1], slice):
                raise UnsupportedLayer(f"{n.name}: indexing {idx!r} drops the channel dimension")
            op = self._pointwise(n)
            op.channels_picked = idx[1]
            return op
        if not _full(idx[1], 1 << 62) or not all(isinstance(e, slice) for e in idx[2:]):
            raise UnsupportedLayer(f"{n.name}: indexing {idx!r} has no cached version")
        op = self._new(n, "gather")
        (r0, _, sr), (c0, _, sc) = idx[2].indices(in_hw[0]), idx[3].indices(in_hw[1])
        if sr < 1 or sc < 1:
            raise UnsupportedLayer(f"{n.name}: reversed slicing has no cached version")
        op.inputs, op.tables = [src], [shift_table(in_hw, op.hw, (r0, c0), (sr, sc))]
        return op

    def _pad(self, n: fx.Node) -> _Op:
        args = self._static(list(n.args[1:]))
        kwargs = self._static(dict(n.kwargs))
        pad = kwargs.get("pad", args[0] if args else None)
        mode = kwargs.get("mode", args[1] if len(args) > 1 else "constant")
        value = kwargs.get("value", args[2] if len(args) > 2 else None)
        if mode != "constant" or value not in (None, 0) or not isinstance(pad, (tuple, list)) or len(pad) not in (2, 4):
            raise UnsupportedLayer(f"{n.name}: F.pad{(pad, mode, value)} has no cached version (zero padding of H, W)")
        left, top = int(pad[0]), (int(pad[2]) if len(pad) == 4 else 0)
        op = self._new(n, "gather")
        src = self._data_input(n)
        op.inputs, op.tables = [src], [shift_table(self.ops[src].hw, op.hw, (-top, -left))]
        return op


# ----- the schedule ----------------------------------------------------------------------------


@dataclass
class CachePlan:
    """Everything about cached sampling that depends on the architecture and image size only:
    the operations, which maps are kept, and per step which range of each map to compute."""

    gm: fx.GraphModule
    builder: _GraphBuilder
    ops: list[_Op]
    out: int
    image_hw: tuple[int, int]
    perm: Tensor | None  # position t of every map = raster index perm[t] (None: raster order)
    tentative: bool  # the parameters at pixel t depend on earlier channels of pixel t
    storage: list[str]  # per op: "x" (read from the image), "buffer", "step" (lives within a step)
    needed: np.ndarray  # (n_ops, Q): positions of each map computed by the call at step t
    done: np.ndarray  # (n_ops, Q): positions final (not to be recomputed) after the call at step t
    first: list[list[tuple[int, int, int]]]  # per step: (op, start, stop) when the last call was t-1
    repeat: list[list[tuple[int, int, int]]]  # per step: the same step again (next channel)

    def ranges(self, t: int, last: int) -> list[tuple[int, int, int]]:
        """(op, start, stop) to compute at step t when the last call was at step `last`."""
        if last == t:
            return self.repeat[t]
        if last == t - 1:
            return self.first[t]
        start = self.done[:, last] if last >= 0 else np.zeros(len(self.ops), dtype=np.int64)
        stop = self.needed[:, t]
        return [(i, int(a), int(b)) for i, (a, b) in enumerate(zip(start, stop)) if a < b]


def _prefix_max_reads(op: _Op, k: int, src_size: int) -> np.ndarray:
    """For each output position q: the largest input raster index read by positions <= q (-1 when
    none), so 'output q is computable' <=> this < number of computed input positions."""
    table = op.tables[k]
    if table is None:
        if src_size != op.size:
            raise UnsupportedLayer(f"{op.name}: pointwise read of a map of another size")
        return np.arange(op.size, dtype=np.int64)
    reads = table.max(axis=1) if table.shape[1] else np.full(op.size, -1)
    return np.maximum.accumulate(reads.astype(np.int64))


def _permute(builder: _GraphBuilder, image_hw: tuple[int, int], order: Tensor) -> Tensor:
    """Re-index every map by generation rank instead of raster index (tables and all), so the
    raster-order schedule below serves any order; only full-size maps can be re-indexed."""
    perm = (order[:, 0] * image_hw[1] + order[:, 1]).cpu().numpy().astype(np.int64)
    rank = np.empty_like(perm)
    rank[perm] = np.arange(len(perm))
    rank_or_pad = np.append(rank, -1)  # table entry -1 (padding) stays -1
    for op in builder.ops:
        if op.hw != image_hw:
            raise UnsupportedLayer(f"{op.name}: a map of size {op.hw} cannot follow a generation order over {image_hw}")
        if op.kind == "attention":
            raise UnsupportedLayer(f"{op.name}: cached attention follows the raster order only")
        op.tables = [None if t is None else rank_or_pad[t[perm]] for t in op.tables]
    return torch.as_tensor(perm)


def build_plan(model: nn.Module, with_cond: bool, order: Tensor | None = None) -> CachePlan:
    """Trace `model`, check every cached operation against the model's own forward, and schedule.

    `order` (H*W, 2): generate in this order, passed to the model's forward as `order=` (a model
    whose network depends on the order, such as LMConv); default: the raster order."""
    gm = _trace(model, with_cond, order)
    c, h, w = model.data_shape
    dev = next(model.parameters()).device
    g = torch.Generator().manual_seed(0)
    x1 = torch.randint(0, model.levels, (1, c, h, w), generator=g).to(dev)
    cond1 = torch.zeros(1, dtype=torch.long, device=dev) if with_cond else None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            rec = _Recorder(gm)
            rec.run(x1, cond1)
            builder = _GraphBuilder(gm, rec.env)
            for op in builder.ops:
                if op.conv is not None:
                    _check_conv(op, builder, rec.env)
    finally:
        model.train(was_training)
    ops, out = builder.ops, builder.out
    if ops[out].hw != (h, w) or builder.ops[0].kind != "input":
        raise UnsupportedLayer(f"expected parameters of spatial size {(h, w)}, given {ops[out].hw}")
    tentative = bool(model.distribution.output_depends_on_current_pixel) and c > 1
    perm = _permute(builder, (h, w), order) if order is not None else None
    plan = _schedule(gm, builder, (h, w), tentative, perm)
    _check_plan(plan, x1, cond1, rec.env[builder.out_node])
    # keep only shapes of the example's feature maps (the memoized plan must not hold them)
    builder.env = {n: _to_meta(v) if n in builder.data else v for n, v in builder.env.items()}
    return plan


def _to_meta(v: Any) -> Any:
    if isinstance(v, Tensor):
        return torch.empty(v.shape, dtype=v.dtype, device="meta")
    return type(v)(_to_meta(e) for e in v)


def _schedule(gm: fx.GraphModule, builder: _GraphBuilder, image_hw: tuple[int, int], tentative: bool,
              perm: Tensor | None = None) -> CachePlan:
    ops, out = builder.ops, builder.out
    n_ops, q = len(ops), image_hw[0] * image_hw[1]
    consumers: list[list[tuple[int, int]]] = [[] for _ in ops]
    for i, op in enumerate(ops):
        for k, j in enumerate(op.inputs):
            consumers[j].append((i, k))
    reads = [[_prefix_max_reads(op, k, ops[j].size) for k, j in enumerate(op.inputs)] for op in ops]

    # avail[i][n]: leading positions of map i computable from the first n image pixels
    avail = np.zeros((n_ops, q + 1), dtype=np.int64)
    for i, op in enumerate(ops):
        if op.kind == "input":
            avail[i] = np.arange(q + 1)
            continue
        a = np.full(q + 1, op.size, dtype=np.int64)
        for k, j in enumerate(op.inputs):
            a = np.minimum(a, np.searchsorted(reads[i][k], avail[j], side="left"))
        avail[i] = a

    steps = np.arange(q)
    now = avail[:, steps + (1 if tentative else 0)]  # pixel t's own earlier channels are usable
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
        width = ops[i].hw[1] if perm is None else 1  # rows mean nothing in another order
        row_end = -(-need // width) * width  # finish the row where that is already computable
        needed[i] = np.maximum(need, np.minimum(final[i], row_end))
    done = np.minimum(needed, final)
    done_before = np.concatenate([np.zeros((n_ops, 1), dtype=np.int64), done[:, :-1]], axis=1)

    storage = []
    for j, op in enumerate(ops):
        spatial = any(ops[i].tables[k] is not None for i, k in consumers[j])
        if op.kind == "input":
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

    def lists(start: np.ndarray) -> list[list[tuple[int, int, int]]]:
        res: list[list[tuple[int, int, int]]] = []
        for t in range(q):
            a, b = start[:, t], needed[:, t]
            res.append([(i, int(a[i]), int(b[i])) for i in np.nonzero(a < b)[0].tolist()])
        return res

    return CachePlan(gm, builder, ops, out, image_hw, perm, tentative, storage, needed, done,
                     lists(done_before), lists(done) if tentative else [[] for _ in range(q)])


# ----- running it ------------------------------------------------------------------------------------


class _Slot:
    __slots__ = ("k",)

    def __init__(self, k: int) -> None:
        self.k = k


def _fill(t: Any, vals: list[Tensor]) -> Any:
    if type(t) is _Slot:
        return vals[t.k]
    if isinstance(t, list):
        return [_fill(e, vals) for e in t]
    if isinstance(t, tuple):
        return tuple(_fill(e, vals) for e in t)
    if isinstance(t, dict):
        return {k: _fill(v, vals) for k, v in t.items()}
    return t


def _has_slot(t: Any) -> bool:
    if type(t) is _Slot:
        return True
    if isinstance(t, (list, tuple)):
        return any(_has_slot(e) for e in t)
    if isinstance(t, dict):
        return any(_has_slot(v) for v in t.values())
    return False


def _identity(v: Tensor) -> Tensor:
    return v


def _functional(mod: nn.Module) -> Callable:
    """The function a stateless activation module computes (skips nn.Module call overhead)."""
    if type(mod) in (nn.Identity,) or (type(mod) is nn.Dropout and not mod.training):
        return _identity
    if type(mod) is nn.ReLU:
        return torch.relu
    if type(mod) is nn.Tanh:
        return torch.tanh
    if type(mod) is nn.Sigmoid:
        return torch.sigmoid
    if type(mod) is nn.ELU:
        alpha = mod.alpha
        return lambda v: F.elu(v, alpha)
    return mod


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
        rec = _Recorder(plan.gm, metas)
        with torch.no_grad():
            rec.run(torch.empty((b, *x.shape[1:]), dtype=x.dtype, device="meta"), cond)
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
        self.track_fresh = any(op.kind == "attention" for op in ops)
        self.runners: list[Callable[[int, int, dict], None]] = [self._runner(j) for j in range(len(ops))]

    def _flat(self, x: Tensor) -> Tensor:
        """(B, C, positions) of the image, positions in the plan's order."""
        flat = x.reshape(self.batch, x.shape[1], -1)
        return flat if self.perm is None else flat.index_select(2, self.perm)

    # -- reading and writing ranges of maps; a range of a map is a (B, n, C) "rows" tensor --
    def _reader(self, j: int) -> Callable[[int, int, dict], Tensor]:
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

    def _writer(self, j: int) -> Callable[[int, int, dict, Tensor], None]:
        if self.plan.storage[j] == "buffer":
            buf = self.buffers[j]

            def write(a: int, b: int, vals: dict, rows: Tensor) -> None:
                buf.narrow(1, a, b - a).copy_(rows)
        else:

            def write(a: int, b: int, vals: dict, rows: Tensor) -> None:
                vals[j] = (a, b, rows)

        return write

    def _index(self, j: int, k: int) -> Tensor:
        op = self.plan.ops[j]
        table = op.tables[k]
        src = self.plan.ops[op.inputs[k]]
        if self.plan.storage[op.inputs[k]] != "buffer":
            raise RuntimeError(f"cached sampling: {op.name} gathers from {src.name}, which is not kept")
        flat = np.where(table < 0, src.size, table).reshape(-1)  # -1 -> the zero row
        return torch.as_tensor(flat, dtype=torch.long, device=self.xflat.device)

    def _runner(self, j: int) -> Callable[[int, int, dict], None]:
        plan, op, bsz = self.plan, self.plan.ops[j], self.batch
        if op.kind == "input":
            if plan.storage[j] == "buffer":
                buf = self.buffers[j]

                def run_input(a: int, b: int, vals: dict) -> None:
                    buf[:, a:b] = self.xflat[:, :, a:b].transpose(1, 2)

                return run_input
            return lambda a, b, vals: None
        write = self._writer(j)
        if op.kind == "conv":
            assert op.conv is not None
            weight, bias = op.conv.weights()
            weight_t = weight.t().contiguous()  # F.linear's (C_out, T * C_in) layout
            cin, taps = op.conv.in_channels, op.conv.taps
            if op.conv.identity:
                read = self._reader(op.inputs[0])
                return lambda a, b, vals: write(a, b, vals, F.linear(read(a, b, vals), weight_t, bias))
            idx, src = self._index(j, 0), self.buffers[op.inputs[0]]

            def run_conv(a: int, b: int, vals: dict) -> None:
                cols = torch.index_select(src, 1, idx[a * taps : b * taps]).view(bsz, b - a, taps * cin)
                write(a, b, vals, F.linear(cols, weight_t, bias))

            return run_conv
        if op.kind == "gather":
            idx, src = self._index(j, 0), self.buffers[op.inputs[0]]
            return lambda a, b, vals: write(a, b, vals, torch.index_select(src, 1, idx[a:b]))
        if op.kind == "attention":
            return self._attention_runner(j, write)
        return self._pointwise_runner(j, write)

    def _attention_runner(self, j: int, write: Callable) -> Callable[[int, int, dict], None]:
        """Queries of the positions computed now attend to a growing cache of projected keys/values.

        Keys/values are projected once per position of the key/value map, except where that map
        was recomputed in this call (a categorical head's earlier channels of the current pixel):
        from there on they are projected again.
        """
        op = self.plan.ops[j]
        mha, bsz = op.attn, self.batch
        assert mha is not None and op.pattern is not None
        read_q, src = self._reader(op.inputs[0]), op.inputs[1]
        kv_buf = self.buffers[src]
        upto = np.maximum.accumulate(op.tables[1][:, 0]) + 1  # keys read by queries <= q
        heads, qk, vd = mha.heads, mha.qk_dim, mha.v_dim
        dev, dtype = kv_buf.device, kv_buf.dtype
        # zeros, not empty: a query with no allowed key attends to (masked) key 0 before it exists
        k_cache = torch.zeros(bsz, heads, op.size, qk // heads, device=dev, dtype=dtype)
        v_cache = torch.zeros(bsz, heads, op.size, vd // heads, device=dev, dtype=dtype)
        mask = op.pattern.dense().to(dev)
        projected = [0]  # keys [0, projected) are in the caches and current
        split = "b t (h d) -> b h t d"

        def run_attention(a: int, b: int, vals: dict) -> None:
            lo = min(projected[0], self.fresh.get(src, projected[0]))
            end = int(upto[b - 1])
            if lo < end:
                k, v = mha.kv(kv_buf[:, lo:end]).split([qk, vd], dim=-1)
                k_cache[:, :, lo:end] = rearrange(k, split, h=heads)
                v_cache[:, :, lo:end] = rearrange(v, split, h=heads)
            projected[0] = max(lo, end)
            n_keys = max(end, 1)
            q = rearrange(mha.q(read_q(a, b, vals)), split, h=heads)
            out = attend(q, k_cache[:, :, :n_keys], v_cache[:, :, :n_keys], mask[a:b, :n_keys])
            write(a, b, vals, mha.out(rearrange(out, "b h t d -> b t (h d)")))

        return run_attention

    def _rows_constant(self, v: Any) -> Any:
        """A constant that broadcasts against (B, C, H, W) maps, re-shaped to broadcast against
        (B, n, C) rows (the graph builder made sure it has no spatial extent)."""
        if not isinstance(v, Tensor) or v.dim() < 2:
            return v
        if v.dim() > 4:
            raise UnsupportedLayer(f"a constant of shape {tuple(v.shape)} cannot be applied per position")
        v = v.reshape(v.shape[:-2])  # drop H, W (both 1)
        return v.unsqueeze(-2) if v.dim() == 2 else v  # (B, C) -> (B, 1, C)

    def _const_reader(self, n: fx.Node) -> Callable[[int, int, dict], Tensor]:
        """A static map with spatial extent (a coordinate grid) read as rows of positions."""
        v = self.static[n]
        rows = v.flatten(2).transpose(1, 2).expand(self.batch, -1, -1)
        rows = (rows if self.perm is None else rows.index_select(1, self.perm)).contiguous()
        return lambda a, b, vals: rows[:, a:b]

    def _pointwise_runner(self, j: int, write: Callable) -> Callable[[int, int, dict], None]:
        op = self.plan.ops[j]
        reads = [self._reader(i) for i in op.inputs] + [self._const_reader(n) for n in op.consts]
        const_slot = {n: len(op.inputs) + k for k, n in enumerate(op.consts)}
        if op.channels_picked is not None:  # channel selection x[:, c0:c1]
            index, read0 = (Ellipsis, op.channels_picked), reads[0]
            return lambda a, b, vals: write(a, b, vals, read0(a, b, vals)[index])
        call = op.tuple_node if op.tuple_node is not None else op.node
        assert call is not None and op.node is not None
        if op.tuple_node is not None and len(reads) == 1 and call.args[0] in op.slots:
            # x.chunk(..)[k] / x.split(..)[k] of one map: a channel slice (one narrow, no tuple)
            parts = self.plan.builder.env[op.tuple_node]
            k = self.plan.builder._static(op.node.args[1]) % len(parts)
            start = sum(int(p.shape[1]) for p in parts[:k])
            size, read0 = int(parts[k].shape[1]), reads[0]
            return lambda a, b, vals: write(a, b, vals, read0(a, b, vals).narrow(-1, start, size))

        def sub(n: fx.Node) -> Any:
            if n in op.slots:
                return _Slot(op.slots[n])
            if n in const_slot:
                return _Slot(const_slot[n])
            return self._rows_constant(self.static[n])

        args = list(fx.node.map_arg(call.args, sub))
        kwargs = dict(fx.node.map_arg(dict(call.kwargs), sub))
        dim_pos = (CHANNEL_FUNCTIONS.get(call.target) if call.op == "call_function"  # type: ignore[call-overload]
                   else CHANNEL_METHODS.get(str(call.target)) if call.op == "call_method" else None)
        if dim_pos is not None:  # channels are the last dim of rows
            if "dim" in kwargs:
                kwargs["dim"] = -1
            else:
                args[dim_pos] = -1
        if call.op == "call_module":
            target: Callable = _functional(self.plan.gm.get_submodule(str(call.target)))
        elif call.op == "call_method":
            name = str(call.target)

            def target(self_: Tensor, *a: Any, **kw: Any) -> Any:
                return getattr(self_, name)(*a, **kw)
        else:
            target = call.target  # type: ignore[assignment]
        pick = self.plan.builder._static(op.node.args[1]) if op.tuple_node is not None else None
        nested = any(_has_slot(a) for a in args if type(a) is not _Slot) or _has_slot(kwargs)
        flat_slots = [(p, a.k) for p, a in enumerate(args) if type(a) is _Slot]
        if call.op == "call_function" and call.target in (torch.cat, torch.concat) and not kwargs and len(args) == 2 \
                and isinstance(args[0], (list, tuple)) and all(type(e) is _Slot for e in args[0]):
            parts = [reads[e.k] for e in args[0]]  # torch.cat([maps...], dim=1): the concat_elu case
            return lambda a, b, vals: write(a, b, vals, torch.cat([r(a, b, vals) for r in parts], -1))
        plain = not kwargs and not nested and pick is None
        if plain and len(reads) == 1 and flat_slots == [(0, 0)] and len(args) == 1:
            read0 = reads[0]  # the common f(x) case
            return lambda a, b, vals: write(a, b, vals, target(read0(a, b, vals)))
        if plain and len(reads) == 2 and flat_slots == [(0, 0), (1, 1)] and len(args) == 2:
            read0, read1 = reads  # the common f(x, y) case (sums, products)
            return lambda a, b, vals: write(a, b, vals, target(read0(a, b, vals), read1(a, b, vals)))

        def run_pw(a: int, b: int, vals: dict) -> None:
            ins = [r(a, b, vals) for r in reads]
            if nested:
                out = target(*_fill(args, ins), **_fill(kwargs, ins))
            else:
                call_args = args.copy()
                for p, k in flat_slots:
                    call_args[p] = ins[k]
                out = target(*call_args, **kwargs)
            if pick is not None:
                out = out[pick]
            write(a, b, vals, out)

        return run_pw

    def run(self, x: Tensor, ranges: list[tuple[int, int, int]]) -> None:
        """Compute the given (op, start, stop) ranges, in graph order, from the image `x`."""
        self.xflat = self._flat(x)
        vals: dict[int, tuple[int, int, Tensor]] = {}
        runners = self.runners
        if self.track_fresh:
            self.fresh = {i: a for i, a, _ in ranges}
        for i, a, b in ranges:
            runners[i](a, b, vals)

    def params(self, t: int) -> Tensor:
        return self.buffers[self.plan.out][:, t]


# ----- checks -------------------------------------------------------------------------------------


def _check_conv(op: _Op, builder: _GraphBuilder, env: dict[fx.Node, Any]) -> None:
    """The cached convolution must reproduce the module on the example input."""
    assert op.conv is not None
    n = next(k for k, v in builder.op_of.items() if builder.ops[v] is op)
    src_node = next(a for a in n.all_input_nodes if a in builder.data)
    x, want = env[src_node], env[n]
    rows = torch.cat([x.flatten(2).transpose(1, 2), x.new_zeros(1, 1, x.shape[1])], 1)[0]  # (Q+1, C)
    table = np.where(op.conv.table < 0, rows.shape[0] - 1, op.conv.table)
    cols = rows[torch.as_tensor(table, device=x.device)].reshape(table.shape[0], -1)
    weight, bias = op.conv.weights()
    got = (cols @ weight + bias).T.reshape(want.shape)
    tol = 1e-3 * (1 + float(want.abs().max()))  # float round-off of deep nets, far below a wrong layer
    if not torch.allclose(got, want, atol=tol, rtol=0):
        kind = type(builder.gm.get_submodule(str(n.target))).__name__
        err = float((got - want).abs().max())
        raise UnsupportedLayer(f"{n.name}: the cached version of {kind} does not reproduce its forward (max error {err:.3g})")


def _check_plan(plan: CachePlan, x: Tensor, cond: Tensor | None, want: Tensor) -> None:
    """Computing the whole example image through the cache must give the model's own output."""
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


# ----- the stepper -------------------------------------------------------------------------------------

_PLANS: "weakref.WeakKeyDictionary[nn.Module, dict[tuple, CachePlan]]" = weakref.WeakKeyDictionary()


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


_MAX_ORDER_PLANS = 8


class CachedStepper:
    """Stepper for `autoregressive_fill` that computes only what each step needs (exact).

    Positions come in the model's generation order, or in `order` ((H*W, 2) tensor or pairs) when
    given, which then also goes to the model's forward as `order=` (as `NaiveStepper(model, cond,
    order=order)` does; LMConv completes in per-mask orders). A model whose generation order is not
    the raster one must take such an `order` argument. `skip` costs nothing: the next call catches
    every map up in one batched pass, which makes completion with a large known region cheap.
    """

    def __init__(self, model: nn.Module, cond: Tensor | None, order: Tensor | Sequence[tuple[int, ...]] | None = None) -> None:
        c, h, w = model.data_shape
        raster = [(i, j) for i in range(h) for j in range(w)]
        seq = model.generation_order() if order is None else (order.tolist() if isinstance(order, Tensor) else order)
        positions = [(int(p[0]), int(p[1])) for p in seq]
        if sorted(positions) != raster:
            raise ValueError(f"expected an order visiting each of the {h}x{w} pixels once, given {len(positions)} positions")
        self.raster = order is None and positions == raster
        plan_order = None if self.raster else torch.tensor(positions, dtype=torch.long)
        self.model, self.cond = model, cond
        self.rank = {p: t for t, p in enumerate(positions)}
        self.plan = cache_plan(model, cond is not None, plan_order)
        self.state: CacheState | None = None
        self.last = -1

    def params_at(self, x: Tensor, pos: tuple[int, ...], channel: int) -> Tensor:
        t = self.rank[(int(pos[0]), int(pos[1]))]
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
        """Pixel `pos` is known: nothing to do now (the next call computes what it needs)."""


__all__ = ["CachedStepper", "CachePlan", "CacheState", "UnsupportedLayer", "build_plan", "cache_plan"]
