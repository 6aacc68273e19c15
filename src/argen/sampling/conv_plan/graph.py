"""From a traced forward and one example run to the list of cached operations (`ops.py`).

Every map is (B, C, *S) with the input's number of spatial dims: (B, C, H, W) for images,
(B, C, T, H, W) for video. Nothing here knows a model; a node with no cached version raises
`UnsupportedLayer` with its name.
"""
from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from argen.nn.attention import map_attention
from argen.nn.util import FX_LEAF_MODULES, causal_spec
from argen.sampling.conv_plan.ops import (
    AttentionOp,
    ChannelSliceOp,
    ConvOp,
    GatherOp,
    InputOp,
    Op,
    PointwiseOp,
)
from argen.sampling.conv_plan.support import (
    CHANNEL_FUNCTIONS,
    CHANNEL_METHODS,
    POINTWISE_FUNCTIONS,
    POINTWISE_METHODS,
    POINTWISE_MODULES,
    UnsupportedLayer,
)
from argen.sampling.conv_plan.tables import cached_conv, shift_table


def _is_tensors(v: Any) -> bool:
    return isinstance(v, Tensor) or (isinstance(v, (tuple, list)) and bool(v) and all(isinstance(e, Tensor) for e in v))


def _dim_arg(node: fx.Node, pos: int) -> Any:
    return node.kwargs["dim"] if "dim" in node.kwargs else (node.args[pos] if len(node.args) > pos else 0)


def _full(s: Any, size: int) -> bool:
    return isinstance(s, slice) and s.indices(size) == (0, size, 1)


def _split_index(idx: Any, dims: int) -> tuple[Any, ...]:
    """An index of a (B, C, *S) map (`dims` dims in all) as one entry per dim."""
    idx = idx if isinstance(idx, tuple) else (idx,)
    if any(e is Ellipsis for e in idx):
        i = next(k for k, e in enumerate(idx) if e is Ellipsis)
        idx = idx[:i] + (slice(None),) * (dims - len(idx) + 1) + idx[i + 1:]
    idx = idx + (slice(None),) * (dims - len(idx))
    if len(idx) != dims or any(e is None or isinstance(e, Tensor) for e in idx):
        raise UnsupportedLayer(f"indexing {idx!r} of a feature map has no cached version")
    return idx


