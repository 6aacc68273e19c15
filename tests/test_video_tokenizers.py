"""Video tokenizer conformance over the registry (every tokenizer of modality "video", tiny configs),
plus what vqvae3d and the axial attention add.

Every registered video tokenizer: encode/decode shapes, dtypes and ranges (grey and RGB, 2 and 256
levels); codes in [0, codebook_size) laid out (t, s, h, w) with t * frame_stride = T; the codes of a
vector-quantized tokenizer are the nearest codebook entries of its latent; eval-mode determinism with
no buffer changed; temporal causality where declared; reconstruction error falling in a plain
training loop over the declared phases; summarize's numbers; save/load round trip through argen.save /
argen.load; clear ValueErrors for bad clips, codes and config values.
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
from argen.nn.axial import AxialAttention3d
from argen.nn.pixels import to_levels
from argen.nn.quantize import VectorQuantizer
from argen.tokenizers import (
    VideoTokenizer,
    create_tokenizer,
    get_tokenizer_entry,
    is_video_tokenizer,
    list_tokenizers,
    tiny_tokenizer_kwargs,
)
from argen.tokenizers.vqvae3d import downsampling_steps
from argen.train.distributed import check_stats

NAMES = list_tokenizers("video")
SHAPE = (4, 1, 8, 8)  # (T, C, H, W): small enough for every tiny config, divisible by strides up to 4


def tiny(name: str, shape=SHAPE, levels: int = 256, **kw) -> VideoTokenizer:
    torch.manual_seed(0)
    return create_tokenizer(name, video_shape=shape, levels=levels, **{**tiny_tokenizer_kwargs(name), **kw})


def clips(shape=SHAPE, levels: int = 256, n: int = 4, seed: int = 0) -> torch.Tensor:
    """Structured clips (stripes drifting at a random speed) so that training has something to learn."""
    g = torch.Generator().manual_seed(seed)
    t_len, c, h, w = shape
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    out = []
    for _ in range(n):
        fx, fy, ph, v = (torch.rand(4, generator=g) * torch.tensor([0.8, 0.8, 6.28, 1.5])).tolist()
        frames = [torch.sin((xx - v * t) * fx + yy * fy + ph)[None].expand(c, h, w)
                  * torch.linspace(0.6, 1.0, c)[:, None, None] for t in range(t_len)]
        out.append(torch.stack(frames))
    x = (torch.stack(out) + 1) / 2 * (levels - 1)
    return x.round().clamp(0, levels - 1).long()


def train(tok: VideoTokenizer, x: torch.Tensor, steps: int, lr: float = 3e-3) -> list[dict[str, float]]:
    """The plain loop of the protocol: Adam per phase, phase_loss, then update_statistics once."""
    opts = {p: torch.optim.Adam(tok.phase_parameters(p), lr=lr) for p in tok.optimizer_phases}
    logs = []
    tok.train()
    for step in range(steps):
        stats: dict = {}
        for phase in tok.training_phases(step):
            loss, s = tok.phase_loss(phase, x, step)
            check_stats(s, tok.model_name)
            opts[phase].zero_grad(set_to_none=True)
            loss.backward()
            opts[phase].step()
            stats.update(s)
        tok.update_statistics(stats)
        logs.append({k: float(v[0].sum() / v[1].sum()) for k, v in stats.items() if v[0].dim() == 0})
    return logs


# ----- registry -----------------------------------------------------------------------------------------
def test_registry_tells_video_tokenizers_apart():
    assert "vqvae3d" in NAMES
    assert set(NAMES).isdisjoint(list_tokenizers("image"))
    assert sorted(NAMES + list_tokenizers("image")) == list_tokenizers()
    for name in NAMES:
        entry = get_tokenizer_entry(name)
        assert entry.modality == "video" and issubclass(entry.cls, VideoTokenizer) and is_video_tokenizer(entry.cls)
        assert entry.cls.kind == "tokenizer" and entry.cls.objective == "reconstruction" and entry.description
    assert not is_video_tokenizer(get_tokenizer_entry("vqvae").cls)
    with pytest.raises(ValueError, match="expected modality 'image', 'video' or None, given 'audio'"):
        list_tokenizers("audio")


# ----- shapes, dtypes, ranges -------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("channels", [1, 3], ids=["grey", "rgb"])
@pytest.mark.parametrize("levels", [2, 256])
def test_encode_decode_shapes_and_ranges(name, channels, levels):
    shape = (SHAPE[0], channels, *SHAPE[2:])
    tok = tiny(name, shape, levels).eval()
    x = torch.randint(0, levels, (3, *shape))
    codes = tok.encode(x)
    t, s, h, w = tok.code_shape
    assert codes.shape == (3, t, s, h, w) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < tok.codebook_size
    assert t * tok.frame_stride == shape[0] and tok.frame_stride >= 1
    assert tok.num_tokens == t * s * h * w and tok.num_dims == math.prod(shape)
    assert tok.video_shape == tok.data_shape == shape and tok.image_shape == shape[1:] and tok.levels == levels
    assert tok.modality == "video" and not tok.cond_spec.conditional
    assert tok.prior_shape == tok.code_shape  # a prior over the codes is a video model over (t, s, h, w)
    every = torch.arange(t * s * h * w).remainder(tok.codebook_size).view(1, t, s, h, w).repeat(2, 1, 1, 1, 1)
    every[1] = tok.codebook_size - 1
    for c in (codes, every):
        y = tok.decode(c)
        assert y.shape == (c.shape[0], *shape) and y.dtype == torch.long
        assert int(y.min()) >= 0 and int(y.max()) < levels
    assert torch.equal(tok.reconstruct(x), tok.decode(codes))


@pytest.mark.parametrize("name", NAMES)
def test_codes_are_the_nearest_codebook_entries_of_the_latent(name):
    """Where a tokenizer is a latent + a vector quantizer, encode is the argmin of ||z - e||^2 per position."""
    tok = tiny(name)
    x = clips()
    train(tok, x, 2)  # a data-initialised codebook, so the argmin is not trivial
    tok.eval()
    quantizers = [m for m in tok.modules() if isinstance(m, VectorQuantizer)]
    if not (hasattr(tok, "latent") and len(quantizers) == 1):
        pytest.skip(f"{name} is not one latent and one vector quantizer")
    with torch.no_grad():
        z = tok.latent(x)  # (B, D, t, h, w)
    flat = z.movedim(1, -1).reshape(-1, z.shape[1])
    want = torch.cdist(flat.double(), quantizers[0].codebook().double()).argmin(1)
    codes = tok.encode(x)
    assert torch.equal(codes.reshape(-1), want)
    # decoding reads those entries: decode(encode(x)) is the training pass's reconstruction (up to rounding)
    out = None
    if type(tok).forward is not torch.nn.Module.forward:  # the training pass, where it is (x, recon, quantized)
        with torch.no_grad():
            out = tok(x)
    if isinstance(out, tuple) and len(out) == 3:
        recon = to_levels(out[1], tok.levels)
        diff = (tok.decode(codes) - recon).abs()
        assert int(diff.max()) <= 1 and float(diff.float().mean()) < 0.01


# ----- determinism ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_eval_mode_is_deterministic_and_changes_no_buffer(name):
    tok = tiny(name)
    x = clips()
    train(tok, x, 1)
    tok.eval()
    before = {k: v.clone() for k, v in tok.named_buffers()}
    c1, c2 = tok.encode(x), tok.encode(x)
    assert torch.equal(c1, c2)
    assert torch.equal(tok.decode(c1), tok.decode(c2))
    assert torch.equal(tok.encode(x[:1]), c1[:1])  # a clip's codes do not depend on the rest of the batch
    tok.summarize(tok.eval_stats(x))
    tok.train()
    tok.encode(x)  # encode never updates statistics, in training mode either
    for k, v in tok.named_buffers():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("name", NAMES)
def test_declared_temporal_causality_holds(name):
    """temporally_causal: the code frames covering frames < k do not change when frames >= k do."""
    tok = tiny(name).eval()
    if not tok.temporally_causal:
        pytest.skip(f"{name} declares a non-causal encoder")
    x = clips()
    k = tok.frame_stride  # the first code frame is wholly determined by the first frame_stride frames
    y = x.clone()
    y[:, k:] = tok.levels - 1 - y[:, k:]
    known = k // tok.frame_stride
    assert torch.equal(tok.encode(x)[:, :known], tok.encode(y)[:, :known])
    if hasattr(tok, "latent"):
        with torch.no_grad():
            torch.testing.assert_close(tok.latent(x)[:, :, :known], tok.latent(y)[:, :, :known], rtol=0, atol=1e-5)


def test_vqvae3d_non_causal_encoder_sees_the_future():
    """The causality test above can fail: VideoGPT's symmetric padding lets later frames in."""
    tok = tiny("vqvae3d", causal=False).eval()
    assert not tok.temporally_causal
    x = clips()
    y = x.clone()
    y[:, 2:] = 255 - y[:, 2:]
    with torch.no_grad():
        assert (tok.latent(x)[:, :, :1] - tok.latent(y)[:, :, :1]).abs().max() > 1e-3


