"""Fast steppers for the attention and recurrent models (Image Transformer, PixelRNN): with the same
random draws they must give the naive sampler's samples, and its per-step conditionals up to float
round-off, for every attention kind, size, channel count, level count, batch, class and mask."""
from __future__ import annotations

import pytest
import torch
from torch import Tensor

import argen
from argen.models.base import ARModel
from argen.positions import at
from argen.registry import tiny_kwargs
from argen.sampling.naive import NaiveStepper, autoregressive_fill
from argen.sampling.recurrent_cache import RecurrentStepper
from argen.sampling.transformer_cache import CacheWindow, TransformerStepper

# (model name, extra hyperparameters): every attention kind; PixelRNNs two layers deep (so a layer
# reads the previous one's carried states) and one with a 5x5 first layer (wider input patch)
VARIANTS = {
    "full": ("image_transformer", dict(attention="full")),
    "local1d": ("image_transformer", dict(attention="local1d")),
    "local2d": ("image_transformer", dict(attention="local2d")),
    "row": ("pixelrnn_row", dict(n_layers=2)),
    "diag": ("pixelrnn_diag", dict(n_layers=2, first_kernel=5)),
}
# (shape, levels) pairs covering 2 / 4 / 256 levels, 1 and 3 channels, non-square sizes
SHAPES = [((1, 5, 6), 2), ((1, 8, 8), 4), ((3, 6, 5), 256)]


def make(variant: str, shape: tuple[int, int, int], levels: int, classes: int | None = None) -> ARModel:
    """Tiny model with every parameter perturbed, so that class embeddings and all paths matter and
    the conditionals are far from uniform."""
    name, extra = VARIANTS[variant]
    torch.manual_seed(0)
    m = argen.create_model(name, image_shape=shape, levels=levels, num_classes=classes,
                           **{**tiny_kwargs(name), **extra}).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


class Recorder:
    """Wraps a stepper and keeps the conditional (B, L) of every step it serves."""

    def __init__(self, model: ARModel, inner) -> None:
        self.model, self.inner, self.tables = model, inner, []

    def params_at(self, x: Tensor, pos, channel: int) -> Tensor:
        p = self.inner.params_at(x, pos, channel)
        pixel = at(x, pos)
        self.tables.append(self.model.distribution.conditionals(p, pixel)[:, channel].clone())
        return p

    def skip(self, x: Tensor, pos) -> None:
        self.inner.skip(x, pos)


def assert_same(m: ARModel, x: Tensor, known: Tensor | None = None, cond: Tensor | None = None,
                seed: int = 0) -> Tensor:
    out = []
    for stepper in (NaiveStepper(m, cond), m.stepper(cond)):
        rec = Recorder(m, stepper)
        with torch.no_grad():
            y = autoregressive_fill(m, x.clone(), known, cond, rec, generator=torch.Generator().manual_seed(seed))
        out.append((y, torch.stack(rec.tables)))
    (yn, tn), (yc, tc) = out
    assert tn.shape == tc.shape
    torch.testing.assert_close(tc, tn, rtol=1e-4, atol=1e-4)
    assert torch.equal(yc, yn)
    return yc


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("shape,levels", SHAPES)
@pytest.mark.parametrize("batch,classes", [(1, None), (3, 3)])
def test_fast_sampling_matches_naive(variant, shape, levels, batch, classes):
    m = make(variant, shape, levels, classes)
    assert isinstance(m.stepper(None), (TransformerStepper, RecurrentStepper))
    cond = torch.arange(batch) % classes if classes else None
    y = assert_same(m, torch.zeros((batch, *shape), dtype=torch.long), cond=cond)
    assert y.min() >= 0 and y.max() < levels and y.float().std() > 0


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 6, 5)])
def test_fast_completion_matches_naive(variant, shape):
    """Known pixels are skipped (whole rows, single pixels, and per example), then filled around."""
    _, h, w = shape
    m = make(variant, shape, 4, 3)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 4, (3, *shape), generator=g)
    known = torch.rand(3, h, w, generator=g) < 0.5
    known[:, :2] = True  # whole rows known: several skipped steps in a row (one prefill chunk)
    known[1, 4:] = True  # one example fully known below row 4 while the others are not
    known[:, -1, -1] = False
    cond = torch.tensor([0, 2, 1])
    y = assert_same(m, x, known, cond, seed=3)
    keep = known[:, None].expand_as(x)
    assert torch.equal(y[keep], x[keep])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_sample_and_complete_use_the_fast_stepper(variant):
    m = make(variant, (3, 6, 5), 4)
    a = m.sample(2, generator=torch.Generator().manual_seed(7))
    b = m.sample(2, generator=torch.Generator().manual_seed(7), naive=True)
    assert torch.equal(a, b)
    known = torch.zeros(6, 5, dtype=torch.bool)
    known[:3] = True
    c = m.complete(a, known, generator=torch.Generator().manual_seed(8))
    d = m.complete(a, known, generator=torch.Generator().manual_seed(8), naive=True)
    assert torch.equal(c, d) and torch.equal(c[:, :, :3], a[:, :, :3])


