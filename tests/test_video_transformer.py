"""Video Transformer: the block-local 3-D pattern (hand-checked masks, blocked == dense, cached ==
full, per-layer patterns in the trunk), the N-d subscale order, and the model: causality along its
generation order, earlier frames matter, normalization by enumeration, cached == naive sampling
(sample / complete / predict), KV-cache decode == full forward, bad input, training, save/load."""
from __future__ import annotations

import itertools

import pytest
import torch

import argen
from argen.nn.attention import Block3DPattern, CausalPattern, LayerPatterns, attend
from argen.nn.transformer import Transformer
from argen.orders import subscale_order, subscale_slice

TINY = dict(d_model=16, n_layers=2, n_heads=2, d_ff=32, subscale=(2, 2, 2), block_shapes=(1, 2, 2, 2, 1, 1))


def model(video_shape=(4, 1, 4, 4), levels=4, seed=0, **kw):
    torch.manual_seed(seed)
    m = argen.create_model("video_transformer", video_shape=video_shape, levels=levels, **{**TINY, **kw}).eval()
    with torch.no_grad():  # far from the init, so every path matters
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


def pairs(mask: torch.Tensor) -> set[tuple[int, int]]:
    return {(int(q), int(k)) for q, k in mask.nonzero()}


# ----- the pattern ----------------------------------------------------------------------------------
# Volume (T, H, W) = (2, 1, 4), blocks (1, 1, 2), in the subscale order of factors (1, 1, 2):
# sequence 0..7 = pixels (t, w) (0,0) (0,2) (1,0) (1,2) (0,1) (0,3) (1,1) (1,3); blocks (t, w // 2)
# = 0 1 2 3 0 1 2 3.
ORDER = [(0, 0, 0), (0, 0, 2), (1, 0, 0), (1, 0, 2), (0, 0, 1), (0, 0, 3), (1, 0, 1), (1, 0, 3)]


def test_block3d_mask_hand_example():
    assert subscale_order((2, 1, 4), (1, 1, 2)) == ORDER
    causal = Block3DPattern((2, 1, 4), (1, 1, 2), ORDER)
    # each query sees itself and, in the second slice, the same block's pixel of the first slice
    assert pairs(causal.dense()) == {(q, q) for q in range(8)} | {(4, 0), (5, 1), (6, 2), (7, 3)}
    unmasked = Block3DPattern((2, 1, 4), (1, 1, 2), ORDER, causal=False)
    assert pairs(unmasked.dense()) == {(q, q) for q in range(8)} | {(4, 0), (5, 1), (6, 2), (7, 3),
                                                                     (0, 4), (1, 5), (2, 6), (3, 7)}
    # key_shift=1: key slot j holds value j-1, so slot 4 (predicting pixel (0,1), block 0) reads
    # slot 1 (carrying pixel (0,0), block 0); the first slice's slots see no value of their block
    shifted = Block3DPattern((2, 1, 4), (1, 1, 2), ORDER, key_shift=1)
    assert pairs(shifted.dense()) == {(4, 1), (5, 2), (6, 3), (7, 4)}
    # raster order, two channels per pixel, block (2, 1, 2): position = rank * 2 + channel
    two = Block3DPattern((2, 1, 2), (2, 1, 1), None, channels=2)
    # pixels (0,0)->0,1  (0,1)->2,3  (1,0)->4,5  (1,1)->6,7; blocks by w: {0,1,4,5} and {2,3,6,7}
    want = {(q, k) for blk in ({0, 1, 4, 5}, {2, 3, 6, 7}) for q in blk for k in blk if k <= q}
    assert pairs(two.dense()) == want


