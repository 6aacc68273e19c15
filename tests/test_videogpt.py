"""videogpt, the GPT prior over video code volumes: cached == naive for sample / complete / predict
(classes, guidance, filters, several code channels), cross-attention conditioning on context frames
(the context frames' slots never see the encoder; the encoder runs once per cached sample), the
trunk's `cross_from`, config checks. The conformance suite (tests/test_video_conformance.py -k
videogpt) covers causality, normalization and save/load of the tiny configs."""
from __future__ import annotations

import pytest
import torch

import argen
from argen.nn.attention import CausalPattern
from argen.nn.transformer import Transformer
from tests.test_video_conformance import check_causality, check_own_sampler_matches_naive


def make(shape=(3, 2, 3, 3), levels=5, **kw):
    """A tiny videogpt with every parameter perturbed (a zero head would make all conditionals uniform)."""
    torch.manual_seed(0)
    m = argen.create_model("videogpt", video_shape=shape, levels=levels,
                           **{**dict(d_model=12, n_layers=2, n_heads=2, d_ff=24), **kw})
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m.eval()


def codes(m, b: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, m.levels, (b, *m.data_shape), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kw", [dict(), dict(pos_embedding="add", d_model=8), dict(context_frames=1),
                                dict(context_frames=2, num_classes=3)], ids=["concat", "add", "cross1", "cross2-cls"])
def test_cached_equals_naive_for_sample_complete_predict(kw):
    m = make(**kw)
    check_own_sampler_matches_naive(m)
    if m.encoder is not None:
        check_causality(m)
    cond = torch.tensor([0, 2]) if kw.get("num_classes") else None
    g = dict(temperature=0.8, top_k=3, top_p=0.9)
    a = m.sample(2, cond, generator=torch.Generator().manual_seed(1), **g)
    b = m.sample(2, cond, generator=torch.Generator().manual_seed(1), naive=True, **g)
    assert torch.equal(a, b)
    # predict with k >= k' (the context prefilled) and k < k' (the encoder's frames partly generated)
    for k in (1, 2):
        e = m.predict(a[:, :k], cond, generator=torch.Generator().manual_seed(2))
        f = m.predict(a[:, :k], cond, generator=torch.Generator().manual_seed(2), naive=True)
        assert torch.equal(e, f) and torch.equal(e[:, :k], a[:, :k])


def test_guidance_cached_equals_naive_and_scale_zero_is_unconditional():
    m = make(context_frames=1, num_classes=3)
    cond = torch.tensor([0, 1])
    g = m.sample(2, cond, generator=torch.Generator().manual_seed(3), cfg_scale=2.5)
    assert torch.equal(g, m.sample(2, cond, generator=torch.Generator().manual_seed(3), cfg_scale=2.5, naive=True))
    zero = m.sample(2, cond, generator=torch.Generator().manual_seed(3), cfg_scale=0.0)
    assert torch.equal(zero, m.sample(2, None, generator=torch.Generator().manual_seed(3)))
    with pytest.raises(ValueError, match="class-conditional videogpt"):
        make().sample(1, cfg_scale=2.0)


def test_class_changes_the_likelihood_and_label_dropout_only_in_training():
    m = make(num_classes=3, label_dropout=0.5)
    x = codes(m, 2)
    a, b = m.log_prob(x, torch.tensor([0, 0])), m.log_prob(x, torch.tensor([1, 1]))
    assert not torch.allclose(a, b)
    torch.testing.assert_close(m.log_prob(x, None), m.log_prob(x, torch.tensor([3, 3])), atol=0, rtol=0)  # null class
    torch.manual_seed(0)
    m.train()
    rows = m.start_rows(torch.zeros(400, dtype=torch.long), 400)
    assert 100 < int((rows == 3).sum()) < 300  # about half dropped to the null class
    m.eval()
    assert int((m.start_rows(torch.zeros(400, dtype=torch.long), 400) == 3).sum()) == 0


def test_context_frames_slots_never_see_the_encoder():
    """Mode (b): the encoder changes the conditionals of frames >= k' only."""
    m = make(shape=(3, 1, 3, 3), levels=4, context_frames=2)
    x = codes(m, 3)
    with torch.no_grad():
        base = m.log_prob(x, reduce=False)
        for p in m.encoder.parameters():
            p.add_(torch.randn_like(p))
        out = m.log_prob(x, reduce=False)
    torch.testing.assert_close(out[:, :2], base[:, :2], atol=0, rtol=0)
    assert float((out[:, 2:] - base[:, 2:]).abs().max()) > 1e-4, "the later frames ignore the encoder"


