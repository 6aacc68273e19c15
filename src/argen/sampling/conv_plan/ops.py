"""The operations of a cached graph: one class per kind, each knowing how to compute a range of
its map's positions for the whole batch (`runner`).

Every op is one map of the network, of spatial shape `shape` and `channels` channels. It reads
the maps `inputs` (indices into the plan's op list), input k through `tables[k]`: None when output
position q reads input position q only (pointwise), else a (Q, T) index table (`tables.py`; -1:
zero). The scheduler needs nothing else. A range [a, b) of a map is a (B, b - a, C) "rows" tensor
(positions in the plan's order, channels last); `runner(state, j)` returns the function
`run(a, b, vals)` that computes rows [a, b) of op j from its inputs' rows and writes them (to a
kept buffer, or to `vals`, the values living only within the current step).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from argen.nn.attention import attend
from argen.sampling.conv_plan.support import CHANNEL_FUNCTIONS, CHANNEL_METHODS, UnsupportedLayer
from argen.sampling.conv_plan.tables import CachedConv

if TYPE_CHECKING:
    from argen.sampling.conv_plan.runtime import CacheState

Runner = Callable[[int, int, dict], None]
Writer = Callable[[int, int, dict, Tensor], None]


@dataclass(eq=False)
class Op:
    """One map of the network: how to compute a range of its positions from its inputs' maps."""

    kind: ClassVar[str] = "op"
    name: str
    shape: tuple[int, ...]  # spatial: (H, W), (T, H, W), ...
    channels: int
    dtype: torch.dtype
    inputs: list[int] = field(default_factory=list)
    tables: list[np.ndarray | None] = field(default_factory=list)  # None: reads its own position

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def runner(self, state: CacheState, j: int) -> Runner:
        raise NotImplementedError


@dataclass(eq=False)
class InputOp(Op):
    """The network's input (the image): copied into a buffer where a spatial layer reads it."""

    kind: ClassVar[str] = "input"

    def runner(self, state: CacheState, j: int) -> Runner:
        if state.plan.storage[j] != "buffer":
            return lambda a, b, vals: None
        buf = state.buffers[j]

        def run_input(a: int, b: int, vals: dict) -> None:
            buf[:, a:b] = state.xflat[:, :, a:b].transpose(1, 2)

        return run_input


@dataclass(eq=False, kw_only=True)
class ConvOp(Op):
    """A convolution: one gather of its taps (index table) and one matmul; a 1x1 one reads rows."""

    kind: ClassVar[str] = "conv"
    conv: CachedConv
    layer: str = ""  # the layer's class, for messages

    def runner(self, state: CacheState, j: int) -> Runner:
        write = state.writer(j)
        weight, bias = self.conv.weights()
        weight_t = weight.t().contiguous()  # F.linear's (C_out, T * C_in) layout
        cin, taps, bsz = self.conv.in_channels, self.conv.taps, state.batch
        if self.conv.identity:
            read = state.reader(self.inputs[0])
            return lambda a, b, vals: write(a, b, vals, F.linear(read(a, b, vals), weight_t, bias))
        idx, src = state.index(j, 0), state.buffers[self.inputs[0]]

        def run_conv(a: int, b: int, vals: dict) -> None:
            cols = torch.index_select(src, 1, idx[a * taps : b * taps]).view(bsz, b - a, taps * cin)
            write(a, b, vals, F.linear(cols, weight_t, bias))

        return run_conv

    def check(self, x: Tensor, want: Tensor) -> None:
        """The cached convolution must reproduce the layer's output `want` on its input `x`."""
        rows = torch.cat([x.flatten(2).transpose(1, 2), x.new_zeros(1, 1, x.shape[1])], 1)[0]  # (Q+1, C)
        table = np.where(self.conv.table < 0, rows.shape[0] - 1, self.conv.table)
        cols = rows[torch.as_tensor(table, device=x.device)].reshape(table.shape[0], -1)
        weight, bias = self.conv.weights()
        got = (cols @ weight + bias).T.reshape(want.shape)
        tol = 1e-3 * (1 + float(want.abs().max()))  # float round-off of deep nets, far below a wrong layer
        if not torch.allclose(got, want, atol=tol, rtol=0):
            err = float((got - want).abs().max())
            raise UnsupportedLayer(f"{self.name}: the cached version of {self.layer} does not reproduce its forward "
                                   f"(max error {err:.3g})")


@dataclass(eq=False)
class GatherOp(Op):
    """A shift (F.pad, spatial slicing): one gather through its index table."""

    kind: ClassVar[str] = "gather"

    def runner(self, state: CacheState, j: int) -> Runner:
        write = state.writer(j)
        idx, src = state.index(j, 0), state.buffers[self.inputs[0]]
        return lambda a, b, vals: write(a, b, vals, torch.index_select(src, 1, idx[a:b]))


