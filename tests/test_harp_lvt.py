"""harp (VideoGPT's prior + top-k default + crop augmentation) and lvt (the Video Transformer over
sliced-VQ latents, temperature 0.9 default), and the declared sampling defaults they use. The
conformance suite (tests/test_video_conformance.py -k "harp or lvt") covers causality,
normalization, cached == naive and save/load of their tiny configs."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import argen
from argen.models.video.harp import shift_codes
from argen.sampling import SamplingConfig, split_options

GPT = dict(d_model=12, n_layers=2, n_heads=2, d_ff=24)


def perturbed(name: str, **kw):
    torch.manual_seed(0)
    m = argen.create_model(name, **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return m.eval()


def codes(m, b: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, m.levels, (b, *m.data_shape), generator=torch.Generator().manual_seed(seed))


# ----- harp --------------------------------------------------------------------------------------
def test_harp_is_videogpt_in_eval():
    """Same weights, same log_prob (eval and train mode: the augmentation is in `loss` only)."""
    h = perturbed("harp", video_shape=(3, 1, 4, 4), levels=6, crop=2, **GPT)
    v = argen.create_model("videogpt", video_shape=(3, 1, 4, 4), levels=6, **GPT).eval()
    v.load_state_dict(h.state_dict())
    x = codes(h, 3)
    torch.testing.assert_close(h.log_prob(x), v.log_prob(x), atol=0, rtol=0)
    torch.testing.assert_close(h.loss(x), v.loss(x), atol=0, rtol=0)
    h.train()
    with torch.no_grad():
        torch.testing.assert_close(h.log_prob(x), v.log_prob(x), atol=0, rtol=0)


def test_harp_training_input_is_shifted():
    h = perturbed("harp", video_shape=(2, 1, 5, 5), levels=6, crop=2, **GPT).train()
    x = codes(h, 8)
    seen = []
    real = h.log_prob
    h.log_prob = lambda y, cond=None, reduce=True: (seen.append(y), real(y, cond, reduce))[1]  # type: ignore[method-assign]
    torch.manual_seed(1)
    h.loss(x)
    assert not torch.equal(seen[-1], x), "training input unchanged"
    torch.manual_seed(1)
    assert torch.equal(seen[-1], shift_codes(x, 2)), "not the shift drawn from torch's RNG"
    h.eval()
    h.loss(x)
    assert torch.equal(seen[-1], x), "eval input changed"
    h.train()
    h.config.crop = 0
    h.loss(x)
    assert torch.equal(seen[-1], x), "crop 0 changed the input"


def test_shift_codes_is_a_replicate_padded_crop_the_same_for_all_frames():
    x = torch.randint(0, 50, (6, 3, 2, 5, 7), generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(4)
    out = shift_codes(x, 2, generator=g)
    g = torch.Generator().manual_seed(4)
    dy, dx = torch.randint(-2, 3, (6,), generator=g), torch.randint(-2, 3, (6,), generator=g)
    assert len(set(zip(dy.tolist(), dx.tolist()))) > 1
    padded = F.pad(x.flatten(1, 2).double(), (2, 2, 2, 2), mode="replicate").long().view(6, 3, 2, 9, 11)
    for b in range(6):
        ref = padded[b, :, :, 2 + dy[b] : 2 + dy[b] + 5, 2 + dx[b] : 2 + dx[b] + 7]
        assert torch.equal(out[b], ref)  # every frame and code channel of a clip shifted alike


def test_harp_samples_with_top_k_by_default():
    h = perturbed("harp", video_shape=(2, 1, 3, 3), levels=8, sample_top_k=1, **GPT)
    a = h.sample(2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, h.sample(2, generator=torch.Generator().manual_seed(1)))  # top-1: greedy
    assert torch.equal(a, h.sample(2, generator=torch.Generator().manual_seed(0), naive=True))
    free = h.sample(2, config=SamplingConfig(generator=torch.Generator().manual_seed(0)))  # explicit: no top-k
    assert not torch.equal(a, free)
    assert torch.equal(h.sample(2, generator=torch.Generator().manual_seed(5), top_k=8),
                       h.sample(2, config=SamplingConfig(generator=torch.Generator().manual_seed(5))))
    assert perturbed("harp", video_shape=(2, 1, 3, 3), levels=8, sample_top_k=None, **GPT).sampling_defaults == {}
    with pytest.raises(ValueError, match=r"crop < 3.*given 3"):
        argen.create_model("harp", video_shape=(2, 1, 3, 3), levels=8, crop=3, **GPT)


# ----- lvt ---------------------------------------------------------------------------------------
LVT = dict(d_model=16, n_layers=2, n_heads=2, d_ff=32, block_shapes=(1, 2, 2, 2, 1, 1))


@pytest.mark.parametrize("name", ["video_transformer", "lvt"])
def test_sliced_latents_512_levels_4_channels(name):
    """(t, S, h, w) = (2, 4, 2, 2) at 512 levels: cached == naive, and each code channel of a
    position sees the earlier channels there but not itself or later ones."""
    m = perturbed(name, video_shape=(2, 4, 2, 2), levels=512, subscale=(2, 1, 1), **LVT)
    x = codes(m, 2)
    a = m.sample(2, generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, 2, 4, 2, 2) and int(a.max()) < 512
    assert torch.equal(a, m.sample(2, generator=torch.Generator().manual_seed(0), naive=True))
    with torch.no_grad():
        base = m.conditionals(x)  # (B, C, L, t, h, w)
        for c in range(4):
            y = x.clone()
            y[:, 1, c, 0, 1] = (y[:, 1, c, 0, 1] + 1) % 512
            out = m.conditionals(y)
            torch.testing.assert_close(out[:, : c + 1, :, 1, 0, 1], base[:, : c + 1, :, 1, 0, 1], atol=1e-5, rtol=1e-5)
            if c < 3:
                assert float((out[:, c + 1 :, :, 1, 0, 1] - base[:, c + 1 :, :, 1, 0, 1]).abs().max()) > 1e-5


def test_lvt_defaults_and_temperature():
    m = argen.create_model("lvt", d_model=16, n_layers=2, n_heads=2, d_ff=32)
    assert (m.data_shape, m.levels, m.config.subscale) == ((10, 4, 8, 8), 512, (4, 2, 2))
    assert m.generation_order()[:3] == [(0, 0, 0), (0, 0, 2), (0, 0, 4)]  # slice (0, 0, 0) first
    assert m.sampling_defaults == {"temperature": 0.9}
    s = perturbed("lvt", video_shape=(2, 2, 2, 2), levels=6, subscale=(2, 1, 1), **LVT)
    a = s.sample(2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, s.sample(2, generator=torch.Generator().manual_seed(0), temperature=0.9))
    assert not torch.equal(a, s.sample(2, generator=torch.Generator().manual_seed(0), temperature=1.0))
    frames = argen.create_model("lvt", video_shape=(3, 1, 2, 2), levels=4, subscale=(3, 1, 1), **LVT)
    order = frames.generation_order()
    assert [p[0] for p in order] == sorted(p[0] for p in order)  # frame by frame


def test_declared_sampling_defaults_are_sampling_config_fields():
    config, rest = split_options(None, {"top_p": 0.5, "steps": 2}, {"top_k": 3})
    assert (config.top_k, config.top_p, rest) == (3, 0.5, {"steps": 2})
    assert split_options(SamplingConfig(), {}, {"top_k": 3})[0].top_k is None  # an explicit config says everything
    with pytest.raises(ValueError, match=r"SamplingConfig fields.*given \['beam'\]"):
        split_options(None, {}, {"beam": 3})