@pytest.mark.parametrize("shift", [0, 1])
@pytest.mark.parametrize("channels", [1, 2])
def test_block3d_blocked_equals_dense_and_windows_gather_the_allowed_keys(shift, channels):
    order = subscale_order((3, 4, 5), (2, 2, 2))
    p = Block3DPattern((3, 4, 5), (2, 2, 3), order, channels, key_shift=shift)
    q, k, v = (torch.randn(2, 2, p.length, 4, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(p(q, k, v), attend(q, k, v, p.dense()))
    dense = p.dense()
    for start, end in [(0, 1), (7, 8), (p.length - 1, p.length), (5, 40), (0, p.length)]:
        w = p.window(start, end)
        allowed = dense[start:end]
        assert w.keys is not None and bool((w.keys < end).all()) and bool((w.keys[1:] > w.keys[:-1]).all())
        # the gathered keys hold every allowed key, and the mask is the dense rows there
        assert int(allowed.sum()) == int(w.mask.sum())
        torch.testing.assert_close(w.mask, allowed[:, w.keys])
    first = p.first_keys()
    idx = torch.arange(p.length)
    torch.testing.assert_close(first, torch.where(dense.any(1), dense.int().argmax(1), idx))


def test_trunk_with_per_layer_patterns_decodes_like_the_full_pass():
    order = subscale_order((2, 3, 4), (2, 1, 2))
    a = Block3DPattern((2, 3, 4), (2, 2, 2), order, key_shift=1)
    b = Block3DPattern((2, 3, 4), (1, 3, 4), order)
    torch.manual_seed(0)
    trunk = Transformer(8, 3, 2, 16, [a, b, a]).double().eval()
    assert isinstance(trunk.pattern, LayerPatterns) and len(trunk.pattern.distinct) == 2
    assert trunk.layer_pattern(0) is a and trunk.layer_pattern(1) is b and trunk.layer_pattern(2) is a
    x = torch.randn(2, a.length, 8, dtype=torch.float64)
    with torch.no_grad():
        full = trunk(x)
        cache = trunk.new_cache(2)
        parts = [trunk.prefill(x[:, :7], cache)] + [trunk.decode_one(x[:, t : t + 1], t, cache) for t in range(7, a.length)]
        # a different per-layer order of the same patterns computes something else
        other = Transformer(8, 3, 2, 16, [b, a, b]).double().eval()
        other.load_state_dict(trunk.state_dict())
        assert (other(x) - full).abs().max() > 1e-6
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-10, rtol=1e-10)


def test_pattern_and_trunk_bad_arguments():
    with pytest.raises(ValueError, match="block3d needs"):
        Block3DPattern((2, 2, 2), (0, 1, 1))
    with pytest.raises(ValueError, match="exactly once"):
        Block3DPattern((1, 1, 2), (1, 1, 1), [(0, 0, 0), (0, 0, 0)])
    with pytest.raises(ValueError, match="exactly once"):
        Block3DPattern((1, 1, 2), (1, 1, 1), [(0, 0, 0), (0, 0, 2)])
    with pytest.raises(ValueError, match="causal"):
        Block3DPattern((1, 2, 2), (1, 1, 1), causal=False).window(0, 1)
    with pytest.raises(ValueError, match="one sequence length"):
        LayerPatterns([CausalPattern(4), CausalPattern(5)])
    with pytest.raises(ValueError, match="one attention pattern per layer"):
        Transformer(8, 3, 2, 16, [CausalPattern(4)] * 2)


# ----- the order ------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,factors", [((4, 4, 6), (2, 2, 2)), ((5, 3, 4), (2, 2, 3)), ((3, 4), (2, 2)),
                                           ((2, 3, 3), (1, 1, 1)), ((2, 2, 2), (3, 1, 2))])
def test_subscale_order_is_a_permutation_visiting_slices_in_lexicographic_order(shape, factors):
    order = subscale_order(shape, factors)
    assert sorted(order) == list(itertools.product(*(range(n) for n in shape)))
    slices = [subscale_slice(p, factors) for p in order]
    assert slices == sorted(slices)  # slice by slice, in lexicographic order of the offsets
    offsets = [tuple(v % s for v, s in zip(p, factors)) for p in order]
    assert [o for i, o in enumerate(offsets) if i == 0 or o != offsets[i - 1]] == sorted(set(offsets))
    for o in set(offsets):  # raster inside each slice
        inside = [p for p, q in zip(order, offsets) if q == o]
        assert inside == sorted(inside)
    if all(f == 1 for f in factors):
        assert order == list(itertools.product(*(range(n) for n in shape)))