@dataclass(eq=False, kw_only=True)
class ChannelSliceOp(Op):
    """x[:, start:stop:step], x.chunk(..)[k], x.split(..)[k] of one map: a view of its rows."""

    kind: ClassVar[str] = "pointwise"
    start: int
    stop: int
    step: int = 1

    def runner(self, state: CacheState, j: int) -> Runner:
        write, read0 = state.writer(j), state.reader(self.inputs[0])
        if self.step == 1:
            start, size = self.start, self.stop - self.start
            return lambda a, b, vals: write(a, b, vals, read0(a, b, vals).narrow(-1, start, size))
        index = (Ellipsis, slice(self.start, self.stop, self.step))
        return lambda a, b, vals: write(a, b, vals, read0(a, b, vals)[index])


@dataclass(eq=False, kw_only=True)
class PointwiseOp(Op):
    """Any other per-position operation (activations, gates, sums, channel cat, class biases):
    the traced call, run as traced on rows (channel-dim arguments re-aimed at the last dim,
    (B, C, 1, 1) constants at (B, 1, C))."""

    kind: ClassVar[str] = "pointwise"
    node: fx.Node  # the traced call (or the pick from a tuple it made)
    tuple_node: fx.Node | None = None  # call producing a tuple, of which `node` picks element `pick`
    pick: int | None = None
    slots: dict[fx.Node, int] = field(default_factory=dict)  # data node -> index into `inputs`
    consts: list[fx.Node] = field(default_factory=list)  # static maps read position by position

    def runner(self, state: CacheState, j: int) -> Runner:
        write = state.writer(j)
        reads = [state.reader(i) for i in self.inputs] + [state.const_reader(n) for n in self.consts]
        const_slot = {n: len(self.inputs) + k for k, n in enumerate(self.consts)}
        call = self.tuple_node if self.tuple_node is not None else self.node

        def sub(n: fx.Node) -> Any:
            if n in self.slots:
                return _Slot(self.slots[n])
            if n in const_slot:
                return _Slot(const_slot[n])
            return state.rows_constant(state.static[n])

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
            target: Callable = _functional(state.plan.gm.get_submodule(str(call.target)))
        elif call.op == "call_method":
            name = str(call.target)

            def target(self_: Tensor, *a: Any, **kw: Any) -> Any:
                return getattr(self_, name)(*a, **kw)
        else:
            target = call.target  # type: ignore[assignment]
        pick = self.pick
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


@dataclass(eq=False, kw_only=True)
class AttentionOp(Op):
    """map_attention(attn, pattern, x, kv): the query at position q reads x at q and the key/value
    map at the positions its pattern allows (tables[1] holds the last one; -1: none)."""

    kind: ClassVar[str] = "attention"
    attn: nn.Module  # the MultiHeadAttention
    pattern: Any  # its AttentionPattern

    def runner(self, state: CacheState, j: int) -> Runner:
        """Queries of the positions computed now attend to a growing cache of projected keys/values.

        Keys/values are projected once per position of the key/value map, except where that map
        was recomputed in this call (a categorical head's earlier channels of the current pixel):
        from there on they are projected again.
        """
        write = state.writer(j)
        mha, bsz = self.attn, state.batch
        read_q, src = state.reader(self.inputs[0]), self.inputs[1]
        kv_buf = state.buffers[src]
        last = self.tables[1]
        assert last is not None
        upto = np.maximum.accumulate(last[:, 0]) + 1  # keys read by queries <= q
        heads, qk, vd = mha.heads, mha.qk_dim, mha.v_dim
        dev, dtype = kv_buf.device, kv_buf.dtype
        # zeros, not empty: a query with no allowed key attends to (masked) key 0 before it exists
        k_cache = torch.zeros(bsz, heads, self.size, qk // heads, device=dev, dtype=dtype)
        v_cache = torch.zeros(bsz, heads, self.size, vd // heads, device=dev, dtype=dtype)
        mask = self.pattern.dense().to(dev)
        projected = [0]  # keys [0, projected) are in the caches and current
        split = "b t (h d) -> b h t d"

        def run_attention(a: int, b: int, vals: dict) -> None:
            lo = min(projected[0], state.fresh.get(src, projected[0]))
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


# ----- helpers of the pointwise runner ------------------------------------------------------------


class _Slot:
    """Stands for the k-th value read (an input map or a static map) in a traced call's arguments."""

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


__all__ = ["Op", "InputOp", "ConvOp", "GatherOp", "ChannelSliceOp", "PointwiseOp", "AttentionOp", "Runner", "Writer"]
