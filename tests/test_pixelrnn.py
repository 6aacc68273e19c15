"""PixelRNN: the shared recurrent pieces and the receptive fields of Row LSTM / Diagonal BiLSTM.

Receptive fields are read off gradients of one pixel's features (the trunk, before the per-pixel
head) w.r.t. the (float) input image, in float64 so that small but real dependencies are not lost
to rounding.
"""
from __future__ import annotations

import pytest
import torch

import argen
from argen.nn.recurrent import init_forget_bias_, lstm_cell, skew, unskew


def _model(name: str, shape, **kw):
    kw = dict(hidden=6, n_layers=2, head=12, first_kernel=3) | kw
    torch.manual_seed(0)
    return argen.create_model(name, image_shape=shape, levels=4, **kw).double().eval()


def _grads(model, targets) -> torch.Tensor:
    """(T, C, H, W) |d stream / d input| for targets (i, j) or (i, j, g).

    The stream is the trunk's output at pixel (i, j) (all features, or channel group g's),
    summed; one batch row per target so that one backward pass answers them all.
    """
    c, h, w = model.data_shape
    x = torch.rand(1, c, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    x = x.repeat(len(targets), 1, 1, 1).requires_grad_(True)
    stream = model.trunk(x)
    total = 0
    for t, (i, j, *g) in enumerate(targets):
        feats = stream[t, :, i, j]
        total = total + (feats.view(c, -1)[g[0]] if g else feats).sum()
    total.backward()
    return x.grad.abs()


def _past(h: int, w: int, i: int, j: int) -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return (rows < i) | ((rows == i) & (cols < j))


# ----- shared pieces ------------------------------------------------------------------------------
def test_skew_shifts_row_i_by_i_and_unskew_inverts():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5) + 1
    s = skew(x)
    assert s.shape == (2, 3, 4, 8)
    for i in range(4):
        torch.testing.assert_close(s[:, :, i, i : i + 5], x[:, :, i])
        assert s[:, :, i, :i].eq(0).all() and s[:, :, i, i + 5 :].eq(0).all()
    # column t is the diagonal i + j = t
    assert float(s[0, 0, 2, 3]) == float(x[0, 0, 2, 1])
    torch.testing.assert_close(unskew(s, 5), x)
    with pytest.raises(ValueError, match="width"):
        unskew(s, 6)


