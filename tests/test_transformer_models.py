"""Image Transformer and PixelSNAIL: causality in their own order, local windows, receptive fields."""
from __future__ import annotations

import pytest
import torch

import argen
from argen.models.image import pixelsnail as pixelsnail_module
from argen.nn import scale_input

TINY_IT = dict(d_model=16, n_heads=2, d_ff=32, dropout=0.0)


def transformer(attention: str, shape=(3, 5, 6), levels=4, n_layers=2, **kw):
    kw = {**TINY_IT, "block_length": 4, "memory_length": 3, "block_h": 2, "block_w": 4,
          "memory_h": 1, "memory_w": 1, **kw}
    return argen.create_model("image_transformer", image_shape=shape, levels=levels, n_layers=n_layers,
                              attention=attention, **kw).eval()


def slot_dependencies(model, x):
    """(N, N) bool: does the output of slot s depend on the input of slot k (gradients)."""
    h = model.embed(x).detach().requires_grad_()
    logits = model.trunk(h)
    n = logits.shape[1]
    deps = torch.zeros(n, n, dtype=torch.bool)
    for s in range(n):
        (g,) = torch.autograd.grad(logits[0, s].sum(), h, retain_graph=True)
        deps[s] = g[0].abs().sum(-1) > 0
    return deps


# ----- Image Transformer -------------------------------------------------------------------------
@pytest.mark.parametrize("attention", ["full", "local1d", "local2d"])
def test_one_layer_reads_exactly_its_mask(attention):
    """With one layer, slot s's output depends on slot k's input iff the pattern allows (s, k)."""
    model = transformer(attention, shape=(3, 3, 5), n_layers=1)
    x = torch.randint(0, 4, (1, *model.data_shape))
    assert torch.equal(slot_dependencies(model, x), model.pattern.dense())


@pytest.mark.parametrize("attention", ["full", "local1d", "local2d"])
def test_deep_model_is_causal_over_slots(attention):
    model = transformer(attention, shape=(3, 3, 5), n_layers=3)
    deps = slot_dependencies(model, torch.randint(0, 4, (1, *model.data_shape)))
    assert not deps.triu(1).any(), "a slot reads a later slot"


@pytest.mark.parametrize("attention", ["full", "local1d", "local2d"])
def test_causal_in_generation_order_and_normalized(attention):
    """Changing pixels at or after position k of generation_order() leaves the log-probs before
    k unchanged; reduce=False is (B, H, W) in image layout; each conditional sums to one."""
    model = transformer(attention)
    order = model.generation_order()
    assert sorted(order) == [(i, j) for i in range(5) for j in range(6)]
    if attention == "local2d":
        assert order[:9] == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2), (1, 3), (0, 4)]
    x = torch.randint(0, 4, (2, 3, 5, 6))
    with torch.no_grad():
        base = model.log_prob(x, reduce=False)
        assert base.shape == (2, 5, 6)
        for k in (1, 7, 13, 29):
            y = x.clone()
            for i, j in order[k:]:
                y[:, :, i, j] = torch.randint(0, 4, (2, 3))
            out = model.log_prob(y, reduce=False)
            for i, j in order[:k]:
                torch.testing.assert_close(out[:, i, j], base[:, i, j], atol=1e-5, rtol=1e-5)
        table = model.conditionals(x)
    torch.testing.assert_close(table.exp().sum(2), torch.ones(2, 3, 5, 6))


