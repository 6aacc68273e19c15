"""Per-frame video tokenizers (frame_vqgan, sliced_vqvae, hvqvae): what they add to the registry-wide
checks of tests/test_video_tokenizers.py. The sliced quantizer (one EMA codebook per slice, each
slice's statistics to its own codebook), hvqvae's packing of two levels into five channels, and that
a per-frame tokenizer is its image tokenizer applied to each frame."""
from __future__ import annotations

import pytest
import torch

from argen.nn.pixels import to_unit
from argen.nn.quantize import SlicedQuantizer, VectorQuantizer
from argen.tokenizers import create_tokenizer, tiny_tokenizer_kwargs
from argen.tokenizers.hvqvae import pack_levels, unpack_levels
from argen.tokenizers.vqgan import VQGANConfig

SHAPE = (3, 1, 8, 8)


def tiny(name: str, **kw):
    torch.manual_seed(0)
    return create_tokenizer(name, **{"video_shape": SHAPE, "levels": 16, **tiny_tokenizer_kwargs(name), **kw})


def clips(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 16, (n, *SHAPE), generator=torch.Generator().manual_seed(seed))


# ----- the sliced quantizer ----------------------------------------------------------------------------
def sliced(slices: int = 3, k: int = 8, dim: int = 6) -> SlicedQuantizer:
    torch.manual_seed(0)
    q = SlicedQuantizer(slices, k, dim, beta=0.25, restart_threshold=0.0)
    for sub in q.quantizers:
        sub.embed.copy_(torch.randn_like(sub.embed))
    return q


def test_each_slice_is_quantized_by_its_own_codebook():
    q = sliced()
    z = torch.randn(2, 6, 3, 4)
    idx = q.encode(z)
    assert idx.shape == (2, 3, 3, 4) and idx.dtype == torch.long
    for k, (sub, part) in enumerate(zip(q.quantizers, z.chunk(3, 1))):
        flat = part.movedim(1, -1).reshape(-1, 2)
        want = torch.cdist(flat.double(), sub.codebook().double()).argmin(1)
        assert torch.equal(idx[:, k].reshape(-1), want)
    out = q(z)
    assert torch.equal(out.indices, idx)
    torch.testing.assert_close(out.z_q, q.indices_to_latent(idx))  # straight-through values are the codes
    subs = [sub._quantize(part) for sub, part in zip(q.quantizers, z.chunk(3, 1))]
    torch.testing.assert_close(out.loss, torch.stack([s.loss for s in subs]).mean())
    assert torch.equal(out.counts, sum(s.counts for s in subs))
    # the slices' mean commitment is one quantizer's mean over all D channels
    torch.testing.assert_close(out.commitment, (z - out.z_q.detach()).pow(2).mean())


def test_each_slice_gets_only_its_own_statistics():
    q = sliced()
    q.train()
    out = q(torch.randn(4, 6, 3, 3))
    assert set(out.stats) == {f"{n}.{k}" for n in ("vq_counts", "vq_sums") for k in range(3)}
    for sub in q.quantizers:
        sub.initialized.fill_(True)
    before = [sub.embed.clone() for sub in q.quantizers]
    q.update_statistics({n: v for n, v in out.stats.items() if n.endswith(".1")})  # slice 1's only
    assert torch.equal(q.quantizers[0].embed, before[0]) and torch.equal(q.quantizers[2].embed, before[2])
    assert not torch.equal(q.quantizers[1].embed, before[1])
    # and slice 1's EMA is exactly what its own quantizer computes from its own statistics
    ref = VectorQuantizer(8, 2, restart_threshold=0.0)
    ref.embed.copy_(before[1])
    ref.initialized.fill_(True)
    ref.update_statistics({"vq_counts": out.stats["vq_counts.1"], "vq_sums": out.stats["vq_sums.1"]})
    torch.testing.assert_close(q.quantizers[1].embed, ref.embed)


def test_sliced_quantizer_refuses_uneven_slices_and_bad_indices():
    with pytest.raises(ValueError, match="expected dim divisible by slices=4, given dim=6"):
        SlicedQuantizer(4, 8, 6)
    with pytest.raises(ValueError, match=r"expected indices \(B, 3, ...\), given shape \(2, 4, 4\)"):
        sliced().indices_to_latent(torch.zeros(2, 4, 4, dtype=torch.long))


def test_sliced_vqvae_codes_are_per_slice():
    tok = tiny("sliced_vqvae", slices=2, code_dim=4).eval()
    x = clips()
    codes = tok.encode(x)
    assert tok.code_shape == (3, 2, 4, 4) and codes.shape == (2, 3, 2, 4, 4)
    with torch.no_grad():  # a new codebook for slice 1 changes slice 1's codes only
        tok.image.quantizer.quantizers[1].embed.copy_(torch.randn_like(tok.image.quantizer.quantizers[1].embed))
    again = tok.encode(x)
    assert torch.equal(again[:, :, 0], codes[:, :, 0]) and not torch.equal(again[:, :, 1], codes[:, :, 1])
    with pytest.raises(ValueError, match="tokenizer.code_dim must be divisible by tokenizer.slices=3"):
        tiny("sliced_vqvae", slices=3, code_dim=4)


