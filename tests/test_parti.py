"""parti, the text-to-image prior over code grids: shapes, the caption checks, padding
invariance, caption dropout, cached == naive (guidance and filters), the text encoding computed
once per sample, save / load."""
from __future__ import annotations

import pytest
import torch

import argen
from argen.text import NULL, PAD

TINY = dict(d_model=16, n_layers=2, n_heads=2, d_ff=32, text_layers=1, zero_head=False)
VOCAB, LENGTH = 9, 5


def prior(shape=(1, 3, 4), levels=64, pos="learned", seed=0, **kw):
    """A tiny parti with every parameter perturbed (so that captions and codes matter)."""
    torch.manual_seed(seed)
    m = argen.create_model("parti", image_shape=shape, levels=levels, pos_embedding=pos, cond_vocab=VOCAB,
                           cond_len=LENGTH, **{**TINY, **kw}).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


def codes(m, batch, seed=1):
    return torch.randint(0, m.levels, (batch, *m.data_shape), generator=torch.Generator().manual_seed(seed))


CAPTIONS = torch.tensor([[2, 3, 4, 0, 0], [5, 6, 0, 0, 0], [7, 8, 2, 3, 4], [4, 0, 0, 0, 0]])


def test_shapes_spec_and_default():
    m = prior()
    x = codes(m, 4)
    assert m.cond_spec.kind == "tokens" and (m.cond_spec.vocab_size, m.cond_spec.max_len) == (VOCAB, LENGTH)
    assert m(x, CAPTIONS).shape == (4, 64, 3, 4)
    assert m.log_prob(x, CAPTIONS).shape == (4,) and m.log_prob(x, CAPTIONS, reduce=False).shape == (4, 3, 4)
    assert m.sample(4, CAPTIONS, generator=torch.Generator().manual_seed(0)).shape == (4, 1, 3, 4)
    assert m.null_cond(2).tolist() == [[NULL, PAD, PAD, PAD, PAD]] * 2
    assert m.exact_likelihood and m.capabilities.guidance and m.capabilities.stepper_kind == "kv_cache"
    default = argen.create_model("parti", cond_vocab=40, cond_len=10)
    assert default.data_shape == (1, 7, 7) and default.levels == 128
    # zero head by default: a fresh prior is uniform over the codebook whatever the caption
    lp = default.log_prob(codes(default, 2), torch.tensor([[2, 3, 0], [4, 0, 0]])).detach()
    torch.testing.assert_close(lp, torch.full((2,), -49 * torch.log(torch.tensor(128.0)).item()))


def test_refuses_bad_captions_and_configs():
    m = prior()
    x = codes(m, 2)
    with pytest.raises(ValueError, match=r"tokens of shape \(2, L <= 5\)"):
        m.log_prob(x, torch.tensor([2, 3]))  # labels, not a caption
    with pytest.raises(ValueError, match=r"tokens of shape \(2, L <= 5\).*given torch.int64 \(2, 6\)"):
        m.log_prob(x, torch.full((2, 6), 2))  # longer than cond_len
    with pytest.raises(ValueError, match=r"tokens in \[0, 8\], given range \[2, 9\]"):
        m.log_prob(x, torch.tensor([[2, 9], [3, 4]]))
    with pytest.raises(ValueError, match=r"torch.long tokens"):
        m.sample(2, torch.tensor([[2.0, 3.0], [3.0, 4.0]]))
    with pytest.raises(ValueError, match=r"tokens of shape \(3, L <= 5\)"):
        m.sample(3, CAPTIONS[:2])  # one caption per sample
    with pytest.raises(ValueError, match="parti needs cond_vocab and cond_len .*--conditional"):
        argen.create_model("parti", cond_vocab=9)
    with pytest.raises(ValueError, match="model.num_classes: parti is conditioned on caption tokens"):
        argen.create_model("parti", cond_vocab=9, cond_len=5, num_classes=3)
    with pytest.raises(ValueError, match=r"model\.caption_dropout"):
        argen.create_model("parti", cond_vocab=9, cond_len=5, caption_dropout=1.0)


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_padding_never_matters(pos):
    """A caption padded to any length gives the same log_prob, and what the padding positions
    hold (the PAD embedding) is masked out of both the encoder and the cross-attention."""
    m = prior(pos=pos)
    x = codes(m, 4)
    with torch.no_grad():
        base = m.log_prob(x, CAPTIONS)
        short = torch.tensor([[2, 3, 4], [5, 6, 0], [7, 8, 2], [4, 0, 0]])
        lp_short = m.log_prob(x, short)
        torch.testing.assert_close(lp_short[[0, 1, 3]], base[[0, 1, 3]], atol=1e-5, rtol=1e-5)
        m.text_embed.weight[PAD].add_(3 * torch.randn(16))  # a different padding embedding changes nothing
        torch.testing.assert_close(m.log_prob(x, CAPTIONS), base, atol=1e-5, rtol=1e-5)
        m.text_embed.weight[3].add_(3 * torch.randn(16))  # a real word's embedding does change it
        changed = m.log_prob(x, CAPTIONS)
    assert not torch.allclose(changed[:1], base[:1], atol=1e-4)
    torch.testing.assert_close(changed[[1, 3]], base[[1, 3]], atol=1e-5, rtol=1e-5)  # captions without word 3