# ----- training ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_reconstruction_improves_with_training(name):
    x = clips(n=8)
    tok = tiny(name)
    tok.eval()
    before = tok.summarize(tok.eval_stats(x))["mse"]
    logs = train(tok, x, 40)
    tok.eval()
    summary = tok.summarize(check_stats(tok.eval_stats(x), name))
    assert summary["mse"] < 0.3 * before, (before, summary["mse"])
    assert all(math.isfinite(v) for log in logs for v in log.values())
    assert "rec_mse" in logs[-1]
    assert {"mse", "psnr", "ssim", "usage", "perplexity"} <= set(summary)
    assert summary["psnr"] == pytest.approx(-10 * math.log10(summary["mse"]))
    assert -1 <= summary["ssim"] <= 1 and 0 < summary["usage"] <= 1
    assert 1 <= summary["perplexity"] <= tok.codebook_size


def test_summarize_numbers_are_exact_on_a_known_case():
    """mse / psnr / ssim / usage / perplexity from hand-made totals (no tokenizer arithmetic to trust)."""
    tok = tiny("vqvae3d")
    k = tok.codebook_size
    hist = torch.zeros(k, dtype=torch.float64)
    hist[:4] = 5.0
    d = torch.float64
    totals = {"sq_err": (torch.tensor(0.5, dtype=d), torch.tensor(50.0, dtype=d)),
              "ssim": (torch.tensor(3.0, dtype=d), torch.tensor(4.0, dtype=d)),
              "codes": (hist, torch.ones_like(hist))}
    out = tok.summarize(totals)
    assert out["mse"] == pytest.approx(0.01) and out["psnr"] == pytest.approx(20.0)
    assert out["ssim"] == pytest.approx(0.75) and out["usage"] == pytest.approx(4 / k)
    assert out["perplexity"] == pytest.approx(4.0)


