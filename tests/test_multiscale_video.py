"""multiscale_video (Reed et al. 2017): groups, calls per frame, causality over groups and frames,
exact normalization, the group stepper against the naive reference, bad inputs, training, save/load."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

import argen
from argen.positions import at, channels_first, put
from argen.registry import tiny_kwargs

TINY = tiny_kwargs("multiscale_video")


def make(**kw):
    torch.manual_seed(0)
    return argen.create_model("multiscale_video", **{**TINY, "levels": 4, **kw}).eval()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def clip(model, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, model.levels, (batch, *model.data_shape), generator=gen(seed))


def count_calls(model):
    """Wrap `group_logits` and `forward` of this instance with counters."""
    counts = {"group": 0, "forward": 0}
    group_logits = model.group_logits

    def counted(*a, **k):
        counts["group"] += 1
        return group_logits(*a, **k)

    model.group_logits = counted
    model.register_forward_hook(lambda *_: counts.__setitem__("forward", counts["forward"] + 1))
    return counts


@pytest.mark.parametrize("shape,base", [((3, 1, 8, 8), 2), ((2, 1, 8, 16), 4), ((1, 3, 16, 16), 2), ((2, 1, 4, 4), 4)])
def test_groups_partition_each_frame_and_order_follows_them(shape, base):
    m = make(video_shape=shape, base_size=base)
    t_len, _, h, w = shape
    groups = m.groups()
    flat = [p for g in groups for p in g]
    assert sorted(flat) == sorted(itertools.product(range(h), range(w)))  # each position exactly once
    f = h // base
    nb = (h // f) * (w // f)
    assert [g[0] for g in groups[:nb]] == [(i, j) for i in range(0, h, f) for j in range(0, w, f)]  # base in raster
    assert all(len(g) == 1 for g in groups[:nb])
    sizes = [len(g) for g in groups[nb:]]
    d = f
    for s in range(int(math.log2(f))):  # each upscale: 3 groups of (h / d) * (w / d) / 4... of the finer grid
        d //= 2
        assert sizes[3 * s:3 * s + 3] == [(h // (2 * d)) * (w // (2 * d))] * 3
    assert m.generation_order() == [(t, i, j) for t in range(t_len) for g in groups for (i, j) in g]
    assert len(set(m.generation_order())) == t_len * h * w


@pytest.mark.parametrize("h,base,expected", [(8, 2, 4 + 3 * 2), (32, 4, 16 + 3 * 3), (32, 8, 64 + 3 * 2), (4, 4, 16)])
def test_calls_per_frame_formula(h, base, expected):
    m = make(video_shape=(2, 1, h, h), base_size=base)
    assert m.calls_per_frame == expected == base * base + 3 * int(math.log2(h // base))


def test_sampling_makes_calls_per_frame_calls_per_generated_frame():
    m = make()
    t_len, _, h, w = m.data_shape
    counts = count_calls(m)
    m.sample(2, generator=gen())
    assert counts["group"] == t_len * m.calls_per_frame and counts["forward"] == 0
    counts["group"] = 0
    m.predict(clip(m)[:, :1], generator=gen())
    assert counts["group"] == (t_len - 1) * m.calls_per_frame
    counts["group"] = 0
    m.sample(1, generator=gen(), naive=True)  # the reference: one full pass per position
    assert counts["group"] == 0 and counts["forward"] == t_len * h * w


@pytest.mark.parametrize("kw", [{}, {"context_frames": 2}, {"video_shape": (2, 3, 8, 8)}])
def test_causality_over_groups_and_independence_within_a_group(kw):
    """The conditional tables of group g (and all before it) do not change when every position of
    group g and after it changes: positions of a group depend only on earlier groups and frames."""
    m = make(**kw)
    x = clip(m, 3)
    base = m.conditionals(x)  # (B, C, L, T, H, W)
    order = m.generation_order()
    groups = m.groups()
    starts, k = [], 0
    for _ in range(m.data_shape[0]):
        for g in groups:
            starts.append((k, len(g)))
            k += len(g)
    g = torch.Generator().manual_seed(5)
    for start, size in starts[::3] + starts[-1:]:
        y = x.clone()
        for pos in order[start:]:
            put(channels_first(y), pos, torch.randint(0, m.levels, (3, m.channels), generator=g))
        out = m.conditionals(y)
        for pos in order[:start + size]:
            torch.testing.assert_close(at(out, pos), at(base, pos), atol=1e-5, rtol=1e-5,
                                       msg=f"conditional at {pos} changed when positions from {order[start]} on changed")


@torch.no_grad()
def test_earlier_groups_and_earlier_frames_matter():
    m = make(context_frames=2)
    x = clip(m, 4)
    table = m.conditionals(x)
    order = m.generation_order()
    # the first pixel of frame 0 informs some later position of frame 0
    y = x.clone()
    put(channels_first(y), order[0], (at(channels_first(x), order[0]) + 1) % m.levels)
    diff = (m.conditionals(y) - table).abs()
    assert float(diff[:, :, :, 0].max()) > 1e-6
    # frame 0 informs frame 1 (base positions and groups) and frame 2 (two context frames)
    y = x.clone()
    y[:, 0] = (x[:, 0] + 1) % m.levels
    diff = (m.conditionals(y) - table).abs()
    nb = m.num_base_groups
    base_pos, group_pos = m.groups()[0][0], m.groups()[nb][0]
    for t in (1, 2):
        assert float(at(diff[:, :, :, t], base_pos).max()) > 1e-6
        assert float(at(diff[:, :, :, t], group_pos).max()) > 1e-6
    # with one context frame, frame 2 sees frame 1 only: a change confined to frame 0 cannot reach it
    m1 = make(context_frames=1)
    d1 = (m1.conditionals(y) - m1.conditionals(x)).abs()
    assert float(d1[:, :, :, 2].max()) == 0.0 and float(d1[:, :, :, 1].max()) > 1e-6


@pytest.mark.parametrize("shape,levels,kw", [((2, 1, 2, 2), 2, {}), ((2, 1, 2, 2), 3, {"context_frames": 2}),
                                             ((1, 3, 2, 2), 2, {}), ((1, 1, 4, 2), 2, {"base_size": 2})])
def test_normalization_by_enumeration(shape, levels, kw):
    """exp(log_prob) summed over every clip of a tiny space is 1: the groups factorize exactly."""
    m = make(video_shape=shape, levels=levels, base_size=kw.pop("base_size", 1), **kw)
    dims = math.prod(shape)
    xs = torch.tensor(list(itertools.product(range(levels), repeat=dims))).view(-1, *shape)
    with torch.no_grad():
        lp = torch.cat([m.log_prob(chunk) for chunk in xs.split(1024)]).double()
    assert abs(float(lp.logsumexp(0))) < 1e-4
    per_pos = m.log_prob(xs[:7], reduce=False)
    assert per_pos.shape == (7, shape[0], shape[2], shape[3])
    torch.testing.assert_close(per_pos.flatten(1).sum(1), m.log_prob(xs[:7]))


@pytest.mark.parametrize("kw", [{}, {"context_frames": 2}, {"video_shape": (2, 3, 8, 8)}])
def test_group_stepper_draws_what_the_naive_reference_draws(kw):
    m = make(**kw)
    a = m.sample(2, generator=gen(3))
    assert torch.equal(a, m.sample(2, generator=gen(3), naive=True))
    assert a.shape == (2, *m.data_shape) and a.dtype == torch.long and 0 <= int(a.min()) and int(a.max()) < m.levels
    assert not torch.equal(a, m.sample(2, generator=gen(4)))
    x = clip(m)
    known = torch.rand(m.position_shape, generator=gen(6)) < 0.5
    c = m.complete(x, known, generator=gen(7))
    assert torch.equal(c, m.complete(x, known, generator=gen(7), naive=True))
    assert torch.equal(c.movedim(2, 1)[:, :, known], x.movedim(2, 1)[:, :, known])
    p = m.predict(x[:, :1], generator=gen(8), temperature=0.9, top_k=3)
    assert torch.equal(p, m.predict(x[:, :1], generator=gen(8), temperature=0.9, top_k=3, naive=True))
    assert torch.equal(p[:, :1], x[:, :1])


def test_bad_inputs_raise_value_errors_naming_expected_and_given():
    m = make()
    x = clip(m)
    with pytest.raises(ValueError, match=r"expected shape \(B, 3, 1, 8, 8\), given \(2, 3, 1, 8, 4\)"):
        m.log_prob(x[..., :4])
    with pytest.raises(ValueError, match="torch.long"):
        m.log_prob(x.float())
    with pytest.raises(ValueError, match=r"values in \[0, 3\]"):
        m.log_prob(x + 4)
    with pytest.raises(ValueError, match="context frames"):
        m.predict(x)  # k = T leaves nothing to predict
    with pytest.raises(ValueError, match="base_size times a power of two"):
        make(video_shape=(2, 1, 12, 12), base_size=2)  # 12 / 2 = 6
    with pytest.raises(ValueError, match="divisible by the upscale factor 4"):
        make(video_shape=(2, 1, 8, 6), base_size=2)
    with pytest.raises(ValueError, match="num_classes"):
        make(num_classes=3)
    with pytest.raises(ValueError, match="group index"):
        m.group_logits(x, 0, m.calls_per_frame)
    with pytest.raises(ValueError, match="frame index"):
        m.frame_context(x, 3)
    with pytest.raises(ValueError, match="model.context_frames"):
        make(context_frames=0)


def test_training_lowers_the_loss():
    m = make().train()
    x = clip(m, 8)
    x[:, 1:] = x[:, :1]  # a static clip: later frames are predictable from the first
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    first = float(m.loss(x))
    for _ in range(30):
        opt.zero_grad()
        loss = m.loss(x)
        loss.backward()
        opt.step()
    assert float(m.loss(x)) < 0.8 * first


def test_save_load_round_trip(tmp_path):
    m = make(context_frames=2)
    argen.save(m, tmp_path / "run")
    back = argen.load(tmp_path / "run").eval()
    assert type(back) is type(m) and back.config == m.config
    x = clip(m)
    torch.testing.assert_close(back.log_prob(x, reduce=False), m.log_prob(x, reduce=False), atol=0, rtol=0)
    assert torch.equal(back.sample(1, generator=gen(2)), m.sample(1, generator=gen(2)))
