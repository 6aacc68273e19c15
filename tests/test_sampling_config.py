"""SamplingConfig (one record for every sampler and command) and the capabilities models declare."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import argen
from argen.models.base import Capabilities
from argen.models.image.pixelcnn import PixelCNN
from argen.registry import get_entry, tiny_kwargs
from argen.sampling import SamplingConfig, autoregressive_fill, build_stepper, split_options, stepper_kinds
from argen.sampling.naive import NaiveStepper

DECLARED = {  # model -> (stepper kind, parallel_steps, sample_orders, any_order, order_ensembles, guidance)
    "pixelcnn": ("conv_plan", False, False, False, False, False),
    "gated_pixelcnn": ("conv_plan", False, False, False, False, False),
    "pixelcnn_pp": ("conv_plan", False, False, False, False, False),
    "pixelsnail": ("conv_plan", False, False, False, False, False),
    "lmconv": ("conv_plan", False, False, True, True, False),
    "pixelrnn_row": ("recurrent", False, False, False, False, False),
    "pixelrnn_diag": ("recurrent", False, False, False, False, False),
    "image_transformer": ("kv_cache", False, False, False, False, False),
    "ardm": ("ardm", True, True, False, False, False),
    "fvsbn": ("subpixel_state", False, False, False, False, False),
    "nade": ("subpixel_state", False, False, False, False, False),
    "made": ("naive", False, False, False, True, False),  # no cheaper exact sampler than a pass per sub-pixel
    "token_gpt": ("kv_cache", False, False, False, False, True),
    "imagebart": ("scales", False, False, False, False, False),  # top GPT, then one AR decoder per scale
    "parti": ("kv_cache", False, False, False, False, True),  # guidance through the null caption
    "iqvae": ("kv_cache", False, False, False, False, False),  # the condition prefix prefilled, then one code a step
    "vpn": ("frame_cache", False, False, False, False, False),
    "video_transformer": ("kv_cache", False, False, False, False, False),
    "multiscale_video": ("group", False, False, False, False, False),
    "videogpt": ("kv_cache", False, False, False, False, True),
    "harp": ("kv_cache", False, False, False, False, True),
    "lvt": ("kv_cache", False, False, False, False, False),
    "frame_gan": ("naive", False, False, False, False, False),  # a frame predictor: no likelihood to step
    "vqvae_video_pixelcnn": ("naive", False, False, False, False, False),  # small code volumes: the reference
}


def tiny(name: str, **kw):
    torch.manual_seed(0)
    if get_entry(name).modality == "video":
        return argen.create_model(name, **{"levels": 4, **tiny_kwargs(name), **kw})  # its tiny video_shape
    return argen.create_model(name, **{"image_shape": (1, 4, 4), "levels": 4, **tiny_kwargs(name), **kw})


def test_config_defaults_and_validation():
    c = SamplingConfig()
    assert (c.temperature, c.top_k, c.top_p, c.generator, c.progress, c.naive, c.cfg_scale) == \
        (1.0, None, None, None, False, False, 1.0)
    assert isinstance(SamplingConfig(temperature=2).temperature, float)
    for kw, match in [(dict(temperature=0.0), "temperature must be a finite number > 0"),
                      (dict(top_k=1.5), "top_k"), (dict(top_p=1.5), "top_p"), (dict(generator=3), "generator"),
                      (dict(progress=1), "progress must be True or False"), (dict(naive="yes"), "naive"),
                      (dict(cfg_scale=-1.0), "cfg_scale must be a finite number >= 0"),
                      (dict(cfg_scale=float("nan")), "cfg_scale"), (dict(cfg_scale=True), "cfg_scale")]:
        with pytest.raises(ValueError, match=match):
            SamplingConfig(**kw)
    with pytest.raises(dataclasses.FrozenInstanceError):  # frozen: share one config between calls safely
        c.temperature = 2.0  # type: ignore[misc]


def test_split_options_applies_keywords_over_a_config():
    base = SamplingConfig(temperature=0.5, top_k=3)
    config, rest = split_options(base, {"top_k": 2, "steps": 4})
    assert (config.temperature, config.top_k, rest) == (0.5, 2, {"steps": 4})
    assert split_options(None, {})[0] == SamplingConfig()
    with pytest.raises(ValueError, match="SamplingConfig"):
        split_options({"temperature": 1.0}, {})  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["pixelcnn", "pixelrnn_row", "image_transformer", "lmconv", "ardm"])
def test_config_and_keyword_forms_draw_the_same(name):
    m = tiny(name)
    a = m.sample(2, config=SamplingConfig(temperature=0.8, top_k=3, generator=torch.Generator().manual_seed(1)))
    b = m.sample(2, temperature=0.8, top_k=3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    x = m.sample(2, generator=torch.Generator().manual_seed(2))
    known = torch.zeros(4, 4, dtype=torch.bool)
    known[:2] = True
    c = m.complete(x, known, None, SamplingConfig(generator=torch.Generator().manual_seed(3), naive=name != "ardm"))
    d = m.complete(x, known, generator=torch.Generator().manual_seed(3), naive=name != "ardm")
    assert torch.equal(c, d) and torch.equal(c[:, :, :2], x[:, :, :2])


def test_every_registered_model_declares_its_capabilities():
    assert set(DECLARED) == set(argen.list_models())
    for name, (kind, steps, orders, any_order, ensembles, guidance) in DECLARED.items():
        caps = get_entry(name).cls.capabilities
        assert isinstance(caps, Capabilities) and kind in stepper_kinds()
        assert (caps.stepper_kind, caps.parallel_steps, caps.sample_orders, caps.any_order,
                caps.order_ensembles, caps.guidance) == (kind, steps, orders, any_order, ensembles, guidance)
        m = tiny(name)
        if getattr(type(m), "objective", "likelihood") != "likelihood":
            continue  # trained and evaluated by reconstruction (frame_gan): nothing to step
        # a model generating by stages or scales (steps_by_position False) has no per-position stepper
        assert m.own_stepper == m.has_own_stepper() == (kind != "naive" and m.steps_by_position)
        assert hasattr(m, "log_prob_ensemble") == ensembles


def test_upscale_ardm_has_no_own_stepper():
    m = tiny("ardm", upscale_bits=1)
    assert m.capabilities.stepper_kind == "ardm" and not m.own_stepper
    with pytest.raises(ValueError, match="samples by stages"):
        m.stepper(None)
    assert m.sample(1, steps=2).shape == (1, 1, 4, 4)  # its own sampler still works


def test_undeclared_options_and_guidance_are_refused():
    m = tiny("pixelcnn")
    with pytest.raises(TypeError, match="steps"):
        m.sample(1, steps=3)
    with pytest.raises(ValueError, match="cfg_scale must be 1.0 for model 'pixelcnn'.*null"):
        m.sample(1, cfg_scale=2.0)
    with pytest.raises(ValueError, match="cfg_scale"):
        tiny("ardm").sample(1, cfg_scale=0.5)
    assert m.sample(1, cfg_scale=1.0).shape == (1, 1, 4, 4)


def test_ardm_naive_is_the_sequential_reference():
    m = tiny("ardm")
    naive = m.sample(2, config=SamplingConfig(generator=torch.Generator().manual_seed(4), naive=True))
    fast = m.sample(2, generator=torch.Generator().manual_seed(4), order=m.generation_order())
    assert torch.equal(naive, fast)
    with pytest.raises(ValueError, match="steps=None with naive"):
        m.sample(1, naive=True, steps=3)


class _Guided(PixelCNN):  # a pixelcnn declaring a null condition (cond=None: no class bias)
    capabilities = Capabilities(stepper_kind="conv_plan", guidance=True)

    def null_cond(self, batch: int):
        return None


def test_classifier_free_guidance_for_a_model_that_declares_it():
    torch.manual_seed(0)
    m = _Guided(PixelCNN.config_class(image_shape=(1, 4, 4), levels=4, num_classes=3,
                                      **tiny_kwargs("pixelcnn"))).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.5 * torch.randn_like(p))
    cond = torch.tensor([0, 2])
    one = m.sample(2, cond, generator=torch.Generator().manual_seed(0), cfg_scale=1.0)
    assert torch.equal(one, m.sample(2, cond, generator=torch.Generator().manual_seed(0)))
    # scale 0 is the unconditional model exactly; cached and naive agree under guidance
    zero = m.sample(2, cond, generator=torch.Generator().manual_seed(0), cfg_scale=0.0)
    assert torch.equal(zero, m.sample(2, None, generator=torch.Generator().manual_seed(0)))
    g = m.sample(2, cond, generator=torch.Generator().manual_seed(0), cfg_scale=3.0)
    assert torch.equal(g, m.sample(2, cond, generator=torch.Generator().manual_seed(0), cfg_scale=3.0, naive=True))
    with pytest.raises(ValueError, match="uncond_stepper"):
        autoregressive_fill(m, torch.zeros(1, 1, 4, 4, dtype=torch.long), None, None, NaiveStepper(m, None),
                            config=SamplingConfig(cfg_scale=2.0))


def test_autoregressive_fill_takes_config_or_keywords_not_both():
    m = tiny("pixelcnn")
    x = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="either as config= or as keywords"):
        autoregressive_fill(m, x, None, None, build_stepper(m, None), config=SamplingConfig(), temperature=0.5)


def test_command_line_options_keep_a_models_declared_sampling_defaults():
    """Unset flags (None) keep HARP's top-k / LVT's temperature; given ones override them."""
    import argparse

    from argen.cli import _sampling_config
    from argen.sampling.config import config_over_defaults

    assert config_over_defaults({"top_k": 10}, top_k=None, temperature=None).top_k == 10
    assert config_over_defaults({"top_k": 10}, top_k=3).top_k == 3
    assert config_over_defaults(None, temperature=None).temperature == 1.0
    with pytest.raises(ValueError, match="SamplingConfig fields"):
        config_over_defaults({"beam": 2})
    args = argparse.Namespace(seed=0, temperature=None, top_k=None, top_p=None, naive=False, cfg_scale=1.0)
    for name, field, value in (("harp", "top_k", tiny("harp").sampling_defaults["top_k"]), ("lvt", "temperature", 0.9)):
        m = tiny(name)
        assert getattr(_sampling_config(m, args), field) == value
        given = argparse.Namespace(**{**vars(args), field: 2 if field == "top_k" else 1.5})
        assert getattr(_sampling_config(m, given), field) == (2 if field == "top_k" else 1.5)