def test_local1d_memory_window_bounds_the_dependence():
    """One layer: sub-pixel s (in the sequence) depends on the values of sub-pixels
    [block_start - memory - 1, s - 1] and on nothing outside (gradient through the embeddings)."""
    block, memory = 5, 4
    model = transformer("local1d", n_layers=1, block_length=block, memory_length=memory)
    x = torch.randint(0, 4, (1, 3, 5, 6))
    values = {}

    def keep(module, inputs, output):
        output.retain_grad()
        values["h"] = output

    model.value_embed.register_forward_hook(keep)
    logits = model.trunk(model.embed(x))  # (1, N, L), slot s predicts sub-pixel s
    n = logits.shape[1]
    for s in (3, 12, 17, 40, n - 1):
        values["h"].grad = None
        logits[0, s].sum().backward(retain_graph=True)
        # input slot k carries sub-pixel k-1: map slot gradients to sub-pixel indices
        reads = {k - 1 for k in range(1, n) if values["h"].grad[0, k].abs().sum() > 0}
        lo = max(s // block * block - memory - 1, 0)
        assert reads == set(range(lo, s)), f"sub-pixel {s}"


@pytest.mark.parametrize("attention", ["full", "local1d", "local2d"])
def test_kv_cache_decode_equals_full_forward(attention):
    """Prefill + one-slot decode through the model's own blocks gives the full-pass logits."""
    model = transformer(attention)
    x = torch.randint(0, 4, (2, 3, 5, 6))
    with torch.no_grad():
        h = model.embed(x)
        full = model.trunk(h)
        cache = model.new_cache(2)
        parts = [model.trunk(h[:, :10], cache, 0)]
        parts += [model.trunk(h[:, t : t + 1], cache, t) for t in range(10, h.shape[1])]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


# State-dict keys of a 2-layer Image Transformer with classes before the shared trunk
# (argen.nn.transformer), in order: checkpoints (and the weight fingerprints of compressed files)
# written then must keep loading and matching.
OLD_KEYS = ["row_embed", "col_embed", "channel_embed", "value_embed.weight", "class_embed.embed.weight"] + [
    f"blocks.{i}.{name}.{p}" for i in range(2)
    for name in ("norm1", "attn.q", "attn.kv", "attn.out", "norm2", "mlp.0", "mlp.2") for p in ("weight", "bias")
] + ["norm.weight", "norm.bias", "head.weight", "head.bias"]


@pytest.mark.parametrize("attention", ["full", "local1d", "local2d"])
def test_old_checkpoint_names_load_and_give_identical_log_prob(attention):
    """The model runs on the shared trunk but keeps its parameter names: an old state dict loads
    (strictly) and gives the same log-probs; the trunk is the model's own blocks, not a copy."""
    torch.manual_seed(1)
    model = transformer(attention, num_classes=3)
    with torch.no_grad():
        model.class_embed.embed.weight.normal_()
    old = {k: v.clone() for k, v in model.state_dict().items()}
    assert list(old) == OLD_KEYS
    assert model.decoder.blocks is model.blocks and model.decoder.norm is model.norm
    assert model.decoder.pattern is model.pattern
    assert len(list(model.parameters())) == len(OLD_KEYS)  # no parameter registered twice
    torch.manual_seed(2)
    fresh = transformer(attention, num_classes=3)
    fresh.load_state_dict(old)  # strict
    x, c = torch.randint(0, 4, (3, 3, 5, 6)), torch.tensor([0, 1, 2])
    with torch.no_grad():
        assert torch.equal(fresh.log_prob(x, c), model.log_prob(x, c))
    # .to() reaches the trunk's parts through the model
    fresh.to(torch.float64)
    assert fresh.decoder.norm.weight.dtype == torch.float64
    assert fresh.new_cache(2).self_attn[0].k.dtype == torch.float64


def test_class_reaches_slots_outside_the_start_tokens_window():
    model = transformer("local1d", num_classes=3, n_layers=1)
    with torch.no_grad():
        model.class_embed.embed.weight.normal_()
        x = torch.randint(0, 4, (2, 3, 5, 6))
        a = model(x, torch.tensor([0, 0]))
        b = model(x, torch.tensor([1, 2]))
    assert (a[:, :, -1, -1] - b[:, :, -1, -1]).abs().max() > 1e-4


@pytest.mark.parametrize("shape,levels", [((1, 7, 3), 2), ((3, 2, 9), 256)])
@pytest.mark.parametrize("attention,pos", [("local2d", "sinusoidal"), ("local1d", "learned"), ("full", "sinusoidal")])
def test_transformer_sizes_levels_and_sampling(shape, levels, attention, pos):
    model = transformer(attention, shape=shape, levels=levels, n_layers=1, pos_embedding=pos)
    x = torch.randint(0, levels, (2, *shape))
    assert model.log_prob(x).shape == (2,)
    s = model.sample(1, generator=torch.Generator().manual_seed(0))
    assert s.shape == (1, *shape) and int(s.max()) < levels


@pytest.mark.parametrize("bad", [dict(attention="global"), dict(pos_embedding="rotary"), dict(n_heads=3),
                                 dict(block_length=0), dict(memory_w=-1), dict(pos_embedding="sinusoidal", d_model=15, n_heads=1)])
def test_transformer_bad_config(bad):
    bad = dict(bad)
    with pytest.raises(ValueError):
        transformer(bad.pop("attention", "local1d"), **bad)


# ----- PixelSNAIL --------------------------------------------------------------------------------
def snail(shape=(3, 8, 8), levels=16, **kw):
    kw = {"filters": 8, "n_blocks": 1, "resnets_per_block": 1, "key_dim": 4, "value_dim": 8,
          "components": 2, "dropout": 0.0, **kw}
    return argen.create_model("pixelsnail", image_shape=shape, levels=levels, **kw).eval()


def test_pixelsnail_first_pixel_gets_zero_attention_output():
    model = snail(n_blocks=2)
    outs = []
    for block in model.attention:
        block.attn.register_forward_hook(lambda m, i, o: outs.append(o))
    model(torch.randint(0, 16, (2, 3, 8, 8)))
    assert len(outs) == 2
    for o in outs:  # (B, H*W, filters), raster order
        assert torch.equal(o[:, 0], torch.zeros_like(o[:, 0]))
        assert (o[:, 1:].abs().sum(-1) > 0).all()


def test_pixelsnail_receptive_field_is_all_earlier_pixels(monkeypatch):
    """A shallow net (one block, one residual block): the parameters at pixel p have a nonzero
    gradient w.r.t. every pixel before p in raster order (the last row sees the first pixel,
    far outside the convolutions' reach) and a zero gradient w.r.t. p and everything after."""
    model = snail(shape=(3, 8, 8))
    seen = {}

    def scale_with_grad(x, levels):
        seen["xs"] = scale_input(x, levels).requires_grad_()
        return seen["xs"]

    monkeypatch.setattr(pixelsnail_module, "scale_input", scale_with_grad)
    params = model(torch.randint(0, 16, (1, 3, 8, 8)))
    for i, j in [(0, 0), (0, 5), (3, 0), (4, 4), (7, 0), (7, 7)]:
        (g,) = torch.autograd.grad(params[0, :, i, j].sum(), seen["xs"], retain_graph=True)
        reads = g[0].abs().sum(0) > 0  # (H, W)
        earlier = torch.zeros(8, 8, dtype=torch.bool)
        earlier.view(-1)[: i * 8 + j] = True
        assert torch.equal(reads, earlier), f"pixel {(i, j)}"


def test_pixelsnail_without_attention_would_not_reach_the_first_pixel(monkeypatch):
    """The previous test is meaningful: with the attention output zeroed, the last row of the
    shallow net no longer depends on the first pixel."""
    model = snail(shape=(1, 8, 8))
    for block in model.attention:
        block.attn.register_forward_hook(lambda m, i, o: torch.zeros_like(o))
    x = torch.randint(0, 16, (1, 1, 8, 8))
    y = x.clone()
    y[:, :, 0, 0] = (x[:, :, 0, 0] + 5) % 16
    with torch.no_grad():
        assert torch.equal(model(x)[:, :, 7], model(y)[:, :, 7])


@pytest.mark.parametrize("shape,levels", [((1, 5, 7), 2), ((3, 3, 4), 256)])
def test_pixelsnail_sizes_and_levels(shape, levels):
    model = snail(shape=shape, levels=levels, heads=2)
    x = torch.randint(0, levels, (2, *shape))
    assert model.log_prob(x, reduce=False).shape == (2, *shape[1:])
    s = model.sample(1, generator=torch.Generator().manual_seed(0))
    assert s.shape == (1, *shape) and int(s.max()) < levels


@pytest.mark.parametrize("bad", [dict(filters=0), dict(heads=0), dict(dropout=1.0), dict(components=0)])
def test_pixelsnail_bad_config(bad):
    with pytest.raises(ValueError):
        snail(**bad)
