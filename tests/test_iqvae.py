"""IQ-VAE: the tokenizer that quantizes an image and its edge map jointly against one codebook
(joint statistics, the variational regularizer, encode_condition, errors, save/load) and the prior
over image tokens given condition tokens (cached == naive, the KV cache against the full pass, the
Gumbel feed in training only, what it refuses)."""
from __future__ import annotations

import copy
import json

import pytest
import torch

import argen
from argen.conditioning import CondSpec
from argen.tokenizers import create_tokenizer, tiny_tokenizer_kwargs
from argen.tokenizers.iqvae import code_histogram_gap, gaussian_gap

SHAPE = (1, 8, 8)
PRIOR = dict(d_model=16, n_layers=2, n_heads=2, d_ff=32)


def tokenizer(levels: int = 256, **kw):
    torch.manual_seed(0)
    return create_tokenizer("iqvae", image_shape=SHAPE, levels=levels, **{**tiny_tokenizer_kwargs("iqvae"), **kw})


def pair(n: int = 4, levels: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Blobs of random size and place, and their edge maps (on pixels with an off 4-neighbour)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    imgs = []
    for _ in range(n):
        cy, cx, r = (torch.rand(3, generator=g) * torch.tensor([4.0, 4.0, 2.0]) + torch.tensor([2.0, 2.0, 1.5])).tolist()
        imgs.append(((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).long())
    on = torch.stack(imgs)[:, None]
    pad = torch.nn.functional.pad(on, (1, 1, 1, 1))
    off_nb = (pad[..., :-2, 1:-1] == 0) | (pad[..., 2:, 1:-1] == 0) | (pad[..., 1:-1, :-2] == 0) | (pad[..., 1:-1, 2:] == 0)
    return on * (levels - 1), (on.bool() & off_nb).long()


def step(tok, x, c, opt):
    loss, stats = tok.phase_loss("model", x, 0, cond=c)
    opt.zero_grad()
    loss.backward()
    opt.step()
    tok.update_statistics(stats)
    return stats


# ----- the tokenizer -------------------------------------------------------------------------------
def test_joint_quantization_shares_one_codebook():
    """One quantizer call per step sees both domains (its EMA statistics count image and condition
    latents), and a condition encoder equal to the image encoder gives the image's codes: the
    condition's tokens are indices into the same codebook."""
    tok = tokenizer(levels=2).train()
    x, c = pair(levels=2)
    calls = []
    tok.quantizer.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    _, stats = tok.phase_loss("model", x, 0, cond=c)
    assert calls == [2 * x.shape[0]]  # one joint call: image latents and condition latents
    h, w = tok.code_shape
    assert float(stats["vq_counts"][0].sum()) == 2 * x.shape[0] * h * w
    tok.update_statistics(stats)
    tok.cond_encoder.load_state_dict(tok.encoder.state_dict())
    tok.eval()
    assert torch.equal(tok.encode_condition(x), tok.encode(x).flatten(1))
    assert tok.condition_vocab == tok.codebook_size and tok.condition_len == h * w


def test_regularizer_is_zero_when_the_distributions_match_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 4, generator=g)
    codebook = torch.randn(16, 4, generator=g)
    same = z[torch.randperm(64, generator=g)]  # other latents, the same distribution
    for gap in (gaussian_gap, lambda a, b: code_histogram_gap(a, b, codebook, 1.0)):
        assert float(gap(z, same)) == pytest.approx(0.0, abs=1e-6)
        assert float(gap(z, z + 1.0)) > 0.05  # shifted
        assert float(gap(z, 3.0 * z)) > 0.05  # spread
    # the closed form is the symmetric KL of the per-channel Gaussians
    a, b = z, 2.0 * z[:32] + 0.5
    na = torch.distributions.Normal(a.mean(0), (a.var(0, unbiased=False) + 1e-4).sqrt())
    nb = torch.distributions.Normal(b.mean(0), (b.var(0, unbiased=False) + 1e-4).sqrt())
    sym = 0.5 * (torch.distributions.kl_divergence(na, nb) + torch.distributions.kl_divergence(nb, na)).mean()
    torch.testing.assert_close(gaussian_gap(a, b), sym, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("regularizer", ["gaussian", "codes"])
def test_regularizer_enters_the_loss_with_its_weight_and_trains_both_encoders(regularizer):
    x, c = pair()
    losses, stats = [], None
    for weight in (0.0, 0.7):
        tok = tokenizer(regularizer=regularizer, reg_weight=weight).train()
        loss, stats = tok.phase_loss("model", x, 0, cond=c)
        losses.append(loss)
    gap = stats["latent_gap"][0] / stats["latent_gap"][1]
    assert float(gap) > 0
    torch.testing.assert_close(losses[1] - losses[0], 0.7 * gap, atol=1e-5, rtol=1e-4)
    tok = tokenizer(regularizer=regularizer, reg_weight=1.0, condition_weight=0.0).train()
    zx, zc = tok.encoder(x.float() / 127.5 - 1), tok.cond_encoder(c.float() * 2 - 1)
    tok.latent_gap(zx, zc).backward()
    for enc in (tok.encoder, tok.cond_encoder):
        assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in enc.parameters())


def test_training_reconstructs_both_domains():
    tok = tokenizer()
    x, c = pair(n=6)
    tok.eval()
    before = tok.summarize(tok.eval_stats(x, c))
    tok.train()
    opt = torch.optim.Adam(tok.parameters(), lr=3e-3)
    for _ in range(40):
        stats = step(tok, x, c, opt)
    assert {"cond_rec_loss", "latent_gap", "rec_loss", "perplexity"} <= set(stats)
    tok.eval()
    after = tok.summarize(tok.eval_stats(x, c))
    assert after["mse"] < 0.3 * before["mse"] and after["cond_mse"] < 0.5 * before["cond_mse"], (before, after)
    assert {"cond_mse", "cond_perplexity", "shared_codes"} <= set(after) and 0 <= after["shared_codes"] <= 1
    assert set(tok.summarize(tok.eval_stats(x))) >= {"mse", "usage"}  # without the condition: the image's numbers


def test_condition_hooks_shapes_and_ranges():
    tok = tokenizer().eval()
    x, c = pair(n=3)
    assert tok.condition_spec == CondSpec.image(SHAPE, levels=2)
    tokens = tok.encode_condition(c)
    assert tokens.shape == (3, tok.condition_len) and tokens.dtype == torch.long
    assert 0 <= int(tokens.min()) and int(tokens.max()) < tok.condition_vocab
    back = tok.decode_condition(tokens)
    assert back.shape == c.shape and back.dtype == torch.long and set(back.unique().tolist()) <= {0, 1}
    assert tok.uses_condition and not create_tokenizer("vqvae").condition_spec
    other = copy.deepcopy(tok)
    with torch.no_grad():  # the condition's tokens come from the condition encoder, the image's from the image's
        for p in other.cond_encoder.parameters():
            p.neg_()
    assert not torch.equal(other.encode_condition(c), tokens) and torch.equal(other.encode(x), tok.encode(x))


def test_bad_inputs_raise_value_error():
    tok = tokenizer().train()
    x, c = pair(n=2)
    with pytest.raises(ValueError, match="expected cond of shape .*given None"):
        tok.phase_loss("model", x, 0)
    with pytest.raises(ValueError, match=r"condition values in \[0, 1\], given range \[0, 2\]"):
        tok.phase_loss("model", x, 0, cond=c * 2)
    with pytest.raises(ValueError, match=r"shape \(B, 1, 8, 8\), given \(2, 1, 8, 7\)"):
        tok.encode_condition(c[..., :7])
    with pytest.raises(ValueError, match="torch.long"):
        tok.encode_condition(c.float())
    with pytest.raises(ValueError, match="one condition per image"):
        tok.phase_loss("model", x, 0, cond=c[:1])
    with pytest.raises(ValueError, match=r"condition tokens of shape \(B, 16\)"):
        tok.decode_condition(torch.zeros(2, 15, dtype=torch.long))
    with pytest.raises(ValueError, match="regularizer"):
        tokenizer(regularizer="l2")


def test_save_load_round_trip(tmp_path):
    tok = tokenizer()
    x, c = pair()
    step(tok.train(), x, c, torch.optim.Adam(tok.parameters(), lr=1e-3))
    tok.eval()
    argen.save(tok, tmp_path / "tok")
    loaded = argen.load(tmp_path / "tok").eval()
    assert type(loaded) is type(tok) and loaded.config == tok.config
    assert torch.equal(loaded.encode_condition(c), tok.encode_condition(c))
    assert torch.equal(loaded.encode(x), tok.encode(x))


# ----- the prior ----------------------------------------------------------------------------------
def prior(shape=(1, 3, 4), levels=40, cond_vocab=24, cond_len=5, seed=0, **kw):
    """A tiny iqvae prior with every parameter perturbed (a zero head would make everything uniform)."""
    torch.manual_seed(seed)
    m = argen.create_model("iqvae", image_shape=shape, levels=levels, cond_vocab=cond_vocab, cond_len=cond_len,
                           **{**PRIOR, **kw}).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


def codes(m, batch, seed=1):
    return torch.randint(0, m.levels, (batch, *m.data_shape), generator=torch.Generator().manual_seed(seed))


def conds(m, batch, seed=2):
    return torch.randint(0, m.config.cond_vocab, (batch, m.config.cond_len), generator=torch.Generator().manual_seed(seed))


def test_kv_cache_prefill_and_decode_equal_the_full_pass():
    m = prior()
    x, c = codes(m, 3), conds(m, 3)
    with torch.no_grad():
        full = m.trunk(m.embed(x, c))
        cache = m.new_cache(3)
        parts = [m.trunk(m.embed(x, c, 0, 1), cache, 0)]  # the condition prefix with slot 0
        parts += [m.trunk(m.embed(x, c, t, t + 1), cache, t) for t in range(1, 12)]
    assert full.shape == (3, 12, m.levels)
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("opts", [{}, dict(temperature=0.8, top_k=10, top_p=0.9)], ids=["plain", "filters"])
def test_cached_sampling_equals_naive(opts):
    m = prior()
    c = conds(m, 4)
    gen = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    a = m.sample(4, c, generator=gen(5), **opts)
    assert torch.equal(a, m.sample(4, c, generator=gen(5), naive=True, **opts))
    assert torch.equal(m.sample(2, None, generator=gen(3)), m.sample(2, None, generator=gen(3), naive=True))
    known = torch.zeros(3, 4, dtype=torch.bool)
    known[:1] = True
    known[2, 2] = True
    out = m.complete(a, known, c, generator=gen(6), **opts)
    assert torch.equal(out, m.complete(a, known, c, generator=gen(6), naive=True, **opts))
    assert torch.equal(out[:, :, known], a[:, :, known])


def test_condition_changes_the_likelihood_and_none_is_the_null_condition():
    m = prior()
    x, c = codes(m, 2), conds(m, 2)
    with torch.no_grad():
        a, b = m.log_prob(x, c), m.log_prob(x, conds(m, 2, seed=9))
        null = m.log_prob(x, None)
    assert not torch.allclose(a, b) and not torch.allclose(a, null)
    # an unconditional iqvae (no prefix) is an ordinary prior over codes
    u = prior(cond_vocab=None, cond_len=None)
    assert not u.cond_spec.conditional and u.log_prob(codes(u, 2)).shape == (2,)


def test_gumbel_feed_changes_training_only_and_is_reproducible():
    m0 = prior(gumbel_feed=0.0)
    m1 = prior(gumbel_feed=1.0)
    m1.load_state_dict(m0.state_dict())
    x, c = codes(m0, 4), conds(m0, 4)
    with torch.no_grad():  # eval mode: the exact likelihood, whatever gumbel_feed says
        torch.testing.assert_close(m1.log_prob(x, c), m0.log_prob(x, c), atol=0, rtol=0)
    m0.train(), m1.train()

    def train_loss(m, seed):
        torch.manual_seed(seed)
        return m.loss(x, c)

    with torch.no_grad():  # without the feed, training mode computes the eval loss (no dropout here)
        torch.testing.assert_close(train_loss(m0, 0), m0.eval().loss(x, c), atol=0, rtol=0)
    m0.train()
    value = lambda m, seed: float(train_loss(m, seed).detach())  # noqa: E731
    assert value(m1, 0) == value(m1, 0)  # torch's RNG: same seed, same loss
    assert value(m1, 0) != value(m0, 0) and value(m1, 0) != value(m1, 1)
    loss = train_loss(m1, 0)
    loss.backward()  # the second pass carries the gradient
    assert m1.head.weight.grad is not None and float(m1.head.weight.grad.abs().sum()) > 0


def test_gumbel_inputs_replace_the_declared_fraction_causally():
    m = argen.create_model("iqvae", image_shape=(1, 4, 4), levels=512, cond_vocab=8, cond_len=3, gumbel_feed=0.5,
                           **PRIOR).train()  # zero head: uniform predictions, so a replaced code differs almost surely
    x, c = codes(m, 64), conds(m, 64)
    torch.manual_seed(0)
    fed = m.gumbel_inputs(x, c)
    assert fed.shape == x.shape and fed.dtype == torch.long and int(fed.max()) < m.levels
    assert 0.4 < float((fed != x).float().mean()) < 0.6
    # training mode stays causal: changing the later codes leaves the earlier conditionals alone
    p = prior(gumbel_feed=0.5).train()
    x, c = codes(p, 2), conds(p, 2)
    y = x.clone()
    y[:, :, 2:] = (y[:, :, 2:] + 1) % p.levels
    torch.manual_seed(0)
    a = p.log_prob(x, c, reduce=False)
    torch.manual_seed(0)
    b = p.log_prob(y, c, reduce=False)
    torch.testing.assert_close(a[:, :2], b[:, :2], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[:, 2:], b[:, 2:])


def test_prior_refuses_what_it_cannot_take():
    m = prior()
    x, c = codes(m, 2), conds(m, 2)
    with pytest.raises(ValueError, match="exactly cond_len=5 condition tokens"):
        m.log_prob(x, c[:, :3])
    with pytest.raises(ValueError, match=r"tokens in \[0, 23\]"):
        m.log_prob(x, c + 24)
    with pytest.raises(ValueError, match="not class labels"):
        argen.create_model("iqvae", num_classes=3)
    with pytest.raises(ValueError, match="come together"):
        argen.create_model("iqvae", cond_vocab=8)
    with pytest.raises(ValueError, match=r"image_shape \(1, h, w\)"):
        argen.create_model("iqvae", image_shape=(3, 4, 4), levels=16)
    with pytest.raises(ValueError, match="gumbel_feed"):
        argen.create_model("iqvae", gumbel_feed=1.5)


# ----- the command line: tokenizer, prior over its codes given the edge tokens, sampling from an edge map ---------
def test_two_stage_edges_to_image_from_the_command_line(tmp_path, capsys):
    from argen.cli import main
    from argen.data import load_dataset
    from argen.data.images import write_image

    tok, run = str(tmp_path / "tok"), str(tmp_path / "prior")
    small = ["--steps", "3", "--batch-size", "8"]
    assert main(["train", "iqvae", "--data", "mnist-edges", "--out", tok, *small, "--set", "model.channels=[8,8]",
                 "--set", "model.res_blocks=0", "--set", "model.code_dim=4", "--set", "model.codebook_size=16"]) == 0
    assert main(["train", "iqvae", "--tokenizer", tok, "--data", "mnist-edges", "--conditional", "--out", run, *small,
                 "--set", "model.d_model=16", "--set", "model.n_layers=1", "--set", "model.n_heads=2",
                 "--set", "model.d_ff=16"]) == 0
    # resuming the prior needs no --tokenizer (the run holds its copy): the name means the prior, not the tokenizer
    assert main(["train", "iqvae", "--out", run, "--resume", "--steps", "4", "--batch-size", "8"]) == 0
    assert json.loads((tmp_path / "prior" / "config.json").read_text())["step"] == 4
    metrics = json.loads((tmp_path / "tok" / "config.json").read_text())["metrics"]
    assert "test_cond_mse" in metrics and "test_shared_codes" in metrics  # the trainer evaluated with y
    model = argen.load(run)
    assert model.prior.config.cond_vocab == 16 and model.prior.config.cond_len == 49  # the edge map's 7x7 codes
    edges = load_dataset("mnist-edges", "test")[0][1]
    write_image(tmp_path / "edges.png", (edges[0].numpy() * 255).astype("uint8"))
    capsys.readouterr()
    out = tmp_path / "out.png"
    assert main(["sample", run, "--condition", str(tmp_path / "edges.png"), "-n", "2", "-o", str(out)]) == 0
    assert out.exists()
    write_image(tmp_path / "small.png", (edges[0, :20].numpy() * 255).astype("uint8"))
    assert main(["sample", run, "--condition", str(tmp_path / "small.png"), "-n", "2", "-o", str(out)]) == 2
    assert "expected an image of shape (C, H, W) = (1, 28, 28), given (1, 20, 28)" in capsys.readouterr().err
    # no --condition: the prior's null condition was never trained (no condition dropout), so it is refused
    assert main(["sample", run, "-n", "2", "-o", str(out)]) == 2
    assert "cannot sample without a condition: expected --condition" in capsys.readouterr().err