def test_caption_matters_and_null_caption_is_cond_none():
    m = prior()
    x = codes(m, 4)
    with torch.no_grad():
        a = m.log_prob(x, CAPTIONS)
        assert not torch.allclose(a, m.log_prob(x, CAPTIONS.roll(1, 0)), atol=1e-4)
        torch.testing.assert_close(m.log_prob(x, m.null_cond(4)), m.log_prob(x), atol=0, rtol=0)
        torch.testing.assert_close(m.log_prob(x, torch.tensor([[NULL]] * 4)), m.log_prob(x), atol=1e-5, rtol=1e-5)


def test_caption_dropout_only_in_training_and_reproducible():
    m = prior(caption_dropout=0.5)
    ids = torch.randint(2, VOCAB, (64, LENGTH), generator=torch.Generator().manual_seed(0))
    assert torch.equal(m.captions(ids, 64), ids)  # eval: captions untouched
    assert torch.equal(m.captions(ids[:, :2], 64)[:, :2], ids[:, :2])  # padded to cond_len
    m.train()
    torch.manual_seed(3)
    a = m.captions(ids, 64)
    torch.manual_seed(3)
    assert torch.equal(a, m.captions(ids, 64))
    dropped = (a != ids).any(1)
    assert torch.equal(a[dropped], m.null_cond(int(dropped.sum())))
    assert torch.equal(a[~dropped], ids[~dropped])
    assert 10 < int(dropped.sum()) < 54  # about half of 64
    # the training loss sees the dropped captions: it equals the eval loss under them
    x = codes(m, 64)
    torch.manual_seed(3)
    train_loss = m.loss(x, ids)
    m.eval()
    torch.testing.assert_close(train_loss, m.loss(x, a), atol=1e-5, rtol=1e-5)
    no_drop = prior(caption_dropout=0.0).train()
    assert torch.equal(no_drop.captions(ids, 64), ids)


@pytest.mark.parametrize("pos", ["learned", "rope"])
@pytest.mark.parametrize("opts", [dict(), dict(cfg_scale=3.0), dict(cfg_scale=2.0, temperature=0.8, top_k=20, top_p=0.9),
                                  dict(top_k=10, top_p=0.8), dict(temperature=1.3)],
                         ids=["plain", "cfg3", "cfg2-filters", "filters", "temperature"])
def test_cached_sampling_equals_naive(pos, opts):
    m = prior(shape=(1, 3, 4), levels=300, pos=pos)
    gen = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    a = m.sample(4, CAPTIONS, generator=gen(5), **opts)
    b = m.sample(4, CAPTIONS, generator=gen(5), naive=True, **opts)
    assert torch.equal(a, b)
    known = torch.zeros(3, 4, dtype=torch.bool)
    known[:1] = True
    known[2, 1] = True
    c = m.complete(a, known, CAPTIONS, generator=gen(6), **opts)
    d = m.complete(a, known, CAPTIONS, generator=gen(6), naive=True, **opts)
    assert torch.equal(c, d) and torch.equal(c[:, :, known], a[:, :, known])


