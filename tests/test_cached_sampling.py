"""Cached sampling must reproduce naive sampling: same samples from the same random draws, and the
same distribution parameters at every step (up to float round-off), for every cached model."""
from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import argen
from argen.distributions import Categorical
from argen.models.base import ARModel, ModelConfig
from argen.nn import MaskedConv2d, scale_input
from argen.registry import tiny_kwargs
from argen.sampling.cached import CachedStepper, UnsupportedLayer, build_plan
from argen.sampling.naive import NaiveStepper, autoregressive_fill

CACHED = ["pixelcnn", "gated_pixelcnn", "pixelcnn_pp"]


def make(name: str, shape: tuple[int, int, int], levels: int, classes: int | None = None) -> ARModel:
    """Tiny model with every parameter perturbed, so class biases and all paths matter."""
    torch.manual_seed(0)
    m = argen.create_model(name, image_shape=shape, levels=levels, num_classes=classes, **tiny_kwargs(name)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


class Recorder:
    """Wraps a stepper and keeps a copy of every parameter vector it hands out."""

    def __init__(self, inner) -> None:
        self.inner, self.params = inner, []

    def params_at(self, x: Tensor, pos, channel: int) -> Tensor:
        p = self.inner.params_at(x, pos, channel)
        self.params.append(p.clone())
        return p

    def skip(self, x: Tensor, pos) -> None:
        self.inner.skip(x, pos)


def fill_both(m: ARModel, x: Tensor, known: Tensor | None, cond: Tensor | None, seed: int = 0):
    out = []
    for stepper in (NaiveStepper(m, cond), CachedStepper(m, cond)):
        rec = Recorder(stepper)
        with torch.no_grad():
            y = autoregressive_fill(m, x.clone(), known, cond, rec, generator=torch.Generator().manual_seed(seed))
        out.append((y, torch.stack(rec.params)))
    return out


def assert_same(m, x, known=None, cond=None, seed=0):
    (xn, pn), (xc, pc) = fill_both(m, x, known, cond, seed)
    assert pn.shape == pc.shape
    torch.testing.assert_close(pc, pn, rtol=1e-4, atol=1e-4)
    assert torch.equal(xc, xn)
    return xc


CASES = [
    # name, (C, H, W), levels, classes, batch
    ("pixelcnn", (1, 5, 6), 2, None, 1),
    ("pixelcnn", (1, 8, 8), 4, 3, 3),
    ("pixelcnn", (3, 8, 8), 4, 3, 3),
    ("pixelcnn", (1, 28, 28), 256, None, 1),
    ("gated_pixelcnn", (1, 5, 6), 2, None, 3),
    ("gated_pixelcnn", (3, 8, 8), 256, 3, 1),
    ("gated_pixelcnn", (1, 28, 28), 4, 5, 3),
    ("pixelcnn_pp", (1, 8, 8), 2, None, 3),
    ("pixelcnn_pp", (3, 8, 8), 256, 3, 3),
    ("pixelcnn_pp", (1, 20, 20), 4, None, 1),  # quarter resolution 5x5: odd coarse sizes
]


@pytest.mark.parametrize("name,shape,levels,classes,batch", CASES)
def test_cached_sampling_matches_naive(name, shape, levels, classes, batch):
    m = make(name, shape, levels, classes)
    cond = torch.arange(batch) % classes if classes else None
    x = torch.zeros((batch, *shape), dtype=torch.long)
    y = assert_same(m, x, None, cond)
    assert y.min() >= 0 and y.max() < levels and y.float().std() > 0


@pytest.mark.parametrize("name", CACHED)
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 8, 8)])
def test_cached_completion_matches_naive(name, shape):
    """Known pixels are skipped (the cache catches up later in one batched pass)."""
    m = make(name, shape, 4, 3)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 4, (3, *shape), generator=g)
    known = torch.rand(3, 8, 8, generator=g) < 0.5
    known[:, :3] = True  # whole rows known: several skipped steps in a row
    known[1, 5:] = True  # one example fully known below row 5 while the others are not
    cond = torch.tensor([0, 2, 1])
    y = assert_same(m, x, known, cond, seed=3)
    keep = known[:, None].expand_as(x)
    assert torch.equal(y[keep], x[keep])


