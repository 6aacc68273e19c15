"""LMConv: the locally masked convolution, any-order causality, ensembles and order-aware completion."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import argen
from argen.nn.locally_masked import LocallyMaskedConv2d, OrderMasks, local_masks, locally_masked_conv2d
from argen.nn.masked import channel_group_mask
from argen.orders import get_order, order_ranks
from argen.registry import tiny_kwargs
from argen.sampling import autoregressive_fill, build_stepper


def make(shape=(1, 5, 6), levels=4, perturb=0.0, **kw):
    args = {**tiny_kwargs("lmconv"), **kw}
    model = argen.create_model("lmconv", image_shape=shape, levels=levels, **args).eval()
    if perturb:  # fresh blocks start near the identity; make every path matter
        with torch.no_grad():
            for p in model.parameters():
                p.add_(perturb * torch.randn_like(p))
    return model


def images(model, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.levels, (batch, *model.data_shape), generator=g)


# ----- the locally masked convolution ------------------------------------------------------------
@pytest.mark.parametrize("k,dilation", [(1, 1), (3, 1), (3, 2), (5, 3)])
def test_all_ones_mask_equals_conv2d(k, dilation):
    x = torch.randn(2, 3, 6, 7)
    w, b = torch.randn(4, 3, k, k), torch.randn(4)
    mask = torch.ones(1, k * k, 42)
    ref = F.conv2d(x, w, b, padding=dilation * (k // 2), dilation=dilation)
    torch.testing.assert_close(locally_masked_conv2d(x, w, b, mask, dilation), ref, atol=1e-5, rtol=1e-5)
    layer = LocallyMaskedConv2d(3, 4, k, dilation)
    torch.testing.assert_close(layer(x, mask), F.conv2d(x, layer.weight, layer.bias, padding=layer.padding,
                                                        dilation=dilation), atol=1e-5, rtol=1e-5)


def test_raster_masks_match_pixelcnn_masks():
    """Inside the image, raster-order local masks are PixelCNN's mask A (first layer) and B."""
    h, w, k = 6, 7, 5
    ranks = order_ranks(get_order("raster", h, w), h, w)
    for include_centre, kind in ((False, "A"), (True, "B")):
        ref = channel_group_mask(1, 1, k, k, kind, 1).flatten()
        masks = local_masks(ranks, k, 1, include_centre)[0].view(k * k, h, w)
        assert torch.equal(masks[:, 2, 3], ref)  # an interior location


@pytest.mark.parametrize("include_centre", [False, True])
def test_per_example_masks_exclude_later_pixels(include_centre):
    """Gradient test: output (l) depends on input pixel p only if p comes before l in that
    example's order (or is l itself, for later layers), and does depend on every such neighbour."""
    h, w, k, d = 5, 6, 3, 2
    orders = torch.stack([get_order("hilbert", h, w, 3), get_order("s_curve", h, w, 6)])
    ranks = order_ranks(orders, h, w)  # (2, H, W): a different order per example
    layer = LocallyMaskedConv2d(2, 3, k, d, include_centre=include_centre)
    mask = local_masks(ranks, k, d, include_centre)
    assert mask.shape == (2, k * k, h * w)
    x = torch.randn(2, 2, h, w, requires_grad=True)
    out = layer(x, mask)
    for b in range(2):
        for r, c in [(0, 0), (2, 3), (4, 5), (3, 1)]:
            (g,) = torch.autograd.grad(out[b, :, r, c].sum(), x, retain_graph=True)
            assert float(g[1 - b].abs().max()) == 0.0  # examples do not mix
            seen = g[b].abs().sum(0) > 0
            for pr in range(h):
                for pc in range(w):
                    tap = (pr - r) % d == 0 and (pc - c) % d == 0 and abs(pr - r) <= d and abs(pc - c) <= d
                    earlier = ranks[b, pr, pc] < ranks[b, r, c] or (include_centre and (pr, pc) == (r, c))
                    assert bool(seen[pr, pc]) == (tap and bool(earlier)), (b, (r, c), (pr, pc))


