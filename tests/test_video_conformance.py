"""The video conformance suite: every registered video model with an exact likelihood (modality
"video", `exact_likelihood`, objective "likelihood"), in its tiny config at tiny video shapes.

Checks (DESIGN.md's suite over (t, h, w) positions): causality over `generation_order()` (changing
position k and everything after it leaves the conditionals before k unchanged; earlier pixels and
earlier frames do matter), normalization by enumerating one position's values (all channels),
the model's own sampler == the naive reference for `sample`, `complete` and `predict`, save/load,
bad inputs raise ValueError naming expected and given, a few training steps lower the loss.

Each check is a function of a model, so the suite also runs (and is shown to fail where it must)
on toy models defined here, before and besides the real families.
"""
from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from torch import nn

import argen
from argen.distributions import Categorical
from argen.fields import spec
from argen.models.base import ARModel, VideoModelConfig
from argen.positions import at, channels_first, put
from argen.registry import _REGISTRY, get_entry, register_model
from tests.helpers import cond_table, lp, make_tiny, model_keys, random_images, tiny_video_shapes


def _likelihood_video_keys() -> list[str]:
    """Video models with a likelihood to check. A model that declares objective "reconstruction"
    (frame_gan: a deterministic frame predictor, no log_prob, no sampler) has no conditionals to
    test for causality or normalization; tests/test_frame_gan.py covers its predict, save/load,
    bad inputs and training instead."""
    keys = []
    for key in model_keys("video"):
        cls = get_entry(key.partition(":")[0]).cls
        if getattr(cls, "exact_likelihood", True) and getattr(cls, "objective", "likelihood") == "likelihood":
            keys.append(key)
    return keys


VIDEO = _likelihood_video_keys()
CASES = [(key, shape, levels) for key in VIDEO for shape, levels in tiny_video_shapes(key)]
IDS = [f"{k}-{'x'.join(map(str, s))}-L{lv}" for k, s, lv in CASES]


