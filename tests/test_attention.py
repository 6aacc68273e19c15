"""Attention masks, blocked local attention and the static KV cache (argen.nn.attention)."""
from __future__ import annotations

import pytest
import torch

from argen.nn.attention import (
    CausalPattern,
    KVCache,
    Local1DPattern,
    Local2DPattern,
    MultiHeadAttention,
    attend,
    block_raster_order,
)


def test_attend_empty_row_is_zero_without_nan_gradients():
    q, k, v = (torch.randn(2, 3, 4, 5, requires_grad=True) for _ in range(3))
    mask = torch.ones(4, 4, dtype=torch.bool).tril(-1)  # row 0 sees nothing
    out = attend(q, k, v, mask)
    assert torch.equal(out[:, :, 0], torch.zeros_like(out[:, :, 0]))
    assert out[:, :, 1:].abs().sum() > 0
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    with pytest.raises(ValueError, match="bool"):
        attend(q, k, v, mask.float())


@pytest.mark.parametrize("strict", [False, True])
def test_causal_pattern(strict):
    dense = CausalPattern(7, strict=strict).dense()
    assert torch.equal(dense, torch.ones(7, 7, dtype=torch.bool).tril(-1 if strict else 0))


@pytest.mark.parametrize("n,block,memory", [(12, 4, 4), (13, 4, 3), (10, 3, 0), (5, 8, 2), (9, 1, 2)])
def test_local1d_mask_is_causal_and_exactly_the_window(n, block, memory):
    dense = Local1DPattern(n, block, memory).dense()
    for q in range(n):
        start = q // block * block
        expected = {k for k in range(n) if start - memory <= k <= q}
        assert set(torch.nonzero(dense[q]).flatten().tolist()) == expected, f"query {q}"
    assert not dense.triu(1).any(), "a query sees a later position"


def test_block_raster_order_covers_every_pixel_once():
    order = block_raster_order(5, 7, 2, 3)
    assert sorted(order) == [(i, j) for i in range(5) for j in range(7)]
    assert order[:7] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (0, 3)]
    assert order[-1] == (4, 6)


def test_local2d_mask_hand_checked_example():
    """4x4 image, 2x2 blocks, memory 1 row / 1 column: the query at pixel (3, 2) (last block,
    generated (2,2), (2,3), (3,2), (3,3)) sees rows 1..3, columns 1..3, earlier in block order."""
    pattern = Local2DPattern(4, 4, 1, block=(2, 2), memory=(1, 1))
    order = pattern.order
    assert order == [(0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (0, 3), (1, 2), (1, 3),
                     (2, 0), (2, 1), (3, 0), (3, 1), (2, 2), (2, 3), (3, 2), (3, 3)]
    seen = {order[k] for k in torch.nonzero(pattern.dense()[order.index((3, 2))]).flatten().tolist()}
    assert seen == {(1, 1), (1, 2), (1, 3), (2, 1), (3, 1), (2, 2), (2, 3), (3, 2)}
    # the first pixel of the top-right block sees the block to its left (memory column 1) only
    seen = {order[k] for k in torch.nonzero(pattern.dense()[order.index((0, 2))]).flatten().tolist()}
    assert seen == {(0, 1), (1, 1), (0, 2)}


@pytest.mark.parametrize("h,w,c,block,memory", [(5, 6, 3, (2, 4), (1, 1)), (4, 4, 1, (2, 2), (0, 0)), (6, 5, 2, (3, 2), (2, 3))])
def test_local2d_mask_matches_its_definition(h, w, c, block, memory):
    pattern = Local2DPattern(h, w, c, block, memory)
    dense = pattern.dense()
    assert not dense.triu(1).any(), "a query sees a later position"
    (bh, bw), (mh, mw) = block, memory
    pos = [(i, j, ch) for (i, j) in pattern.order for ch in range(c)]
    for q, (i, j, _ch) in enumerate(pos):
        r0, c0 = i // bh * bh, j // bw * bw
        expected = {k for k, (a, b, _) in enumerate(pos[: q + 1]) if r0 - mh <= a < r0 + bh and c0 - mw <= b < c0 + bw + mw}
        assert set(torch.nonzero(dense[q]).flatten().tolist()) == expected, f"query {pos[q]}"


PATTERNS = [
    lambda: CausalPattern(11),
    lambda: CausalPattern(11, strict=True),
    lambda: Local1DPattern(11, 4, 3),
    lambda: Local1DPattern(11, 3, 0),
    lambda: Local2DPattern(3, 5, 2, (2, 2), (1, 1)),
    lambda: Local2DPattern(4, 4, 3, (2, 3), (1, 2)),
]


@pytest.mark.parametrize("make", PATTERNS)
def test_blocked_attention_equals_dense_mask(make):
    """The blocked computation (gathered key windows) gives exactly the dense-mask attention."""
    pattern = make()
    n = pattern.length
    q, k, v = (torch.randn(2, 3, n, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    blocked = pattern(q, k, v)
    dense = attend(q, k, v, pattern.dense())
    torch.testing.assert_close(blocked, dense)
    g_blocked = torch.autograd.grad(blocked.square().sum(), (q, k, v))
    g_dense = torch.autograd.grad(dense.square().sum(), (q, k, v))
    for a, b in zip(g_blocked, g_dense):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("make", PATTERNS)
def test_kv_cache_prefill_and_decode_equal_full_attention(make):
    pattern = make()
    n = pattern.length
    attn = MultiHeadAttention(8, 2).eval()
    x = torch.randn(3, n, 8)
    with torch.no_grad():
        full = attn(x, pattern)
        cache = attn.new_cache(3, n)
        prefill = 4
        parts = [attn(x[:, :prefill], pattern, cache=cache, start=0)]
        parts += [attn(x[:, t : t + 1], pattern, cache=cache, start=t) for t in range(prefill, n)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


def test_cross_attention_widths_and_zero_first_output():
    """PixelSNAIL's use: queries and keys/values from different inputs, strict mask, no out bias."""
    attn = MultiHeadAttention(5, 2, kv_dim=7, qk_dim=4, v_dim=6, out_dim=3, out_bias=False)
    out = attn(torch.randn(2, 9, 5), CausalPattern(9, strict=True), kv=torch.randn(2, 9, 7))
    assert out.shape == (2, 9, 3)
    assert torch.equal(out[:, 0], torch.zeros(2, 3)) and out[:, 1:].abs().sum() > 0


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="block"):
        Local1DPattern(10, 0, 2)
    with pytest.raises(ValueError, match="memory"):
        Local2DPattern(4, 4, 1, (2, 2), (-1, 0))
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(6, 4)
    with pytest.raises(ValueError, match="length 5"):
        CausalPattern(5)(*(torch.randn(1, 1, 4, 2) for _ in range(3)))
    cache = KVCache(1, 1, 4, 2)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        cache.update(3, torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