def test_order_masks_cache_and_copy():
    masks = OrderMasks(maxsize=2)
    ranks = order_ranks(get_order("s_curve", 4, 4), 4, 4)
    masks.set_order(ranks)
    a = masks(3, 1, True)
    masks.set_order(ranks.clone())
    assert masks(3, 1, True) is a  # same order, same mask object
    assert not torch.equal(masks(3, 1, False), a)
    other = copy.deepcopy(masks)
    with pytest.raises(RuntimeError, match="no order set"):
        other(3, 1, True)


# ----- the model ---------------------------------------------------------------------------------------
def _check_causal(model, order, k_values=(1, 7, 15, 29)):
    x = images(model, 3)
    base = model.log_prob(x, reduce=False, order=order)
    pos = [tuple(p) for p in order.tolist()]
    for k in k_values:
        y = x.clone()
        for p in pos[k:]:
            y[:, :, p[0], p[1]] = torch.randint(0, model.levels, (3, model.channels))
        out = model.log_prob(y, reduce=False, order=order)
        for p in pos[:k]:
            torch.testing.assert_close(out[:, p[0], p[1]], base[:, p[0], p[1]], atol=1e-5, rtol=1e-5)
    # and the last pixel does depend on the first
    y = x.clone()
    y[:, :, pos[0][0], pos[0][1]] = (x[:, :, pos[0][0], pos[0][1]] + 1) % model.levels
    changed = (model.log_prob(y, reduce=False, order=order) - base).abs().flatten(1).max()
    assert float(changed) > 1e-6


@torch.no_grad()
def test_causality_for_a_non_default_order():
    model = make(perturb=0.1)
    order = get_order("hilbert", 5, 6, 3)
    assert not torch.equal(order, model.default_order())
    _check_causal(model, order)
    _check_causal(make((3, 5, 6), perturb=0.1), order)


def test_network_gradient_respects_order():
    """Full-network check: params at pixel l have zero gradient w.r.t. pixels at or after l."""
    model = make(perturb=0.1)
    order = get_order("raster", 5, 6, 5)
    ranks = order_ranks(order, 5, 6)
    x = images(model, 1).float().requires_grad_(True)
    # differentiate through the input scaling by feeding floats to the network's layers directly
    model.masks.set_order(ranks)
    h = model.input(torch.cat([x * (2.0 / (model.levels - 1)) - 1, torch.ones_like(x)], 1))
    skips = []
    for blk in model.down:
        h = blk(h)
        skips.append(h)
    for blk in model.up:
        h = blk(h, aux=skips.pop())
    params = model.output(torch.cat([F.elu(h), F.elu(-h)], 1))
    torch.testing.assert_close(params, model(images(model, 1), order=order))
    for r, c in [(0, 0), (2, 2), (4, 1), (1, 5)]:
        (g,) = torch.autograd.grad(params[0, :, r, c].sum(), x, retain_graph=True)
        later = ranks >= ranks[r, c]
        assert float(g[0, 0][later].abs().max()) == 0.0, (r, c)


@torch.no_grad()
def test_per_example_orders_match_separate_calls():
    model = make(perturb=0.1)
    x = images(model, 2)
    o1, o2 = get_order("hilbert", 5, 6, 1), get_order("raster", 5, 6, 6)
    both = model.log_prob(x, reduce=False, order=torch.stack([o1, o2]))
    torch.testing.assert_close(both[0], model.log_prob(x[:1], reduce=False, order=o1)[0])
    torch.testing.assert_close(both[1], model.log_prob(x[1:], reduce=False, order=o2)[0])