@pytest.mark.parametrize("name", CACHED)
def test_sample_and_complete_use_the_cache(name):
    m = make(name, (1, 8, 8), 4)
    assert isinstance(m.stepper(None), CachedStepper)
    a = m.sample(2, generator=torch.Generator().manual_seed(7))
    b = m.sample(2, generator=torch.Generator().manual_seed(7), naive=True)
    assert torch.equal(a, b)
    known = torch.zeros(8, 8, dtype=torch.bool)
    known[:4] = True
    c = m.complete(a, known, generator=torch.Generator().manual_seed(8))
    d = m.complete(a, known, generator=torch.Generator().manual_seed(8), naive=True)
    assert torch.equal(c, d) and torch.equal(c[:, :, :4], a[:, :, :4])


@pytest.mark.parametrize("name", CACHED)
def test_class_conditional_model_sampled_without_labels(name):
    m = make(name, (1, 8, 8), 4, classes=3)
    assert_same(m, torch.zeros(2, 1, 8, 8, dtype=torch.long), None, None)


def test_weights_changed_after_first_sampling_are_used():
    """The plan is memoized per model, the weights are read afresh for every sampling run."""
    m = make("gated_pixelcnn", (1, 5, 6), 4)
    m.sample(1)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(-1.5)
    assert_same(m, torch.zeros(2, 1, 5, 6, dtype=torch.long))


def test_out_of_order_steps_are_refused():
    m = make("pixelcnn", (1, 5, 6), 4)
    s = CachedStepper(m, None)
    x = torch.zeros(1, 1, 5, 6, dtype=torch.long)
    s.params_at(x, (1, 0), 0)
    with pytest.raises(ValueError, match="raster order"):
        s.params_at(x, (0, 3), 0)


class _Toy(ARModel):
    """A model whose forward is given as a function (to test what the cache refuses)."""

    config_class = ModelConfig

    def __init__(self, body: str) -> None:
        super().__init__(ModelConfig(image_shape=(1, 6, 6), levels=4))
        self.distribution = Categorical(1, 4)
        self.conv = MaskedConv2d(1, 4, 3, "A")
        self.plain = nn.Conv2d(4, 4, 3, padding=1)
        self.body = body

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        h = self.conv(scale_input(x, 4))
        if self.body == "plain_conv":  # sees the future: not causal
            return self.plain(h)
        return torch.cumsum(h, dim=3)  # a spatial op with no cached version


@pytest.mark.parametrize("body,match", [("plain_conv", "not causal"), ("cumsum", "no cached version")])
def test_unsupported_graphs_are_refused(body, match):
    with pytest.raises(UnsupportedLayer, match=match):
        build_plan(_Toy(body), with_cond=False)


def test_row_streams_are_computed_a_row_at_a_time():
    """Gated PixelCNN's vertical stack needs only rows above: each of its maps is computed in
    whole rows (one call per row), the horizontal stack once per pixel."""
    m = make("gated_pixelcnn", (1, 5, 6), 4)
    plan = build_plan(m, with_cond=False)
    v_conv = [i for i, op in enumerate(plan.ops) if op.name.endswith("v_conv")]
    h_conv = [i for i, op in enumerate(plan.ops) if op.name.endswith("h_conv")]
    assert v_conv and h_conv
    calls = lambda i: sum(1 for step in plan.first for j, _, _ in step if j == i)  # noqa: E731
    sizes = lambda i: {b - a for step in plan.first for j, a, b in step if j == i}  # noqa: E731
    for i in v_conv:
        assert calls(i) <= 5 and sizes(i) <= {6}
    for i in h_conv:
        assert calls(i) == 30 and sizes(i) == {1}


@pytest.mark.parametrize("name", CACHED)
def test_grey_models_compute_each_position_once(name):
    """No wasted work: with one channel nothing is recomputed, every map position is computed by
    exactly one step, and the final step has computed all the last parameters need."""
    m = make(name, (1, 8, 8), 4)
    plan = build_plan(m, with_cond=False)
    total = [0] * len(plan.ops)
    for step in plan.first:
        for i, a, b in step:
            total[i] += b - a
    assert total == plan.needed[:, -1].tolist()
    assert all(n <= op.size for n, op in zip(total, plan.ops))


def test_pixelcnn_pp_coarse_maps_wait_for_their_inputs():
    """A half-resolution ul map entry (i, j) reads fine pixels up to (2i, 2j): it is computed at
    that step, so only on even rows and columns; the u stream (rows above) once per two rows."""
    m = make("pixelcnn_pp", (1, 8, 8), 4)
    plan = build_plan(m, with_cond=False)
    steps = {op.name: [t for t, step in enumerate(plan.first) if any(j == i for j, _, _ in step)]
             for i, op in enumerate(plan.ops)}
    assert steps["down_ul_conv_0"] == [r * 8 + c for r in (0, 2, 4, 6) for c in (0, 2, 4, 6)]
    assert steps["down_u_conv_0"] == [0, 16, 32, 48]