# ----- the work each stepper does -----------------------------------------------------------------
@pytest.mark.parametrize("variant", ["full", "local1d", "local2d"])
def test_transformer_computes_each_slot_once_within_its_window(variant):
    """Sampling decodes one slot per call; completion prefills a known prefix in one call; each
    call attends to a slice of the caches no wider than the pattern allows."""
    m = make(variant, (3, 6, 5), 4)
    n = m.pattern.length
    window = CacheWindow(m.pattern)
    dense = m.pattern.dense()
    assert torch.equal(window.first, dense.int().argmax(1))
    calls: list[tuple[int, int, int]] = []  # (start, slots, window width)
    trunk = m.trunk

    def spy(h, caches=None, start=0, pattern=None):
        calls.append((start, h.shape[1], pattern.end - pattern.lo))
        return trunk(h, caches, start, pattern)

    m.trunk = spy
    m.sample(1, generator=torch.Generator().manual_seed(0))
    assert [(s, t) for s, t, _ in calls] == [(s, 1) for s in range(n)]
    widest = int((torch.arange(n) - window.first + 1).max())  # a query's last allowed key is itself
    assert max(wd for _, _, wd in calls) == widest
    if variant != "full":
        assert widest < n
    calls.clear()
    known = torch.zeros(6, 5, dtype=torch.bool)
    known[:2] = True
    m.complete(torch.zeros(1, 3, 6, 5, dtype=torch.long), known)
    rank = {p: r for r, p in enumerate(m.generation_order())}
    prefix = min(rank[(i, j)] for i in range(6) for j in range(5) if not known[i, j]) * 3
    assert calls[0][:2] == (0, prefix + 1)
    assert sum(t for _, t, _ in calls) == n


@pytest.mark.parametrize("variant", ["row", "diag"])
def test_recurrent_stepper_computes_one_column_per_layer_and_step(variant):
    """O(n_layers) per pixel: each layer computes one column per (pixel, channel) step and runs its
    end-of-row pass once per finished row, never a whole map."""
    c, h, w = 3, 6, 5
    m = make(variant, (c, h, w), 4)
    counts = {"column": 0, "end_row": 0}
    real_steps = m.raster_steps

    def raster_steps(cond, batch):  # the model's per-step API, with each layer's steps counted
        steps = real_steps(cond, batch)
        for layer in steps.layers:
            for what in counts:
                fn = getattr(layer, what)

                def counted(*a, _fn=fn, _what=what):
                    counts[_what] += 1
                    return _fn(*a)

                setattr(layer, what, counted)
        return steps

    m.raster_steps = raster_steps
    stepper = m.stepper(None)
    with torch.no_grad():
        autoregressive_fill(m, torch.zeros(2, c, h, w, dtype=torch.long), None, None, stepper,
                            generator=torch.Generator().manual_seed(0))
    assert counts == {"column": 2 * h * w * c, "end_row": 2 * (h - 1)}


# ----- misuse -------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["local2d", "row"])
def test_out_of_order_and_mismatched_calls_are_refused(variant):
    m = make(variant, (1, 5, 6), 4)
    s = m.stepper(None)
    order = m.generation_order()
    x = torch.zeros(1, 1, 5, 6, dtype=torch.long)
    s.params_at(x, order[7], 0)
    with pytest.raises(ValueError, match="order"):
        s.params_at(x, order[3], 0)
    with pytest.raises(ValueError, match="expected"):
        s.params_at(x, (9, 0), 0)
    with pytest.raises(ValueError, match="channel"):
        s.params_at(x, order[8], 1)
    with pytest.raises(ValueError, match="batch"):
        s.params_at(torch.zeros(2, 1, 5, 6, dtype=torch.long), order[8], 0)
