"""The conformance suite of DESIGN.md, run over every registered model in its tiny config.

A new model gets all of it by registering; a model that needs an exception explains it here.
"""
from __future__ import annotations

import dataclasses
import itertools
import json

import pytest
import torch

import argen
from argen.fields import bad_values, undeclared_fields
from argen.positions import at, put
from argen.registry import get_entry, tiny_kwargs
from tests.helpers import cond_table, lp, make_tiny, model_keys, random_cond, random_images, tiny_shapes

NAMES = [n for n in argen.list_models() if get_entry(n).modality == "image"]  # video: test_video_conformance.py
MODELS = model_keys("image")  # every image model and each registered tiny variant ("image_transformer:full", ...)
CASES = [(name, shape, levels) for name in MODELS for shape, levels in tiny_shapes(name)]


def per_position(model) -> None:
    """Skip checks of one-position-at-a-time conditionals for a model that declares it does not
    generate position by position (the upscale ARDM: every stage-1 digit comes before any stage 2,
    so a pixel's later digits see later pixels); its normalization is checked over a whole space."""
    if not model.steps_by_position:
        pytest.skip(f"{type(model).__name__} with this config generates by stages, not positions")
IDS = [f"{n}-{'x'.join(map(str, s))}-L{lv}" for n, s, lv in CASES]


