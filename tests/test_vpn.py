"""Video Pixel Network: multiplicative units, the ConvLSTM, the exact video likelihood, cached sampling."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

import argen
from argen.nn.conv_lstm import ConvLSTM, ConvLSTMCell
from argen.nn.multiplicative import (
    MaskedMultiplicativeUnit,
    MaskedResidualMultiplicativeBlock,
    MultiplicativeUnit,
    ResidualMultiplicativeBlock,
)
from argen.positions import at, put
from argen.registry import tiny_kwargs
from argen.sampling import SamplingConfig, build_stepper
from argen.sampling.frame_cache import FrameCacheStepper

SHAPE_GREY = (3, 1, 4, 5)  # (T, C, H, W)
SHAPE_RGB = (2, 3, 3, 4)


def tiny(shape=SHAPE_GREY, levels=4, seed=0, **kw):
    torch.manual_seed(seed)
    return argen.create_model("vpn", video_shape=shape, levels=levels, **{**tiny_kwargs("vpn"), **kw}).eval()


def clips(model, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.levels, (batch, *model.data_shape), generator=g)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def _centre_only(conv: nn.Conv2d, weight: float, bias: float) -> None:
    """Make a 1-channel 3x3 conv compute weight * h + bias (centre tap only)."""
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = weight
        conv.bias.fill_(bias)


# ----- multiplicative units ---------------------------------------------------------------------
def test_multiplicative_unit_formula_on_a_hand_example():
    mu = MultiplicativeUnit(1)
    coeffs = [(0.5, 0.1), (-1.0, 0.2), (2.0, -0.3), (0.7, 0.4)]  # W_k h = a_k h + b_k
    for conv, (a, b) in zip(mu.convs, coeffs):
        _centre_only(conv, a, b)
    h = torch.tensor([[[[0.0, 1.0], [-2.0, 0.5]]]])
    w1, w2, w3, w4 = (a * h + b for a, b in coeffs)
    want = torch.sigmoid(w1) * torch.tanh(torch.sigmoid(w2) * h + torch.sigmoid(w3) * torch.tanh(w4))
    torch.testing.assert_close(mu(h), want)
    # one number by hand: h = 0 leaves sigmoid(b1) * tanh(sigmoid(b3) * tanh(b4))
    def s(v: float) -> float:
        return 1 / (1 + math.exp(-v))

    with torch.no_grad():
        assert abs(float(mu(torch.zeros(1, 1, 1, 1))) - s(0.1) * math.tanh(s(-0.3) * math.tanh(0.4))) < 1e-6


def test_shapes_and_the_residual_block_wiring():
    torch.manual_seed(0)
    h = torch.randn(2, 8, 6, 7)
    block = ResidualMultiplicativeBlock(4, dilation=2)
    assert block(h).shape == h.shape and block.mu1(torch.randn(2, 4, 6, 7)).shape == (2, 4, 6, 7)
    torch.testing.assert_close(block(h), h + block.up(block.mu2(block.mu1(block.down(h)))))
    with torch.no_grad():
        block.up.weight.zero_()
        block.up.bias.zero_()
    torch.testing.assert_close(block(h), h)  # a zero last layer: the identity (the residual)
    masked = MaskedResidualMultiplicativeBlock(3, groups=3, context_channels=5)
    ctx = torch.randn(2, 5, 6, 7)
    h6 = torch.randn(2, 6, 6, 7)
    assert masked(h6, ctx).shape == h6.shape
    torch.testing.assert_close(masked(h6, ctx), h6 + masked.up(masked.mu2(masked.mu1(masked.down(h6) + masked.context(ctx)))))
    with pytest.raises(ValueError, match="context map"):
        masked(h6)


@torch.no_grad()
def test_dilation_sets_the_receptive_field():
    """Two 3x3 MUs of dilation d see 2d pixels away along a row, not 2d + 1."""
    torch.manual_seed(0)
    for d in (1, 2, 4):
        block = ResidualMultiplicativeBlock(2, dilation=d)
        h = torch.randn(1, 4, 1, 21)
        reach = []
        for k in range(11):
            y = h.clone()
            y[..., 10 + k] += 1.0
            reach.append(float((block(y) - block(h))[..., 10].abs().max()) > 1e-7)
        assert reach[2 * d] and not any(reach[2 * d + 1:]), (d, reach)


@torch.no_grad()
def test_masked_units_are_causal_in_raster_and_colour_order():
    torch.manual_seed(0)
    h, w = 4, 5
    for unit in (MaskedMultiplicativeUnit(6, groups=3), MaskedResidualMultiplicativeBlock(3, groups=3)):
        x = torch.randn(1, 6, h, w)
        base = unit(x)
        for (i, j), g in itertools.product(itertools.product(range(h), range(w)), range(3)):
            y = x.clone()
            y[0, 2 * g: 2 * g + 2, i, j] += 1.0
            diff = (unit(y) - base).abs()[0]  # (6, H, W)
            flat = diff.permute(1, 2, 0).reshape(h * w, 3, 2).amax(2)  # (positions, groups)
            p = i * w + j
            assert float(flat[:p].sum()) == 0.0  # earlier pixels never see it
            assert float(flat[p, :g].sum()) == 0.0  # nor earlier colour groups of the same pixel
            assert float(flat[p, g:].max()) > 0 or p == h * w - 1  # mask B: its own group and later do
    block = MaskedResidualMultiplicativeBlock(2, groups=1, context_channels=3)
    x, ctx = torch.randn(1, 4, h, w), torch.randn(1, 3, h, w)
    ctx2 = ctx.clone()
    ctx2[0, :, h - 1, w - 1] += 1.0  # the context is unmasked: the last position's context reaches itself
    assert float((block(x, ctx2) - block(x, ctx)).abs()[..., h - 1, w - 1].max()) > 0


# ----- ConvLSTM ---------------------------------------------------------------------------------
def test_conv_lstm_cell_formula_and_gate_order():
    torch.manual_seed(0)
    cell = ConvLSTMCell(2, 3)
    x = torch.randn(1, 2, 4, 4)
    gates = cell.gates(torch.cat([x, torch.zeros(1, 3, 4, 4)], 1))
    o, f, i, g = gates.chunk(4, 1)  # layout: output, forget, input, candidate
    c = torch.sigmoid(i) * torch.tanh(g)  # c_0 = 0: the forget gate has nothing to keep
    h, (h2, c2) = cell.step(x)
    torch.testing.assert_close(c2, c)
    torch.testing.assert_close(h, torch.sigmoid(o) * torch.tanh(c))
    assert h is h2
    h3, (_, c3) = cell.step(x, (h, c))
    gates = cell.gates(torch.cat([x, h], 1))
    o, f, i, g = gates.chunk(4, 1)
    torch.testing.assert_close(c3, torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g))
    assert float(cell.gates.bias.detach().view(4, 3)[1].min()) == 1.0  # forget bias starts at 1


def test_conv_lstm_steps_equal_the_sequence_pass():
    torch.manual_seed(0)
    lstm = ConvLSTM(3, 4)
    seq = torch.randn(2, 5, 3, 6, 6)
    out, (h, c) = lstm(seq)
    assert out.shape == (2, 5, 4, 6, 6) and h.shape == c.shape == (2, 4, 6, 6)
    state = None
    for t in range(5):
        ht, state = lstm.step(seq[:, t], state)
        torch.testing.assert_close(ht, out[:, t])
    torch.testing.assert_close(state[1], c)
    first, mid = lstm(seq[:, :2])
    rest, _ = lstm(seq[:, 2:], mid)  # resuming from the carried state
    torch.testing.assert_close(torch.cat([first, rest], 1), out)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        lstm.step(torch.randn(2, 4, 6, 6))
    with pytest.raises(ValueError, match="state of shape"):
        lstm.step(seq[:, 0], (h[:1], c[:1]))
    with pytest.raises(ValueError, match="T >= 1"):
        lstm(seq[:, :0])


# ----- the model --------------------------------------------------------------------------------
def test_default_config_and_layout():
    m = argen.create_model("vpn")
    assert m.data_shape == (10, 1, 32, 32) and m.position_shape == (10, 32, 32) and m.levels == 2
    params = sum(p.numel() for p in m.parameters())
    assert 200_000 < params < 270_000, params  # ~0.23M in REFERENCE-LATENT-VIDEO's small CPU configs
    m = tiny()
    x = clips(m, 2)
    with torch.no_grad():
        assert m(x).shape == (2, 4, 3, 4, 5)  # (B, C*L, T, H, W)
        per = m.log_prob(x, reduce=False)
        assert per.shape == (2, 3, 4, 5)
        torch.testing.assert_close(per.flatten(1).sum(1), m.log_prob(x))
        assert m.generation_order()[:2] == [(0, 0, 0), (0, 0, 1)] and len(m.generation_order()) == 60


def test_frame_context_steps_equal_the_clip_pass():
    m = tiny(SHAPE_RGB, num_classes=3)
    x = clips(m, 2)
    cond = torch.tensor([0, 2])
    with torch.no_grad():
        all_ctx = m.contexts(x, cond)
        state = None
        for t in range(m.data_shape[0]):
            ctx, state = m.frame_context(x, t, state, cond)
            torch.testing.assert_close(ctx, all_ctx[:, t])
    with pytest.raises(ValueError, match="frame index"):
        m.frame_context(x, 2, state)
    with pytest.raises(ValueError, match="state=None exactly for frame 0"):
        m.frame_context(x, 1, None)


def _flat_subpixels(model):
    """Every (position, channel) in generation order: (t, h, w) raster, channels in turn."""
    return [(pos, c) for pos in model.generation_order() for c in range(model.channels)]


@pytest.mark.parametrize("shape", [SHAPE_GREY, SHAPE_RGB])
def test_causality_over_time_space_and_colour(shape):
    """Changing a sub-pixel never changes its own or an earlier conditional, and does change later ones."""
    m = tiny(shape, levels=3)
    x = clips(m, 2)
    order = _flat_subpixels(m)
    with torch.no_grad():
        base = m.conditionals(x)  # (B, C, L, T, H, W)
        for k in sorted({0, 7, len(order) // 2, len(order) - 1}):
            pos, c = order[k]
            y = x.clone()
            put(y.transpose(1, 2), pos, (at(x.transpose(1, 2), pos, channel=c) + 1) % 3, channel=c)
            out = m.conditionals(y)
            changed = [float((at(out[:, cc], p) - at(base[:, cc], p)).abs().max()) for p, cc in order]
            assert max(changed[: k + 1]) < 1e-6, f"sub-pixel {order[k]} leaks into an earlier conditional"
            if k < len(order) - 1:
                assert max(changed[k + 1:]) > 1e-6, f"nothing after {order[k]} depends on it"


def test_earlier_frames_change_later_frames():
    m = tiny(levels=3)
    x = clips(m, 2)
    y = x.clone()
    y[:, 0, :, 1, 2] = (y[:, 0, :, 1, 2] + 1) % 3  # one pixel of frame 0
    with torch.no_grad():
        a, b = m.log_prob(x, reduce=False), m.log_prob(y, reduce=False)
    for t in (1, 2):  # every later frame, even far from that pixel (the ConvLSTM carries it)
        assert float((a[:, t] - b[:, t]).abs().max()) > 1e-6
        assert float((a[:, t, 3, 4] - b[:, t, 3, 4]).abs().max()) > 0 or t == 1
    z = x.clone()
    z[:, 2] = (z[:, 2] + 1) % 3  # the whole last frame
    with torch.no_grad():
        c = m.log_prob(z, reduce=False)
    torch.testing.assert_close(c[:, :2], a[:, :2], atol=0, rtol=0)


@pytest.mark.parametrize("shape,levels", [(SHAPE_GREY, 4), (SHAPE_RGB, 3)])
def test_normalization_by_enumeration(shape, levels):
    """Summing p over every value of one pixel (all channels) gives 1, at several (t, h, w)."""
    m = tiny(shape, levels)
    x = clips(m, 2)
    channels = shape[1]
    values = torch.tensor(list(itertools.product(range(levels), repeat=channels)))  # (L^C, C)
    for t, i, j in [(0, 0, 0), (1, 2, 1), (shape[0] - 1, shape[2] - 1, shape[3] - 1)]:
        batch = x.repeat_interleave(len(values), 0)
        batch[:, t, :, i, j] = values.repeat(2, 1)
        with torch.no_grad():
            lp = m.log_prob(batch, reduce=False)[:, t, i, j].double().view(2, -1)
        torch.testing.assert_close(lp.exp().sum(1), torch.ones(2, dtype=torch.double), atol=1e-5, rtol=0)


# ----- cached sampling --------------------------------------------------------------------------
def test_the_cached_stepper_gives_the_forward_pass_params():
    m = tiny(SHAPE_RGB, levels=3, num_classes=2)
    x = clips(m, 2)
    cond = torch.tensor([1, 0])
    stepper = build_stepper(m, cond)
    assert isinstance(stepper, FrameCacheStepper)
    with torch.no_grad():
        want = m(x, cond)
        for pos in m.generation_order():
            for c in range(m.channels):
                torch.testing.assert_close(stepper.params_at(x, pos, c), at(want, pos), atol=1e-5, rtol=1e-5)
    back = FrameCacheStepper(m, cond)
    back.params_at(x, (1, 0, 0), 0)
    with pytest.raises(ValueError, match="raster order"):
        back.params_at(x, (0, 2, 2), 0)
    with pytest.raises(ValueError, match="position in the"):
        back.params_at(x, (1, 3, 0), 0)
    with pytest.raises(ValueError, match="order=None"):
        build_stepper(m, cond, order=m.generation_order())


@pytest.mark.parametrize("shape,levels,classes", [(SHAPE_GREY, 2, None), (SHAPE_RGB, 3, 3)])
def test_cached_equals_naive_for_sample_complete_predict(shape, levels, classes):
    m = tiny(shape, levels, num_classes=classes)
    cond = torch.tensor([0, 2, 1]) if classes else None
    fast = m.sample(3, cond, generator=gen(1))
    assert fast.shape == (3, *shape) and fast.dtype == torch.long and int(fast.max()) < levels
    assert torch.equal(fast, m.sample(3, cond, generator=gen(1), naive=True))
    assert torch.equal(fast, m.sample(3, cond, config=SamplingConfig(generator=gen(1), temperature=1.0)))
    assert not torch.equal(fast, m.sample(3, cond, generator=gen(2)))

    x = clips(m, 3, seed=5)
    known = torch.rand(3, *m.position_shape, generator=gen(4)) < 0.5
    done = m.complete(x, known, cond, generator=gen(6))
    assert torch.equal(done, m.complete(x, known, cond, generator=gen(6), naive=True))
    keep = known[:, :, None].expand_as(x)
    assert torch.equal(done[keep], x[keep])

    pred = m.predict(x[:, :1], cond, generator=gen(7), temperature=0.8)
    assert torch.equal(pred, m.predict(x[:, :1], cond, generator=gen(7), temperature=0.8, naive=True))
    assert torch.equal(pred[:, :1], x[:, :1]) and pred.shape == x.shape


def test_prediction_decodes_only_the_generated_frames():
    """Known frames cost one context step each and no decoding (counted on the decoder's forward
    during prediction: the plan is made before, so the cached run calls it zero times)."""
    m = tiny((4, 1, 3, 3), 2)
    x = clips(m, 2)
    m.sample(1, generator=gen(0))  # makes the decoder's plan
    calls = {"decoder": 0, "encoder": 0}
    hooks = [getattr(m, name).register_forward_hook(lambda *a, name=name: calls.__setitem__(name, calls[name] + 1))
             for name in calls]
    try:
        m.predict(x[:, :3], generator=gen(1))
    finally:
        for h in hooks:
            h.remove()
    assert calls == {"decoder": 0, "encoder": 3}  # frames 0..2 encoded once each; the planner runs the decoder


# ----- inputs, training, checkpoints ------------------------------------------------------------
def test_bad_inputs_and_configs_raise():
    m = tiny()
    with pytest.raises(ValueError, match=r"expected shape \(B, 3, 1, 4, 5\), given \(2, 1, 4, 5\)"):
        m.log_prob(torch.zeros(2, 1, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="torch.long"):
        m.log_prob(torch.zeros(2, *SHAPE_GREY))
    with pytest.raises(ValueError, match=r"values in \[0, 3\], given range \[4, 4\]"):
        m.log_prob(torch.full((1, *SHAPE_GREY), 4, dtype=torch.long))
    with pytest.raises(ValueError, match="context frames"):
        m.predict(torch.zeros(1, 3, 1, 4, 5, dtype=torch.long))  # k must be < T
    with pytest.raises(ValueError, match="video_shape"):
        argen.create_model("vpn", image_shape=(1, 4, 4))
    with pytest.raises(ValueError, match="width must be divisible by the 3 channels"):
        argen.create_model("vpn", video_shape=(2, 3, 4, 4), width=4)
    for field in ("first_kernel", "lstm_kernel"):
        with pytest.raises(ValueError, match=f"{field} must be odd, given 4"):
            argen.create_model("vpn", **{field: 4})
    with pytest.raises(ValueError, match="dilations"):
        argen.create_model("vpn", dilations=(1, 0))
    with pytest.raises(ValueError, match="dilations"):
        argen.create_model("vpn", dilations=())


def test_a_few_training_steps_lower_the_loss():
    m = tiny(levels=2).train()
    x = clips(m, 4)
    x[:, 1:] = x[:, :1]  # still clips: later frames are predictable from the first
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    first = float(m.loss(x).detach())
    for _ in range(20):
        opt.zero_grad()
        loss = m.loss(x)
        loss.backward()
        opt.step()
    assert float(m.loss(x).detach()) < 0.8 * first
    assert all(p.grad is not None for p in m.parameters())  # every part is trained by the likelihood


def test_save_load_round_trip(tmp_path):
    m = tiny(SHAPE_RGB, levels=3, num_classes=2)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.01 * torch.randn_like(p))  # leave the initial values (zero start map, zero class table)
    argen.save(m, tmp_path / "run")
    back = argen.load(tmp_path / "run").eval()
    assert type(back).__name__ == "VPN" and back.config == m.config
    x = clips(m, 2)
    cond = torch.tensor([1, 0])
    with torch.no_grad():
        torch.testing.assert_close(back.log_prob(x, cond), m.log_prob(x, cond), atol=0, rtol=0)
    assert torch.equal(back.sample(2, cond, generator=gen(3)), m.sample(2, cond, generator=gen(3)))
