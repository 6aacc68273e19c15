"""The shared decoder trunk (argen.nn.transformer): cached decoding equals the full pass for every
pattern, with and without cross-attention; the cross K/V are projected once; the cache follows the
module's dtype and stays out of state dicts; classifier-free guidance; bad input."""
from __future__ import annotations

import pytest
import torch
from torch import Tensor

from argen.nn.attention import AttentionPattern, CausalPattern, Local1DPattern, Local2DPattern, attend
from argen.nn.transformer import Transformer
from argen.sampling.logits import classifier_free_guidance


class FrameLocalPattern(AttentionPattern):
    """A toy block-local 3-D pattern (video: T frames of H x W, raster inside a frame): a query sees
    the earlier positions of its own frame and all of the previous frame. Defined only by
    `allowed` and its query blocks / key windows: what a new pattern has to supply."""

    def __init__(self, frames: int, height: int, width: int) -> None:
        super().__init__(frames * height * width)
        self.frame = height * width
        starts = torch.arange(frames)[:, None] * self.frame
        k_index = starts - self.frame + torch.arange(2 * self.frame)[None]
        k_index[k_index < 0] = -1
        self._set_blocks(starts + torch.arange(self.frame)[None], k_index)

    def allowed(self, qi: Tensor, ki: Tensor) -> Tensor:
        return (ki <= qi) & (ki // self.frame >= qi // self.frame - 1)


PATTERNS = {
    "causal": lambda: CausalPattern(13),
    "causal_strict": lambda: CausalPattern(13, strict=True),
    "local1d": lambda: Local1DPattern(13, 4, 3),
    "local2d": lambda: Local2DPattern(3, 4, 2, (2, 2), (1, 1)),
    "frame3d": lambda: FrameLocalPattern(3, 2, 2),
}
DIM, CTX = 8, 6


def trunk(pattern: AttentionPattern, context_dim: int | None = None, n_layers: int = 2) -> Transformer:
    torch.manual_seed(0)
    t = Transformer(DIM, n_layers, 2, 16, pattern, context_dim=context_dim).double().eval()
    with torch.no_grad():
        for p in t.parameters():  # far from the init, so every path matters
            p.add_(0.3 * torch.randn_like(p))
    return t


@pytest.mark.parametrize("name", list(PATTERNS))
@pytest.mark.parametrize("cross", [False, True])
def test_prefill_and_decode_equal_the_full_pass(name, cross):
    pattern = PATTERNS[name]()
    model = trunk(pattern, CTX if cross else None)
    n = pattern.length
    x = torch.randn(3, n, DIM, dtype=torch.float64)
    kw = {}
    if cross:
        kw = dict(context=torch.randn(3, 5, CTX, dtype=torch.float64),
                  context_mask=torch.tensor([[True] * 5, [True, True, False, True, False], [True] + [False] * 4]))
    with torch.no_grad():
        full = model(x, **kw)
        cache = model.new_cache(3)
        parts = [model.prefill(x[:, :5], cache, **kw)]
        parts += [model.decode_one(x[:, t : t + 1], t, cache) for t in range(5, n)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    # the blocked full pass is the dense-mask definition
    q, k, v = (torch.randn(2, 2, n, 4, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(pattern(q, k, v), attend(q, k, v, pattern.dense()))


def test_cross_attention_reads_the_context_and_honours_its_mask():
    model = trunk(CausalPattern(7), CTX)
    x, ctx = torch.randn(2, 7, DIM, dtype=torch.float64), torch.randn(2, 4, CTX, dtype=torch.float64)
    mask = torch.tensor([[True, True, False, False]] * 2)
    other = ctx.clone()
    other[:, 2:] = torch.randn(2, 2, CTX, dtype=torch.float64)
    with torch.no_grad():
        assert (model(x, ctx) - model(x, other)).abs().max() > 1e-6
        torch.testing.assert_close(model(x, ctx, mask), model(x, other, mask), rtol=0, atol=0)
        torch.testing.assert_close(model(x, ctx, mask), model(x, ctx[:, :2]))


def test_cross_keys_values_are_projected_once_per_sample():
    model = trunk(Local1DPattern(9, 3, 2), CTX, n_layers=3)
    calls = []
    for i, block in enumerate(model.blocks):
        block.cross.kv.register_forward_hook(lambda mod, inp, out, i=i: calls.append(i))
    x, ctx = torch.randn(2, 9, DIM, dtype=torch.float64), torch.randn(2, 4, CTX, dtype=torch.float64)
    with torch.no_grad():
        cache = model.new_cache(2)
        model.prefill(x[:, :1], cache, context=ctx)
        assert calls == [0, 1, 2]
        for t in range(1, 9):
            model.decode_one(x[:, t : t + 1], t, cache)
        assert calls == [0, 1, 2], "a decode step projected the context again"
        for block, cc in zip(model.blocks, cache.context):
            k, v = block.cross.keys_values(ctx)
            assert torch.equal(cc.k, k) and torch.equal(cc.v, v)
        cache.reset()
        with pytest.raises(ValueError, match="expected a context at the first prefill"):
            model.prefill(x[:, :1], cache)


def test_cache_follows_the_module_dtype_and_stays_out_of_the_state_dict():
    model = Transformer(DIM, 2, 2, 16, Local2DPattern(2, 3, 1, (1, 2), (1, 1)), context_dim=CTX).eval()
    keys = set(model.state_dict())
    cache = model.setup_cache(2)
    x, ctx = torch.randn(2, 6, DIM), torch.randn(2, 3, CTX)
    with torch.no_grad():
        model.prefill(x[:, :2], context=ctx)
    assert set(model.state_dict()) == keys and not any("cache" in k for k in keys)
    assert cache.self_attn[0].k.dtype == torch.float32 and cache.context[0].k.dtype == torch.float32
    for dtype in (torch.float64, torch.bfloat16):
        model.to(dtype)
        assert model.cache is cache
        assert all(b.dtype == dtype for b in cache.buffers() if b.is_floating_point())
        assert cache.self_attn[1].k.shape == (2, 2, 6, 4) and cache.context[1].k.shape == (2, 2, 3, 4)
        assert model.new_cache(2).self_attn[0].v.dtype == dtype
    model.to(torch.float32)
    with torch.no_grad():
        full = model(x, ctx)
        out = [model.prefill(x[:, :2], context=ctx)] + [model.decode_one(x[:, t : t + 1], t) for t in range(2, 6)]
        torch.testing.assert_close(torch.cat(out, 1), full, atol=1e-5, rtol=1e-5)
        bf = model.to(torch.bfloat16)
        fresh = bf.new_cache(2)
        half = torch.cat([bf.prefill(x[:, :3].bfloat16(), fresh, context=ctx.bfloat16())]
                         + [bf.decode_one(x[:, t : t + 1].bfloat16(), t, fresh) for t in range(3, 6)], 1)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), full, atol=0.1, rtol=0.1)


def test_trunk_rejects_bad_shapes():
    plain, cross = trunk(CausalPattern(6)), trunk(CausalPattern(6), CTX)
    x, ctx = torch.randn(2, 6, DIM, dtype=torch.float64), torch.randn(2, 3, CTX, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"shape \(B, T, 8\), given \(2, 6, 5\)"):
        plain(x[..., :5])
    with pytest.raises(ValueError, match="length 6, given 4"):
        plain(x[:, :4])
    with pytest.raises(ValueError, match="floating-point"):
        plain(torch.zeros(2, 6, DIM, dtype=torch.long))
    with pytest.raises(ValueError, match="context=None"):
        plain(x, ctx)
    with pytest.raises(ValueError, match="expected a context"):
        cross(x)
    with pytest.raises(ValueError, match=r"\(2, M >= 1, 6\), given \(1, 3, 6\)"):
        cross(x, ctx[:1])
    with pytest.raises(ValueError, match="context_mask of shape \\(2, 3\\)"):
        cross(x, ctx, torch.ones(2, 3))
    cache = plain.new_cache(2)
    with pytest.raises(ValueError, match="expected a cache"):
        plain.prefill(x[:, :2])
    with pytest.raises(ValueError, match="batch of 2 .* given 3"):
        plain.prefill(torch.randn(3, 2, DIM, dtype=torch.float64), cache)
    with pytest.raises(ValueError, match=r"positions 0 <= start < end <= 6, given \[5, 7\)"):
        plain.prefill(x[:, :2], cache, start=5)
    with pytest.raises(ValueError, match=r"one position \(B, 1, 8\), given \(2, 2, 8\)"):
        plain.decode_one(x[:, :2], 0, cache)
    with pytest.raises(ValueError, match="batch size"):
        plain.new_cache(0)


def test_classifier_free_guidance():
    torch.manual_seed(0)
    c, u = torch.randn(4, 7), torch.randn(4, 7)
    assert classifier_free_guidance(c, u, 1) is c and classifier_free_guidance(c, u, 1.0) is c
    assert classifier_free_guidance(c, u, 0) is u
    g = classifier_free_guidance(c, u, 3.0)
    assert g.shape == (4, 7)
    torch.testing.assert_close(g, u + 3 * (c - u))
    # logit space and log-softmax space give the same distribution
    ls = u.log_softmax(-1) + 3 * (c.log_softmax(-1) - u.log_softmax(-1))
    torch.testing.assert_close(g.softmax(-1), ls.softmax(-1))
    # larger scales move probability towards what the condition favours
    best = (c - u).argmax(-1, keepdim=True)
    p = [classifier_free_guidance(c, u, s).softmax(-1).gather(-1, best) for s in (1.0, 2.0, 4.0)]
    assert (p[0] < p[1]).all() and (p[1] < p[2]).all()
    # impossible values stay impossible, no NaN
    c2 = c.clone()
    c2[0, 0] = float("-inf")
    u2 = u.clone()
    u2[1, 1] = float("-inf")
    g2 = classifier_free_guidance(c2, u2, 2.5)
    assert g2[0, 0] == float("-inf") and g2[1, 1] == float("-inf") and not g2.isnan().any()
    # batched over leading dims
    assert classifier_free_guidance(torch.randn(2, 3, 5), torch.randn(2, 3, 5), 1.5).shape == (2, 3, 5)


@pytest.mark.parametrize("args,message", [
    ((torch.zeros(2, 3), torch.zeros(2, 4), 2.0), r"shape of cond_logits \(2, 3\), given \(2, 4\)"),
    ((torch.zeros(2, 3), torch.zeros(2, 3), -1.0), "scale must be a finite number >= 0, given -1.0"),
    ((torch.zeros(2, 3), torch.zeros(2, 3), float("nan")), "given nan"),
    ((torch.zeros(2, 3), torch.zeros(2, 3), True), "given True"),
    ((torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3), 2.0), "cond_logits must be a floating-point tensor, given torch.int64"),
    ((torch.zeros(2, 3), [0.0, 1.0, 2.0], 2.0), "uncond_logits must be a floating-point tensor, given list"),
])
def test_classifier_free_guidance_rejects_bad_input(args, message):
    with pytest.raises(ValueError, match=message):
        classifier_free_guidance(*args)
