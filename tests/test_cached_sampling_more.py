"""Cached sampling for PixelSNAIL (cached attention over a growing key/value buffer) and LMConv
(any generation order, per-mask completion orders): same samples as the naive sampler from the
same random draws, same parameters at every step up to float round-off."""
from __future__ import annotations

import pytest
import torch

from argen.sampling.cached import CachedStepper, UnsupportedLayer, build_plan
from argen.sampling.conv_plan import AttentionOp
from argen.sampling.naive import NaiveStepper, autoregressive_fill
from tests.test_cached_sampling import Recorder, assert_same, make

CASES = [
    # name, (C, H, W), levels, classes, batch, extra config
    ("pixelsnail", (1, 5, 6), 2, None, 1, {}),
    ("pixelsnail", (1, 8, 8), 4, 3, 3, {}),
    ("pixelsnail", (3, 4, 4), 256, 3, 3, {}),
    ("lmconv", (1, 5, 6), 2, None, 1, {"head": "categorical"}),
    ("lmconv", (1, 8, 8), 256, 3, 3, {"order": "raster", "variant": 3}),
    ("lmconv", (3, 4, 4), 4, 3, 3, {}),
]


def build(name, shape, levels, classes, extra):
    if not extra:
        return make(name, shape, levels, classes)
    import argen
    from argen.registry import tiny_kwargs

    torch.manual_seed(0)
    m = argen.create_model(name, image_shape=shape, levels=levels, num_classes=classes,
                           **{**tiny_kwargs(name), **extra}).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


@pytest.mark.parametrize("name,shape,levels,classes,batch,extra", CASES)
def test_cached_sampling_matches_naive(name, shape, levels, classes, batch, extra):
    m = build(name, shape, levels, classes, extra)
    cond = torch.arange(batch) % classes if classes else None
    y = assert_same(m, torch.zeros((batch, *shape), dtype=torch.long), None, cond)
    assert y.min() >= 0 and y.max() < levels and y.float().std() > 0


def test_pixelsnail_completion_matches_naive():
    m = make("pixelsnail", (3, 6, 5), 4, 3)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 4, (3, 3, 6, 5), generator=g)
    known = torch.rand(3, 6, 5, generator=g) < 0.5
    known[:, :2] = True  # skipped steps: keys/values of the known rows are projected in one pass
    cond = torch.tensor([0, 2, 1])
    y = assert_same(m, x, known, cond, seed=3)
    keep = known[:, None].expand_as(x)
    assert torch.equal(y[keep], x[keep])


@pytest.mark.parametrize("name", ["pixelsnail", "lmconv"])
def test_sample_and_complete_use_the_cache(name):
    m = make(name, (1, 6, 6), 4)
    assert isinstance(m.stepper(None), CachedStepper)
    a = m.sample(2, generator=torch.Generator().manual_seed(7))
    b = m.sample(2, generator=torch.Generator().manual_seed(7), naive=True)
    assert torch.equal(a, b)
    known = torch.zeros(2, 6, 6, dtype=torch.bool)
    known[0, :3] = True
    known[1, :, 2:] = True  # two masks: LMConv completes each group in its own order
    c = m.complete(a, known, generator=torch.Generator().manual_seed(8))
    d = m.complete(a, known, generator=torch.Generator().manual_seed(8), naive=True)
    assert torch.equal(c, d)
    assert torch.equal(c[0, :, :3], a[0, :, :3]) and torch.equal(c[1, :, :, 2:], a[1, :, :, 2:])


def test_lmconv_completion_order_steps_match_naive():
    """Step by step in the known-first completion order: identical draws, parameters within 1e-4."""
    m = make("lmconv", (1, 8, 8), 4, 3)
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 4, (3, 1, 8, 8), generator=g)
    mask = torch.rand(8, 8, generator=g) < 0.4
    known = mask.expand(3, 8, 8)
    order = m.completion_order(mask)
    positions = [tuple(p) for p in order.tolist()]
    first = torch.tensor(positions[: int(mask.sum())])
    assert bool(mask[first[:, 0], first[:, 1]].all())  # known pixels first
    cond = torch.tensor([1, 0, 2])
    out = []
    for stepper in (NaiveStepper(m, cond, order=order), CachedStepper(m, cond, order)):
        rec = Recorder(stepper)
        with torch.no_grad():
            y = autoregressive_fill(m, x.clone(), known, cond, rec, generator=torch.Generator().manual_seed(5),
                                    order=positions)
        out.append((y, torch.stack(rec.params)))
    (yn, pn), (yc, pc) = out
    torch.testing.assert_close(pc, pn, rtol=1e-4, atol=1e-4)
    assert torch.equal(yc, yn) and torch.equal(yc[:, :, mask], x[:, :, mask])


def test_lmconv_steps_out_of_order_are_refused():
    m = make("lmconv", (1, 5, 6), 4)
    s = CachedStepper(m, None)
    order = m.generation_order()
    x = torch.zeros(1, 1, 5, 6, dtype=torch.long)
    s.params_at(x, order[4], 0)
    with pytest.raises(ValueError, match="generation order"):
        s.params_at(x, order[2], 0)


def test_wrong_order_is_refused():
    """A plan for an order the network was not built for is not causal: refused, never wrong."""
    m = make("pixelcnn", (1, 5, 6), 4)
    with pytest.raises(UnsupportedLayer, match="order"):
        CachedStepper(m, None, order=torch.tensor([(i, j) for j in range(6) for i in range(5)]))
    lm = make("lmconv", (1, 5, 6), 4)
    with pytest.raises(ValueError, match="each of the 5x6 pixels once"):
        CachedStepper(lm, None, order=[(0, 0)] * 30)


def test_pixelsnail_plan_has_cached_attention():
    m = make("pixelsnail", (1, 5, 6), 4)
    plan = build_plan(m, False)
    assert sum(isinstance(op, AttentionOp) for op in plan.ops) == m.config.n_blocks
    assert sum(op.kind == "attention" for op in plan.ops) == m.config.n_blocks
