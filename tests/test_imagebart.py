"""ImageBART: the schedule and posterior, the bound against the exact marginal (by enumeration),
ancestral sampling, completion with context in every direction, errors, save/load, training."""
from __future__ import annotations

import math

import pytest
import torch

import argen
from argen.models.tokens.imagebart import ImageBART, geometric_schedule
from argen.sampling.scale_sampler import ScaleStepper

TINY = dict(d_model=16, n_heads=2, d_ff=32, top_layers=1, encoder_layers=1, decoder_layers=1, zero_head=False)


def make(shape=(1, 2, 2), levels=2, scales=2, seed=0, **kw) -> ImageBART:
    torch.manual_seed(seed)
    model = argen.create_model("imagebart", image_shape=shape, levels=levels, scales=scales, **{**TINY, **kw})
    with torch.no_grad():  # random weights well away from uniform, so every dependence shows
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return model.eval()


def every_grid(model: ImageBART) -> torch.Tensor:
    """(K^N, 1, h, w) every code grid of the model's space."""
    k, n = model.levels, math.prod(model.data_shape)
    idx = torch.arange(k ** n)[:, None] // k ** torch.arange(n) % k
    return idx.view(-1, *model.data_shape)


def transition(model: ImageBART, t: int) -> torch.Tensor:
    """(K, K) Q_t[a, b] = q(x_t = b | x_{t-1} = a) of one token."""
    k, beta = model.levels, model.beta[t]
    return (1 - beta) * torch.eye(k, dtype=torch.float64) + beta / k


@torch.no_grad()
def exact_log_marginal(model: ImageBART, x: torch.Tensor) -> torch.Tensor:
    """(B,) log p(x_0) = log sum_{x_1..x_{n-1}} p(x_{n-1}) prod_t p(x_{t-1} | x_t), by enumeration."""
    grid = every_grid(model)
    g = len(grid)
    v = model.top.log_prob(grid).double()  # log p(x_{n-1} = z), (G,)
    for t in range(model.scales - 1, 0, -1):
        targets = x if t == 1 else grid
        prev = targets.repeat_interleave(g, 0)  # (targets * G): each target against every z
        cur = grid.repeat(len(targets), 1, 1, 1)
        lp = model.scale_logits(t, prev, cur).double().log_softmax(1).gather(1, prev).flatten(1).sum(1)
        v = torch.logsumexp(lp.view(len(targets), g) + v[None], 1)
    return v


def chain_log_q(model: ImageBART, chain: list[torch.Tensor]) -> torch.Tensor:
    """(B,) log q(x_1, ..., x_{n-1} | x_0) of whole chains, from the one-token transitions."""
    total = torch.zeros(chain[0].shape[0], dtype=torch.float64)
    for t in range(1, len(chain)):
        total += transition(model, t).log()[chain[t - 1], chain[t]].flatten(1).sum(1)
    return total


