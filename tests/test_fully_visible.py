"""The fully visible models FVSBN, NADE and MADE: NADE's one-pass likelihood against the per-d
definition, strict masks along each order, MADE's mask ensembles and order-agnostic training,
the "subpixel_state" cached sampler against the naive one, and their errors."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor

import argen
from argen.nn import scale_input
from argen.nn.masked_linear import MaskedLinear, flatten_subpixels, made_degrees, made_masks, order_to_ranks, subpixel_degrees
from argen.positions import at
from argen.sampling.naive import NaiveStepper, autoregressive_fill
from argen.sampling.subpixel_cache import SubpixelStateStepper


def make(name: str, shape=(1, 4, 4), levels: int = 4, classes: int | None = None, seed: int = 0, **kw):
    """Model with every parameter perturbed, so that no weight is at its (zero) initial value."""
    torch.manual_seed(seed)
    m = argen.create_model(name, image_shape=shape, levels=levels, num_classes=classes, **kw).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


def subpixel_logits(m, x: Tensor, **kw) -> Tensor:
    """(B, D, L) logits in the sub-pixel layout (pixel-major, channels of a pixel in turn)."""
    c, levels = m.channels, m.levels
    params = m(x, None, **kw)  # (B, C*L, H, W)
    return params.view(x.shape[0], c, levels, -1).permute(0, 3, 1, 2).reshape(x.shape[0], -1, levels)


# ----- NADE ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,levels,classes", [((1, 4, 4), 2, None), ((3, 3, 2), 5, 3), ((1, 3, 3), 256, None)])
def test_nade_one_pass_equals_the_per_d_definition(shape, levels, classes):
    """log p(x) = sum_d log softmax(b_d + U_d V_d sigmoid(c + W[:, <d] x_<d))[x_d], computed d by d."""
    m = make("nade", shape, levels, classes, hidden=7, rank=3)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, levels, (3, *shape), generator=g)
    cond = torch.tensor([0, 2, 1]) if classes else None
    with torch.no_grad():
        flat, xs = flatten_subpixels(x), scale_input(flatten_subpixels(x), levels)
        c0 = (m.c + (m.class_bias.embed(cond) if classes else 0)).expand(3, -1)
        total = torch.zeros(3, dtype=torch.float64)
        for d in range(m.num_dims):
            a = c0 + sum((xs[:, e, None] * m.weight[e] for e in range(d)), torch.zeros_like(c0))
            h = torch.sigmoid(a)
            feats = h @ m.out_weight[d].T + m.out_bias[d]  # (B, rank)
            logits = feats @ m.head.weight[d].T + m.head.bias[d]  # (B, L)
            total += logits.double().log_softmax(-1).gather(1, flat[:, d:d + 1]).squeeze(1)
        torch.testing.assert_close(m.log_prob(x, cond).double(), total, rtol=1e-5, atol=1e-4)


def test_nade_weights_are_shared_across_positions():
    """One W (D x H): the parameter count is that of the paper's NADE plus the per-sub-pixel head."""
    m = argen.create_model("nade", image_shape=(1, 28, 28), levels=2, hidden=500, rank=1)
    d, h = 784, 500
    assert m.weight.shape == (d, h)
    assert sum(p.numel() for p in m.parameters()) == d * h + h + d * h + d + (d * 2 + d * 2)


# ----- masks --------------------------------------------------------------------------------------
def dependencies(m, x: Tensor, **kw) -> Tensor:
    """(D, D) bool: entry [d, e] True when changing sub-pixel e changes the logits of sub-pixel d."""
    base = subpixel_logits(m, x, **kw)
    dims = m.num_dims
    dep = torch.zeros(dims, dims, dtype=torch.bool)
    for e in range(dims):
        y = flatten_subpixels(x).clone()
        y[:, e] = (y[:, e] + 1) % m.levels
        y = y.view(x.shape[0], *m.data_shape[1:], m.channels).permute(0, 3, 1, 2).contiguous()
        dep[:, e] = (subpixel_logits(m, y, **kw) - base).abs().amax(dim=(0, 2)) > 1e-6
    return dep


def degrees_of(m, mask: int | None = None) -> Tensor:
    """Sub-pixel degrees (1..D) along the model's generation order (or fixed mask `mask`)."""
    order = m.generation_order() if mask is None else m.order_of(mask)
    return subpixel_degrees(order_to_ranks(order, m.position_shape), m.channels)


