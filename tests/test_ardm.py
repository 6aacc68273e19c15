"""ARDM: the dynamic programme, the ELBO, parallel sampling, completion and the upscale variant."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

import argen
from argen.models.image.ardm import fill_unrecorded
from argen.sampling import ardm_schedule as sch
from argen.sampling.ardm_sampler import bpd_by_budget
from argen.sampling.naive import autoregressive_fill

TINY = dict(hidden=8, channel_mults=(1,), blocks_per_level=1, attention=False, embed_dim=4)


def make(shape=(1, 2, 2), levels=4, **kw):
    cfg = dict(TINY)
    cfg.update(kw)
    model = argen.create_model("ardm", image_shape=shape, levels=levels, **cfg).eval()
    with torch.no_grad():  # a sharper random network, so that the tests below are not near-uniform
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def all_images(shape, levels):
    d = math.prod(shape)
    return torch.tensor(list(itertools.product(range(levels), repeat=d))).view(-1, *shape)


class CallRecorder:
    """Records (x, known, stage) of every network call through forward's positional arguments."""

    def __init__(self, model):
        self.calls = []
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        x = args[0]
        known = args[2] if len(args) > 2 else kwargs.get("known")
        stage = args[3] if len(args) > 3 else kwargs.get("stage")
        self.calls.append((x.clone(), None if known is None else known.clone(), None if stage is None else stage.clone()))


# ----- the dynamic programme --------------------------------------------------------------------
def brute_force(curve, k):
    d = len(curve)
    best = None
    for inner in itertools.combinations(range(1, d), k - 1):
        b = [0, *inner, d]
        c = sch.schedule_cost(curve, b)
        if best is None or c < best[0] - 1e-12:
            best = (c, b)
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dp_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    decreasing = torch.rand(8, generator=g).sort(descending=True).values * 3 + 0.1
    bumpy = torch.rand(8, generator=g) * 2
    for curve in (decreasing, bumpy):
        for k in range(1, 9):
            cost, bounds = brute_force(curve.tolist(), k)
            got = sch.optimal_boundaries(curve, k)
            assert got == bounds, (k, got, bounds)
            assert sch.schedule_cost(curve, got) == pytest.approx(cost)
            assert float(sch.costs_per_budget(curve, 8)[k]) == pytest.approx(cost)


def test_dp_full_and_single_budget():
    curve = [3.0, 2.0, 1.5, 1.0, 0.5]
    assert sch.optimal_boundaries(curve, 5) == [0, 1, 2, 3, 4, 5]
    assert sch.optimal_boundaries(curve, 1) == [0, 5]
    assert sch.schedule_cost(curve, [0, 5]) == pytest.approx(15.0)
    with pytest.raises(ValueError, match="steps"):
        sch.optimal_boundaries(curve, 6)
    with pytest.raises(ValueError, match="steps"):
        sch.optimal_boundaries(curve, 0)


def test_stage_allocation_matches_brute_force():
    g = torch.Generator().manual_seed(3)
    curves = torch.rand(3, 5, generator=g).sort(1, descending=True).values * torch.tensor([[4.0], [1.0], [0.3]])
    for k in range(3, 16):
        plans = sch.plan_stages(curves, k)
        assert sum(len(p) - 1 for p in plans) == k
        got = sum(sch.schedule_cost(c, p) for c, p in zip(curves, plans))
        best = min(
            sum(brute_force(c.tolist(), kj)[0] for c, kj in zip(curves, alloc))
            for alloc in itertools.product(range(1, 6), repeat=3) if sum(alloc) == k
        )
        assert got == pytest.approx(best)


def test_budget_bits_per_dim():
    curve = torch.linspace(2.0, 0.1, 16)
    table = sch.budget_bits_per_dim(curve, [None, 8, 4, 1], num_dims=16)
    assert set(table) == {16, 8, 4, 1}
    assert table[16] == pytest.approx(float(curve.double().sum()) / (16 * math.log(2)))
    assert table[1] == pytest.approx(16 * 2.0 / (16 * math.log(2)))
    assert table[16] < table[8] < table[4] < table[1]


