"""The conv planner (argen.sampling.conv_plan) on its own: N-d index tables, every causal layer's
`causal_spec()`, the fx leaf registry, and a 3-D causal stack planned position by position in
(t, h, w) raster order against the full forward pass."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from argen.nn import CausalSpec, MaskedConv2d, MaskedConv3d, causal_kernel_mask, causal_spec, channel_group_mask
from argen.nn.attention import map_attention
from argen.nn.gated import HorizontalMaskedConv2d
from argen.nn.locally_masked import LocallyMaskedConv2d, OrderMasks
from argen.nn.shifted import (
    DownRightShiftedConv2d,
    DownRightShiftedConvTranspose2d,
    DownShiftedConv2d,
    DownShiftedConvTranspose2d,
)
from argen.nn.util import FX_LEAF_FUNCTIONS, FX_LEAF_MODULES
from argen.sampling.conv_plan import (
    CacheState,
    ConvOp,
    GatherOp,
    UnsupportedLayer,
    plan_network,
)
from argen.sampling.conv_plan.ops import ChannelSliceOp
from argen.sampling.conv_plan.tables import cached_conv, conv_table, raster_index, shift_table


def _apply(spec: CausalSpec, x: Tensor, out_shape: tuple[int, ...]) -> Tensor:
    """A layer computed from its spec alone: gather through the table, one matmul."""
    conv = cached_conv(spec, tuple(x.shape[2:]), out_shape)
    rows = torch.cat([x.flatten(2).transpose(1, 2), x.new_zeros(x.shape[0], 1, x.shape[1])], 1)
    table = torch.as_tensor(np.where(conv.table < 0, rows.shape[1] - 1, conv.table))
    cols = rows[:, table].reshape(x.shape[0], table.shape[0], -1)
    w, b = conv.weights()
    return (cols @ w + b).transpose(1, 2).reshape(x.shape[0], -1, *out_shape)


def _layers():
    torch.manual_seed(0)
    masks = OrderMasks()
    masks.set_order(torch.randperm(30).view(5, 6))
    return [
        (MaskedConv2d(3, 6, 5, "A", groups=3), (3, 5, 6)),
        (MaskedConv2d(4, 4, 1, "B"), (4, 5, 6)),
        (DownShiftedConv2d(2, 4, (2, 3), stride=2), (2, 5, 6)),
        (DownRightShiftedConv2d(2, 4, (2, 2)), (2, 5, 6)),
        (HorizontalMaskedConv2d(3, 6, 3, "A", 3, halves=2), (3, 5, 6)),
        (DownShiftedConvTranspose2d(2, 3, (2, 3), stride=2), (2, 3, 3)),
        (DownRightShiftedConvTranspose2d(2, 3, (2, 2), stride=2), (2, 3, 3)),
        (LocallyMaskedConv2d(2, 3, 3, dilation=2, include_centre=False, masks=masks), (2, 5, 6)),
        (MaskedConv3d(2, 4, (3, 3, 5), "A"), (2, 3, 4, 5)),
        (nn.Conv3d(2, 3, (2, 1, 3), stride=(1, 2, 1), padding=(1, 0, 1)), (2, 3, 4, 5)),
        (nn.Conv2d(2, 3, 3, padding="same", dilation=2), (2, 5, 6)),
    ]


@pytest.mark.parametrize("layer,shape", _layers(), ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else "")
def test_causal_spec_reproduces_the_layer(layer, shape):
    """Every causal layer in nn/ (and a plain torch convolution) describes its forward exactly."""
    with torch.no_grad():
        x = torch.randn(2, *shape)
        want = layer(x)
        got = _apply(causal_spec(layer), x, tuple(want.shape[2:]))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_masked_taps_are_dropped_and_leaves_registered():
    spec = MaskedConv2d(1, 4, 7, "A").causal_spec()
    assert spec.taps is not None and len(spec.taps) == 24  # 3 rows of 7 + 3 to the left
    spec3 = MaskedConv3d(1, 4, 3, "A").causal_spec()
    assert spec3.taps is not None and len(spec3.taps) == 13  # 9 in the frame before, 3 above, 1 left
    assert all(tap < (1, 1, 1) for tap in spec3.taps)
    assert nn.Conv3d in FX_LEAF_MODULES and nn.ConvTranspose2d in FX_LEAF_MODULES
    assert map_attention in FX_LEAF_FUNCTIONS


def test_causal_kernel_mask_is_the_2d_mask_in_2d():
    for mask_type, centre in (("A", None), ("B", None), ("A", (0, 2))):
        want = channel_group_mask(6, 3, 3 if centre is None else 1, 3, mask_type, 3, centre)
        kernel = (3, 3) if centre is None else (1, 3)
        assert torch.equal(causal_kernel_mask(6, 3, kernel, mask_type, 3, centre), want)
    m = causal_kernel_mask(3, 3, (3, 3, 3), "B", 3)
    assert m[:, :, 0].all() and m[:, :, 1, 0].all() and m[:, :, 1, 1, 0].all()  # earlier frame, row, pixel
    assert not m[:, :, 1, 1, 2].any() and not m[:, :, 2].any()  # later
    assert torch.equal(m[:, :, 1, 1, 1], torch.tril(torch.ones(3, 3)))  # centre: groups j <= i


def test_a_conv_subclass_without_spec_is_refused():
    class Odd(nn.Conv2d):
        def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
            return super().forward(x.flip(-1))

    with pytest.raises(ValueError, match="causal_spec"):
        causal_spec(Odd(1, 1, 1))


def test_nd_tables():
    """Raster indices over any number of dims; conv and shift tables in 3-D."""
    assert raster_index([np.array([0, 1, 2]), np.array([1, 2, 0]), np.array([3, 0, 4])], (2, 3, 5)).tolist() == \
        [0 * 15 + 1 * 5 + 3, 1 * 15 + 2 * 5 + 0, -1]
    t = conv_table((2, 2, 3), (2, 2, 3), [(0, 0, 0), (1, 1, 1)], (1, 1, 1), (1, 1, 1), (1, 1, 1))
    assert t[0].tolist() == [-1, 0] and t[-1].tolist() == [(0 * 2 + 0) * 3 + 1, (1 * 2 + 1) * 3 + 2]  # out (1, 1, 2)
    s = shift_table((3, 2, 2), (3, 2, 2), (-1, 0, 0))  # one frame later: frame t reads frame t-1
    assert s[:4, 0].tolist() == [-1] * 4 and s[4:, 0].tolist() == list(range(8))


class Tiny3d(nn.Module):
    """A tiny causal video stack: masked 3-D convolutions (A, then B), a shift by one frame
    (F.pad + slicing), 1x1x1 convolutions, a gate and channel chunks/slices."""

    def __init__(self, causal: bool = True) -> None:
        super().__init__()
        self.a = MaskedConv3d(2, 8, 3, "A")
        self.b = MaskedConv3d(8, 8, (3, 3, 3), "B") if causal else nn.Conv3d(8, 8, 3, padding=1)
        self.c = MaskedConv3d(8, 8, (1, 3, 5), "B")
        self.prev = nn.Conv3d(8, 8, 1)
        self.out = nn.Conv3d(8, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.a(x))
        h = h + torch.tanh(self.b(h))
        prev = F.pad(h, (0, 0, 0, 0, 1, 0))[:, :, :-1]  # frame t-1 at (h, w)
        h = h + self.prev(prev) + self.c(h)
        a, b = h.chunk(2, dim=1)
        return self.out(torch.cat([a * torch.sigmoid(b), h[:, 4:]], 1))


def test_3d_causal_stack_matches_the_forward_position_by_position():
    torch.manual_seed(0)
    net = Tiny3d().eval()
    shape = (3, 4, 5)  # (T, H, W)
    x = torch.randn(2, 2, *shape)
    with torch.no_grad():
        want = net(x)
    plan = plan_network(net, x[:1])
    assert plan.shape == shape
    assert any(isinstance(op, ConvOp) and len(op.shape) == 3 and op.conv.taps == 13 for op in plan.ops)
    assert any(isinstance(op, GatherOp) for op in plan.ops) and any(isinstance(op, ChannelSliceOp) for op in plan.ops)
    positions = list(itertools.product(*(range(s) for s in shape)))
    noise = torch.randn_like(x)
    state = None
    with torch.no_grad():
        for t, pos in enumerate(positions):
            # only positions before t are known: whatever stands at t and after must not matter
            known = (torch.arange(len(positions)) < t).view(1, 1, *shape)
            xt = torch.where(known, x, noise)
            if state is None:
                state = CacheState(plan, xt, None)
            state.run(xt, plan.ranges(t, t - 1))
            torch.testing.assert_close(state.params(t), want[(slice(None), slice(None), *pos)], rtol=1e-4, atol=1e-4)


def test_3d_stack_that_sees_the_future_is_refused():
    with pytest.raises(UnsupportedLayer, match="not causal"):
        plan_network(Tiny3d(causal=False).eval(), torch.randn(1, 2, 2, 3, 3))


def test_a_wrong_spec_is_caught_by_the_build_time_check():
    class Lying(MaskedConv2d):
        def causal_spec(self) -> CausalSpec:
            spec = super().causal_spec()
            return CausalSpec(spec.weights, spec.in_channels, spec.out_channels, spec.kernel_size, spec.stride,
                              spec.dilation, (spec.padding[0] + 1, spec.padding[1]), taps=spec.taps)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = Lying(1, 2, 3, "A")

        def forward(self, x: Tensor) -> Tensor:
            return self.conv(x)

    with pytest.raises(UnsupportedLayer, match="does not reproduce"):
        plan_network(Net(), torch.randn(1, 1, 4, 4))


def test_model_files_register_no_fx_leaves():
    """Tracing knows its leaves from argen.nn; no model file talks to torch.fx."""
    from pathlib import Path

    models = Path(__file__).resolve().parents[1] / "src/argen/models"
    offenders = [p.name for p in models.rglob("*.py") if "fx.wrap" in p.read_text() or "torch.fx" in p.read_text()]
    assert offenders == []