def test_kv_cache_with_the_text_context_equals_the_full_pass():
    m = prior(shape=(1, 3, 5), levels=50)
    x = codes(m, 4)
    with torch.no_grad():
        h = m.embed(x, CAPTIONS)
        context = m.slot_context(x, CAPTIONS, 0, 15)
        full = m.trunk(h, context=context)
        cache = m.new_cache(4)
        parts = [m.trunk(h[:, :1], cache, 0, context=m.slot_context(x, CAPTIONS, 0, 1))]
        assert m.slot_context(x, CAPTIONS, 1, 2) is None  # later calls bring nothing: K/V are cached
        parts += [m.trunk(h[:, t : t + 1], cache, t) for t in range(1, 15)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


def test_text_encoding_and_cross_kv_computed_once_per_sample(monkeypatch):
    """Cached sampling runs the text encoder once per stepper (the guided stepper and its
    unconditional twin: twice), and projects each layer's cross K/V once, not per code."""
    m = prior(shape=(1, 3, 4), levels=40)
    calls = {"encode": 0, "cross": 0}
    encode = m.encode_text

    def counted_encode(ids):
        calls["encode"] += 1
        return encode(ids)

    monkeypatch.setattr(m, "encode_text", counted_encode)
    for block in m.decoder.blocks:
        kv = block.cross.keys_values

        def counted_kv(ctx, kv=kv):
            calls["cross"] += 1
            return kv(ctx)

        monkeypatch.setattr(block.cross, "keys_values", counted_kv)
    m.sample(3, CAPTIONS[:3], generator=torch.Generator().manual_seed(0))
    assert calls == {"encode": 1, "cross": len(m.decoder.blocks)}
    calls.update(encode=0, cross=0)
    m.sample(3, CAPTIONS[:3], generator=torch.Generator().manual_seed(0), cfg_scale=2.0)
    assert calls == {"encode": 2, "cross": 2 * len(m.decoder.blocks)}
    calls.update(encode=0, cross=0)
    m.sample(3, CAPTIONS[:3], generator=torch.Generator().manual_seed(0), naive=True)
    assert calls["encode"] == 12  # the reference reruns everything per code (h * w = 12)


def test_guidance_changes_samples_and_scale_zero_is_unconditional():
    m = prior(shape=(1, 3, 4), levels=300)
    gen = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    plain = m.sample(4, CAPTIONS, generator=gen())
    assert torch.equal(m.sample(4, CAPTIONS, generator=gen(), cfg_scale=1.0), plain)
    assert not torch.equal(m.sample(4, CAPTIONS, generator=gen(), cfg_scale=3.0), plain)
    zero = m.sample(4, CAPTIONS, generator=gen(), cfg_scale=0.0)
    assert torch.equal(zero, m.sample(4, None, generator=gen()))


def test_save_load_roundtrip(tmp_path):
    m = prior()
    x = codes(m, 4)
    argen.save(m, tmp_path / "run")
    loaded = argen.load(tmp_path / "run").eval()
    assert type(loaded) is type(m) and loaded.config == m.config
    torch.testing.assert_close(loaded.log_prob(x, CAPTIONS), m.log_prob(x, CAPTIONS), atol=0, rtol=0)
    a = loaded.sample(2, CAPTIONS[:2], generator=torch.Generator().manual_seed(1), cfg_scale=2.0)
    assert torch.equal(a, m.sample(2, CAPTIONS[:2], generator=torch.Generator().manual_seed(1), cfg_scale=2.0))


def test_training_lowers_the_conditional_loss():
    m = prior(levels=16, caption_dropout=0.0).train()
    # two captions, each with its own flat image: only the caption tells them apart
    ids = torch.tensor([[2, 3, 0, 0, 0], [4, 5, 6, 0, 0]]).repeat(4, 1)
    x = torch.tensor([3, 11]).repeat(4).view(8, 1, 1, 1).expand(8, 1, 3, 4).contiguous()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    first = float(m.loss(x, ids).detach())
    for _ in range(40):
        opt.zero_grad()
        m.loss(x, ids).backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        assert float(m.loss(x, ids)) < first - 0.5
        # the first code (slot 0 sees no code) can only be right through the caption
        lp0 = m.log_prob(x, ids, reduce=False)[:, 0, 0]
        assert float(lp0.exp().min()) > 0.5


# ----- reranking (argen.sampling.rerank) -------------------------------------------------------------
@pytest.mark.parametrize("score", ["pmi", "likelihood"])
def test_rerank_keeps_the_best_scored_candidate(score):
    from argen.sampling import SamplingConfig
    from argen.sampling.rerank import rerank_sample

    m = prior(shape=(1, 2, 3), levels=20)
    cond, k = CAPTIONS[:3], 4
    config = lambda: SamplingConfig(generator=torch.Generator().manual_seed(2), cfg_scale=2.0)  # noqa: E731
    best = rerank_sample(m, 3, cond, k, config(), score=score)
    # by hand: the same n * k draws, scored with log_prob, the best of each group of k
    many = cond.repeat_interleave(k, 0)
    candidates = m.sample(12, many, config())
    with torch.no_grad():
        values = m.log_prob(candidates, many)
        if score == "pmi":
            values = values - m.log_prob(candidates, None)
    values = values.view(3, k)
    assert len(set(values.argmax(1).tolist())) > 1 or len(set(values.argmin(1).tolist())) > 1  # a real choice
    want = candidates.view(3, k, 1, 2, 3)[torch.arange(3), values.argmax(1)]
    assert torch.equal(best, want)
    assert not torch.equal(best, candidates.view(3, k, 1, 2, 3)[torch.arange(3), values.argmin(1)])
    # k = 1 is plain sampling; the model's mode is left as it was
    m.train()
    assert torch.equal(rerank_sample(m, 3, cond, 1, config(), score=score), m.sample(3, cond, config()))
    assert m.training


def test_rerank_refusals():
    from argen.sampling import SamplingConfig
    from argen.sampling.rerank import rerank_sample

    m = prior(shape=(1, 2, 3), levels=20)
    cond = CAPTIONS[:2]
    with pytest.raises(ValueError, match=r"score must be one of \['pmi', 'likelihood'\], given 'clip'"):
        rerank_sample(m, 2, cond, 2, score="clip")
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match=f"k must be an integer >= 1, given {bad!r}"):
            rerank_sample(m, 2, cond, bad)
    with pytest.raises(ValueError, match="n must be an integer >= 1, given 0"):
        rerank_sample(m, 0, cond, 2)
    with pytest.raises(ValueError, match="score 'pmi' .* expected a cond, given None"):
        rerank_sample(m, 2, None, 2)
    with pytest.raises(ValueError, match="config must be None or a SamplingConfig, given dict"):
        rerank_sample(m, 2, cond, 2, {"temperature": 1.0})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"tokens of shape \(3, L <= 5\)"):
        rerank_sample(m, 3, cond, 2)  # one cond per output
    plain = argen.create_model("pixelcnn", image_shape=(1, 3, 3), levels=4, hidden=12, n_blocks=1, head=12)
    with pytest.raises(ValueError, match="score 'pmi' needs a model with a null condition"):
        rerank_sample(plain, 2, None, 2)
    out = rerank_sample(plain, 2, None, 3, SamplingConfig(generator=torch.Generator().manual_seed(0)),
                        score="likelihood")
    assert out.shape == (2, 1, 3, 3)


