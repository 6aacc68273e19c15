"""Checking of model hyperparameters and of the public sampling / likelihood arguments.

Regression tests for values that used to be accepted (and failed later, or silently did the wrong
thing); the conformance suite runs the generic checks over every registered model.
"""
from __future__ import annotations

import math

import pytest
import torch

import argen
from argen.fields import bad_values
from argen.models.base import ModelConfig
from argen.registry import build_config, tiny_kwargs
from argen.sampling.ardm_sampler import OrderStepper
from argen.sampling.logits import check_sampling_options, process_logits, top_p_filter
from argen.sampling.naive import NaiveStepper, autoregressive_fill


def tiny(name, shape=(1, 4, 4), levels=4, **kw):
    return argen.create_model(name, image_shape=shape, levels=levels, **{**tiny_kwargs(name), **kw}).eval()


# ----- hyperparameters ---------------------------------------------------------------------------
@pytest.mark.parametrize("kw,match", [
    (dict(hidden=0), r"model\.hidden: expected >= 1, given 0"),
    (dict(head=0), r"model\.head: expected >= 1, given 0"),
    (dict(n_blocks=-3), r"model\.n_blocks: expected >= 0, given -3"),
    (dict(hidden="8"), r"model\.hidden: expected an integer, given '8'"),
    (dict(hidden=12.0), r"model\.hidden: expected an integer, given 12\.0"),
    (dict(levels=16.5), r"model\.levels: expected an integer, given 16\.5"),
    (dict(levels=True), r"model\.levels: expected an integer, given True"),
    (dict(image_shape=(1, 2.5, 8)), r"model\.image_shape: expected an integer, given 2\.5"),
    (dict(image_shape=(1, 8)), r"model\.image_shape: expected 3 values"),
    (dict(num_classes=0), r"model\.num_classes: expected >= 1, given 0"),
    (dict(first_kernel=float("nan")), r"model\.first_kernel"),
])
def test_pixelcnn_bad_hyperparameters(kw, match):
    with pytest.raises(ValueError, match=match):
        argen.create_model("pixelcnn", **{"image_shape": (1, 8, 8), **kw})


def test_config_values_are_not_converted():
    """build_config keeps what it is given (no int() truncation); JSON lists become tuples."""
    assert build_config("pixelcnn", image_shape=[1, 8, 8]).image_shape == (1, 8, 8)
    cfg = build_config("pixelcnn", image_shape=(1, 2.5, 8))
    assert cfg.image_shape == (1, 2.5, 8)
    with pytest.raises(ValueError, match="image_shape"):
        cfg.validate()
    lm = build_config("lmconv", dilations=[1, 2])
    assert lm.dilations == (1, 2)
    with pytest.raises(ValueError, match=r"model\.dilations: expected an integer, given 1\.5"):
        argen.create_model("lmconv", dilations=(1.5, 2))


@pytest.mark.parametrize("name,kw,match", [
    ("ardm", dict(attention="bogus"), r"model\.attention: expected true or false, given 'bogus'"),
    ("ardm", dict(attention=1), r"model\.attention"),
    ("ardm", dict(channel_mults=()), r"model\.channel_mults: expected at least 1"),
    ("ardm", dict(step_loss_decay=float("nan")), r"model\.step_loss_decay"),
    ("gated_pixelcnn", dict(skip="no"), r"model\.skip"),
    ("image_transformer", dict(attention="global"), r"model\.attention: expected one of"),
    ("lmconv", dict(order="zigzag"), r"model\.order: expected one of"),
    ("lmconv", dict(variant=8), r"model\.variant: expected >= 0 and <= 7, given 8"),
    ("pixelsnail", dict(dropout=1.0), r"model\.dropout: expected >= 0\.0 and < 1\.0, given 1\.0"),
    ("pixelcnn_pp", dict(filters=-1), r"model\.filters"),
])
def test_other_models_bad_hyperparameters(name, kw, match):
    with pytest.raises(ValueError, match=match):
        argen.create_model(name, **{"image_shape": (1, 8, 8), **kw})


def test_cross_field_rules_still_apply():
    with pytest.raises(ValueError, match="divisible by 6"):
        argen.create_model("pixelcnn", image_shape=(3, 8, 8), hidden=8)
    with pytest.raises(ValueError, match="first_kernel must be odd"):
        argen.create_model("pixelcnn", first_kernel=4)
    with pytest.raises(ValueError, match="channels must be 1 or 3, given 2"):
        argen.create_model("pixelcnn", image_shape=(2, 8, 8), hidden=8, head=8)
    with pytest.raises(ValueError, match="divisible by n_heads"):
        argen.create_model("image_transformer", d_model=10, n_heads=4)


def test_bad_values_cover_tuple_lengths():
    values = bad_values(ModelConfig, "image_shape")
    assert (0, 0) in values  # one value too few
    assert (0, 0, 0) in values and (2.5, 2.5, 2.5) in values  # bad elements at the right length


