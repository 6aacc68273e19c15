"""token_gpt, the autoregressive prior over tokenizer code grids: causality and normalization at
codebook sizes, cached == naive sampling (with guidance and filters), the null class, label
dropout, the KV cache against the full pass, and what it refuses."""
from __future__ import annotations

import pytest
import torch

import argen
from argen.nn.attention import Rotary
from tests import test_conformance as conformance  # the module, so its tests are not collected twice here

TINY = dict(d_model=16, n_layers=2, n_heads=2, d_ff=32)
POSITIONS = ["learned", "rope"]


def prior(shape=(1, 4, 4), levels=1024, num_classes=None, pos="learned", seed=0, **kw):
    """A tiny token_gpt with every parameter perturbed (a zero head would make all conditionals uniform)."""
    torch.manual_seed(seed)
    m = argen.create_model("token_gpt", image_shape=shape, levels=levels, num_classes=num_classes,
                           pos_embedding=pos, **{**TINY, **kw}).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


def codes(m, batch, seed=1):
    return torch.randint(0, m.levels, (batch, *m.data_shape), generator=torch.Generator().manual_seed(seed))


def test_default_config_is_the_small_mnist_prior():
    m = argen.create_model("token_gpt")
    assert m.data_shape == (1, 7, 7) and m.levels == 128
    assert 0.7e6 < sum(p.numel() for p in m.parameters()) < 0.9e6
    # zero-initialised head: a fresh prior is uniform over the codebook
    x = codes(m, 2)
    torch.testing.assert_close(m.log_prob(x).detach(), torch.full((2,), -49 * torch.log(torch.tensor(128.0)).item()))


@pytest.mark.parametrize("pos", POSITIONS)
def test_causal_and_normalized_at_1024_levels(pos, monkeypatch):
    """The conformance checks over a (1, 4, 4) grid of 1024 codes, run on a perturbed
    class-conditional prior (the suite's own builder swapped for this one)."""
    m = prior(num_classes=3, pos=pos)
    monkeypatch.setattr(conformance, "make_tiny", lambda *a, **k: m)
    for check in (conformance.test_causality_pixels, conformance.test_causality_subpixels,
                  conformance.test_earlier_pixels_matter, conformance.test_normalization_by_enumeration):
        check("token_gpt", (1, 4, 4), 1024)
    table = m.conditionals(codes(m, 2), torch.tensor([0, 3]))  # the null class is a valid label
    torch.testing.assert_close(table.exp().sum(2), torch.ones(2, 1, 4, 4))


@pytest.mark.parametrize("pos", POSITIONS)
def test_kv_cache_prefill_and_decode_equal_the_full_pass(pos):
    m = prior(shape=(1, 3, 5), levels=300, num_classes=4, pos=pos)
    x, c = codes(m, 3), torch.tensor([0, 2, 4])
    with torch.no_grad():
        h = m.embed(x, c)
        full = m.trunk(h)
        cache = m.new_cache(3)
        parts = [m.trunk(h[:, :1], cache, 0)]  # prefill the start slot, then one slot per code
        parts += [m.trunk(h[:, t : t + 1], cache, t) for t in range(1, 15)]
        # a slot range embeds what the full call embeds at those slots
        torch.testing.assert_close(m.embed(x, c, 6, 9), h[:, 6:9], atol=0, rtol=0)
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rearranged(full, m), m(x, c), atol=0, rtol=0)


def rearranged(logits, m):
    return logits.transpose(1, 2).reshape(logits.shape[0], m.levels, *m.position_shape)


@pytest.mark.parametrize("pos", POSITIONS)
@pytest.mark.parametrize("opts", [dict(cfg_scale=3.0), dict(cfg_scale=3.0, temperature=0.8, top_k=50, top_p=0.9),
                                  dict(top_k=20, top_p=0.8), dict(temperature=1.3)],
                         ids=["cfg3", "cfg3-filters", "filters", "temperature"])
def test_cached_sampling_equals_naive(pos, opts):
    m = prior(shape=(1, 4, 5), levels=512, num_classes=3, pos=pos)
    cond = torch.tensor([0, 1, 2, 3])  # the last one the null class
    gen = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    a = m.sample(4, cond, generator=gen(5), **opts)
    b = m.sample(4, cond, generator=gen(5), naive=True, **opts)
    assert torch.equal(a, b)
    known = torch.zeros(4, 5, dtype=torch.bool)
    known[:2] = True
    known[3, 1] = True
    c = m.complete(a, known, cond, generator=gen(6), **opts)
    d = m.complete(a, known, cond, generator=gen(6), naive=True, **opts)
    assert torch.equal(c, d) and torch.equal(c[:, :, known], a[:, :, known])


def test_guidance_changes_samples_and_scale_one_is_unguided():
    m = prior(shape=(1, 4, 5), levels=512, num_classes=3)
    cond = torch.tensor([0, 1, 2])
    gen = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    plain = m.sample(3, cond, generator=gen())
    assert torch.equal(m.sample(3, cond, generator=gen(), cfg_scale=1.0), plain)
    assert torch.equal(m.sample(3, cond, generator=gen(), cfg_scale=1.0, naive=True), plain)
    assert not torch.equal(m.sample(3, cond, generator=gen(), cfg_scale=3.0), plain)
    # scale 0 is the unconditional (null-class) model exactly; cond=None means the null class
    zero = m.sample(3, cond, generator=gen(), cfg_scale=0.0)
    assert torch.equal(zero, m.sample(3, torch.full((3,), 3), generator=gen()))
    assert torch.equal(zero, m.sample(3, None, generator=gen()))