def test_rerank_passes_the_models_sampling_options():
    """A model's declared sampling options (ARDM's steps) reach its sampler through rerank_sample;
    one it does not declare is refused, as by model.sample itself."""
    from argen.registry import get_entry
    from argen.sampling import SamplingConfig
    from argen.sampling.rerank import rerank_sample

    torch.manual_seed(0)
    ardm = argen.create_model("ardm", image_shape=(1, 4, 4), levels=4, **get_entry("ardm").tiny).eval()
    config = lambda: SamplingConfig(generator=torch.Generator().manual_seed(4))  # noqa: E731
    calls = []
    sample = ardm.sample

    def counted(*a, **kw):
        calls.append(kw)
        return sample(*a, **kw)

    ardm.sample = counted  # type: ignore[method-assign]
    out = rerank_sample(ardm, 2, None, 3, config(), score="likelihood", steps=2)
    assert out.shape == (2, 1, 4, 4) and calls == [{"steps": 2}]
    with pytest.raises(TypeError):
        rerank_sample(prior(shape=(1, 2, 3), levels=20), 2, CAPTIONS[:2], 2, config(), steps=2)


# ----- the command line, end to end ----------------------------------------------------------------------
def test_cli_text_to_image_end_to_end(tmp_path, capsys):
    """A tiny fsq tokenizer on mnist-captions, a tiny parti over its codes trained with the captions,
    then `argen sample --prompt` (with guidance and with reranking); an unknown word is exit 2 naming it."""
    import json

    from argen.cli import main
    from argen.models.latent.two_stage import LatentModel

    tok, run = tmp_path / "tok", tmp_path / "parti"
    quick = ["train.eval_examples=32", "train.log_every=1"]
    assert main(["train", "fsq", "--data", "mnist-captions", "--steps", "2", "--batch-size", "16", "--out", str(tok),
                 "--set", "model.channels=[8,8]", "model.res_blocks=1", "model.res_channels=8",
                 "model.fsq_levels=[4,3]", *quick]) == 0
    assert main(["train", "parti", "--tokenizer", str(tok), "--conditional", "--steps", "2", "--batch-size", "16",
                 "--out", str(run), "--set", "model.d_model=16", "model.n_layers=1", "model.n_heads=2",
                 "model.d_ff=32", "model.text_layers=1", *quick]) == 0
    desc = json.loads((run / "config.json").read_text())
    assert desc["model"] == "parti" and desc["config"]["cond_len"] == 9 and desc["vocabulary"]["words"]
    model = argen.load(run)
    assert isinstance(model, LatentModel) and model.cond_spec.kind == "tokens"
    capsys.readouterr()
    grid = tmp_path / "x.png"
    prompt = "a green two on a black background"
    assert main(["sample", str(run), "--prompt", prompt, "-n", "4", "-o", str(grid), "--cfg", "2.0"]) == 0
    assert grid.is_file() and "wrote 4 samples" in capsys.readouterr().out
    assert main(["sample", str(run), "--prompt", "a purple two", "-n", "4", "-o", str(tmp_path / "y.png")]) == 2
    err = capsys.readouterr().err
    assert "unknown word(s) ['purple']" in err and "green" in err
    assert main(["sample", str(run), "--prompt", prompt, "-n", "2", "-o", str(tmp_path / "r.png"), "--rerank", "2"]) == 0
    assert (tmp_path / "r.png").is_file()
    capsys.readouterr()  # --rerank keeps the option checks of plain sampling: no silently ignored --steps
    assert main(["sample", str(run), "--prompt", prompt, "-n", "2", "-o", str(tmp_path / "r.png"), "--rerank", "2",
                 "--steps", "3"]) == 2
    assert "--steps is for models that sample in parallel" in capsys.readouterr().err