# ----- PixelRNN defaults for RGB -----------------------------------------------------------------
@pytest.mark.parametrize("name", ["pixelrnn_row", "pixelrnn_diag"])
def test_pixelrnn_default_sizes_follow_the_channels(name, tmp_path):
    grey = argen.create_model(name, image_shape=(1, 28, 28))
    assert (grey.config.hidden, grey.config.head) == (64, 256)  # unchanged
    rgb = argen.create_model(name, image_shape=(3, 32, 32))  # CIFAR-10 with the default config
    assert (rgb.config.hidden, rgb.config.head) == (66, 258)
    assert rgb.config.to_dict()["hidden"] == 66
    with pytest.raises(ValueError, match="divisible by 3"):  # a size given explicitly is not rounded
        argen.create_model(name, image_shape=(3, 32, 32), hidden=64)
    small = argen.create_model(name, image_shape=(3, 4, 4), levels=4, n_layers=1).eval()
    argen.save(small, tmp_path / "run")
    loaded = argen.load(tmp_path / "run").eval()
    assert loaded.config == small.config
    x = torch.randint(0, 4, (2, 3, 4, 4))
    torch.testing.assert_close(loaded.log_prob(x), small.log_prob(x), atol=0, rtol=0)


# ----- sampling options --------------------------------------------------------------------------
def test_check_sampling_options():
    check_sampling_options(1.0, None, None, None)
    check_sampling_options(2, 1, 1, torch.Generator())
    check_sampling_options(0.5, 3, 0.9)
    for kw, match in [
        (dict(temperature=float("nan")), "temperature must be a finite number > 0, given nan"),
        (dict(temperature=float("inf")), "temperature must be a finite number > 0, given inf"),
        (dict(temperature=-1.0), "given -1.0"),
        (dict(temperature="1"), "given '1'"),
        (dict(temperature=True), "given True"),
        (dict(top_k=2.5), r"top_k must be None or an integer >= 1, given 2\.5"),
        (dict(top_k=False), "top_k"),
        (dict(top_p=2), r"top_p must be None or a finite number in \(0, 1\], given 2"),
        (dict(top_p=float("inf")), "top_p"),
        (dict(top_p=0), "top_p"),
        (dict(generator=5), "generator must be None or a torch.Generator, given 5"),
    ]:
        with pytest.raises(ValueError, match=match):
            check_sampling_options(**kw)


def test_logit_filters_and_the_generic_loop_check_too():
    logits = torch.randn(2, 4)
    with pytest.raises(ValueError, match="top_p"):
        top_p_filter(logits, 2)
    with pytest.raises(ValueError, match="temperature"):
        process_logits(logits, float("nan"))
    model = tiny("pixelcnn")
    x = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="temperature"):
        autoregressive_fill(model, x, None, None, NaiveStepper(model, None), temperature=math.nan)


def test_nan_temperature_is_refused_not_white():
    model = tiny("pixelcnn")
    with pytest.raises(ValueError, match="temperature"):
        model.sample(1, temperature=float("nan"))


# ----- ARDM: the naive path is the sequential reference ----------------------------------------
def test_ardm_naive_runs_the_order_stepper(monkeypatch):
    model = tiny("ardm", shape=(3, 2, 3))
    calls = []
    original = OrderStepper.params_at

    def spy(self, x, pos, channel):
        calls.append((pos, channel))
        return original(self, x, pos, channel)

    monkeypatch.setattr(OrderStepper, "params_at", spy)
    naive = model.sample(2, generator=torch.Generator().manual_seed(1), naive=True)
    order = model.generation_order()
    assert calls == [(p, c) for p in order for c in range(3)]  # one call per sub-pixel, in generation_order()
    calls.clear()
    fast = model.sample(2, generator=torch.Generator().manual_seed(1), order=order)
    assert not calls and torch.equal(fast, naive)
    # the default fast path draws its own random order per example: not what naive=True walks
    assert not torch.equal(model.sample(2, generator=torch.Generator().manual_seed(1)), naive)
    known = torch.zeros(2, 3, dtype=torch.bool)
    known[0] = True
    naive_c = model.complete(naive, known, generator=torch.Generator().manual_seed(2), naive=True)
    assert calls == [(p, c) for p in order if p[0] == 1 for c in range(3)]
    assert torch.equal(naive_c[:, :, 0], naive[:, :, 0])
    fast_c = model.complete(naive, known, generator=torch.Generator().manual_seed(2), order=order)
    assert torch.equal(fast_c, naive_c)


def test_ardm_naive_refusals():
    model = tiny("ardm", shape=(1, 2, 2))
    with pytest.raises(ValueError, match="steps"):
        model.sample(1, naive=True, steps=4)
    with pytest.raises(ValueError, match="steps"):
        model.sample(1, steps=True)
    with pytest.raises(ValueError, match="one order for the whole batch"):
        model.sample(2, naive=True, order=torch.tensor([[[0, 0], [0, 1], [1, 0], [1, 1]]] * 2))
    upscale = tiny("ardm", shape=(1, 2, 2), levels=16, upscale_bits=2)
    with pytest.raises(ValueError, match="upscale"):
        upscale.sample(1, naive=True)
    with pytest.raises(ValueError, match="max_batch"):
        model.log_prob(torch.zeros(1, 1, 2, 2, dtype=torch.long), order=model.generation_order(), max_batch=True)


def test_tiny_temperature_is_greedy_not_nan():
    from argen.sampling.logits import draw, process_logits

    logits = torch.tensor([[0.0, 3.0, 1.0], [50.0, -20.0, 49.0]])
    out = process_logits(logits, temperature=1e-45)
    assert not out.isnan().any()
    assert draw(out, torch.tensor([0.0, 0.999])).tolist() == [1, 0]
    # a shift per row changes nothing else: the same distribution as plain division
    torch.testing.assert_close(process_logits(logits, 0.5).softmax(-1), (logits / 0.5).softmax(-1))