# ----- per-frame = the image tokenizer on every frame ------------------------------------------------------
@pytest.mark.parametrize("name", ["frame_vqgan", "sliced_vqvae"])
def test_frame_tokenizers_apply_the_image_tokenizer_to_each_frame(name):
    tok = tiny(name).eval()
    x = clips()
    codes = tok.encode(x)
    for t in range(SHAPE[0]):
        per = tok.image.encode(x[:, t])
        assert torch.equal(codes[:, t].reshape(per.shape), per)
    assert tok.frame_stride == 1 and tok.temporally_causal
    y = x.clone()
    y[:, 1] = 15 - y[:, 1]  # another middle frame: the other frames' codes stay
    other = tok.encode(y)
    assert torch.equal(other[:, 0], codes[:, 0]) and torch.equal(other[:, 2], codes[:, 2])


def test_frame_vqgan_is_the_image_vqgan_with_its_adversarial_phase():
    tok = tiny("frame_vqgan", disc_start=2)
    assert tok.optimizer_phases == ("model", "disc")
    assert tok.training_phases(1) == ("model",) and tok.training_phases(2) == ("model", "disc")
    frame = tok.config.frame_config()
    assert isinstance(frame, VQGANConfig) and frame.image_shape == SHAPE[1:] and frame.disc_start == 2
    disc = {id(p) for p in tok.image.discriminator.parameters()}
    assert {id(p) for p in tok.phase_parameters("disc")} == disc
    assert disc.isdisjoint(id(p) for p in tok.phase_parameters("model"))
    tok.train()
    _, stats = tok.phase_loss("model", clips(), 2)
    loss, d_stats = tok.phase_loss("disc", clips(), 2)
    assert "adaptive_weight" in stats and "d_loss" in d_stats and loss.requires_grad
    with pytest.raises(ValueError, match="disc_layers"):  # the frame-size rules of the image VQ-GAN hold
        tiny("frame_vqgan", disc_layers=3)


# ----- hvqvae: two levels packed into five channels ---------------------------------------------------------
def test_pack_levels_layout_by_hand():
    top = torch.tensor([[[7, 8]]])  # (1, 1, 2): two top cells
    bottom = torch.arange(8).view(1, 2, 4)  # (1, 2, 4): [[0 1 2 3], [4 5 6 7]]
    packed = pack_levels(top, bottom)
    assert packed.shape == (1, 5, 1, 2)
    assert packed[0, :, 0, 0].tolist() == [7, 0, 1, 4, 5]  # top, then the 2x2 block in raster order
    assert packed[0, :, 0, 1].tolist() == [8, 2, 3, 6, 7]
    t2, b2 = unpack_levels(packed)
    assert torch.equal(t2, top) and torch.equal(b2, bottom)
    with pytest.raises(ValueError, match=r"expected bottom codes of shape \(1, 2, 4\).*given \(1, 2, 3\)"):
        pack_levels(top, bottom[..., :3])
    with pytest.raises(ValueError, match=r"expected packed codes \(N, 5, h, w\), given \(1, 4, 1, 2\)"):
        unpack_levels(packed[:, :4])


def test_hvqvae_codes_are_both_levels_packed():
    tok = tiny("hvqvae").eval()
    x = clips()
    codes = tok.encode(x)
    assert tok.code_shape == (3, 5, 2, 2) and codes.shape == (2, 3, 5, 2, 2)
    with torch.no_grad():
        top, bottom = tok._levels(to_unit(x.flatten(0, 1), 16), train=False)
    assert top.shape == (6, 2, 2) and bottom.shape == (6, 4, 4)
    assert torch.equal(codes.flatten(0, 1), pack_levels(top, bottom))
    # the decoder reads both levels: changing only the top codes, or only the bottom codes, changes pixels
    with torch.no_grad():
        for q in tok.quantizers.values():
            q.embed.copy_(torch.randn_like(q.embed) * 3)
    codes = tok.encode(x)
    base = tok.decode(codes)
    for ch in (0, 3):
        other = codes.clone()
        other[:, :, ch] = (other[:, :, ch] + 1) % tok.codebook_size
        assert not torch.equal(tok.decode(other), base), f"channel {ch} is not read by the decoder"


def test_hvqvae_bottom_quantizer_sees_the_decoded_top():
    """VQ-VAE-2: the bottom level is quantized from [bottom features, decoded top], so a new top
    codebook changes the bottom codes as well."""
    tok = tiny("hvqvae").eval()
    x = clips(4)
    with torch.no_grad():
        for q in tok.quantizers.values():
            q.embed.copy_(torch.randn_like(q.embed))
    codes = tok.encode(x)
    with torch.no_grad():
        tok.quantizers["top"].embed.copy_(torch.randn_like(tok.quantizers["top"].embed) * 3)
    assert not torch.equal(tok.encode(x)[:, :, 1:], codes[:, :, 1:])


def test_hvqvae_statistics_reach_each_level():
    tok = tiny("hvqvae")
    tok.train()
    _, stats = tok.phase_loss("model", clips(), 0)
    assert {"vq_counts.top", "vq_sums.top", "vq_counts.bottom", "vq_sums.bottom"} <= set(stats)
    tok.update_statistics({n: v for n, v in stats.items() if n.endswith(".top")})
    assert bool(tok.quantizers["top"].initialized) and not bool(tok.quantizers["bottom"].initialized)
    with pytest.raises(ValueError, match="divisible by 4"):
        tiny("hvqvae", video_shape=(3, 1, 6, 6))