def test_training_sample_grids_use_held_out_captions(tmp_path, monkeypatch):
    """A token-conditioned model's training grids are drawn for the first held-out captions, not the
    null caption (which a model without condition dropout never learns)."""
    import numpy as np

    from argen.conditioning import CondSpec
    from argen.data.dataset import ArgenDataset, ArraySource
    from argen.train import TrainConfig, Trainer

    m = prior(levels=8)
    spec = m.cond_spec
    g = np.random.default_rng(0)
    caps = g.integers(2, spec.vocab_size, size=(6, spec.max_len))
    data = ArraySource(g.integers(0, 8, size=(6, *m.data_shape)).astype(np.uint16), caps, levels=8,
                       cond_spec=CondSpec.tokens(spec.vocab_size, spec.max_len))
    ds = ArgenDataset("toy", data)
    seen = {}
    real = type(m).sample

    def spy(self, n, cond=None, *a, **k):
        seen["cond"] = cond
        return real(self, n, cond, *a, **k)

    monkeypatch.setattr(type(m), "sample", spy)
    cfg = TrainConfig(steps=1, batch_size=2, num_samples=4, ema_decay=None, progress=False)
    trainer = Trainer(m, ds, cfg, run_dir=tmp_path, eval_data=ds)
    trainer.sample_grid()
    assert torch.equal(seen["cond"].cpu(), torch.as_tensor(caps[:4]))
