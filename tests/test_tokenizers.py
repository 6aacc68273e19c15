"""Tokenizer conformance over the registry (tiny configs), plus what each family adds.

Every registered tokenizer: encode/decode shapes, dtypes and ranges (grey and RGB, 2 and 256
levels); eval-mode determinism with no buffer changed; reconstruction error falling in a plain
training loop over the declared phases; save/load round trip; clear ValueErrors for bad input;
declared config fields.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

import argen
from argen.fields import bad_values, undeclared_fields
from argen.metrics.mnist_net import ASSET_PATH
from argen.tokenizers import (
    Tokenizer,
    create_tokenizer,
    get_tokenizer_entry,
    list_tokenizers,
    tiny_tokenizer_kwargs,
)
from argen.train.distributed import check_stats

NAMES = list_tokenizers("image")  # video tokenizers: tests/test_video_tokenizers.py


def tiny(name: str, shape=(1, 8, 8), levels: int = 256, **kw) -> Tokenizer:
    torch.manual_seed(0)
    return create_tokenizer(name, image_shape=shape, levels=levels, **{**tiny_tokenizer_kwargs(name), **kw})


def batch(shape=(1, 8, 8), levels: int = 256, n: int = 4, seed: int = 0) -> torch.Tensor:
    """Structured images (stripes and blobs at random offsets) so that training has something to learn."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    imgs = []
    for _ in range(n):
        fx, fy, ph = (torch.rand(3, generator=g) * torch.tensor([0.8, 0.8, 6.28])).tolist()
        img = torch.sin(xx * fx + yy * fy + ph)[None].expand(c, h, w) * torch.linspace(0.6, 1.0, c)[:, None, None]
        imgs.append(img)
    x = (torch.stack(imgs) + 1) / 2 * (levels - 1)
    return x.round().clamp(0, levels - 1).long()