def test_causality_check_fails_when_every_slot_cross_attends():
    """The broken variant: the encoder's frames' own slots read it (cross_from 0) -> they see
    codes after them, which the causality check must catch."""
    m = make(shape=(2, 1, 3, 3), levels=4, context_frames=1)
    check_causality(m)
    m.decoder.cross_from = 0
    with pytest.raises(AssertionError, match="changed"):
        check_causality(m)


def test_encoder_runs_once_per_cached_sample():
    m = make(shape=(3, 1, 3, 3), levels=4, context_frames=2)
    calls = {"encoder": 0, "kv": 0}
    m.encoder.register_forward_hook(lambda *_: calls.__setitem__("encoder", calls["encoder"] + 1))
    real = m.decoder.blocks[0].cross.keys_values

    def counted(ctx):
        calls["kv"] += 1
        return real(ctx)

    m.decoder.blocks[0].cross.keys_values = counted
    m.sample(2, generator=torch.Generator().manual_seed(0))
    assert calls == {"encoder": 1, "kv": 1}
    x = codes(m, 2)
    for k in (1, 2):  # the context generated in part, or prefilled whole
        calls.update(encoder=0, kv=0)
        m.predict(x[:, :k], generator=torch.Generator().manual_seed(0))
        assert calls == {"encoder": 1, "kv": 1}
    calls.update(encoder=0, kv=0)
    m.sample(1, generator=torch.Generator().manual_seed(0), naive=True)  # the reference reruns it per step
    assert calls["encoder"] == calls["kv"] == 3 * 9


def test_trunk_cross_from_needs_no_context_before_it():
    torch.manual_seed(0)
    trunk = Transformer(8, 2, 2, 16, CausalPattern(6), context_dim=8, cross_from=3).eval()
    x, ctx = torch.randn(2, 6, 8), torch.randn(2, 4, 8)
    full = trunk(x, ctx)
    cache = trunk.new_cache(2)
    parts = [trunk.prefill(x[:, :2], cache)]  # before cross_from: no context needed
    with pytest.raises(ValueError, match="expected a context"):
        trunk.prefill(x[:, 2:4], cache, start=2)  # reaches cross_from without one (refused before writing)
    parts.append(trunk.prefill(x[:, 2:4], cache, start=2, context=ctx))  # spans cross_from
    parts += [trunk.decode_one(x[:, p : p + 1], p, cache) for p in (4, 5)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    # the positions before cross_from do not depend on the context
    torch.testing.assert_close(trunk(x, torch.randn(2, 4, 8))[:, :3], full[:, :3], atol=0, rtol=0)
    with pytest.raises(ValueError, match="cross_from"):
        Transformer(8, 1, 2, 16, CausalPattern(6), cross_from=2)
    with pytest.raises(ValueError, match="cross_from"):
        Transformer(8, 1, 2, 16, CausalPattern(6), context_dim=8, cross_from=6)


def test_code_volumes_with_many_levels_and_channels():
    m = make(shape=(2, 4, 2, 2), levels=1024)
    x = codes(m, 2)
    assert m.log_prob(x, reduce=False).shape == (2, 2, 2, 2)
    s = m.sample(1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s, m.sample(1, generator=torch.Generator().manual_seed(0), naive=True))
    assert argen.create_model("videogpt", video_shape=(2, 1, 2, 2), levels=65536, d_model=12, n_heads=2,
                              n_layers=1, d_ff=8).levels == 65536


def test_fresh_prior_is_uniform_and_default_size():
    m = argen.create_model("videogpt")  # the Moving MNIST prior: 10 x 8 x 8 codes, 256 levels
    assert m.data_shape == (10, 1, 8, 8) and m.t_embed.shape == (10, 64)
    assert 1.5e6 < sum(p.numel() for p in m.parameters()) < 2.5e6
    x = torch.randint(0, 256, (1, 10, 1, 8, 8))
    torch.testing.assert_close(m.log_prob(x), torch.tensor([-640 * torch.log(torch.tensor(256.0)).item()]))


def test_config_errors_name_expected_and_given():
    for kw, match in [(dict(d_model=16, n_heads=2), r"divisible by 3.*given 16"),
                      (dict(d_model=12, n_heads=5), "divisible by n_heads=5"),
                      (dict(context_frames=3), r"context_frames < 3.*given 3"),
                      (dict(context_frames=-1), "context_frames"),
                      (dict(pos_embedding="rope"), "pos_embedding")]:
        with pytest.raises(ValueError, match=match):
            argen.create_model("videogpt", video_shape=(3, 1, 2, 2), levels=4, **{"d_model": 12, "n_heads": 2, **kw})
    with pytest.raises(ValueError, match="image_shape"):
        argen.create_model("videogpt", image_shape=(1, 4, 4))