@torch.no_grad()
def test_order_arguments():
    model = make(perturb=0.1)
    x = images(model, 2)
    default = model.log_prob(x)
    torch.testing.assert_close(model.log_prob(x, order="s_curve"), default)
    torch.testing.assert_close(model.log_prob(x, order=model.generation_order()), default)
    torch.testing.assert_close(model.log_prob(x, order="hilbert:3"), model.log_prob(x, order=("hilbert", 3)))
    assert not torch.allclose(model.log_prob(x, order="hilbert:3"), default)
    assert model.generation_order() == [tuple(p) for p in get_order("s_curve", 5, 6).tolist()]
    with pytest.raises(ValueError, match="exactly once"):
        model.log_prob(x, order=[(0, 0)] * 30)
    with pytest.raises(ValueError, match="unknown order"):
        model.log_prob(x, order="zigzag")


@torch.no_grad()
def test_ensemble_is_log_mean_likelihood():
    model = make(perturb=0.1)
    x = images(model, 3)
    orders = model.eval_orders(5)
    assert orders == [("s_curve", v) for v in range(5)]
    per = torch.stack([model.log_prob(x, order=o).double() for o in orders])
    expected = torch.log(torch.exp(per - per.max()).mean(0)) + per.max()
    torch.testing.assert_close(model.log_prob_ensemble(x, 5).double(), expected, atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(model.log_prob_ensemble(x, ["hilbert:2"]), model.log_prob(x, order="hilbert:2"))
    # Jensen: the log mean likelihood is at least the mean log likelihood
    assert bool((model.log_prob_ensemble(x, 5) >= per.mean(0).float() - 1e-4).all())


def test_eval_orders_listing():
    model = make(variant=2, order="hilbert")
    orders = model.eval_orders(24)
    assert orders[:8] == [("hilbert", (2 + i) % 8) for i in range(8)]
    assert len(set(orders)) == 24 and {n for n, _ in orders} == {"raster", "s_curve", "hilbert"}
    with pytest.raises(ValueError, match="between 1 and 24"):
        model.eval_orders(25)


def test_loss_draws_an_order_per_call_from_the_global_rng():
    model = make(perturb=0.1)
    x = images(model, 4)
    torch.manual_seed(3)
    a = [float(model.loss(x).detach()) for _ in range(6)]
    torch.manual_seed(3)
    b = [float(model.loss(x).detach()) for _ in range(6)]
    assert a == b and len(set(a)) > 1
    single = make(perturb=0.0, train_orders=1)
    expected = -single.log_prob(x).mean() / single.num_dims
    torch.testing.assert_close(single.loss(x), expected)


def test_categorical_head():
    model = make(levels=3, head="categorical", perturb=0.1)
    x = images(model, 2)
    with torch.no_grad():
        assert model.log_prob(x).shape == (2,)
        # normalisation at one pixel under a non-default order
        order = get_order("hilbert", 5, 6, 3)
        pos = tuple(order[10].tolist())
        xs = x[:1].repeat(3, 1, 1, 1)
        xs[:, 0, pos[0], pos[1]] = torch.arange(3)
        total = model.log_prob(xs, reduce=False, order=order)[:, pos[0], pos[1]].logsumexp(0)
        assert abs(float(total)) < 1e-5
    with pytest.raises(ValueError, match="categorical"):
        make(shape=(3, 4, 4), head="categorical")


def test_bad_config():
    for bad in (dict(order="zigzag"), dict(variant=8), dict(kernel_size=4), dict(dilations=()), dict(train_orders=0),
                dict(head="gaussian")):
        with pytest.raises(ValueError):
            make(**bad)


# ----- completion ------------------------------------------------------------------------------------------
def _masks(h, w):
    left = torch.zeros(h, w, dtype=torch.bool)
    left[:, : w // 2] = True
    centre = torch.ones(h, w, dtype=torch.bool)
    centre[1:h - 1, 1:w - 1] = False
    rand = torch.rand(h, w, generator=torch.Generator().manual_seed(1)) < 0.5
    return {"left_half": left, "centre_square": centre, "random_pixels": rand}


@pytest.mark.parametrize("shape", [(1, 5, 6), (3, 4, 4)])
def test_completion_keeps_known_pixels(shape):
    model = make(shape, perturb=0.1)
    x = images(model, 3)
    masks = _masks(*shape[1:])
    for known in masks.values():  # left half, centre square, random pixels
        out = model.complete(x, known, generator=torch.Generator().manual_seed(0))
        assert out.shape == x.shape and out.dtype == torch.long and int(out.max()) < model.levels
        assert torch.equal(out[:, :, known], x[:, :, known])
    # a different mask per example, with class conditioning
    model = make(shape, perturb=0.1, num_classes=3)
    per_example = torch.stack(list(masks.values()))
    out = model.complete(x, per_example, torch.tensor([0, 1, 2]), generator=torch.Generator().manual_seed(0))
    for b in range(3):
        assert torch.equal(out[b][:, per_example[b]], x[b][:, per_example[b]])
    assert torch.equal(model.complete(x, torch.ones(shape[1:], dtype=torch.bool)), x)


def test_completion_groups_examples_by_mask():
    """Examples are completed per mask group: the same result as completing each group alone."""
    model = make(perturb=0.1)
    x = images(model, 4)
    masks = _masks(5, 6)
    known = torch.stack([masks["left_half"], masks["random_pixels"], masks["left_half"], masks["random_pixels"]])
    both = model.complete(x, known, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    first = model.complete(x[[0, 2]], masks["left_half"], generator=g)
    second = model.complete(x[[1, 3]], masks["random_pixels"], generator=g)
    assert torch.equal(both[[0, 2]], first) and torch.equal(both[[1, 3]], second)


@torch.no_grad()
def test_completion_conditions_on_known_pixels_later_in_raster_order():
    """Top row missing: LMConv's completion of it depends on a known pixel in the bottom row,
    while a completion in the default order (the top row comes first) cannot."""
    model = make((1, 4, 4), levels=16, perturb=0.3)
    x = images(model, 1).repeat(16, 1, 1, 1)
    y = x.clone()
    y[:, 0, 3, 1] = (x[:, 0, 3, 1] + 8) % 16
    known = torch.ones(4, 4, dtype=torch.bool)
    known[0] = False
    order = model.completion_order(known)
    assert tuple(order[0].tolist())[0] == 3 and all(p[0] == 0 for p in order[-4:].tolist())  # bottom up
    first = tuple(order[12].tolist())  # the first pixel to fill; everything before it is known
    # its exact conditional changes with the bottom pixel ...
    tx = model.conditionals(x[:1], order=order)[0, 0, :, first[0], first[1]]
    ty = model.conditionals(y[:1], order=order)[0, 0, :, first[0], first[1]]
    assert float((tx.exp() - ty.exp()).abs().sum()) > 1e-3
    # ... and so do the completed values (same uniforms, different conditionals)
    cx = model.complete(x, known, generator=torch.Generator().manual_seed(0))[:, 0, 0]
    cy = model.complete(y, known, generator=torch.Generator().manual_seed(0))[:, 0, 0]
    assert not torch.equal(cx, cy)
    # a completion in the default order (the generic loop, the model's stepper), where the top row
    # sees no known pixel
    def default_order(z):
        return autoregressive_fill(model, z.clone(), known.expand(len(z), 4, 4), None, build_stepper(model, None),
                                   generator=torch.Generator().manual_seed(0))[:, 0, 0]

    bx, by = default_order(x), default_order(y)
    assert torch.equal(bx, by)


def test_save_load_keeps_order_config(tmp_path):
    model = make(perturb=0.1, order="hilbert", variant=5, dilations=[1, 3])
    assert model.config.dilations == (1, 3)
    argen.save(model, tmp_path / "run")
    loaded = argen.load(tmp_path / "run").eval()
    assert loaded.config == model.config and loaded.generation_order() == model.generation_order()
    x = images(model, 2)
    with torch.no_grad():
        torch.testing.assert_close(loaded.log_prob_ensemble(x, 3), model.log_prob_ensemble(x, 3), atol=0, rtol=0)
    assert math.isfinite(float(loaded.log_prob(x).sum().detach()))