def cond_of(tok: Tokenizer, x: torch.Tensor) -> dict:
    """{"cond": ...} for a tokenizer that trains on (image, condition) pairs (`uses_condition`: IQ-VAE),
    a condition made from the images themselves (their first channels at the condition's levels), else {}."""
    if not tok.uses_condition:
        return {}
    spec = tok.condition_spec
    return {"cond": x[:, : spec.image_shape[0]] * spec.levels // tok.levels}


def test_registry():
    assert NAMES == ["fsq", "iqvae", "vqgan", "vqvae"]
    for name in NAMES:
        entry = get_tokenizer_entry(name)
        assert entry.cls.model_name == name and entry.cls.kind == "tokenizer"
        assert entry.cls.objective == "reconstruction" and entry.description
    with pytest.raises(ValueError, match="unknown tokenizer 'nope'"):
        create_tokenizer("nope")
    with pytest.raises(ValueError, match=r"unknown hyperparameter\(s\) \['hidden'\]"):
        create_tokenizer("vqvae", hidden=3)


# ----- shapes, dtypes, ranges --------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 8, 8)], ids=["grey", "rgb"])
@pytest.mark.parametrize("levels", [2, 256])
def test_encode_decode_shapes_and_ranges(name, shape, levels):
    tok = tiny(name, shape, levels).eval()
    x = torch.randint(0, levels, (3, *shape))
    codes = tok.encode(x)
    h, w = tok.code_shape
    assert codes.shape == (3, h, w) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < tok.codebook_size
    assert tok.num_tokens == h * w and tok.num_dims == math.prod(shape)
    assert tok.image_shape == tok.data_shape == shape and tok.levels == levels
    assert not tok.cond_spec.conditional
    every = torch.arange(h * w).remainder(tok.codebook_size).view(1, h, w).repeat(2, 1, 1)
    every[1] = tok.codebook_size - 1
    for c in (codes, every):
        y = tok.decode(c)
        assert y.shape == (c.shape[0], *shape) and y.dtype == torch.long
        assert int(y.min()) >= 0 and int(y.max()) < levels
    assert torch.equal(tok.reconstruct(x), tok.decode(codes))


def test_mnist_default_config():
    """The default of every tokenizer is the MNIST one: 28x28 -> 7x7 grid, ~150k parameters."""
    for name in NAMES:
        tok = create_tokenizer(name)
        assert tok.image_shape == (1, 28, 28) and tok.code_shape == (7, 7) and tok.num_tokens == 49
        # the image's autoencoder: without VQ-GAN's discriminator and IQ-VAE's condition autoencoder
        n = sum(p.numel() for n_, p in tok.named_parameters() if not n_.startswith(("discriminator.", "cond_")))
        assert 120_000 < n < 180_000, (name, n)
    assert create_tokenizer("vqvae").codebook_size == 128 and create_tokenizer("fsq").codebook_size == 240


# ----- determinism ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_eval_mode_is_deterministic_and_changes_no_buffer(name):
    tok = tiny(name)
    x = batch()
    tok.train()  # give the codebook a data initialisation first
    for phase in tok.training_phases(0):
        tok.phase_loss(phase, x, 0, **cond_of(tok, x))
    _, stats = tok.phase_loss("model", x, 0, **cond_of(tok, x))
    tok.update_statistics(stats)
    tok.eval()
    before = {k: v.clone() for k, v in tok.named_buffers()}
    c1, c2 = tok.encode(x), tok.encode(x)
    assert torch.equal(c1, c2)
    assert torch.equal(tok.decode(c1), tok.decode(c2))
    tok.summarize(tok.eval_stats(x, **cond_of(tok, x)))
    tok.train()
    tok.encode(x)  # encode never updates statistics, in training mode either
    for k, v in tok.named_buffers():
        assert torch.equal(v, before[k]), k


# ----- training ------------------------------------------------------------------------------------
def train(tok: Tokenizer, x: torch.Tensor, steps: int, lr: float = 3e-3) -> list[dict[str, float]]:
    """The plain loop of the protocol: Adam per phase, phase_loss, then update_statistics once."""
    opts = {p: torch.optim.Adam(tok.phase_parameters(p), lr=lr) for p in tok.optimizer_phases}
    logs = []
    tok.train()
    for step in range(steps):
        stats: dict = {}
        for phase in tok.training_phases(step):
            loss, s = tok.phase_loss(phase, x, step, **cond_of(tok, x))
            check_stats(s, tok.model_name)  # {name: (sum, count)} of one shape, as the trainer sums them
            opts[phase].zero_grad(set_to_none=True)
            loss.backward()
            opts[phase].step()
            stats.update(s)
        tok.update_statistics(stats)
        logs.append({k: float(v[0].sum() / v[1].sum()) for k, v in stats.items() if v[0].dim() == 0})
    return logs


def recon_error(tok: Tokenizer, x: torch.Tensor) -> float:
    tok.eval()
    return tok.summarize(tok.eval_stats(x, **cond_of(tok, x)))["mse"]


@pytest.mark.parametrize("name", NAMES)
def test_reconstruction_improves_with_training(name):
    x = batch(n=8)
    tok = tiny(name)
    before = recon_error(tok, x)
    logs = train(tok, x, 50)
    after = recon_error(tok, x)
    assert after < 0.3 * before, (before, after)
    assert all(math.isfinite(v) for log in logs for v in log.values())
    assert "rec_mse" in logs[-1] and "perplexity" in logs[-1]
    summary = tok.summarize(check_stats(tok.eval_stats(x, **cond_of(tok, x)), name))
    assert {"mse", "psnr", "usage", "perplexity", "window_usage"} <= set(summary)
    assert summary["psnr"] == pytest.approx(-10 * math.log10(summary["mse"]))
    assert 0 < summary["usage"] <= 1 and 0 < summary["window_usage"] <= 1
    assert 1 <= summary["perplexity"] <= tok.codebook_size


@pytest.mark.parametrize("variant", [{"ema": False}, {"l2_normalize": True}], ids=["gradient-codebook", "l2-codes"])
def test_vqvae_variants_train(variant):
    x = batch(n=8)
    tok = tiny("vqvae", **variant)
    learned = any(p is tok.quantizer.embed for p in tok.phase_parameters("model"))
    assert learned == (not variant.get("ema", True))  # a gradient-trained codebook is in the optimizer
    before = recon_error(tok, x)
    train(tok, x, 50)
    assert recon_error(tok, x) < 0.3 * before
    if variant.get("l2_normalize"):
        torch.testing.assert_close(tok.quantizer.codebook().norm(dim=1), torch.ones(tok.codebook_size))


def test_vqvae_loss_is_reconstruction_plus_beta_commitment():
    tok = tiny("vqvae", commitment=0.7).train()
    x = batch()
    loss, stats = tok.phase_loss("model", x, 0)
    mean = {k: float(s / c) for k, (s, c) in stats.items() if s.dim() == 0}
    assert loss.item() == pytest.approx(mean["rec_loss"] + 0.7 * mean["commit"], rel=1e-5)
    assert stats["vq_counts"][0].shape == (tok.codebook_size,)
    assert stats["vq_sums"][0].shape == (tok.codebook_size, 4)
    assert "dead_restarted" in stats


def test_fsq_has_no_codebook_loss_or_statistics():
    tok = tiny("fsq").train()
    assert not tok.has_training_stats and tok.codebook_size == 12
    loss, stats = tok.phase_loss("model", batch(), 0)
    assert loss.item() == pytest.approx(float(stats["rec_loss"][0] / stats["rec_loss"][1]), rel=1e-6)
    assert not any(k.startswith("vq_") for k in stats)


@pytest.mark.parametrize("name", NAMES)
def test_phase_loss_under_bf16_autocast_keeps_the_quantizer_fp32(name):
    tok = tiny(name).train()
    seen = []
    tok.quantizer.register_forward_hook(lambda m, i, o: seen.append(o.z_q.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, stats = tok.phase_loss("model", batch(), 10**6, **cond_of(tok, batch()))
    loss.backward()
    assert seen == [torch.float32] and math.isfinite(loss.item())


# ----- VQ-GAN ---------------------------------------------------------------------------------------
def test_vqgan_phases_and_parameters():
    tok = tiny("vqgan", disc_start=5)
    assert tok.optimizer_phases == ("model", "disc")
    assert tok.training_phases(4) == ("model",) and tok.training_phases(5) == ("model", "disc")
    model, disc = tok.phase_parameters("model"), tok.phase_parameters("disc")
    ids = {id(p) for p in model} | {id(p) for p in disc}
    assert not {id(p) for p in model} & {id(p) for p in disc}
    assert ids == {id(p) for p in tok.parameters()}
    assert {id(p) for p in disc} == {id(p) for p in tok.discriminator.parameters()}
    with pytest.raises(ValueError, match="expected a phase in"):
        tok.phase_parameters("gen")


def test_vqgan_adversarial_term_only_from_disc_start():
    tok = tiny("vqgan", disc_start=3, disc_weight=0.8).train()
    x = batch()
    _, early = tok.phase_loss("model", x, 2)
    assert float(early["g_loss"][0]) == 0 and float(early["adaptive_weight"][0]) == 0
    loss, late = tok.phase_loss("model", x, 3)
    w = float(late["adaptive_weight"][0] / late["adaptive_weight"][1])
    assert w > 0
    # the weight is the gradient-norm ratio at the decoder's last layer, times disc_weight
    xf, recon, q = tok(x)
    rec = tok.reconstruction_loss(recon, xf)
    g = -tok.discriminator(recon).mean()
    last = tok.decoder.last_layer
    g_rec, = torch.autograd.grad(rec, last, retain_graph=True)
    g_adv, = torch.autograd.grad(g, last)
    assert w == pytest.approx(0.8 * float(g_rec.norm() / (g_adv.norm() + 1e-4)), rel=1e-4)
    mean = {k: float(s / c) for k, (s, c) in late.items() if s.dim() == 0}
    expected = mean["rec_loss"] + tok.config.commitment * mean["commit"] + w * mean["g_loss"]
    assert loss.item() == pytest.approx(expected, rel=1e-4)


def test_vqgan_disc_phase_reuses_the_stored_reconstruction():
    tok = tiny("vqgan", disc_start=0).train()
    x = batch()
    calls = []
    tok.decoder.register_forward_hook(lambda *a: calls.append(1))
    tok.phase_loss("model", x, 7)
    d_loss, stats = tok.phase_loss("disc", x, 7)
    assert len(calls) == 1  # no second decoder pass
    assert {"d_loss", "logits_real", "logits_fake"} <= set(stats)
    d_loss.backward()
    assert all(p.grad is not None for p in tok.discriminator.parameters())
    assert all(p.grad is None for p in tok.encoder.parameters())
    tok.phase_loss("disc", x, 8)  # another step: recomputed
    assert len(calls) == 2


def test_vqgan_perceptual_loss_only_with_a_weights_file(tmp_path):
    x = batch(shape=(1, 8, 8))
    _, stats = tiny("vqgan").train().phase_loss("model", x, 0)
    assert "perceptual" not in stats
    tok = tiny("vqgan", perceptual_weights=str(ASSET_PATH)).train()
    loss, stats = tok.phase_loss("model", x, 0)
    assert float(stats["perceptual"][0]) > 0
    assert not any("perceptual" in k for k in tok.state_dict())  # never saved
    loss.backward()
    missing = tiny("vqgan", perceptual_weights=str(tmp_path / "none.safetensors")).train()
    with pytest.raises(ValueError, match="no weights file"):
        missing.phase_loss("model", x, 0)


# ----- save / load ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip(name, tmp_path):
    x = batch(n=4)
    tok = tiny(name)
    train(tok, x, 3)
    tok.eval()
    argen.save(tok, tmp_path / "run")
    desc = json.loads((Path(tmp_path) / "run" / "config.json").read_text())
    assert desc["model"] == name
    again = argen.load(tmp_path / "run")
    assert isinstance(again, Tokenizer) and again.model_name == name
    again.eval()
    codes = tok.encode(x)
    assert torch.equal(again.encode(x), codes)
    assert torch.equal(again.decode(codes), tok.decode(codes))


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name):
    """What save/load rely on: a fresh tokenizer given the state dict encodes and decodes identically."""
    x = batch(n=4)
    tok = tiny(name)
    train(tok, x, 3)
    tok.eval()
    again = get_tokenizer_entry(name).cls(type(tok.config)(**json.loads(json.dumps(tok.config.to_dict()))))
    again.load_state_dict(tok.state_dict())
    again.eval()
    codes = tok.encode(x)
    assert torch.equal(again.encode(x), codes) and torch.equal(again.decode(codes), tok.decode(codes))


# ----- bad input ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs_raise_value_error(name):
    tok = tiny(name, levels=16).eval()
    x = torch.randint(0, 16, (2, 1, 8, 8))
    h, w = tok.code_shape
    with pytest.raises(ValueError, match="expected dtype torch.long.*given torch.float32"):
        tok.encode(x.float())
    with pytest.raises(ValueError, match=r"expected shape \(B, 1, 8, 8\), given \(2, 1, 8, 4\)"):
        tok.encode(x[..., :4])
    with pytest.raises(ValueError, match=r"expected values in \[0, 15\], given range \[0, 16\]"):
        tok.encode(x.clamp(max=15).index_fill(0, torch.tensor([0]), 16))
    with pytest.raises(ValueError, match=r"given range \[-1,"):
        tok.encode(x - 1)
    codes = tok.encode(x)
    with pytest.raises(ValueError, match=rf"expected codes in \[0, {tok.codebook_size - 1}\]"):
        tok.decode(codes + tok.codebook_size)
    with pytest.raises(ValueError, match=rf"expected codes of shape \(B, {h}, {w}\), given \(2, {h}, {w + 1}\)"):
        tok.decode(torch.zeros(2, h, w + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="expected codes of dtype torch.long"):
        tok.decode(codes.int())
    with pytest.raises(ValueError, match="expected shape"):
        tok.phase_loss("model", x[:, :, :4], 0)


def test_image_size_must_divide_by_the_downsampling_factor():
    with pytest.raises(ValueError, match=r"divisible by the downsampling factor 4.*given 30x28"):
        create_tokenizer("vqvae", image_shape=(1, 30, 28))


def test_other_cross_field_rules():
    with pytest.raises(ValueError, match="tokenizer.image_shape channels must be 1 or 3, given 2"):
        create_tokenizer("fsq", image_shape=(2, 28, 28))
    with pytest.raises(ValueError, match="tokenizer.fsq_levels"):
        create_tokenizer("fsq", fsq_levels=(16, 16, 16, 17))
    with pytest.raises(ValueError, match="tokenizer.disc_layers"):
        create_tokenizer("vqgan", image_shape=(1, 8, 8), channels=(8,), disc_layers=3)


# ----- config fields ------------------------------------------------------------------------------------
FIELDS = [(name, f.name) for name in NAMES for f in dataclasses.fields(get_tokenizer_entry(name).cls.config_class)]


@pytest.mark.parametrize("name", NAMES)
def test_config_fields_declared(name):
    assert undeclared_fields(get_tokenizer_entry(name).cls.config_class) == []


@pytest.mark.parametrize("name,field", FIELDS, ids=[f"{n}-{f}" for n, f in FIELDS])
def test_bad_config_values_raise_value_error(name, field):
    kw = {**tiny_tokenizer_kwargs(name), "image_shape": (1, 8, 8), "levels": 256}
    for bad in bad_values(get_tokenizer_entry(name).cls.config_class, field):
        with pytest.raises(ValueError, match=f"tokenizer\\.{field}\\b"):
            create_tokenizer(name, **{**kw, field: bad})


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)], ids=["grey28", "rgb32"])
def test_default_config_is_valid_and_round_trips(name, shape):
    cls = get_tokenizer_entry(name).cls.config_class
    cfg = cls(image_shape=shape)
    cfg.validate()
    again = cls(**json.loads(json.dumps(cfg.to_dict())))
    again.validate()
    assert again == cfg


def test_adaptive_weight_is_zero_when_the_adversarial_gradient_vanishes():
    """A gradient that underflowed (fp16) must switch the adversarial term off, not max it out."""
    from argen.nn.discriminator import adaptive_weight

    w = torch.nn.Parameter(torch.ones(3))
    rec = (w * 2).sum()
    dead = (w * 0).sum()  # zero gradient at the last layer, as an fp16 underflow leaves it
    assert float(adaptive_weight(rec, dead, w, 0.8)) == 0.0
    live = (w * 4).sum()
    assert float(adaptive_weight(rec, live, w, 0.8)) == pytest.approx(0.8 * 2 * 3 ** 0.5 / (4 * 3 ** 0.5 + 1e-4), rel=1e-6)