@torch.no_grad()
def exact_elbo(model: ImageBART, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) the ELBO E_q[...] by enumerating every chain: from the model's closed-form KL terms,
    and from the plain definition E_q[log p(x_{0:n-1}) - log q(x_{1:n-1} | x_0)]."""
    grid = every_grid(model)
    g, n = len(grid), model.scales
    kl_form, ratio_form = [], []
    for i in range(x.shape[0]):
        # every chain: (x_1, ..., x_{n-1}) over grid^(n-1)
        idx = torch.cartesian_prod(*[torch.arange(g)] * (n - 1)).view(-1, n - 1)
        x0 = x[i:i + 1].expand(len(idx), *x.shape[1:])
        chain = [x0] + [grid[idx[:, j]] for j in range(n - 1)]
        logq = chain_log_q(model, chain)
        w = logq.exp()
        terms = model.chain_terms(x0, chain).double().flatten(1).sum(1)
        kl_form.append((w * terms).sum())
        logp = model.top.log_prob(chain[n - 1]).double()
        for t in range(n - 1, 0, -1):
            logp += model.scale_logits(t, chain[t - 1], chain[t]).double().log_softmax(1).gather(
                1, chain[t - 1]).flatten(1).sum(1)
        ratio_form.append((w * (logp - logq)).sum())
    return torch.stack(kl_form), torch.stack(ratio_form)


# ----- the schedule and the posterior ------------------------------------------------------------
def test_geometric_schedule_is_imagebarts():
    beta, alpha, abar = geometric_schedule(3)
    assert beta == [0.0, 1 / 3, 1 / 2, 1.0]  # IB: cat([0], 1 / arange(n, 0, -1))
    ib = torch.cat([torch.tensor([0.0]), 1.0 / torch.arange(3, 0, -1)])
    torch.testing.assert_close(torch.tensor(beta), ib)
    torch.testing.assert_close(torch.tensor(abar, dtype=torch.float64), torch.tensor(alpha, dtype=torch.float64).cumprod(0))
    assert abar == [1.0, 2 / 3, 1 / 3, 0.0]  # (n - t) / n: x_n is pure noise
    with pytest.raises(ValueError, match="scales >= 1, given 0"):
        geometric_schedule(0)


def test_forward_chain_marginals_follow_alpha_bar():
    model = make(shape=(1, 8, 8), levels=4, scales=3)
    x0 = torch.randint(0, 4, (256, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    chain = model.forward_chain(x0, torch.Generator().manual_seed(1))
    assert len(chain) == 3 and chain[0] is x0
    for t in (1, 2):
        kept = float((chain[t] == x0).double().mean())
        want = model.abar[t] + (1 - model.abar[t]) / 4  # q(x_t = x_0 | x_0)
        assert abs(kept - want) < 0.01, (t, kept, want)


@pytest.mark.parametrize("t", [1, 2, 3])
def test_posterior_is_bayes_rule_and_the_kl_matches_the_dense_one(t):
    model = make(shape=(1, 2, 3), levels=5, scales=3)
    k = 5
    g = torch.Generator().manual_seed(t)
    x0 = torch.randint(0, k, (6, 1, 2, 3), generator=g)
    xt = torch.randint(0, k, (6, 1, 2, 3), generator=g)
    xt[:2] = x0[:2]  # both cases: x_t = x_0 and x_t != x_0
    q = model.posterior(x0, xt, t).double()
    # Bayes: q(x_{t-1} = a | x_t, x_0) ~ q(x_{t-1} = a | x_0) q(x_t | x_{t-1} = a)
    marg = torch.eye(k, dtype=torch.float64)
    for s in range(1, t):
        marg = marg @ transition(model, s)
    prior = marg[x0[:, 0]]  # (B, h, w, K): q(x_{t-1} | x_0)
    like = transition(model, t)[:, xt[:, 0]]  # (K, B, h, w); uniform rows at t = n (beta_n = 1)
    bayes = prior * like.permute(1, 2, 3, 0)
    bayes = (bayes / bayes.sum(-1, keepdim=True)).permute(0, 3, 1, 2)
    torch.testing.assert_close(q, bayes, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(q.sum(1), torch.ones(6, 2, 3, dtype=torch.float64))
    if t == 1:
        assert torch.equal(q.argmax(1), x0[:, 0]) and bool((q.max(1).values > 1 - 1e-6).all())  # a delta on x_0
    logp = torch.randn(6, k, 2, 3, generator=g).log_softmax(1)
    dense = (torch.xlogy(q, q) - q * logp.double()).sum(1)
    torch.testing.assert_close(model.posterior_kl(logp, x0, xt, t).double(), dense, atol=1e-5, rtol=1e-5)


# ----- the bound --------------------------------------------------------------------------------
@pytest.mark.parametrize("scales,shared", [(2, False), (3, True), (3, False)])
def test_elbo_bounds_the_exact_marginal(scales, shared):
    """K = 2, a 2x2 grid: the exact marginal (enumerated) sums to 1, the exact ELBO is <= log p(x)
    for every x, equals the plain definition E_q[log p - log q], and the estimator averages to it."""
    model = make(scales=scales, shared_scales=shared)
    grid = every_grid(model)
    log_p = exact_log_marginal(model, grid)
    assert abs(float(torch.logsumexp(log_p, 0))) < 1e-6  # the model is a normalized distribution
    kl_form, ratio_form = exact_elbo(model, grid)
    torch.testing.assert_close(kl_form, ratio_form, atol=1e-5, rtol=1e-5)
    assert bool((kl_form <= log_p + 1e-6).all())
    assert float(torch.logsumexp(kl_form, 0)) < 0  # the bound's probabilities sum to < 1
    assert float((log_p - kl_form).max()) > 1e-3  # and it is a real bound here, not an identity
    # unbiased: the mean of many one-draw estimates approaches the exact ELBO
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        draws = torch.stack([model.log_prob(grid, generator=g) for _ in range(120)]).double()  # (S, G)
    err = (draws.mean(0) - kl_form).abs()
    assert bool((err < 4.5 * draws.std(0) / math.sqrt(120) + 1e-4).all()), (err, draws.std(0))
    with torch.no_grad():  # samples= averages draws
        torch.testing.assert_close(model.log_prob(grid, samples=3, generator=torch.Generator().manual_seed(3)),
                                   draws[:3].float().mean(0))
    # the per-position shares sum to the total; the default draw repeats
    with torch.no_grad():
        a = model.log_prob(grid, reduce=False)
        torch.testing.assert_close(a.flatten(1).sum(1), model.log_prob(grid))
        assert torch.equal(model.log_prob(grid), model.log_prob(grid))
        assert a.shape == (16, 2, 2)


def test_loss_is_the_bound_per_code_with_soft_weight_one():
    model = make(shape=(1, 3, 3), levels=4, scales=3)
    x = torch.randint(0, 4, (5, 1, 3, 3), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(7)
    loss = model.loss(x)
    bound = model.log_prob(x, generator=torch.Generator().manual_seed(7))  # the same chain draw
    torch.testing.assert_close(loss, -bound.mean() / 9)


def test_train_scale_trains_one_network_only():
    model = make(shape=(1, 3, 3), levels=4, scales=3).train()
    x = torch.randint(0, 4, (4, 1, 3, 3))
    for t, trained in ((3, model.top), (2, model.nets[1]), (1, model.nets[0])):
        model.config.train_scale = t
        model.zero_grad(set_to_none=True)
        model.loss(x).backward()
        with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
        own = {n for n, p in model.named_parameters() if any(p is q for q in trained.parameters())}
        assert with_grad == own, t
    model.config.train_scale = None
    model.config.soft_weight = 0.0  # IB's hard loss: the CE of x_{t-1} drawn from q, a different number
    torch.manual_seed(1)
    hard = model.loss(x)
    model.config.soft_weight = 1.0
    torch.manual_seed(1)
    assert torch.isfinite(hard) and not torch.allclose(hard, model.loss(x))


# ----- sampling and completion -------------------------------------------------------------------
def test_sampling_is_exact_ancestral_sampling():
    """Sample frequencies over the 16 grids of a K = 2, 2x2 space match the enumerated marginal."""
    model = make(scales=3)
    s = model.sample(6000, generator=torch.Generator().manual_seed(0))
    grid = every_grid(model)
    index = (s.flatten(1) * 2 ** torch.arange(4)).sum(1)
    freq = torch.bincount(index, minlength=16).double() / len(s)
    p = exact_log_marginal(model, grid).exp()
    assert float((freq - p).abs().max()) < 0.025, (freq, p)


def test_sampling_shapes_determinism_and_cached_equals_naive():
    model = make(shape=(1, 3, 4), levels=6, scales=3, num_classes=3)
    y = torch.tensor([0, 2, 1])
    for kw in ({}, dict(temperature=0.7, top_k=3), dict(top_p=0.8)):
        a = model.sample(3, y, generator=torch.Generator().manual_seed(1), **kw)
        b = model.sample(3, y, generator=torch.Generator().manual_seed(1), naive=True, **kw)
        assert a.shape == (3, 1, 3, 4) and a.dtype == torch.long and int(a.max()) < 6
        assert torch.equal(a, b)
    assert torch.equal(a, model.sample(3, y, generator=torch.Generator().manual_seed(1), top_p=0.8))
    assert not torch.equal(model.sample(3, y, generator=torch.Generator().manual_seed(2)),
                           model.sample(3, y, generator=torch.Generator().manual_seed(3)))
    known = torch.zeros(3, 4, dtype=torch.bool)
    known[2:] = True
    c = model.complete(a, known, y, generator=torch.Generator().manual_seed(4))
    d = model.complete(a, known, y, generator=torch.Generator().manual_seed(4), naive=True)
    assert torch.equal(c, d)


def test_cached_stepper_encodes_once_and_projects_cross_kv_once():
    model = make(shape=(1, 3, 3), levels=4, scales=2)
    calls = {"enc": 0, "kv": 0}
    net = model.nets[0]
    net.encoder.register_forward_hook(lambda *a: calls.__setitem__("enc", calls["enc"] + 1))
    for block in net.decoder.blocks:
        orig = block.cross.keys_values

        def counted(ctx, orig=orig):
            calls["kv"] += 1
            return orig(ctx)
        block.cross.keys_values = counted
    x = model.sample(2, generator=torch.Generator().manual_seed(0))
    assert calls == {"enc": 1, "kv": len(net.decoder.blocks)}  # one sample batch: once each
    stepper = ScaleStepper(model, 1, x, None)
    assert stepper.encodings == 1
    with pytest.raises(ValueError, match="samples scale by scale"):
        model.stepper(None)


def test_completion_keeps_known_codes_and_reads_the_bottom_half():
    """Completing the top half from the bottom: known codes come back unchanged, and the top half
    depends on the bottom (through the lower scales' bidirectional encoders); with encoders that
    ignore x_t (the broken variant, patched in here) it would not."""
    model = make(shape=(1, 4, 4), levels=8, scales=3)
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 8, (8, 1, 4, 4), generator=g)
    b = a.clone()
    b[:, :, 2:] = torch.randint(0, 8, (8, 1, 2, 4), generator=g)  # another bottom half
    known = torch.zeros(4, 4, dtype=torch.bool)
    known[2:] = True

    def complete(x):
        return model.complete(x, known, generator=torch.Generator().manual_seed(5))

    ca, cb = complete(a), complete(b)
    assert torch.equal(ca[:, :, 2:], a[:, :, 2:]) and torch.equal(cb[:, :, 2:], b[:, :, 2:])
    assert not torch.equal(ca[:, :, :2], cb[:, :, :2]), "the top half ignored the known bottom half"
    # the raster top GPT alone cannot see the bottom: its completions of the top agree
    ta = model.top.complete(a, known, generator=torch.Generator().manual_seed(5))
    tb = model.top.complete(b, known, generator=torch.Generator().manual_seed(5))
    assert torch.equal(ta[:, :, :2], tb[:, :, :2])
    # broken variant: encoders blind to x_t -> the two completions' top halves coincide
    original = ImageBART.scale_context
    try:
        ImageBART.scale_context = lambda self, t, x_t, cond=None: original(self, t, torch.zeros_like(x_t), cond)
        assert torch.equal(complete(a)[:, :, :2], complete(b)[:, :, :2])
    finally:
        ImageBART.scale_context = original



def test_a_large_codebook():
    """512 codes over a (1, 5, 6) grid: the bound, sampling (cached == naive) and completion."""
    model = make(shape=(1, 5, 6), levels=512, scales=3)
    x = torch.randint(0, 512, (2, 1, 5, 6))
    with torch.no_grad():
        lp = model.log_prob(x)
    assert lp.shape == (2,) and bool(torch.isfinite(lp).all()) and bool((lp < 0).all())
    a = model.sample(2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, model.sample(2, generator=torch.Generator().manual_seed(0), naive=True))
    known = torch.zeros(5, 6, dtype=torch.bool)
    known[3:] = True
    assert torch.equal(model.complete(x, known)[:, :, 3:], x[:, :, 3:])

# ----- errors, save/load, registry ------------------------------------------------------------------
def test_errors_name_expected_and_given():
    with pytest.raises(ValueError, match=r"expected image_shape \(1, h, w\), given \(3, 4, 4\)"):
        argen.create_model("imagebart", image_shape=(3, 4, 4), levels=4, **TINY)
    with pytest.raises(ValueError, match=r"model\.train_scale must be None or in \[1, scales=2\], given 3"):
        argen.create_model("imagebart", image_shape=(1, 4, 4), levels=4, scales=2, train_scale=3, **TINY)
    with pytest.raises(ValueError, match="model.d_model must be divisible by n_heads=3"):
        argen.create_model("imagebart", image_shape=(1, 4, 4), levels=4, **{**TINY, "n_heads": 3})
    model = make(shape=(1, 3, 3), levels=4, scales=3)
    x = torch.randint(0, 4, (2, 1, 3, 3))
    with pytest.raises(ValueError, match="no per-position conditionals"):
        model(x)
    with pytest.raises(ValueError, match="no exact per-position conditionals"):
        model.conditionals(x)
    with pytest.raises(ValueError, match=r"expected a scale t in \[1, 2\], given 3"):
        model.scale_logits(3, x, x)
    with pytest.raises(ValueError, match=r"expected a scale t in \[1, 3\], given 0"):
        model.posterior(x, x, 0)
    with pytest.raises(ValueError, match="chain .* of 3 grids, given 2"):
        model.scale_loss(x, [x, x], 1)
    with pytest.raises(ValueError, match="samples must be an integer >= 1, given 0"):
        model.log_prob(x, samples=0)
    with pytest.raises(ValueError, match="cfg_scale must be 1.0"):
        model.sample(1, cfg_scale=2.0)
    with pytest.raises(ValueError, match=r"values in \[0, 3\]"):
        model.complete(x + 4, torch.ones(3, 3, dtype=torch.bool))


def test_save_load_round_trip(tmp_path):
    model = make(shape=(1, 3, 3), levels=4, scales=3, shared_scales=True, num_classes=2)
    x = torch.randint(0, 4, (3, 1, 3, 3))
    y = torch.tensor([0, 1, 1])
    argen.save(model, tmp_path / "run")
    loaded = argen.load(tmp_path / "run").eval()
    assert type(loaded) is ImageBART and loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(loaded.log_prob(x, y), model.log_prob(x, y))
    assert torch.equal(loaded.sample(3, y, generator=torch.Generator().manual_seed(0)),
                       model.sample(3, y, generator=torch.Generator().manual_seed(0)))


def test_declared_facts():
    model = make()
    assert not model.exact_likelihood and not model.exact_in_order and not model.steps_by_position
    assert model.capabilities.stepper_kind == "scales" and not model.own_stepper
    assert model.cond_spec.kind == "none"
    assert make(num_classes=3).cond_spec.num_classes == 3


# ----- the CLI, end to end on the embedded MNIST ------------------------------------------------------
def test_cli_train_sample_complete_eval(tmp_path, capsys):
    from argen.cli import main
    from argen.models.latent.two_stage import LatentModel

    tok, prior = tmp_path / "tok", tmp_path / "ib"
    quick = ["--set", "train.eval_examples=32", "train.tensorboard=false"]
    assert main(["train", "fsq", "--data", "mnist", "--steps", "2", "--batch-size", "8", "--out", str(tok), *quick]) == 0
    assert main(["tokenize", str(tok)]) == 0
    small = ["model.d_model=16", "model.n_heads=2", "model.d_ff=32", "model.top_layers=1", "model.encoder_layers=1",
             "model.decoder_layers=1", "model.scales=3"]
    assert main(["train", "imagebart", "--tokenizer", str(tok), "--out", str(prior), "--steps", "2", "--batch-size",
                 "8", *quick, *small]) == 0
    assert "upper bound" in capsys.readouterr().out  # reported as a bound, not an exact likelihood
    model = argen.load(prior)
    assert isinstance(model, LatentModel) and isinstance(model.prior, ImageBART) and model.prior.scales == 3
    assert main(["sample", str(prior), "-n", "2", "-o", str(tmp_path / "s.png"), "--top-k", "20"]) == 0
    assert main(["complete", str(prior), "--mask", "top-half", "-n", "2", "-o", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "s.png").is_file() and (tmp_path / "c.png").is_file()
    assert main(["eval", str(prior), "--max-examples", "8"]) == 0
    assert main(["sample", str(prior), "-n", "1", "-o", str(tmp_path / "x.png"), "--cfg-scale", "2"]) == 2