def test_null_class_and_label_range():
    m = prior(levels=64, num_classes=3)
    x = codes(m, 2)
    assert torch.equal(m.null_cond(2), torch.tensor([3, 3]))
    with torch.no_grad():
        assert torch.equal(m.log_prob(x, torch.tensor([3, 3])), m.log_prob(x))  # null label == cond=None
        assert not torch.allclose(m.log_prob(x, torch.tensor([0, 1])), m.log_prob(x))
    for bad in (torch.tensor([0, 4]), torch.tensor([-1, 0])):
        with pytest.raises(ValueError, match=r"labels in \[0, 2\] or the null class 3, given range"):
            m.log_prob(x, bad)
    with pytest.raises(ValueError, match="null class 3"):
        m.log_prob(x, torch.tensor([0, 1, 2]))  # wrong batch
    with pytest.raises(ValueError, match=r"cond as torch.long labels"):
        m.sample(2, torch.tensor([0.0, 1.0]))
    unconditional = prior(levels=64)
    with pytest.raises(ValueError, match="without num_classes, so it has no null class"):
        unconditional.null_cond(2)
    with pytest.raises(ValueError, match="no null class"):
        unconditional.sample(1, cfg_scale=2.0)
    with pytest.raises(ValueError, match="cond=None"):
        unconditional.log_prob(x, torch.tensor([0, 0]))
    # the shared sampling policy picks real classes only
    from argen.conditioning import sample_conditions

    assert sample_conditions(m.cond_spec, 7).tolist() == [0, 1, 2, 0, 1, 2, 0]


def test_label_dropout_only_in_training_and_reproducible():
    m = prior(levels=64, num_classes=5, label_dropout=0.5)
    y = torch.arange(64) % 5
    assert torch.equal(m.start_rows(y, 64), y)  # eval: labels untouched
    m.train()
    torch.manual_seed(3)
    a = m.start_rows(y, 64)
    torch.manual_seed(3)
    b = m.start_rows(y, 64)
    assert torch.equal(a, b)
    dropped = a != y
    assert torch.equal(a[dropped], torch.full((int(dropped.sum()),), 5))
    assert 10 < int(dropped.sum()) < 54  # about half of 64
    # the loss in training mode sees the dropped labels: it equals the loss under them
    x = codes(m, 64)
    torch.manual_seed(3)
    train_loss = m.loss(x, y)
    m.eval()
    torch.testing.assert_close(train_loss, m.loss(x, a), atol=1e-6, rtol=1e-6)
    assert torch.equal(prior(levels=64, num_classes=5, label_dropout=0.0).train().start_rows(y, 64), y)


def test_refuses_anything_but_a_code_grid():
    with pytest.raises(ValueError, match=r"code grid: expected image_shape \(1, h, w\), given \(3, 4, 4\)"):
        argen.create_model("token_gpt", image_shape=(3, 4, 4), levels=16, **TINY)
    with pytest.raises(ValueError, match="model.levels"):
        argen.create_model("token_gpt", image_shape=(1, 4, 4), levels=65537, **TINY)
    with pytest.raises(ValueError, match="model.pos_embedding 'rope' needs a head width"):
        argen.create_model("token_gpt", image_shape=(1, 4, 4), levels=16, pos_embedding="rope", d_model=12, n_heads=2)
    m = argen.create_model("token_gpt", image_shape=(1, 2, 2), levels=65536, d_model=8, n_layers=1, n_heads=2, d_ff=8)
    assert m.sample(1).shape == (1, 1, 2, 2)


def test_rope_has_no_absolute_positions_and_is_used():
    m = prior(pos="rope", levels=64)
    assert m.row_embed is None and not any("embed" in k and ("row" in k or "col" in k) for k in m.state_dict())
    assert not any("rotary" in k for k in m.state_dict())  # tables are derived, not weights
    x = codes(m, 2)
    with torch.no_grad():
        with_rope = m(x)
        m.decoder.rotary = None
        without = m(x)
    assert (with_rope - without).abs().max() > 1e-3


def test_rotary_products_depend_only_on_the_offset_per_axis():
    positions = torch.tensor([[0, 0], [1, 2], [2, 1], [3, 3], [1, 0]])
    rot = Rotary(8, positions)
    q, k = torch.randn(1, 1, 1, 8).double(), torch.randn(1, 1, 1, 8).double()

    def product(i: int, j: int) -> float:
        return float((rot(q.float(), i).double() * rot(k.float(), j).double()).sum())

    assert abs(product(0, 1) - product(2, 3)) < 1e-5  # both offsets (1, 2)
    assert abs(product(0, 4) - product(0, 1)) > 1e-3  # offset (1, 0) differs
    torch.testing.assert_close(rot(q.float(), 0), q.float())  # position (0, 0): no turn
    with pytest.raises(ValueError, match="divisible by 4"):
        Rotary(6, positions)
