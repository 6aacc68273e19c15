"""vqvae_video_pixelcnn (Walker et al.'s prior over hvqvae codes): what the video conformance suite
does not show. Its order (raster over the top grid, channel 0 = the top code first); the top level
first (the top's conditionals never read the bottom level of their frame, the bottom's read the top
of their frame); past frames reach both levels; it is a prior over hvqvae's codes as they come."""
from __future__ import annotations

import itertools

import pytest
import torch

import argen
from argen.registry import tiny_kwargs
from argen.tokenizers import create_tokenizer, tiny_tokenizer_kwargs

SHAPE = (3, 5, 3, 3)  # (t, 5, h, w): top + 2x2 bottom codes over a 3x3 top grid
LEVELS = 6


def tiny(**kw):
    torch.manual_seed(0)
    m = argen.create_model("vqvae_video_pixelcnn", **{"video_shape": SHAPE, "levels": LEVELS,
                                                      **tiny_kwargs("vqvae_video_pixelcnn"), **kw})
    with torch.no_grad():  # larger weights than the init, so dependencies show well above round-off
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m.eval()


def codes(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, LEVELS, (n, *SHAPE), generator=torch.Generator().manual_seed(seed))


def table(m, x):
    with torch.no_grad():
        return m.conditionals(x)  # (B, 5, L, t, h, w)


def moved(a, b) -> torch.Tensor:
    """(t, h, w) bool: where two conditional tables (B, channels, L, t, h, w) differ."""
    return (a - b).abs().amax(dim=(0, 1, 2)) > 1e-6


def test_generation_order_is_raster_over_the_top_grid():
    m = tiny()
    assert m.generation_order() == list(itertools.product(range(3), range(3), range(3)))
    assert m.position_shape == (3, 3, 3) and m.channels == 5
    assert not m.own_stepper  # declared naive: the reference sampler


def test_the_top_never_reads_the_bottom_of_its_frame():
    m = tiny()
    x = codes()
    base = table(m, x)
    y = x.clone()
    y[:, 1, 1:] = (y[:, 1, 1:] + 1) % LEVELS  # every bottom code of frame 1
    out = table(m, y)
    torch.testing.assert_close(out[:, 0, :, 1], base[:, 0, :, 1], atol=0, rtol=0)  # frame 1's top: untouched
    assert moved(out[:, 1:], base[:, 1:])[1].any()  # frame 1's later bottom codes did read them
    assert moved(out[:, :1], base[:, :1])[2].any()  # and the next frame's top reads past bottoms


def test_the_bottom_reads_the_top_of_its_own_cell_and_earlier_cells():
    m = tiny()
    x = codes()
    base = table(m, x)
    y = x.clone()
    y[:, 1, 0, 1, 1] = (y[:, 1, 0, 1, 1] + 1) % LEVELS  # one top code: frame 1, cell (1, 1)
    out = table(m, y)
    bottom = moved(out[:, 1:], base[:, 1:])[1]  # frame 1, (h, w)
    top = moved(out[:, :1], base[:, :1])[1]
    assert bottom[1, 1], "the bottom codes of a cell do not read its top code"
    assert bottom[2, 2] and top[2, 2], "later cells do not read an earlier top code"
    # causal in the order: cells before (1, 1) never see it, and the top of (1, 1) does not see itself
    assert not bottom.flatten()[:4].any() and not top.flatten()[:5].any()


def test_bottom_sub_positions_go_in_raster_order_within_a_cell():
    m = tiny()
    x = codes()
    base = table(m, x)
    for k in range(1, 5):
        y = x.clone()
        y[:, 1, k, 1, 1] = (y[:, 1, k, 1, 1] + 1) % LEVELS
        out = table(m, y)
        cell = (out - base)[:, :, :, 1, 1, 1].abs().amax(dim=(0, 2))  # per channel at that cell
        assert (cell[: k + 1] == 0).all(), f"a channel <= {k} saw sub-position {k} of its own cell"
        if k < 4:
            assert (cell[k + 1:] > 1e-6).any(), f"no later sub-position read sub-position {k}"


def test_past_frames_reach_both_levels():
    m = tiny()
    x = codes()
    base = table(m, x)
    y = x.clone()
    y[:, 0, :, 2, 2] = (y[:, 0, :, 2, 2] + 1) % LEVELS  # the last cell of frame 0 ...
    out = table(m, y)
    # ... reaches the first cell of frame 1, top and bottom (through the ConvLSTM context)
    assert moved(out[:, :1], base[:, :1])[1, 0, 0] and moved(out[:, 1:], base[:, 1:])[1, 0, 0]


def test_refuses_anything_but_five_code_channels():
    with pytest.raises(ValueError, match=r"expected 5 code channels .*given 1 in \(3, 1, 4, 4\)"):
        argen.create_model("vqvae_video_pixelcnn", video_shape=(3, 1, 4, 4), levels=4)
    with pytest.raises(ValueError, match="model.image_shape: a video model takes video_shape"):
        argen.create_model("vqvae_video_pixelcnn", image_shape=(5, 4, 4), levels=4)
    with pytest.raises(ValueError, match="model.kernel must be odd, given 4"):
        argen.create_model("vqvae_video_pixelcnn", kernel=4)
    assert argen.create_model("vqvae_video_pixelcnn", levels=4096, embed=2, hidden=5, lstm_hidden=2).levels == 4096


def test_a_prior_over_hvqvae_codes():
    """video_shape = code_shape and levels = codebook_size, as the contract builds a prior."""
    torch.manual_seed(0)
    tok = create_tokenizer("hvqvae", video_shape=(2, 1, 8, 8), levels=16, **tiny_tokenizer_kwargs("hvqvae")).eval()
    x = torch.randint(0, 16, (2, 2, 1, 8, 8))
    c = tok.encode(x)
    m = argen.create_model("vqvae_video_pixelcnn", video_shape=tok.code_shape, levels=tok.codebook_size,
                           **tiny_kwargs("vqvae_video_pixelcnn")).eval()
    lp = m.log_prob(c)
    assert lp.shape == (2,) and torch.isfinite(lp).all() and (lp < 0).all()
    s = m.sample(1, generator=torch.Generator().manual_seed(0))
    assert s.shape == (1, *tok.code_shape) and tok.decode(s).shape == (1, 2, 1, 8, 8)