def test_subscale_order_bad_arguments():
    with pytest.raises(ValueError, match="subscale factors"):
        subscale_order((2, 2, 2), (2, 2))
    with pytest.raises(ValueError, match="subscale factors"):
        subscale_order((2, 2, 2), (2, 0, 1))
    with pytest.raises(ValueError, match="positive integers"):
        subscale_order((2, 0, 2), (1, 1, 1))


# ----- the model ------------------------------------------------------------------------------------
def test_generation_order_is_the_subscale_order_and_drives_the_slots():
    m = model()
    assert m.generation_order() == subscale_order((4, 4, 4), (2, 2, 2))
    assert m.capabilities.stepper_kind == "kv_cache" and m.exact_likelihood
    assert isinstance(m.pattern, LayerPatterns) and len(m.pattern) == 2
    assert m.pattern[0].key_shift == 1 and m.pattern[1].key_shift == 0
    assert m.pattern[0].block == (2, 4, 4) and m.pattern[1].block == (4, 2, 2)  # slice units x factors


@pytest.mark.parametrize("video_shape,kw", [((4, 1, 4, 4), {}), ((3, 3, 2, 3), {}),
                                            ((4, 1, 4, 4), dict(subscale=(1, 1, 1)))])
def test_causal_along_the_generation_order(video_shape, kw):
    m = model(video_shape, **kw)
    order = m.generation_order()
    x = torch.randint(0, 4, (2, *video_shape), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = m.log_prob(x, reduce=False)  # (B, T, H, W)
        for k in (0, 5, len(order) // 2, len(order) - 1):
            y = x.clone()
            for t, h, w in order[k:]:
                y[:, t, :, h, w] = torch.randint(0, 4, (2, video_shape[1]))
            y[:, order[k][0], :, order[k][1], order[k][2]] = (x[:, order[k][0], :, order[k][1], order[k][2]] + 1) % 4
            got = m.log_prob(y, reduce=False)
            earlier = torch.zeros_like(base, dtype=torch.bool)
            for t, h, w in order[:k]:
                earlier[:, t, h, w] = True
            torch.testing.assert_close(got[earlier], base[earlier])
            if k < len(order) - 1:  # changing position k (and after) changes something later
                later = ~earlier
                later[:, order[k][0], order[k][1], order[k][2]] = False
                assert (got[later] - base[later]).abs().max() > 1e-6


def test_earlier_frames_matter():
    m = model()
    x = torch.randint(0, 4, (1, 4, 1, 4, 4), generator=torch.Generator().manual_seed(2))
    y = x.clone()
    y[:, 0] = (x[:, 0] + 1) % 4
    with torch.no_grad():
        a, b = m.log_prob(x, reduce=False), m.log_prob(y, reduce=False)
    assert (a[:, 3] - b[:, 3]).abs().max() > 1e-4  # the last frame depends on the first
    t, h, w = m.generation_order()[-1]
    assert abs(float(a[0, t, h, w] - b[0, t, h, w])) > 1e-6  # even the last position of the order


@pytest.mark.parametrize("video_shape,levels", [((2, 1, 2, 4), 4), ((2, 3, 2, 2), 2)])
def test_normalized_by_enumeration(video_shape, levels):
    m = model(video_shape, levels)
    c = video_shape[1]
    x = torch.randint(0, levels, (1, *video_shape), generator=torch.Generator().manual_seed(3))
    order = m.generation_order()
    for t, h, w in (order[0], order[3], order[-1]):
        values = list(itertools.product(range(levels), repeat=c))
        batch = x.repeat(len(values), 1, 1, 1, 1)
        for i, v in enumerate(values):
            batch[i, t, :, h, w] = torch.tensor(v)
        with torch.no_grad():
            lp = m.log_prob(batch, reduce=False)[:, t, h, w]
        torch.testing.assert_close(torch.logsumexp(lp, 0), torch.tensor(0.0), atol=1e-5, rtol=0)


def test_kv_cache_decode_equals_full_forward():
    m = model((3, 3, 2, 3), levels=4).double()
    x = torch.randint(0, 4, (2, 3, 3, 2, 3), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        h = m.embed(x)
        full = m.trunk(h)
        cache = m.new_cache(2)
        parts = [m.trunk(h[:, :10], cache, 0)]
        parts += [m.trunk(m.embed(x, None, s, s + 1), cache, s) for s in range(10, h.shape[1])]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("video_shape", [(4, 1, 4, 4), (2, 3, 2, 3)])
def test_cached_equals_naive_for_sample_complete_and_predict(video_shape):
    m = model(video_shape, num_classes=3)
    cond = torch.tensor([0, 2])

    def both(fn):
        a = fn(dict(generator=torch.Generator().manual_seed(5)))
        b = fn(dict(generator=torch.Generator().manual_seed(5), naive=True))
        assert torch.equal(a, b)
        return a

    s = both(lambda kw: m.sample(2, cond, **kw))
    assert s.shape == (2, *video_shape) and s.dtype == torch.long and int(s.min()) >= 0 and int(s.max()) < 4
    x = torch.randint(0, 4, (2, *video_shape), generator=torch.Generator().manual_seed(6))
    known = torch.rand(2, video_shape[0], *video_shape[2:], generator=torch.Generator().manual_seed(7)) < 0.5
    filled = both(lambda kw: m.complete(x, known, cond, **kw))
    kept = known[:, :, None].expand_as(x)
    assert torch.equal(filled[kept], x[kept])
    pred = both(lambda kw: m.predict(x[:, :1], cond, **kw))
    assert torch.equal(pred[:, :1], x[:, :1]) and pred.shape == x.shape


def test_bad_input_and_config():
    m = model()
    with pytest.raises(ValueError, match=r"expected shape \(B, 4, 1, 4, 4\), given \(2, 4, 1, 4\)"):
        m.log_prob(torch.zeros(2, 4, 1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="torch.long"):
        m.log_prob(torch.zeros(2, 4, 1, 4, 4))
    with pytest.raises(ValueError, match=r"values in \[0, 3\]"):
        m.log_prob(torch.full((1, 4, 1, 4, 4), 4, dtype=torch.long))
    with pytest.raises(ValueError, match="context frames"):
        m.predict(torch.zeros(1, 4, 1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="multiple of 3"):
        argen.create_model("video_transformer", video_shape=(4, 1, 4, 4), levels=4, block_shapes=(1, 2, 2, 1))
    with pytest.raises(ValueError, match="divisible by n_heads"):
        argen.create_model("video_transformer", video_shape=(4, 1, 4, 4), levels=4, d_model=10, n_heads=4)
    with pytest.raises(ValueError, match="video_shape"):
        argen.create_model("video_transformer", image_shape=(1, 4, 4), levels=4)
    with pytest.raises(ValueError, match="subscale"):
        argen.create_model("video_transformer", video_shape=(4, 1, 4, 4), levels=4, subscale=(2, 0, 2))


def test_training_lowers_the_loss():
    torch.manual_seed(0)
    m = argen.create_model("video_transformer", video_shape=(4, 1, 4, 4), levels=2, **TINY).train()
    x = (torch.rand(4, 4, 1, 4, 4, generator=torch.Generator().manual_seed(8)) < 0.3).long()
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    first = float(m.loss(x).detach())
    for _ in range(15):
        opt.zero_grad()
        m.loss(x).backward()
        opt.step()
    assert float(m.loss(x).detach()) < first - 0.05


def test_save_load_round_trip(tmp_path):
    m = model(num_classes=2)
    x = torch.randint(0, 4, (2, 4, 1, 4, 4))
    cond = torch.tensor([1, 0])
    argen.save(m, tmp_path / "run")
    back = argen.load(tmp_path / "run")
    assert type(back).__name__ == "VideoTransformer" and back.config == m.config
    with torch.no_grad():
        torch.testing.assert_close(back.log_prob(x, cond), m.log_prob(x, cond), atol=0, rtol=0)