@pytest.mark.parametrize("name,shape,levels", CASES, ids=IDS)
def test_causality_pixels(name, shape, levels):
    """Changing pixels at or after position k leaves the log-probs before k unchanged (under the
    condition a conditioned model's tiny config takes, e.g. parti's captions: any cond)."""
    model = make_tiny(name, shape, levels)
    per_position(model)
    order = model.generation_order()
    x = random_images(model, 3)
    cond = random_cond(model, 3)
    base = lp(model, x, cond, reduce=False)
    for k in sorted({1, len(order) // 3, len(order) // 2, len(order) - 1}):
        y = x.clone()
        for pos in order[k:]:
            put(y, pos, torch.randint(0, levels, (3, shape[0])))
        out = lp(model, y, cond, reduce=False)
        for pos in order[:k]:
            torch.testing.assert_close(at(out, pos), at(base, pos), atol=1e-5, rtol=1e-5,
                                       msg=f"position {pos} (before k={k}) changed when later pixels changed")


@pytest.mark.parametrize("name,shape,levels", CASES, ids=IDS)
def test_earlier_pixels_matter(name, shape, levels):
    """Changing the first pixel changes some later conditional (the model is not blind)."""
    model = make_tiny(name, shape, levels)
    order = model.generation_order()
    x = random_images(model, 4)
    y = x.clone()
    put(y, order[0], (at(x, order[0]) + 1) % levels)
    a, b = lp(model, x, reduce=False), lp(model, y, reduce=False)
    diffs = [float((at(a, p) - at(b, p)).abs().max()) for p in order[1:]]
    assert max(diffs) > 1e-6, "no later position depends on the first pixel"


@pytest.mark.parametrize("name,shape,levels", CASES, ids=IDS)
def test_causality_subpixels(name, shape, levels):
    """Channel c's conditional at a position ignores channels >= c there and everything later.

    With one channel this is the direct check that a pixel does not see itself (mask A, not B).
    """
    model = make_tiny(name, shape, levels)
    per_position(model)
    order = model.generation_order()
    x = random_images(model, 3)
    cond = random_cond(model, 3)
    pos = order[len(order) // 2]
    base = cond_table(model, x, cond)
    for c_changed in range(shape[0]):
        y = x.clone()
        put(y, pos, (at(x, pos, channel=c_changed) + 1) % levels, channel=c_changed)
        out = cond_table(model, y, cond)
        for c in range(c_changed + 1):
            torch.testing.assert_close(at(out[:, c], pos), at(base[:, c], pos),
                                       atol=1e-5, rtol=1e-5, msg=f"channel {c} saw channel {c_changed}")


@pytest.mark.parametrize("name,shape,levels", CASES, ids=IDS)
def test_normalization_by_enumeration(name, shape, levels):
    """For a fixed prefix, exp(log p(pixel)) summed over every value of the pixel is 1."""
    model = make_tiny(name, shape, levels)
    per_position(model)
    order = model.generation_order()
    c = shape[0]
    values = torch.tensor(list(itertools.product(range(levels), repeat=c)))  # (L^C, C)
    cond = random_cond(model, 1)
    cond = None if cond is None else cond.repeat(len(values), *[1] * (cond.dim() - 1))
    for pos in (order[0], order[len(order) // 2], order[-1]):
        x = random_images(model, 1).repeat(len(values), *[1] * len(shape))
        put(x, pos, values)
        logp = at(lp(model, x, cond, reduce=False), pos)
        total = torch.logsumexp(logp.double(), 0)
        assert abs(float(total)) < 1e-4, f"pixel {pos} sums to exp({float(total)})"


@pytest.mark.parametrize("name", MODELS)
def test_bruteforce_normalization(name):
    """Every image of a tiny space: the probabilities sum to exactly 1 (to at most 1 for a model
    that declares its log_prob a bound in every order, `exact_in_order = False`: ImageBART)."""
    for shape, levels in (((1, 2, 2), 4), ((1, 4, 4), 2), ((1, 8, 8), 2)):
        model = make_tiny(name, shape, levels)
        if model is not None and levels ** (shape[1] * shape[2]) <= 2 ** 16:
            break
    else:
        pytest.skip(f"{name} takes no image space small enough to enumerate")
    n_dims = shape[1] * shape[2]
    grid = torch.tensor(list(itertools.product(range(levels), repeat=n_dims))).view(-1, *shape)
    lps = torch.cat([lp(model, chunk).double() for chunk in grid.split(4096)])
    total = float(torch.logsumexp(lps, 0))
    if model.exact_in_order:
        assert abs(total) < 1e-4
    else:
        assert total < 1e-4, f"a lower bound summed to exp({total}) > 1 over the space"


@pytest.mark.parametrize("name,shape,levels", CASES, ids=IDS)
def test_sampling(name, shape, levels):
    model = make_tiny(name, shape, levels)
    s1 = model.sample(3, generator=torch.Generator().manual_seed(7))
    s2 = model.sample(3, generator=torch.Generator().manual_seed(7))
    assert s1.shape == (3, *shape) and s1.dtype == torch.long
    assert int(s1.min()) >= 0 and int(s1.max()) < levels
    assert torch.equal(s1, s2), "same seed gave different samples"
    s3 = model.sample(3, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(s1, s3)


def conditioned_tiny(name: str, shape: tuple[int, ...], levels: int):
    """The model with a condition: its tiny config when that takes one already (parti: captions),
    else built with num_classes=3 (class labels)."""
    model = make_tiny(name, shape, levels)
    return model if model.cond_spec.conditional else make_tiny(name, shape, levels, num_classes=3)


@pytest.mark.parametrize("name", MODELS)
def test_conditional(name):
    """The condition changes the likelihood (labels, or whatever `cond_spec` declares), and
    sampling takes it."""
    shape, levels = tiny_shapes(name)[0]
    model = conditioned_tiny(name, shape, levels)
    assert model.cond_spec.conditional, f"{name} built with num_classes=3 declares no condition"
    x = random_images(model, 3)
    y = random_cond(model, 3, torch.Generator().manual_seed(1))
    other = y.roll(1, 0)
    assert not torch.equal(y, other)
    with torch.no_grad():
        for p in model.parameters():  # untrained class biases are zero: make them matter
            p.add_(0.1 * torch.randn_like(p))
    a = lp(model, x, y)
    assert a.shape == (3,)
    assert not torch.allclose(a, lp(model, x, other))
    s = model.sample(3, y, generator=torch.Generator().manual_seed(0))
    assert s.shape == (3, *shape)


@pytest.mark.parametrize("name", MODELS)
def test_complete_keeps_known(name):
    shape, levels = tiny_shapes(name)[0]
    model = make_tiny(name, shape, levels)
    x = random_images(model, 2)
    known = torch.zeros(shape[1:], dtype=torch.bool)
    known[: shape[1] // 2] = True
    out = model.complete(x, known, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[:, :, known], x[:, :, known])
    assert out.dtype == torch.long and int(out.max()) < levels


@pytest.mark.parametrize("name", MODELS)
def test_save_load_roundtrip(name, tmp_path):
    shape, levels = tiny_shapes(name)[-1]
    model = make_tiny(name, shape, levels)
    x = random_images(model, 2)
    argen.save(model, tmp_path / "run")
    loaded = argen.load(tmp_path / "run").eval()
    assert type(loaded) is type(model) and loaded.config == model.config
    torch.testing.assert_close(lp(loaded, x), lp(model, x), atol=0, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_training_lowers_loss(name):
    shape, levels = tiny_shapes(name)[0]
    model = make_tiny(name, shape, levels).train()
    # structured data (each image one flat value) so that a few steps can make progress
    x = (torch.arange(8) % levels).view(8, 1, 1, 1).expand(8, *shape).contiguous()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = float(model.loss(x).detach())
    for _ in range(30):
        opt.zero_grad()
        loss = model.loss(x)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        last = float(model.loss(x))
    assert last < first - 0.05, f"loss {first:.3f} -> {last:.3f}"


@pytest.mark.parametrize("name", MODELS)
def test_bad_inputs_raise_value_error(name):
    shape, levels = tiny_shapes(name)[0]
    model = make_tiny(name, shape, levels)
    x = random_images(model, 2)
    with pytest.raises(ValueError, match="torch.long"):
        model.log_prob(x.float())
    with pytest.raises(ValueError, match="shape"):
        model.log_prob(x[:, :, :-1])
    with pytest.raises(ValueError, match=r"values in \[0"):
        model.log_prob(x + levels)
    with pytest.raises(ValueError, match="cond"):
        model.log_prob(x, torch.tensor([0, 1]))  # built without classes


@pytest.mark.parametrize("name,shape,levels", CASES, ids=IDS)
def test_own_sampler_matches_naive(name, shape, levels):
    """A model's own (cached or parallel) sampler draws exactly what the naive reference draws.

    The naive reference walks `generation_order()`; models whose fast path takes an `order` (ARDM
    draws a random one per example by default) are given that order.
    """
    model = make_tiny(name, shape, levels)
    per_position(model)  # the naive reference walks positions
    own = {"order": model.generation_order()} if model.capabilities.sample_orders else {}
    cond = random_cond(model, 2)
    a = model.sample(2, cond, generator=torch.Generator().manual_seed(5), **own)
    b = model.sample(2, cond, generator=torch.Generator().manual_seed(5), naive=True)
    assert torch.equal(a, b)
    known = torch.zeros(shape[1:], dtype=torch.bool)
    known[: shape[1] // 2] = True
    c = model.complete(a, known, cond, generator=torch.Generator().manual_seed(6), **own)
    d = model.complete(a, known, cond, generator=torch.Generator().manual_seed(6), naive=True)
    assert torch.equal(c, d)


@pytest.mark.parametrize("name", MODELS)
def test_bad_sampling_arguments_raise_value_error(name):
    """Every public argument is checked, also where a model overrides sample / complete."""
    shape, levels = tiny_shapes(name)[0]
    model = make_tiny(name, shape, levels)
    x = random_images(model, 2)
    known = torch.zeros(shape[1:], dtype=torch.bool)
    with pytest.raises(ValueError, match="reduce must be True or False, given 'no'"):
        lp(model, x, reduce="no")
    for n in (True, 0, 2.0):
        with pytest.raises(ValueError, match=f"n must be an integer >= 1, given {n!r}"):
            model.sample(n)
    bad = [(dict(temperature=float("nan")), "temperature must be a finite number > 0, given nan"),
           (dict(temperature=float("inf")), "temperature"), (dict(temperature=0.0), "temperature"),
           (dict(top_k=2.5), r"top_k must be None or an integer >= 1, given 2\.5"), (dict(top_k=True), "top_k"),
           (dict(top_k=0), "top_k"), (dict(top_p=2), r"top_p must be None or a finite number in \(0, 1\], given 2"),
           (dict(top_p=0.0), "top_p"), (dict(top_p=float("nan")), "top_p"),
           (dict(generator=5), "generator must be None or a torch.Generator, given 5"),
           (dict(progress="yes"), "progress"), (dict(naive=1), "naive")]
    for kw, match in bad:
        with pytest.raises(ValueError, match=match):
            model.sample(1, **kw)
        with pytest.raises(ValueError, match=match):
            model.complete(x, known, **kw)


# ----- configuration fields ------------------------------------------------------------------------
FIELDS = [(name, f.name) for name in NAMES for f in dataclasses.fields(get_entry(name).cls.config_class)]


@pytest.mark.parametrize("name", NAMES)
def test_config_fields_declared(name):
    """Every numeric or string config field declares its type and range with `spec` (bools may omit it)."""
    assert undeclared_fields(get_entry(name).cls.config_class) == []


@pytest.mark.parametrize("name,field", FIELDS, ids=[f"{n}-{f}" for n, f in FIELDS])
def test_bad_config_values_raise_value_error(name, field):
    """Wrong types and just-out-of-range values of every field: a ValueError that names the field."""
    shape, levels = tiny_shapes(name)[0]
    kw = {**tiny_kwargs(name), "image_shape": shape, "levels": levels}
    for bad in bad_values(get_entry(name).cls.config_class, field):
        with pytest.raises(ValueError, match=f"model\\.{field}\\b"):
            argen.create_model(name, **{**kw, field: bad})


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)], ids=["grey28", "rgb32"])
def test_default_config_is_valid_and_round_trips(name, shape):
    """The default hyperparameters work for MNIST- and CIFAR-shaped data, and survive JSON (config.json)."""
    cls = get_entry(name).cls.config_class
    cfg = cls(image_shape=shape)
    cfg.validate()
    again = cls(**json.loads(json.dumps(cfg.to_dict())))
    again.validate()
    assert again == cfg