# ----- the checks ----------------------------------------------------------------------------------
def _ks(n: int) -> list[int]:
    return sorted({1, n // 3, n // 2, n - 1} - {0})


def check_causality(model) -> None:
    """Perturbing position k and everything after it (in `generation_order()`) leaves every
    conditional before k unchanged; whole later frames likewise when the order goes frame by frame."""
    order, levels, c = model.generation_order(), model.levels, model.channels
    assert len(order) == len(set(order)) == len(list(itertools.product(*map(range, model.position_shape))))
    assert all(len(p) == 3 for p in order), "video positions are (t, h, w)"
    x = random_images(model, 3)
    base = lp(model, x, reduce=False)
    assert base.shape == (3, *model.position_shape)
    g = torch.Generator().manual_seed(1)
    for k in _ks(len(order)):
        y = x.clone()
        for pos in order[k:]:
            put(channels_first(y), pos, torch.randint(0, levels, (3, c), generator=g))
        out = lp(model, y, reduce=False)
        for pos in order[:k]:
            torch.testing.assert_close(at(out, pos), at(base, pos), atol=1e-5, rtol=1e-5,
                                       msg=f"position {pos} (before k={k}) changed when later pixels changed")
    frame_by_frame = [p[0] for p in order] == sorted(p[0] for p in order)
    if frame_by_frame:
        for t0 in range(1, model.data_shape[0]):
            y = x.clone()
            y[:, t0:] = torch.randint(0, levels, y[:, t0:].shape, generator=g)
            out = lp(model, y, reduce=False)
            torch.testing.assert_close(out[:, :t0], base[:, :t0], atol=1e-5, rtol=1e-5,
                                       msg=f"frames before {t0} changed when frames {t0}.. changed")


def check_earlier_matter(model) -> None:
    """The first pixel, and the first frame, change some later conditional (the model is not blind)."""
    order, levels = model.generation_order(), model.levels
    x = random_images(model, 4)
    a = lp(model, x, reduce=False)
    y = x.clone()
    put(channels_first(y), order[0], (at(channels_first(x), order[0]) + 1) % levels)
    b = lp(model, y, reduce=False)
    assert max(float((at(a, p) - at(b, p)).abs().max()) for p in order[1:]) > 1e-6, \
        "no later position depends on the first pixel"
    y = x.clone()
    y[:, 0] = (x[:, 0] + 1) % levels
    b = lp(model, y, reduce=False)
    assert float((a[:, 1:] - b[:, 1:]).abs().max()) > 1e-6, "no later frame depends on the first frame"


def check_subpixels(model) -> None:
    """Channel c's conditional at a position ignores channels >= c there (mask A, not B)."""
    order, levels = model.generation_order(), model.levels
    x = random_images(model, 3)
    pos = order[len(order) // 2]
    base = cond_table(model, x)
    for changed in range(model.channels):
        y = x.clone()
        cf = channels_first(y)
        put(cf, pos, (at(channels_first(x), pos, channel=changed) + 1) % levels, channel=changed)
        out = cond_table(model, y)
        for ch in range(changed + 1):
            torch.testing.assert_close(at(out[:, ch], pos), at(base[:, ch], pos), atol=1e-5, rtol=1e-5,
                                       msg=f"channel {ch} saw channel {changed} at {pos}")


def check_normalization(model) -> None:
    """For a fixed context, exp(log p) over every value of one position (all channels) sums to 1."""
    order, levels, c = model.generation_order(), model.levels, model.channels
    values = torch.tensor(list(itertools.product(range(levels), repeat=c)))  # (L^C, C)
    for pos in (order[0], order[len(order) // 2], order[-1]):
        x = random_images(model, 1).repeat(len(values), 1, 1, 1, 1)
        put(channels_first(x), pos, values)
        total = torch.logsumexp(at(lp(model, x, reduce=False), pos).double(), 0)
        assert abs(float(total)) < 1e-4, f"position {pos} sums to exp({float(total)})"


def check_sampling(model) -> None:
    s1 = model.sample(3, generator=torch.Generator().manual_seed(7))
    assert s1.shape == (3, *model.data_shape) and s1.dtype == torch.long
    assert int(s1.min()) >= 0 and int(s1.max()) < model.levels
    assert torch.equal(s1, model.sample(3, generator=torch.Generator().manual_seed(7))), "same seed, other samples"
    assert not torch.equal(s1, model.sample(3, generator=torch.Generator().manual_seed(8)))


def check_own_sampler_matches_naive(model) -> None:
    """sample, complete and predict draw exactly what the naive reference draws from one generator."""
    a = model.sample(2, generator=torch.Generator().manual_seed(5))
    b = model.sample(2, generator=torch.Generator().manual_seed(5), naive=True)
    assert torch.equal(a, b), "sample: own sampler != naive"
    t, _, h, w = model.data_shape
    known = torch.zeros(model.position_shape, dtype=torch.bool)
    known[: max(1, t // 2)] = True
    known[:, : h // 2] = True  # earlier frames and the top of every frame
    c = model.complete(a, known, generator=torch.Generator().manual_seed(6))
    d = model.complete(a, known, generator=torch.Generator().manual_seed(6), naive=True)
    assert torch.equal(c, d), "complete: own sampler != naive"
    assert torch.equal(channels_first(c)[:, :, known], channels_first(a)[:, :, known]), "complete changed known pixels"
    k = max(1, t - 1)
    if k < t:
        e = model.predict(a[:, :k], generator=torch.Generator().manual_seed(9))
        f = model.predict(a[:, :k], generator=torch.Generator().manual_seed(9), naive=True)
        assert e.shape == a.shape and torch.equal(e, f), "predict: own sampler != naive"
        assert torch.equal(e[:, :k], a[:, :k]), "predict changed the context frames"


def check_save_load(model, tmp_path) -> None:
    x = random_images(model, 2)
    argen.save(model, tmp_path / "run")
    loaded = argen.load(tmp_path / "run").eval()
    assert type(loaded) is type(model) and loaded.config == model.config
    torch.testing.assert_close(lp(loaded, x), lp(model, x), atol=0, rtol=0)
    torch.testing.assert_close(lp(loaded, x, reduce=False), lp(model, x, reduce=False), atol=0, rtol=0)


def check_bad_inputs(model) -> None:
    """Wrong dtype, wrong shape (an image batch too), out-of-range values: ValueError naming expected and given."""
    x = random_images(model, 2)
    shape = "x".join(map(str, x.shape))
    with pytest.raises(ValueError, match=r"(?s)expected.*torch\.long.*given.*float"):
        model.log_prob(x.float())
    for bad in (x[:, :, :, :-1], x[:, 0], x[:, :1].repeat(1, model.data_shape[0] + 1, 1, 1, 1)):
        given = str(tuple(bad.shape)).replace("(", r"\(").replace(")", r"\)")
        with pytest.raises(ValueError, match=rf"(?s)expected.*shape.*given.*{given}"):
            model.log_prob(bad)
    with pytest.raises(ValueError, match=r"(?s)expected values in \[0, .*given"):
        model.log_prob(x + model.levels)
    with pytest.raises(ValueError, match="expected"):
        model.predict(x, generator=torch.Generator())  # context as long as the clip: nothing to predict
    assert shape  # (the batch itself was fine)
    model.log_prob(x)


def check_training_lowers_loss(model) -> None:
    model.train()
    levels = model.levels
    x = (torch.arange(8) % levels).view(8, 1, 1, 1, 1).expand(8, *model.data_shape).contiguous()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = float(model.loss(x).detach())
    for _ in range(30):
        opt.zero_grad()
        model.loss(x).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        last = float(model.loss(x))
    assert last < first - 0.05, f"loss {first:.3f} -> {last:.3f}"


PER_MODEL = [check_causality, check_earlier_matter, check_subpixels, check_normalization, check_sampling,
             check_own_sampler_matches_naive, check_bad_inputs, check_training_lowers_loss]


# ----- over the registry (skipped, one test each, while no video model is registered) ----------------
@pytest.mark.parametrize("check", PER_MODEL, ids=[c.__name__ for c in PER_MODEL])
@pytest.mark.parametrize("key,shape,levels", CASES, ids=IDS)
def test_video_model(key, shape, levels, check):
    torch.manual_seed(0)
    check(make_tiny(key, shape, levels))


@pytest.mark.parametrize("key", VIDEO)
def test_video_save_load(key, tmp_path):
    shape, levels = tiny_video_shapes(key)[-1]
    check_save_load(make_tiny(key, shape, levels), tmp_path)


# ----- a toy video model, to show the suite works (and fails where it must) ------------------------
@dataclasses.dataclass
class ToyVideoConfig(VideoModelConfig):
    video_shape: tuple[int, int, int, int] = spec((3, 1, 4, 4), ge=1)
    leak: bool = False  # test only: also look at the same pixel of the NEXT frame (breaks causality)


class ToyVideo(ARModel):
    """Causal over (t, h, w) raster: each sub-pixel's logits depend on the previous position's value
    (same channel) and on the same pixel of the previous frame."""

    config_class = ToyVideoConfig

    def __init__(self, config: ToyVideoConfig) -> None:
        super().__init__(config)
        self.distribution = Categorical(self.channels, self.levels)
        self.prev = nn.Parameter(0.5 * torch.randn(self.levels + 1, self.levels))
        self.frame = nn.Parameter(0.5 * torch.randn(self.levels + 1, self.levels))

    def forward(self, x, cond=None):
        b, t, c, h, w = x.shape
        cf = channels_first(x)  # (B, C, T, H, W)
        flat = cf.reshape(b, c, -1)
        start = torch.full_like(flat[:, :, :1], self.levels)
        prev = torch.cat([start, flat[:, :, :-1]], 2).view(b, c, t, h, w)
        blank = torch.full_like(cf[:, :, :1], self.levels)
        other = torch.cat([cf[:, :, 1:], blank], 2) if self.config.leak else torch.cat([blank, cf[:, :, :-1]], 2)
        logits = self.prev[prev] + self.frame[other]  # (B, C, T, H, W, L)
        return logits.movedim(-1, 2).reshape(b, c * self.levels, t, h, w)


TOY = "_toy_video"


@pytest.fixture
def toy_registered():
    """ToyVideo registered as a video model under a test-only name, removed afterwards."""
    if TOY not in _REGISTRY:
        register_model(TOY, tiny={}, modality="video", description="test-only toy video model")(ToyVideo)
    yield TOY
    _REGISTRY.pop(TOY, None)


TOY_SHAPES = [((3, 1, 4, 4), 4), ((2, 3, 4, 4), 4)]


@pytest.mark.parametrize("shape,levels", TOY_SHAPES, ids=["grey", "rgb"])
def test_suite_passes_on_the_toy_video_model(toy_registered, shape, levels, tmp_path):
    assert get_entry(TOY).modality == "video" and TOY in model_keys("video") and TOY not in model_keys()
    assert TOY in _likelihood_video_keys()
    assert tiny_video_shapes(TOY)[0] == ((3, 1, 4, 4), 4)
    torch.manual_seed(0)
    model = make_tiny(TOY, shape, levels)
    assert model.position_shape == (shape[0], *shape[2:])
    for check in PER_MODEL:
        torch.manual_seed(0)
        check(make_tiny(TOY, shape, levels))
    check_save_load(model, tmp_path)


def test_the_causality_check_catches_a_model_that_sees_the_next_frame():
    leaky = ToyVideo(ToyVideoConfig(video_shape=(3, 1, 4, 4), levels=4, leak=True)).eval()
    with pytest.raises(AssertionError, match="changed"):
        check_causality(leaky)


def test_the_normalization_check_catches_unnormalized_log_probs(monkeypatch):
    model = ToyVideo(ToyVideoConfig(video_shape=(2, 1, 3, 3), levels=3)).eval()
    check_normalization(model)
    real = ARModel.log_prob
    monkeypatch.setattr(ToyVideo, "log_prob", lambda self, x, cond=None, reduce=True: real(self, x, cond, reduce) + 0.1)
    with pytest.raises(AssertionError, match="sums to"):
        check_normalization(model)


def test_the_sampler_check_catches_a_sampler_that_differs_from_naive(monkeypatch):
    model = ToyVideo(ToyVideoConfig(video_shape=(2, 1, 3, 3), levels=3)).eval()
    check_own_sampler_matches_naive(model)
    real = ARModel.sample

    def shifted(self, n, cond=None, config=None, **kw):
        out = real(self, n, cond, config, **kw)
        return out if kw.get("naive") else (out + 1) % self.levels

    monkeypatch.setattr(ToyVideo, "sample", shifted)
    with pytest.raises(AssertionError, match="sample"):
        check_own_sampler_matches_naive(model)


def test_the_blindness_check_catches_a_model_that_ignores_earlier_frames():
    model = ToyVideo(ToyVideoConfig(video_shape=(2, 1, 3, 3), levels=3)).eval()
    with torch.no_grad():
        model.prev.zero_()
        model.frame.zero_()
    with pytest.raises(AssertionError, match="depends on the first"):
        check_earlier_matter(model)


def test_image_suite_ignores_video_models(toy_registered):
    from tests.helpers import model_keys as keys

    assert TOY not in keys("image") and TOY in keys("video")