def test_vqvae3d_loss_is_weighted_mse_plus_beta_commitment():
    tok = tiny("vqvae3d", recon_weight=2.0, commitment=0.5)
    x = clips()
    torch.manual_seed(1)
    loss, stats = tok.phase_loss("model", x, 0)
    rec = float(stats["rec_loss"][0] / stats["rec_loss"][1])
    commit = float(stats["commit"][0] / stats["commit"][1])
    assert float(loss.detach()) == pytest.approx(2.0 * rec + 0.5 * commit, rel=1e-5)
    assert set(stats) >= {"vq_counts", "vq_sums", "rec_mse", "perplexity", "dead_restarted"}


@pytest.mark.parametrize("name", NAMES)
def test_phase_loss_under_bf16_autocast(name):
    """Mixed precision (train.precision=bf16) gives a finite loss and gradients, with fp32 statistics."""
    tok = tiny(name).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, stats = tok.phase_loss(tok.training_phases(0)[0], clips(), 10**6)
    loss.backward()
    assert math.isfinite(loss.item())
    assert all(torch.isfinite(p.grad).all() for p in tok.parameters() if p.grad is not None)
    assert all(v[0].dtype in (torch.float32, torch.float64) for v in stats.values())


# ----- save / load ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip(name, tmp_path):
    x = clips()
    tok = tiny(name)
    train(tok, x, 3)
    tok.eval()
    argen.save(tok, tmp_path / "run")
    desc = json.loads((Path(tmp_path) / "run" / "config.json").read_text())
    assert desc["model"] == name and desc.get("kind") == "tokenizer"
    again = argen.load(tmp_path / "run")
    assert isinstance(again, VideoTokenizer) and again.model_name == name
    assert again.video_shape == tok.video_shape and again.code_shape == tok.code_shape
    again.eval()
    codes = tok.encode(x)
    assert torch.equal(again.encode(x), codes)
    assert torch.equal(again.decode(codes), tok.decode(codes))