class GraphBuilder:
    """Turns a traced forward and one example run (`env`: every node's value) into `ops`."""

    def __init__(self, gm: fx.GraphModule, env: dict[fx.Node, Any]) -> None:
        self.gm, self.env = gm, env
        nodes = list(gm.graph.nodes)
        placeholder = [n for n in nodes if n.op == "placeholder"]
        self.x_node = placeholder[0]
        x = env[self.x_node]
        if not isinstance(x, Tensor) or x.dim() < 3:
            raise UnsupportedLayer(f"expected an input (B, C, *positions), given {tuple(getattr(x, 'shape', ()))}")
        self.ndim = x.dim() - 2  # spatial dims of every map
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
        self.ops: list[Op] = []
        self.op_of: dict[fx.Node, int] = {}
        self.node_of: list[fx.Node] = []
        for n in nodes:
            if n in needed and isinstance(env[n], Tensor):
                self.op_of[n] = len(self.ops)
                self.ops.append(self._make(n))
                self.node_of.append(n)
        self.out = self.op_of[self.out_node]

    # -- helpers --
    def _shape(self, n: fx.Node) -> tuple[int, tuple[int, ...]]:
        v = self.env[n]
        if not isinstance(v, Tensor) or v.dim() != self.ndim + 2:
            shape = tuple(getattr(v, "shape", ()))
            want = ", ".join(["B", "C", *("HW" if self.ndim == 2 else [f"S{i}" for i in range(self.ndim)])])
            raise UnsupportedLayer(f"{n.name}: expected a ({want}) feature map, given shape {shape}")
        return int(v.shape[1]), tuple(int(s) for s in v.shape[2:])

    def static(self, a: Any) -> Any:
        """`a` with every node replaced by its value in the example run."""
        return fx.node.map_arg(a, lambda m: self.env[m])

    def _base(self, n: fx.Node) -> dict[str, Any]:
        c, shape = self._shape(n)
        return dict(name=n.name, shape=shape, channels=c, dtype=self.env[n].dtype)

    def _data_input(self, n: fx.Node) -> int:
        srcs = [a for a in n.all_input_nodes if a in self.data]
        if len(srcs) != 1 or srcs[0] not in self.op_of:
            raise UnsupportedLayer(f"{n.name}: expected exactly one feature-map input")
        return self.op_of[srcs[0]]

    def _make(self, n: fx.Node) -> Op:
        if n is self.x_node:
            return InputOp(**self._base(n))
        if n.op == "placeholder":
            raise UnsupportedLayer(f"{n.name}: a second image-dependent input is not supported")
        if n.op == "call_module":
            mod = self.gm.get_submodule(str(n.target))
            if isinstance(mod, POINTWISE_MODULES):
                return self._pointwise(n)
            if isinstance(mod, tuple(FX_LEAF_MODULES)):  # a convolution (else its causal_spec says why not)
                return self._conv(n, mod)
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

    def _conv(self, n: fx.Node, mod: nn.Module) -> ConvOp:
        src = self._data_input(n)
        if len(n.args) != 1 or n.kwargs:
            raise UnsupportedLayer(f"{n.name}: a convolution called with extra arguments")
        base = self._base(n)
        kind = type(mod).__name__
        try:
            spec = causal_spec(mod)
        except ValueError as e:
            raise UnsupportedLayer(f"{n.name}: {e}") from e
        try:
            conv = cached_conv(spec, self.ops[src].shape, base["shape"])
        except UnsupportedLayer as e:
            raise UnsupportedLayer(f"{n.name} ({kind}): {e}") from e
        return ConvOp(**base, inputs=[src], tables=[None if conv.identity else conv.table], conv=conv, layer=kind)

    def _check_channel_dim(self, n: fx.Node, pos: int) -> None:
        dim = self.static(_dim_arg(n, pos))
        if not isinstance(dim, int) or dim % (self.ndim + 2) != 1:
            raise UnsupportedLayer(f"{n.name}: {n.target} along dim {dim} (only channels, dim 1, are per position)")

    def _reads(self, n: fx.Node, call: fx.Node, shape: tuple[int, ...]) -> tuple[dict[fx.Node, int], list[int], list[fx.Node]]:
        """The maps a per-position call reads: (data node -> slot, their ops, static maps read per position)."""
        slots: dict[fx.Node, int] = {}
        inputs: list[int] = []
        consts: list[fx.Node] = []
        nd = self.ndim
        for a in call.all_input_nodes:
            if a in self.data:
                if a not in self.op_of:
                    raise UnsupportedLayer(f"{n.name}: reads {a.name}, which has no cached version")
                src = self.op_of[a]
                if self.ops[src].shape != shape:
                    raise UnsupportedLayer(f"{n.name}: combines maps of sizes {self.ops[src].shape} and {shape}")
                slots[a] = len(inputs)
                inputs.append(src)
            else:
                v = self.env[a]
                if isinstance(v, Tensor) and v.dim() == nd + 2 and tuple(v.shape[-nd:]) == shape and any(s != 1 for s in shape):
                    consts.append(a)  # a static map of the same size: read position by position
                elif isinstance(v, Tensor) and v.dim() >= 1 and v.shape[-nd:].numel() != 1:
                    raise UnsupportedLayer(f"{n.name}: a constant with spatial extent {tuple(v.shape)} has no cached version")
        return slots, inputs, consts

    def _pointwise(self, n: fx.Node, tuple_node: fx.Node | None = None) -> PointwiseOp:
        base = self._base(n)
        call = tuple_node if tuple_node is not None else n
        slots, inputs, consts = self._reads(n, call, base["shape"])
        pick = self.static(n.args[1]) if tuple_node is not None else None
        return PointwiseOp(**base, inputs=inputs, tables=[None] * len(inputs), node=n, tuple_node=tuple_node,
                           pick=pick, slots=slots, consts=consts)

    def _attention(self, n: fx.Node) -> AttentionOp:
        """map_attention(attn, pattern, x, kv): the query at position q reads x at q and the key/value
        map at the positions its pattern allows (the table holds the last one; -1: none)."""
        names = ["attn", "pattern", "x", "kv"]
        bound = dict(zip(names, n.args))
        bound.update(n.kwargs)
        attn, pattern = self.static(bound.get("attn")), self.static(bound.get("pattern"))
        x, kv = bound.get("x"), bound.get("kv", None)
        kv = x if kv is None else kv
        if not isinstance(x, fx.Node) or not isinstance(kv, fx.Node) or x not in self.op_of or kv not in self.op_of:
            raise UnsupportedLayer(f"{n.name}: map_attention of values that have no cached version")
        base = self._base(n)
        shape, size = base["shape"], int(np.prod(base["shape"]))
        qs, ks = self.op_of[x], self.op_of[kv]
        if self.ops[qs].shape != shape or self.ops[ks].shape != shape or getattr(pattern, "length", None) != size:
            raise UnsupportedLayer(f"{n.name}: attention between maps of sizes {self.ops[qs].shape}, {self.ops[ks].shape} "
                                   f"with a pattern of length {getattr(pattern, 'length', None)}; expected {shape}")
        with torch.no_grad():
            dense = pattern.dense().cpu().numpy()  # (N, N) queries x keys
        last = np.where(dense.any(1), dense.shape[1] - 1 - np.argmax(dense[:, ::-1], axis=1), -1)
        return AttentionOp(**base, inputs=[qs, ks], tables=[None, last[:, None].astype(np.int64)], attn=attn,
                           pattern=pattern)

    def _getitem(self, n: fx.Node) -> Op:
        src_node = n.args[0]
        if isinstance(self.env[src_node], (tuple, list)):  # a chunk/split result: fuse the pick
            tn = src_node
            assert isinstance(tn, fx.Node)
            if not (
                (tn.op == "call_function" and tn.target in CHANNEL_FUNCTIONS)
                or (tn.op == "call_method" and tn.target in CHANNEL_METHODS)
            ):
                raise UnsupportedLayer(f"{n.name}: picks from {tn.name}, which has no cached version")
            dim_pos = CHANNEL_FUNCTIONS[tn.target] if tn.op == "call_function" else CHANNEL_METHODS[str(tn.target)]
            self._check_channel_dim(tn, dim_pos)
            op = self._pointwise(n, tuple_node=tn)
            if len(op.inputs) == 1 and not op.consts and tn.args[0] in op.slots:
                # x.chunk(..)[k] / x.split(..)[k] of one map: a channel slice (one narrow, no tuple)
                parts = self.env[tn]
                k = self.static(n.args[1]) % len(parts)
                start = sum(int(p.shape[1]) for p in parts[:k])
                return ChannelSliceOp(**self._base(n), inputs=op.inputs, tables=[None], start=start,
                                      stop=start + int(parts[k].shape[1]))
            return op
        src = self._data_input(n)
        in_shape = self.ops[src].shape
        idx = _split_index(self.static(n.args[1]), self.ndim + 2)
        if not _full(idx[0], 1 << 62):
            raise UnsupportedLayer(f"{n.name}: indexing the batch dimension has no cached version")
        if all(_full(e, s) for e, s in zip(idx[2:], in_shape)):  # channel selection: per position
            if not isinstance(idx[1], slice):
                raise UnsupportedLayer(f"{n.name}: indexing {idx!r} drops the channel dimension")
            self._reads(n, n, in_shape)  # the same checks as any per-position op
            start, stop, step = idx[1].indices(self.ops[src].channels)
            return ChannelSliceOp(**self._base(n), inputs=[src], tables=[None], start=start, stop=stop, step=step)
        if not _full(idx[1], 1 << 62) or not all(isinstance(e, slice) for e in idx[2:]):
            raise UnsupportedLayer(f"{n.name}: indexing {idx!r} has no cached version")
        ranges = [e.indices(s) for e, s in zip(idx[2:], in_shape)]
        if any(step < 1 for _, _, step in ranges):
            raise UnsupportedLayer(f"{n.name}: reversed slicing has no cached version")
        base = self._base(n)
        table = shift_table(in_shape, base["shape"], tuple(r[0] for r in ranges), tuple(r[2] for r in ranges))
        return GatherOp(**base, inputs=[src], tables=[table])

    def _pad(self, n: fx.Node) -> GatherOp:
        args = self.static(list(n.args[1:]))
        kwargs = self.static(dict(n.kwargs))
        pad = kwargs.get("pad", args[0] if args else None)
        mode = kwargs.get("mode", args[1] if len(args) > 1 else "constant")
        value = kwargs.get("value", args[2] if len(args) > 2 else None)
        if (mode != "constant" or value not in (None, 0) or not isinstance(pad, (tuple, list)) or not pad
                or len(pad) % 2 or len(pad) > 2 * self.ndim):
            raise UnsupportedLayer(f"{n.name}: F.pad{(pad, mode, value)} has no cached version (zero padding of the "
                                   f"{self.ndim} spatial dims)")
        offset = [0] * self.ndim  # F.pad pads the last dim first: (before, after) pairs
        for i in range(len(pad) // 2):
            offset[self.ndim - 1 - i] = -int(pad[2 * i])
        src = self._data_input(n)
        base = self._base(n)
        return GatherOp(**base, inputs=[src], tables=[shift_table(self.ops[src].shape, base["shape"], tuple(offset))])


__all__ = ["GraphBuilder"]