def test_lstm_cell_keeps_channel_groups_and_known_values():
    groups, hidden = 3, 6
    gates = torch.randn(2, 4 * hidden, 5, requires_grad=True)
    c_prev = torch.randn(2, hidden, 5)
    h, c = lstm_cell(gates, c_prev, groups)
    assert h.shape == c.shape == (2, hidden, 5)
    # hidden unit u of group g depends only on gate features in group g's block
    h[:, 2].sum().backward()  # unit 2 belongs to group 1 (units 2, 3)
    used = gates.grad.abs().sum((0, 2)).view(groups, 4, hidden // groups)
    assert used[0].eq(0).all() and used[2].eq(0).all(), "another group's gates leaked in"
    assert used[1, :, 0].gt(0).all() and used[1, :, 1].eq(0).all(), "unit 2 must use exactly its four gates"
    # against the textbook formula for one group
    g = torch.randn(1, 8, 1)
    o, f, i, cand = g.view(4, 2, 1).unbind(0)
    c0 = torch.randn(1, 2, 1)
    h1, c1 = lstm_cell(g, c0, 1)
    want_c = f.sigmoid() * c0 + i.sigmoid() * cand.tanh()
    torch.testing.assert_close(c1, want_c)
    torch.testing.assert_close(h1, o.sigmoid() * want_c.tanh())
    b = torch.zeros(4 * hidden)
    init_forget_bias_(b, groups, 1.0)
    assert b.view(groups, 4, 2)[:, 1].eq(1).all() and b.sum() == 2 * groups


# ----- receptive fields -----------------------------------------------------------------------------
@pytest.mark.parametrize("n_layers,first_kernel", [(1, 3), (2, 3), (2, 5)])
def test_row_lstm_receptive_field_is_the_triangle(n_layers, first_kernel):
    """Exactly: row i-k (k >= 1) columns [j-k-n-a, j+k-1+a]; row i columns [j-n-a, j-1]; nothing else.

    (a = first_kernel // 2, n = layers: the state path widens the triangle by one column per row
    up, the masked 1x3 input-to-state reaches one more column left per layer.)
    """
    h, w, (i, j) = 6, 21, (5, 10)
    model = _model("pixelrnn_row", (1, h, w), n_layers=n_layers, first_kernel=first_kernel)
    seen = _grads(model, [(i, j)])[0, 0] > 0
    a, n = first_kernel // 2, n_layers
    want = torch.zeros(h, w, dtype=torch.bool)
    for k in range(1, i + 1):
        want[i - k, max(0, j - k - n - a) : j + k + a] = True
    want[i, max(0, j - n - a) : j] = True
    assert torch.equal(seen, want), f"seen:\n{seen.int()}\nwant:\n{want.int()}"
    # spelled out: far left/right pixels just above are outside, the apex row is inside
    assert not seen[i - 1, 0] and not seen[i - 1, w - 1] and not seen[i - 1, j + a + 1]
    assert seen[0, j] and seen[i - 1, j + a]
    assert not (seen & ~_past(h, w, i, j)).any(), "a future pixel is in the receptive field"
    assert (~seen & _past(h, w, i, j)).any(), "Row LSTM should not see the whole context"


@pytest.mark.parametrize("pos", [(4, 0), (4, 3), (4, 6)])
def test_diagonal_bilstm_sees_the_whole_past_and_no_future(pos):
    h, w = 5, 7
    model = _model("pixelrnn_diag", (1, h, w))
    seen = _grads(model, [pos])[0, 0] > 0
    past = _past(h, w, *pos)
    assert torch.equal(seen, past), f"seen:\n{seen.int()}\nwant:\n{past.int()}"


@pytest.mark.parametrize("name", ["pixelrnn_row", "pixelrnn_diag"])
@pytest.mark.parametrize("shape", [(1, 7, 3), (1, 2, 9), (1, 1, 4), (3, 3, 2)])
def test_no_pixel_sees_the_future_at_any_size(name, shape):
    """Tall, wide, single-row and RGB images: every pixel's output depends on past pixels only,
    and each colour channel on the earlier channels of its own pixel only."""
    c, h, w = shape
    model = _model(name, shape)
    targets = [(i, j, g) for i in range(h) for j in range(w) for g in range(c)]
    for (i, j, g), grad in zip(targets, _grads(model, targets)):
        # at the pixel itself exactly the channels < g are seen
        centre = grad[:, i, j].clone()
        assert centre[g:].eq(0).all() and centre[:g].gt(0).all(), f"{name} ({i},{j}) channel {g}: {centre}"
        grad[:, i, j] = 0
        assert grad[:, ~_past(h, w, i, j)].eq(0).all(), f"{name} ({i},{j}) saw a future pixel"


# ----- the recurrence as a resumable step ------------------------------------------------------------
def test_row_lstm_resumes_from_a_carried_state():
    """Scanning rows [0, k) then [k, H) from the carried state equals one scan: what a cached
    sampler relies on."""
    model = _model("pixelrnn_row", (3, 5, 4))
    lstm = model.layers[0].lstm
    x = torch.randn(2, 12, 5, 4, dtype=torch.float64)
    gates = lstm.input_gates(x)
    whole, last = lstm.scan(gates)
    top, state = lstm.scan(gates[:, :, :2])
    bottom, last2 = lstm.scan(gates[:, :, 2:], state)
    torch.testing.assert_close(torch.cat([top, bottom], 2), whole)
    torch.testing.assert_close(last2[1], last[1])


def test_diagonal_bilstm_resumes_from_a_carried_state():
    model = _model("pixelrnn_diag", (1, 4, 5))
    lstm = model.layers[0].lstm
    x, image = torch.randn(2, 12, 4, 5, dtype=torch.float64), torch.randn(2, 1, 4, 5, dtype=torch.float64)
    gates = lstm.input_gates(x, image)
    whole, _ = lstm.scan(gates)
    first, state = lstm.scan(gates[..., :3])
    rest, _ = lstm.scan(gates[..., 3:], state)
    torch.testing.assert_close(torch.cat([first, rest], -1), whole)


# ----- configuration ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["pixelrnn_row", "pixelrnn_diag"])
@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(image_shape=(3, 4, 4), hidden=4), "divisible by 3"),
        (dict(image_shape=(3, 4, 4), head=10), "divisible by 3"),
        (dict(image_shape=(2, 4, 4)), "channels must be 1 or 3"),
        (dict(levels=1), r"model\.levels: expected >= 2 and <= 65536"),
        (dict(levels=65537), r"model\.levels: expected >= 2 and <= 65536"),
        (dict(first_kernel=4), "first_kernel"),
        (dict(n_layers=0), "n_layers"),
    ],
)
def test_bad_config_raises(name, kw, match):
    args = dict(image_shape=(1, 4, 4), levels=4, hidden=6, n_layers=1, head=12, first_kernel=3) | kw
    with pytest.raises(ValueError, match=match):
        argen.create_model(name, **args)


@pytest.mark.parametrize("name", ["pixelrnn_row", "pixelrnn_diag"])
def test_levels_and_sizes_at_the_extremes(name):
    for shape, levels in (((1, 1, 1), 2), ((3, 2, 7), 256), ((1, 9, 2), 17)):
        model = argen.create_model(name, image_shape=shape, levels=levels, hidden=6, n_layers=1, head=12)
        x = torch.randint(0, levels, (2, *shape))
        lp = model.log_prob(x, reduce=False)
        assert lp.shape == (2, *shape[1:]) and torch.isfinite(lp).all() and (lp <= 0).all()