# ----- bad input ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs_raise_value_error(name):
    tok = tiny(name, levels=16).eval()
    x = torch.randint(0, 16, (2, *SHAPE))
    t, s, h, w = tok.code_shape
    with pytest.raises(ValueError, match="expected dtype torch.long.*given torch.float32"):
        tok.encode(x.float())
    with pytest.raises(ValueError, match=r"expected clips of shape \(B, 4, 1, 8, 8\), given \(2, 1, 8, 8\)"):
        tok.encode(x[:, 0])
    with pytest.raises(ValueError, match=r"expected clips of shape \(B, 4, 1, 8, 8\), given \(2, 2, 1, 8, 8\)"):
        tok.encode(x[:, :2])
    with pytest.raises(ValueError, match=r"expected values in \[0, 15\], given range \[0, 16\]"):
        tok.encode(x.clamp(max=15).index_fill(0, torch.tensor([0]), 16))
    with pytest.raises(ValueError, match=r"given range \[-1,"):
        tok.encode(x - 1)
    codes = tok.encode(x)
    with pytest.raises(ValueError, match=rf"expected codes in \[0, {tok.codebook_size - 1}\]"):
        tok.decode(codes + tok.codebook_size)
    with pytest.raises(ValueError, match=rf"expected codes of shape \(B, {t}, {s}, {h}, {w}\), "
                                         rf"given \(2, {t}, {s}, {h}, {w + 1}\)"):
        tok.decode(torch.zeros(2, t, s, h, w + 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"expected codes of shape"):
        tok.decode(codes[:, 0])  # an image tokenizer's (B, s, h, w) grid is not a code volume
    with pytest.raises(ValueError, match="expected codes of dtype torch.long"):
        tok.decode(codes.int())
    with pytest.raises(ValueError, match="expected clips of shape"):
        tok.phase_loss("model", x[..., :4], 0)


# ----- config fields ------------------------------------------------------------------------------------
FIELDS = [(name, f.name) for name in NAMES for f in dataclasses.fields(get_tokenizer_entry(name).cls.config_class)]


@pytest.mark.parametrize("name", NAMES)
def test_config_fields_declared(name):
    assert undeclared_fields(get_tokenizer_entry(name).cls.config_class) == []


@pytest.mark.parametrize("name,field", FIELDS, ids=[f"{n}-{f}" for n, f in FIELDS])
def test_bad_config_values_raise_value_error(name, field):
    kw = {**tiny_tokenizer_kwargs(name), "video_shape": SHAPE, "levels": 256}
    for bad in bad_values(get_tokenizer_entry(name).cls.config_class, field):
        with pytest.raises(ValueError, match=f"tokenizer\\.{field}\\b"):
            create_tokenizer(name, **{**kw, field: bad})


@pytest.mark.parametrize("name", NAMES)
def test_video_config_refuses_an_image_shape_and_odd_channels(name):
    with pytest.raises(ValueError, match=r"tokenizer.image_shape: a video tokenizer takes video_shape"):
        create_tokenizer(name, image_shape=(1, 8, 8), **tiny_tokenizer_kwargs(name))
    with pytest.raises(ValueError, match="tokenizer.video_shape channels must be 1 or 3, given 2"):
        create_tokenizer(name, video_shape=(4, 2, 8, 8), **tiny_tokenizer_kwargs(name))


@pytest.mark.parametrize("name", NAMES)
def test_default_config_is_valid_and_round_trips(name):
    cls = get_tokenizer_entry(name).cls.config_class
    cfg = cls(video_shape=(10, 1, 32, 32), levels=2)
    cfg.validate()
    again = cls(**json.loads(json.dumps(cfg.to_dict())))
    again.validate()
    assert again == cfg


# ----- vqvae3d specifics ---------------------------------------------------------------------------------
def test_vqvae3d_per_axis_downsampling():
    assert downsampling_steps((2, 4, 4)) == [(2, 2, 2), (1, 2, 2)]
    assert downsampling_steps((1, 2, 8)) == [(1, 2, 2), (1, 1, 2), (1, 1, 2)]
    assert downsampling_steps((1, 1, 1)) == []
    for ds, want in [((2, 4, 4), (5, 1, 8, 8)), ((1, 4, 4), (10, 1, 8, 8)), ((2, 8, 8), (5, 1, 4, 4)),
                     ((1, 1, 1), (10, 1, 32, 32))]:
        tok = create_tokenizer("vqvae3d", video_shape=(10, 1, 32, 32), levels=2, hidden=8, res_blocks=0,
                               code_dim=4, codebook_size=8, downsample=ds).eval()
        assert tok.code_shape == want and tok.frame_stride == ds[0]
        x = torch.randint(0, 2, (1, 10, 1, 32, 32))
        assert tok.decode(tok.encode(x)).shape == x.shape


def test_vqvae3d_cross_field_rules():
    with pytest.raises(ValueError, match=r"tokenizer.downsample must be three powers of 2.*given \(3, 4, 4\)"):
        create_tokenizer("vqvae3d", downsample=(3, 4, 4))
    with pytest.raises(ValueError, match="T = 10 must be divisible by its downsampling factor 4"):
        create_tokenizer("vqvae3d", downsample=(4, 4, 4))
    with pytest.raises(ValueError, match="W = 30 must be divisible by its downsampling factor 4"):
        create_tokenizer("vqvae3d", video_shape=(10, 1, 32, 30))
    with pytest.raises(ValueError, match=r"tokenizer.hidden \(10\) must be divisible by tokenizer.heads"):
        create_tokenizer("vqvae3d", hidden=10, heads=4)


def test_vqvae3d_default_size():
    tok = create_tokenizer("vqvae3d", video_shape=(10, 1, 32, 32), levels=2)
    n = sum(p.numel() for p in tok.parameters())
    assert tok.code_shape == (5, 1, 8, 8) and tok.codebook_size == 256 and tok.frame_stride == 2
    assert 500_000 < n < 1_500_000, n


# ----- axial attention ----------------------------------------------------------------------------------
def test_axial_attention_mixes_along_rows_columns_and_time_only():
    torch.manual_seed(0)
    attn = AxialAttention3d(8, 2)
    x = torch.randn(1, 8, 3, 4, 5)
    y = torch.zeros_like(x)
    y[0, :, 0, 0, 0] = 1.0  # perturb one position
    d = (attn(x + y) - attn(x)).abs().sum(1)[0]  # (T, H, W)
    moved = d > 1e-6
    line = torch.zeros_like(moved)
    line[:, 0, 0] = True
    line[0, :, 0] = True
    line[0, 0, :] = True
    assert torch.equal(moved, line)  # exactly its time line, its column and its row change


def test_axial_attention_causal_time_never_looks_ahead():
    torch.manual_seed(0)
    for causal in (True, False):
        attn = AxialAttention3d(4, 1, causal_time=causal)
        x = torch.randn(2, 4, 5, 2, 2)
        y = x.clone()
        y[:, :, 3:] += 1.0
        early = (attn(x)[:, :, :3] - attn(y)[:, :, :3]).abs().max()
        assert (early < 1e-6) == causal
    with pytest.raises(ValueError, match=r"expected features \(B, 4, T, H, W\), given shape \(2, 3, 5, 2, 2\)"):
        attn(torch.randn(2, 3, 5, 2, 2))
    with pytest.raises(ValueError, match="channels .6. must be divisible by heads"):
        AxialAttention3d(6, 4)