def test_fill_unrecorded_interpolates():
    values = torch.tensor([0.0, 4.0, 0.0, 2.0, 0.0])
    counts = torch.tensor([0, 1, 0, 1, 0])
    filled = fill_unrecorded(values, counts)
    torch.testing.assert_close(filled, torch.tensor([4.0, 4.0, 3.0, 2.0, 2.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="recorded"):
        fill_unrecorded(values, torch.zeros(5, dtype=torch.long))


# ----- the ELBO -----------------------------------------------------------------------------------
def test_elbo_with_given_draws_is_the_weighted_sum():
    model = make((3, 2, 3), 4)
    d = model.num_dims
    x = torch.randint(0, 4, (3, 3, 2, 3))
    t = torch.tensor([0, 7, d - 1])
    sigma = torch.stack([torch.randperm(d) for _ in range(3)])
    with torch.no_grad():
        got = model.elbo(x, t=t, sigma=sigma)
        per_pos = model.elbo(x, t=t, sigma=sigma, reduce=False)
        for i in range(3):
            known = torch.zeros(d, dtype=torch.bool)
            known[sigma[i, : t[i]]] = True
            known = known.view(1, 3, 2, 3)
            logits = model(x[i : i + 1], known=known).view(1, 3, 4, 2, 3).log_softmax(2)
            lp = logits.gather(2, x[i : i + 1, :, None]).squeeze(2)
            want = float(lp[~known].sum()) * d / (d - int(t[i]))
            assert float(got[i]) == pytest.approx(want, rel=1e-5)
    assert per_pos.shape == (3, 2, 3)
    torch.testing.assert_close(per_pos.flatten(1).sum(1), got)


@pytest.mark.parametrize("upscale_bits", [0, 1])
def test_elbo_averages_to_mean_order_likelihood(upscale_bits):
    """E_{stage, t, sigma} ELBO = E_sigma log p_sigma(x): enumerate every draw on a 1x2x2 image."""
    model = make((1, 2, 2), 4, upscale_bits=upscale_bits)
    x = torch.tensor([[[[3, 0], [1, 2]]]])
    perms = list(itertools.permutations(range(4)))
    n_stages = model.num_stages
    draws = [(s, t, p) for s in range(n_stages) for t in range(4) for p in perms]
    xs = x.expand(len(draws), 1, 2, 2)
    with torch.no_grad():
        elbos = model.elbo(xs, stage=torch.tensor([s for s, _, _ in draws]), t=torch.tensor([t for _, t, _ in draws]),
                           sigma=torch.tensor([p for _, _, p in draws]))
        orders = [[divmod(i, 2) for i in p] for p in perms]
        exact = torch.cat([model.log_prob(x, order=o) for o in orders])
    assert float(elbos.double().mean()) == pytest.approx(float(exact.double().mean()), rel=1e-5)
    # and the one-sample estimate is a bound on the average of some orders, not an identity
    assert float(elbos.std()) > 0


def test_log_prob_without_order_is_reproducible_elbo():
    model = make((1, 3, 3), 4)
    x = torch.randint(0, 4, (4, 1, 3, 3))
    with torch.no_grad():
        a = model.log_prob(x, generator=torch.Generator().manual_seed(1))
        b = model.log_prob(x, generator=torch.Generator().manual_seed(1))
        c = model.log_prob(x, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    assert model.exact_likelihood is False


def test_training_statistics_record_step_losses_and_save_them(tmp_path):
    model = make((1, 2, 3), 4).train()
    assert model.has_training_stats
    x = torch.randint(0, 4, (16, 1, 2, 3))
    for _ in range(3):
        loss, stats = model.loss_and_stats(x)
        loss.backward()
        model.update_statistics(stats)
    assert int(model.step_loss_count.sum()) >= 3 and float(model.step_loss.abs().sum()) > 0
    before = (model.step_loss.clone(), model.step_loss_count.clone())
    for mode in (model.train, model.eval):  # loss() itself never records, in either mode
        mode()
        model.loss(x).backward()
        assert torch.equal(model.step_loss, before[0]) and torch.equal(model.step_loss_count, before[1])
    argen.save(model, tmp_path / "run")
    loaded = argen.load(tmp_path / "run")
    torch.testing.assert_close(loaded.step_loss, model.step_loss)
    torch.testing.assert_close(loaded.step_loss_count, model.step_loss_count)
    assert set(bpd_by_budget(loaded, [None, 2])) == {6, 2}


def test_recorded_step_loss_is_the_mean_hidden_nll():
    model = make((1, 2, 2), 4).train()
    x = torch.randint(0, 4, (1, 1, 2, 2))
    torch.manual_seed(5)
    loss, stats = model.loss_and_stats(x)
    torch.manual_seed(5)
    assert torch.equal(loss, model.loss(x))  # the same draw, the same loss
    loss = loss.detach()
    model.update_statistics(stats)
    (idx,) = torch.nonzero(model.step_loss_count).flatten().tolist()
    t = idx % model.num_dims
    # the loss in nats/dim is S * L_t for a single example
    assert float(loss) == pytest.approx(float(model.step_loss[idx]) * model.num_stages, rel=1e-5)
    assert 0 <= t < model.num_dims


# ----- sampling -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [dict(), dict(temperature=0.7, top_k=3), dict(top_p=0.8)])
def test_parallel_with_full_budget_equals_sequential(kw):
    model = make((3, 2, 3), 4, num_classes=2)
    cond = torch.tensor([0, 1, 1, 0])
    d = model.num_dims
    par = model.sample(4, cond, steps=d, order=model.generation_order(), generator=torch.Generator().manual_seed(3), **kw)
    x0 = torch.zeros(4, 3, 2, 3, dtype=torch.long)
    with torch.no_grad():
        seq = autoregressive_fill(model, x0, None, cond, model.stepper(cond), generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(par, seq)
    default = model.sample(4, cond, order=model.generation_order(), generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(default, seq)


def test_budget_makes_exactly_k_calls_on_the_dp_schedule():
    model = make((1, 3, 3), 4)
    rec = CallRecorder(model)
    model.sample(2, steps=4, generator=torch.Generator().manual_seed(0))
    assert len(rec.calls) == 4
    # nothing recorded yet: evenly spaced
    assert [int(k.flatten(1).sum(1)[0]) for _, k, _ in rec.calls] == sch.even_boundaries(9, 4)[:-1]
    # a recorded curve: the calls start where the dynamic programme says
    curve = torch.tensor([5.0, 4.0, 1.0, 0.9, 0.8, 0.2, 0.1, 0.1, 0.05])
    model.step_loss.copy_(curve)
    model.step_loss_count.fill_(1)
    rec.calls.clear()
    out = model.sample(2, steps=3, generator=torch.Generator().manual_seed(0))
    starts = [int(k.flatten(1).sum(1)[0]) for _, k, _ in rec.calls]
    assert starts == sch.optimal_boundaries(curve, 3)[:-1]
    assert out.shape == (2, 1, 3, 3) and int(out.max()) < 4 and int(out.min()) >= 0
    rec.handle.remove()


def test_sample_with_fewer_steps_is_deterministic_and_varies():
    model = make((3, 2, 2), 4)
    a = model.sample(3, steps=3, generator=torch.Generator().manual_seed(1))
    b = model.sample(3, steps=3, generator=torch.Generator().manual_seed(1))
    c = model.sample(3, steps=3, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_complete_puts_known_dims_first():
    model = make((3, 3, 3), 4)
    x = torch.randint(0, 4, (2, 3, 3, 3))
    known = torch.zeros(2, 3, 3, dtype=torch.bool)
    known[0, 0] = True
    known[1, :, 1] = True
    known[1, 2, 2] = True
    rec = CallRecorder(model)
    out = model.complete(x, known, steps=5, generator=torch.Generator().manual_seed(0))
    rec.handle.remove()
    assert torch.equal(out[known[:, None].expand_as(x)], x[known[:, None].expand_as(x)])
    assert len(rec.calls) == 5
    first_known = rec.calls[0][1]
    torch.testing.assert_close(first_known, known[:, None].expand(2, 3, 3, 3))
    for _, k, _ in rec.calls:  # known dims stay in the context of every call
        assert bool(k[known[:, None].expand(2, 3, 3, 3)].all())
    assert int(out.max()) < 4


def test_generation_order_is_a_seeded_permutation():
    a, b = make((1, 3, 4), 4), make((1, 3, 4), 4)
    c = make((1, 3, 4), 4, order_seed=1)
    assert a.generation_order() == b.generation_order() != c.generation_order()
    assert sorted(a.generation_order()) == [(i, j) for i in range(3) for j in range(4)]
    ranks = a.dim_ranks(a.generation_order(), 1).view(1, 3, 4)
    assert int(ranks[(0, *a.generation_order()[0])]) == 0


def test_bad_arguments_raise_value_error():
    model = make((1, 2, 2), 4)
    x = torch.randint(0, 4, (2, 1, 2, 2))
    with pytest.raises(ValueError, match="steps"):
        model.sample(1, steps=0)
    with pytest.raises(ValueError, match="steps"):
        model.sample(1, steps=5)
    with pytest.raises(ValueError, match="sigma"):
        model.elbo(x, t=torch.tensor([0, 1]), sigma=torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="t as"):
        model.elbo(x, t=torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="order"):
        model.log_prob(x, order=[(0, 0), (0, 0), (1, 0), (1, 1)])
    with pytest.raises(ValueError, match="upscale_bits"):
        make((1, 2, 2), 4, upscale_bits=9)


# ----- upscale ARDM -------------------------------------------------------------------------------
def test_bit_stages():
    st = argen.models.image.ardm.BitStages(256, 2)
    assert st.bits == [2, 2, 2, 2] and st.digits == [4, 4, 4, 4]
    st = argen.models.image.ardm.BitStages(17, 2)  # 5 bits: the remainder is the top stage
    assert st.bits == [1, 2, 2] and st.digits == [2, 4, 4]
    v = torch.arange(17)
    allowed = st.allowed(v, torch.zeros_like(v))
    assert allowed[:, :2].all() and not allowed[:, 2:].any()
    allowed = st.allowed(torch.full((1,), 16), torch.ones(1, dtype=torch.long))
    assert allowed.tolist() == [[True, False, False, False]]  # 16 = 0b10000: only 10000 fits below 17
    plain = argen.models.image.ardm.BitStages(5, 0)
    assert plain.num_stages == 1 and plain.digits == [5] and plain.num_tokens == 6


@pytest.mark.parametrize("levels", [4, 3])
def test_upscale_bruteforce_normalization(levels):
    model = make((1, 2, 2), levels, upscale_bits=1)
    assert model.num_stages == 2
    grid = all_images((1, 2, 2), levels)
    with torch.no_grad():
        lps = model.log_prob(grid, order=model.generation_order()).double()
    assert abs(float(torch.logsumexp(lps, 0))) < 1e-4


def test_upscale_per_pixel_normalization():
    model = make((3, 2, 2), 4, upscale_bits=1)
    order = model.generation_order()
    values = torch.tensor(list(itertools.product(range(4), repeat=3)))
    x = torch.randint(0, 4, (1, 3, 2, 2)).repeat(len(values), 1, 1, 1)
    pos = order[1]
    x[:, :, pos[0], pos[1]] = values
    with torch.no_grad():
        lp = model.log_prob(x, order=order, reduce=False)[:, pos[0], pos[1]]
    assert abs(float(torch.logsumexp(lp.double(), 0))) < 1e-4
    with pytest.raises(ValueError, match="digit_conditionals"):
        model.conditionals(x[:1])
    tables = model.digit_conditionals(x[:1])
    assert len(tables) == 2 and tables[0].shape == (1, 3, 2, 2, 2)
    torch.testing.assert_close(tables[1].exp().sum(2), torch.ones(1, 3, 2, 2))


def test_upscale_generates_most_significant_bits_first():
    model = make((1, 3, 3), 16, upscale_bits=2)
    assert model.stages.bits == [2, 2]
    rec = CallRecorder(model)
    out = model.sample(3, generator=torch.Generator().manual_seed(4))
    stage_seq = [int(s[0]) for _, _, s in rec.calls]
    assert stage_seq == [0] * 9 + [1] * 9
    for x, _, _s in rec.calls[:9]:  # during stage 0 no low bits exist anywhere
        assert int((x & 3).max()) == 0
    coarse = rec.calls[9][0]  # the image as stage 1 starts: all top bits, fixed from here on
    assert torch.equal(coarse, out & ~3)
    # with a budget each stage gets at least one call, stages still in order
    rec.calls.clear()
    model.sample(2, steps=3, generator=torch.Generator().manual_seed(4))
    seq = [int(s[0]) for _, _, s in rec.calls]
    assert len(seq) == 3 and seq == sorted(seq) and set(seq) == {0, 1}
    with pytest.raises(ValueError, match="steps"):
        model.sample(1, steps=1)
    rec.handle.remove()


def test_upscale_complete_and_training():
    model = make((1, 3, 3), 8, upscale_bits=1).train()
    x = torch.randint(0, 8, (4, 1, 3, 3))
    loss, stats = model.loss_and_stats(x)
    loss.backward()
    model.update_statistics(stats)
    assert math.isfinite(float(loss.detach())) and int(model.step_loss_count.sum()) >= 1
    known = torch.zeros(3, 3, dtype=torch.bool)
    known[0] = True
    out = model.eval().complete(x, known, steps=4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[:, :, known], x[:, :, known]) and int(out.max()) < 8


def test_measured_step_losses_feed_the_budget_table():
    """Held-out L_t: D calls give the measured mean; the curve matches the ELBO it estimates."""
    import math

    import argen
    from argen.registry import tiny_kwargs

    torch.manual_seed(0)
    m = argen.create_model("ardm", image_shape=(1, 4, 4), levels=4, **tiny_kwargs("ardm")).eval()
    x = torch.randint(0, 4, (32, 1, 4, 4))
    curve = m.measure_step_losses(x, points=8, generator=torch.Generator().manual_seed(0))
    assert curve.shape == (1, 16) and bool((curve > 0).all())
    table = bpd_by_budget(m, (None, 8, 4, 1), curve=curve)
    assert table[16] == pytest.approx(float(curve.sum()) / (16 * math.log(2)))
    assert set(table) == {16, 8, 4, 1}
    # measured at every t, the curve's sum is the negative ELBO (in expectation over orders)
    full = m.measure_step_losses(x, points=16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        elbo = -m.elbo(x.repeat(8, 1, 1, 1), generator=torch.Generator().manual_seed(2)).mean()
    assert float(full.sum()) == pytest.approx(float(elbo), rel=0.1)