@pytest.mark.parametrize("name,kw", [("fvsbn", dict(rank=2)), ("made", dict(hidden=(40,), rank=2)),
                                     ("made", dict(hidden=(40, 30, 20), rank=1)),
                                     ("made", dict(hidden=(40, 40), order_agnostic=True, mask=2))])
@pytest.mark.parametrize("shape", [(1, 3, 4), (3, 2, 2)])
def test_masks_are_strictly_autoregressive_along_the_order(name, kw, shape):
    """Changing sub-pixel e changes only sub-pixels later in the order; FVSBN reads all earlier ones."""
    m = make(name, shape, 4, **kw)
    x = torch.randint(0, 4, (4, *shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        dep = dependencies(m, x)
    deg = degrees_of(m)
    later = deg[:, None] > deg[None, :]  # [d, e]: e before d
    assert not (dep & ~later).any(), "a sub-pixel's logits depend on itself or a later sub-pixel"
    if name == "fvsbn":
        assert torch.equal(dep, later)
    else:
        assert dep.any(), "no dependencies at all"
    if kw.get("order_agnostic"):
        assert m.generation_order() != sorted(m.generation_order()), "mask 2 should have a random order"


@pytest.mark.parametrize("hidden", [(30,), (30, 20), (25, 25, 25)])
def test_made_mask_products_respect_the_degrees(hidden):
    """The product of the masks (paths from input e to output d) is zero unless degree(e) < degree(d)."""
    g = torch.Generator().manual_seed(3)
    ranks = torch.randperm(6, generator=g)
    deg = subpixel_degrees(ranks, 3)  # 18 sub-pixels
    masks = made_masks(deg, made_degrees(18, hidden, g), features=2)
    paths = masks[0]
    for mk in masks[1:]:
        paths = mk @ paths
    allowed = deg.repeat_interleave(2)[:, None] > deg[None, :]
    assert torch.all(paths[~allowed] == 0)
    assert torch.all(paths[allowed.nonzero()[:, 0], allowed.nonzero()[:, 1]].sum() > 0)


# ----- MADE ensembles and order-agnostic training ----------------------------------------------------
def test_made_fixed_masks_are_seeded_and_distinct():
    m = make("made", (1, 3, 3), 4, hidden=(20,), order_agnostic=True)
    assert m.order_of(0) == [(i, j) for i in range(3) for j in range(3)]  # mask 0: raster
    assert m.order_of(1) != m.order_of(2) and m.order_of(1) != m.order_of(0)
    again = make("made", (1, 3, 3), 4, hidden=(20,), order_agnostic=True, seed=5)
    assert again.order_of(1) == m.order_of(1)
    assert all(torch.equal(a, b) for a, b in zip(again.fixed_mask(1)[1], m.fixed_mask(1)[1]))
    other_seed = make("made", (1, 3, 3), 4, hidden=(20,), order_agnostic=True, mask_seed=1)
    assert other_seed.order_of(1) != m.order_of(1)
    fixed = make("made", (1, 3, 3), 4, hidden=(20,))
    assert fixed.order_of(3) == fixed.order_of(0)  # without order agnosticism: raster, other connectivity


def test_made_ensemble_is_logsumexp_over_masks_and_each_mask_normalizes():
    shape, levels = (1, 2, 2), 3
    m = make("made", shape, levels, hidden=(24,), order_agnostic=True, mask=1)
    grid = torch.tensor(list(itertools.product(range(levels), repeat=4))).view(-1, *shape)  # all 81 images
    with torch.no_grad():
        per_mask = torch.stack([m.log_prob(grid, mask=i) for i in range(4)])  # (4, 81)
        for i in range(4):
            assert abs(float(torch.logsumexp(per_mask[i].double(), 0))) < 1e-5, f"mask {i} does not normalize"
        assert not torch.allclose(per_mask[0], per_mask[1])
        specs = m.eval_orders(4)
        assert specs == [("mask", 1), ("mask", 0), ("mask", 2), ("mask", 3)]
        ens = m.log_prob_ensemble(grid, 4)
        torch.testing.assert_close(ens, torch.logsumexp(per_mask, 0) - math.log(4))
        torch.testing.assert_close(m.log_prob_ensemble(grid, [1, ("mask", 3)]),
                                   torch.logsumexp(per_mask[[1, 3]], 0) - math.log(2))
        assert abs(float(torch.logsumexp(ens.double(), 0))) < 1e-5
        torch.testing.assert_close(m.log_prob_ensemble(grid, 1), m.log_prob(grid))  # the config's mask
    # log_prob(mask=i) is the model built with mask=i
    m3 = argen.create_model("made", image_shape=shape, levels=levels, hidden=(24,), order_agnostic=True, mask=3)
    m3.load_state_dict(m.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(m3.eval().log_prob(grid), per_mask[3])


def test_order_agnostic_training_draws_a_new_mask_per_minibatch_reproducibly():
    m = make("made", (1, 3, 3), 4, hidden=(20,), order_agnostic=True).train()
    x = torch.randint(0, 4, (5, 1, 3, 3), generator=torch.Generator().manual_seed(0))

    def losses(seed: int) -> list[float]:
        torch.manual_seed(seed)
        return [float(m.loss(x).detach()) for _ in range(4)]

    first = losses(0)
    assert len(set(first)) == 4, "the mask did not change between minibatches"
    assert losses(0) == first, "the masks are not reproducible from the seed"
    assert losses(1) != first
    torch.manual_seed(0)
    a, b = m.draw_mask(), m.draw_mask()
    assert any(not torch.equal(u, v) for u, v in zip(a, b))
    m.eval()  # evaluation uses the fixed mask: deterministic, equal to -log_prob / D
    assert m.loss(x).item() == m.loss(x).item()
    torch.testing.assert_close(m.loss(x), -m.log_prob(x).mean() / 9)


def test_train_masks_cycles_among_the_fixed_masks():
    m = make("made", (1, 3, 3), 4, hidden=(20,), order_agnostic=True, train_masks=3).train()
    fixed = [m.fixed_mask(i)[1] for i in range(3)]
    torch.manual_seed(0)
    seen = set()
    for _ in range(20):
        drawn = m.draw_mask()
        hits = [i for i, f in enumerate(fixed) if all(torch.equal(u, v) for u, v in zip(drawn, f))]
        assert len(hits) == 1
        seen.add(hits[0])
    assert seen == {0, 1, 2}


def test_non_agnostic_made_trains_on_its_one_mask():
    m = make("made", (1, 3, 3), 4, hidden=(20,)).train()
    x = torch.randint(0, 4, (5, 1, 3, 3), generator=torch.Generator().manual_seed(0))
    assert m.loss(x).item() == m.loss(x).item()
    torch.testing.assert_close(m.loss(x), -m.log_prob(x).mean() / 9)


# ----- cached sampling ----------------------------------------------------------------------------
class Recorder:
    def __init__(self, model, inner) -> None:
        self.model, self.inner, self.tables = model, inner, []

    def params_at(self, x, pos, channel):
        p = self.inner.params_at(x, pos, channel)
        self.tables.append(self.model.distribution.conditionals(p, at(x, pos))[:, channel].clone())
        return p

    def skip(self, x, pos):
        self.inner.skip(x, pos)


def fill(m, stepper, x, known, cond, seed):
    rec = Recorder(m, stepper)
    with torch.no_grad():
        y = autoregressive_fill(m, x.clone(), known, cond, rec, generator=torch.Generator().manual_seed(seed))
    return y, torch.stack(rec.tables)


@pytest.mark.parametrize("name", ["nade", "fvsbn"])
@pytest.mark.parametrize("shape,levels,classes", [((1, 5, 6), 2, None), ((3, 4, 3), 4, 3), ((1, 4, 4), 256, None)])
@pytest.mark.parametrize("complete", [False, True])
def test_cached_sampler_matches_naive(name, shape, levels, classes, complete):
    m = make(name, shape, levels, classes)
    assert isinstance(m.stepper(None), SubpixelStateStepper)
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, levels, (3, *shape), generator=g)
    known = None
    if complete:
        known = torch.rand(3, *shape[1:], generator=g) < 0.5
        known[:, 0] = True  # a run of known pixels at the start
        known[1, 2:] = True  # one example fully known after row 2
    cond = torch.tensor([0, 2, 1]) if classes else None
    yn, tn = fill(m, NaiveStepper(m, cond), x, known, cond, seed=4)

    def no_forward(*a, **k):
        raise AssertionError("the cached sampler ran a full forward pass")

    m.forward = no_forward  # the recurrence / row updates only
    yc, tc = fill(m, m.stepper(cond), x, known, cond, seed=4)
    del m.forward
    torch.testing.assert_close(tc, tn, rtol=1e-4, atol=1e-4)
    assert torch.equal(yc, yn)
    if known is not None:
        keep = known[:, None].expand_as(x)
        assert torch.equal(yc[keep], x[keep])


def test_nade_steps_do_one_update_per_subpixel():
    """Sampling absorbs each sub-pixel once: D columns of W added in all, never a full pass."""
    m = make("nade", (3, 3, 3), 4)
    absorbed = []
    real = m.subpixel_steps

    def spy(cond, batch):
        steps = real(cond, batch)
        absorb = steps.absorb
        steps.absorb = lambda v: (absorbed.append(v.shape[1]), absorb(v))[1]
        return steps

    m.subpixel_steps = spy
    m.sample(2, generator=torch.Generator().manual_seed(0))
    assert absorbed == [3] * 8  # one pixel (3 sub-pixels) per step; the last pixel is never needed


def test_stepper_refuses_misuse():
    m = make("nade", (1, 3, 4), 4)
    s = m.stepper(None)
    x = torch.zeros(1, 1, 3, 4, dtype=torch.long)
    s.params_at(x, (1, 2), 0)
    with pytest.raises(ValueError, match="order"):
        s.params_at(x, (0, 1), 0)
    with pytest.raises(ValueError, match="position"):
        s.params_at(x, (7, 0), 0)
    with pytest.raises(ValueError, match="channel"):
        s.params_at(x, (2, 0), 1)
    with pytest.raises(ValueError, match="batch"):
        s.params_at(torch.zeros(2, 1, 3, 4, dtype=torch.long), (2, 0), 0)
    with pytest.raises(ValueError, match="order=None"):
        argen.sampling.build_stepper(m, None, order=m.generation_order())


# ----- training and errors -------------------------------------------------------------------------
@pytest.mark.parametrize("name,kw", [("fvsbn", {}), ("nade", dict(hidden=16)), ("made", dict(hidden=(32,))),
                                     ("made", dict(hidden=(64,), order_agnostic=True))])
def test_a_few_steps_lower_the_loss(name, kw):
    torch.manual_seed(0)
    m = argen.create_model(name, image_shape=(1, 4, 4), levels=2, **kw).train()
    x = torch.zeros(16, 1, 4, 4, dtype=torch.long)
    x[::2, :, ::2] = 1  # two kinds of image: stripes or blank
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    m.eval()
    first = m.loss(x).item()
    m.train()
    for _ in range(40):
        opt.zero_grad()
        m.loss(x).backward()
        opt.step()
    m.eval()
    assert m.loss(x).item() < first - 0.2


def test_bad_configs_and_arguments_raise_value_error():
    with pytest.raises(ValueError, match="train_masks needs order_agnostic"):
        argen.create_model("made", image_shape=(1, 3, 3), levels=4, train_masks=2)
    with pytest.raises(ValueError, match="model.mask"):
        argen.create_model("made", image_shape=(1, 3, 3), levels=4, order_agnostic=True, train_masks=2, mask=2)
    with pytest.raises(ValueError, match="model.hidden"):
        argen.create_model("made", image_shape=(1, 3, 3), levels=4, hidden=())
    with pytest.raises(ValueError, match="model.rank"):
        argen.create_model("nade", image_shape=(1, 3, 3), levels=4, rank=0)
    one = make("made", (1, 3, 3), 4, hidden=(10,))
    with pytest.raises(ValueError, match="trained on one mask"):
        one.eval_orders(2)
    agn = make("made", (1, 3, 3), 4, hidden=(10,), order_agnostic=True, train_masks=3)
    with pytest.raises(ValueError, match="at most train_masks=3"):
        agn.eval_orders(4)
    x = torch.zeros(2, 1, 3, 3, dtype=torch.long)
    for bad, match in [(0, ">= 1"), (True, "count of masks"), ([], "at least one"), ([("mask", -1)], "mask"),
                       (["s_curve"], "mask")]:
        with pytest.raises(ValueError, match=match):
            agn.log_prob_ensemble(x, bad)
    with pytest.raises(ValueError, match="mask index"):
        agn.log_prob(x, mask=-2)
    with pytest.raises(ValueError, match="torch.long"):
        agn.log_prob_ensemble(x.float(), 2)
    with pytest.raises(ValueError, match="permutation"):
        subpixel_degrees(torch.tensor([0, 0, 1]), 1)
    with pytest.raises(ValueError, match="each of the 4 positions"):
        order_to_ranks([(0, 0), (0, 0), (1, 0), (1, 1)], (2, 2))
    with pytest.raises(ValueError, match="mask of shape"):
        MaskedLinear(3, 2).set_mask(torch.ones(3, 2))
