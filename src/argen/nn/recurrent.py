"""Recurrent pieces for 2-D LSTMs over images (PixelRNN; later ConvLSTM-style video models).

The LSTM here is written as a pure step `state' = cell(gates, state)`, where `gates` are the
4*hidden pre-activations that convolutions produce (input-to-state + state-to-state). A model
scans a step over rows or diagonals for training; a cached sampler can call the same step with a
carried state instead of rerunning the whole scan.

The PixelRNN layers (`RowLSTM`, `DiagonalBiLSTM`, `ResidualLSTMLayer`) live here with their
per-pixel steps: `layer.pixel_steps(batch, width)` carries a layer's states through a raster walk
and computes one column per pixel (`column`) plus one pass per finished row (`end_row`), and
`RasterLSTMSteps` chains a mask-A input, the layers and a 1x1 head the same way. A cached sampler
(`argen.sampling.recurrent_cache`) only drives these steps; see there for why one column per layer
is exact.

Gate layout (why it matters): masked networks split features into contiguous channel groups
(R, G, B; see `nn.masked`). The 4*hidden gate features are laid out [group][gate][unit] so that a
masked convolution producing them assigns all four gates of a hidden unit to that unit's group;
the cell then keeps group g's state a function of group <= g inputs at the current pixel.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from argen.nn.masked import MaskedConv2d
from argen.nn.util import scale_input

#: (h, c): hidden output and cell state, each (B, hidden, *positions).
LSTMState = tuple[Tensor, Tensor]

#: Order of the four gates inside each channel group's block of gate features.
GATES = ("output", "forget", "input", "candidate")


def lstm_cell(gates: Tensor, c_prev: Tensor, groups: int = 1) -> LSTMState:
    """One LSTM update from pre-activation gates (B, 4*hidden, *S) laid out [group][gate][unit].

    o, f, i = sigmoid(.), g = tanh(.); c = f*c_prev + i*g; h = o*tanh(c). Returns (h, c) with
    hidden features in group-contiguous order, matching the layout masked convolutions expect.
    """
    if gates.shape[1] % (4 * groups):
        raise ValueError(f"gate features must be divisible by 4 * {groups} groups, given {gates.shape[1]}")
    hidden = gates.shape[1] // 4
    if c_prev.shape[1] != hidden:
        raise ValueError(f"expected cell state with {hidden} features, given {c_prev.shape[1]}")
    g4 = gates.unflatten(1, (groups, 4, hidden // groups))
    o, f, i = torch.sigmoid(g4[:, :, :3]).unbind(2)  # each (B, groups, units, *S)
    c = f * c_prev.unflatten(1, (groups, -1)) + i * torch.tanh(g4[:, :, 3])
    h = o * torch.tanh(c)
    return h.flatten(1, 2), c.flatten(1, 2)


def init_forget_bias_(bias: Tensor, groups: int = 1, value: float = 1.0) -> None:
    """Set the forget-gate entries of a gate bias (4*hidden,) to `value` (remember by default)."""
    with torch.no_grad():
        bias.view(groups, 4, -1)[:, GATES.index("forget")] = value


def zero_state(like: Tensor, hidden: int, *size: int) -> LSTMState:
    """All-zero (h, c) of shape (B, hidden, *size) on `like`'s device and dtype (before row/diagonal 0)."""
    h = like.new_zeros(like.shape[0], hidden, *size)
    return h, h.clone()


def lstm_scan(
    step: Callable[[Tensor, LSTMState], LSTMState], gates: Tensor, state: LSTMState, dim: int = -1
) -> tuple[Tensor, LSTMState]:
    """Apply `step` along `dim` of the input gates (one slice per row or diagonal).

    Returns the hidden outputs stacked back along `dim` and the final state, so a scan can be
    resumed later from that state (chunked evaluation, cached sampling).
    """
    outs = []
    for g in gates.unbind(dim):
        state = step(g, state)
        outs.append(state[0])
    return torch.stack(outs, dim), state


def skew(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C, H, W + H - 1): row i shifted right by i, zeros elsewhere.

    Column t of the result holds the pixels (i, t - i): one diagonal of the image, whose
    pixels depend only on the previous diagonal's (left neighbour and upper neighbour).
    """
    b, c, h, w = x.shape
    flat = F.pad(x, (0, h)).flatten(2)  # rows padded to W + H
    return flat[..., : h * (w + h - 1)].unflatten(2, (h, w + h - 1))


def unskew(x: Tensor, width: int) -> Tensor:
    """Inverse of `skew`: (B, C, H, W + H - 1) -> (B, C, H, width)."""
    b, c, h, sw = x.shape
    if sw != width + h - 1:
        raise ValueError(f"expected a skewed map of width {width + h - 1} for width {width}, given {sw}")
    flat = F.pad(x.flatten(2), (0, h))
    return flat.unflatten(2, (h, width + h))[..., :width]


def pointwise_matrix(conv: nn.Conv2d) -> Tensor:
    """(out, in) matrix of a 1x1 (masked) convolution."""
    weight = conv.weight * conv.mask if isinstance(conv, MaskedConv2d) else conv.weight
    return weight[:, :, 0, 0]


# ----- PixelRNN layers ------------------------------------------------------------------------------
class RowLSTM(nn.Module):
    """Row LSTM layer: (B, in, H, W) -> (B, hidden, H, W), scanning rows top to bottom.

    `image_channels` is accepted and unused (the constructor signature PixelRNN builds layers with).
    """

    def __init__(self, in_ch: int, hidden: int, groups: int, image_channels: int = 0) -> None:
        super().__init__()
        self.hidden, self.groups = hidden, groups
        self.input_to_state = MaskedConv2d(in_ch, 4 * hidden, (1, 3), "B", groups)
        self.state_to_state = nn.Conv1d(hidden, 4 * hidden, 3, padding=1, bias=False)
        init_forget_bias_(self.input_to_state.bias, groups)

    def input_gates(self, x: Tensor) -> Tensor:
        """Input-to-state gates of every row at once (B, 4h, H, W): no recurrence involved."""
        return self.input_to_state(x)

    def step(self, gates_row: Tensor, state: LSTMState) -> LSTMState:
        """One row: its input gates (B, 4h, W) and the row above's (h, c) -> this row's (h, c)."""
        return lstm_cell(gates_row + self.state_to_state(state[0]), state[1], self.groups)

    def scan(self, gates: Tensor, state: LSTMState | None = None) -> tuple[Tensor, LSTMState]:
        """Rows of `gates` (B, 4h, H, W) from `state` (zeros above row 0) -> (h map, last state)."""
        if state is None:
            state = zero_state(gates, self.hidden, gates.shape[-1])
        return lstm_scan(self.step, gates, state, dim=2)

    def forward(self, x: Tensor, image: Tensor | None = None) -> Tensor:
        """`image` is unused: the layer's context is the triangle above (signature shared with
        DiagonalBiLSTM)."""
        return self.scan(self.input_gates(x))[0]

    def pixel_steps(self, batch: int, width: int) -> RowLSTMPixelSteps:
        """Carried states for a raster walk over images `width` wide (see `RowLSTMPixelSteps`)."""
        return RowLSTMPixelSteps(self, batch, width)


class DiagonalBiLSTM(nn.Module):
    """Diagonal BiLSTM layer: (B, in, H, W) -> (B, hidden, H, W), both directions in one scan.

    Left-to-right runs on the skewed map; right-to-left on the skewed horizontally flipped map,
    its output flipped back and shifted down one row so that pixel (i, j) only reads it from
    rows < i. The two directions are stacked along channels ([direction][group][gate][unit]) and
    stepped together: one Python loop over the W + H - 1 diagonals instead of two.
    """

    def __init__(self, in_ch: int, hidden: int, groups: int, image_channels: int) -> None:
        super().__init__()
        self.hidden, self.groups = hidden, groups
        self.left_to_right = MaskedConv2d(in_ch, 4 * hidden, 1, "B", groups)  # input-to-state
        self.right_to_left = MaskedConv2d(in_ch, 4 * hidden, 1, "B", groups)
        # the pixels themselves, for the shifted direction only (see the PixelRNN module docstring)
        self.image_to_state = nn.Conv2d(image_channels, 4 * hidden, 1, bias=False)
        # 2x1 state-to-state along the previous diagonal, taps (row i-1, row i); one conv group per direction
        self.state_to_state = nn.Conv1d(2 * hidden, 8 * hidden, 2, groups=2, bias=False)
        init_forget_bias_(self.left_to_right.bias, groups)
        init_forget_bias_(self.right_to_left.bias, groups)

    def input_gates(self, x: Tensor, image: Tensor) -> Tensor:
        """Skewed input-to-state gates of both directions (B, 8h, H, W + H - 1).

        Column t holds diagonal i + j = t of the map (left-to-right) and of the flipped map
        (right-to-left). A 1x1 conv commutes with the flip, so it runs once on the unflipped map.
        """
        l2r = self.left_to_right(x)
        r2l = (self.right_to_left(x) + self.image_to_state(image)).flip(-1)
        return skew(torch.cat([l2r, r2l], 1))

    def step(self, gates_diag: Tensor, state: LSTMState) -> LSTMState:
        """One diagonal: its input gates (B, 8h, H) and the previous diagonal's (h, c) (B, 2h, H).

        Row i of the previous skewed column is the left neighbour (i, j-1), row i-1 the upper
        neighbour (i-1, j); padding the top with zeros gives row 0 no upper neighbour.
        """
        recurrent = self.state_to_state(F.pad(state[0], (1, 0)))
        return lstm_cell(gates_diag + recurrent, state[1], 2 * self.groups)

    def scan(self, gates: Tensor, state: LSTMState | None = None) -> tuple[Tensor, LSTMState]:
        """Diagonals of skewed `gates` from `state` -> (skewed h map (B, 2h, H, W + H - 1), last state)."""
        if state is None:
            state = zero_state(gates, 2 * self.hidden, gates.shape[2])
        return lstm_scan(self.step, gates, state, dim=3)

    def forward(self, x: Tensor, image: Tensor) -> Tensor:
        h = unskew(self.scan(self.input_gates(x, image))[0], x.shape[-1])
        l2r, r2l = h.chunk(2, 1)
        r2l = r2l.flip(-1)  # at (i, j): rows <= i, columns >= j
        return l2r + F.pad(r2l, (0, 0, 1, 0))[:, :, :-1]  # shifted: rows < i only

    def pixel_steps(self, batch: int, width: int) -> DiagonalBiLSTMPixelSteps:
        """Carried states for a raster walk over images `width` wide (see `DiagonalBiLSTMPixelSteps`)."""
        return DiagonalBiLSTMPixelSteps(self, batch, width)


class ResidualLSTMLayer(nn.Module):
    """x (2h) + 1x1 mask-B conv of the LSTM's h outputs: the residual connection of PixelRNN."""

    def __init__(self, lstm: nn.Module, hidden: int, groups: int) -> None:
        super().__init__()
        self.lstm = lstm
        self.out = MaskedConv2d(hidden, 2 * hidden, 1, "B", groups)

    def forward(self, x: Tensor, image: Tensor) -> Tensor:
        return x + self.out(self.lstm(x, image))

    def pixel_steps(self, batch: int, width: int) -> ResidualPixelSteps:
        """The layer's per-pixel steps: its LSTM's carried states plus the residual 1x1 output."""
        return ResidualPixelSteps(self, batch, width)


# ----- per-pixel steps (raster order) ----------------------------------------------------------------
class LSTMPixelSteps:
    """Carried states of one LSTM layer during a raster walk, laid out (W, B, features) so a column
    is one slice. `column(u, j)`: the layer input at (i, j) (B, in) -> the LSTM's output there
    (B, hidden), recording the column's state; `end_row(u_row, image_row)`: row i is finished."""

    def __init__(self, hidden: int, in_ch: int, batch: int, width: int, like: Tensor) -> None:
        self.width = width
        self.zeros = like.new_zeros(batch, hidden)  # states left of column 0
        self.u = like.new_zeros(width, batch, in_ch)  # layer inputs of the current row

    def column(self, u: Tensor, j: int) -> Tensor:
        raise NotImplementedError

    def end_row(self, image_row: Tensor) -> None:
        """Row i is finished (image_row: its scaled pixels (B, C, W)): prepare row i + 1."""
        raise NotImplementedError


class RowLSTMPixelSteps(LSTMPixelSteps):
    """Row LSTM: gates(i, j) = input-to-state(u(i, j-1), u(i, j)) (1x3 mask B, the right tap is
    masked) + state-to-state(h(i-1, j-1..j+1)), cell state c(i-1, j). The state-to-state term of a
    whole row is computed once when the row above is finished."""

    def __init__(self, lstm: RowLSTM, batch: int, width: int) -> None:
        conv = lstm.input_to_state
        weight = conv.weight * conv.mask  # (4h, in, 1, 3): taps (j-1, j, j+1), the last masked
        super().__init__(lstm.hidden, weight.shape[1], batch, width, weight)
        self.lstm, self.groups = lstm, lstm.groups
        self.gate_w = torch.cat([weight[:, :, 0, 0], weight[:, :, 0, 1]], 1)  # reads [u(i, j-1), u(i, j)]
        self.gate_b = conv.bias
        h = lstm.hidden
        self.h = self.u.new_zeros(width, batch, h)  # current row's (h, c)
        self.c = self.u.new_zeros(width, batch, h)
        self.c_above = self.u.new_zeros(width, batch, h)
        self.from_above = self._state_to_state(self.h)  # row 0: zero state above

    def _state_to_state(self, h_row: Tensor) -> Tensor:
        """(W, B, h) hidden states of a row -> its state-to-state gate term for the row below (W, B, 4h)."""
        return self.lstm.state_to_state(h_row.permute(1, 2, 0)).permute(2, 0, 1).contiguous()

    def column(self, u: Tensor, j: int) -> Tensor:
        left = self.u[j - 1] if j > 0 else torch.zeros_like(u)
        gates = F.linear(torch.cat([left, u], 1), self.gate_w, self.gate_b) + self.from_above[j]
        h, c = lstm_cell(gates, self.c_above[j], self.groups)
        self.u[j], self.h[j], self.c[j] = u, h, c
        return h

    def end_row(self, image_row: Tensor) -> None:
        self.from_above = self._state_to_state(self.h)
        self.c_above, self.c = self.c, self.c_above


class DiagonalBiLSTMPixelSteps(LSTMPixelSteps):
    """Diagonal BiLSTM: the left-to-right direction is the 2-D recurrence
    h(i, j) = cell(u(i, j), h(i-1, j), h(i, j-1); c(i, j-1)), one cell update per pixel from the
    carried upper and left states. The right-to-left direction is shifted down one row, so pixel
    (i, j) reads it from row i-1 only: when a row is finished it runs once over that row, right to
    left, from the carried states of the row above (its gates read the row's pixels, complete by then)."""

    def __init__(self, lstm: DiagonalBiLSTM, batch: int, width: int) -> None:
        l2r = pointwise_matrix(lstm.left_to_right)
        super().__init__(lstm.hidden, l2r.shape[1], batch, width, l2r)
        self.lstm, self.groups = lstm, lstm.groups
        h = lstm.hidden
        s2s = lstm.state_to_state.weight  # (8h, h, 2): [l2r; r2l] outputs, taps (upper, previous)
        # left-to-right: reads [u(i, j), h(i-1, j), h(i, j-1)]
        self.l2r_w = torch.cat([l2r, s2s[: 4 * h, :, 0], s2s[: 4 * h, :, 1]], 1)
        self.l2r_b = lstm.left_to_right.bias
        # right-to-left (on the flipped map, "previous" is the right neighbour): reads [r(i-1, j), r(i, j+1)]
        self.r2l_w = torch.cat([s2s[4 * h :, :, 0], s2s[4 * h :, :, 1]], 1)
        self.h = self.u.new_zeros(width, batch, h)  # left-to-right (h, c) of the current row
        self.c = self.u.new_zeros(width, batch, h)
        self.h_above = self.u.new_zeros(width, batch, h)
        self.r_above = self.u.new_zeros(width, batch, h)  # right-to-left h of the row above (shifted in)

    def column(self, u: Tensor, j: int) -> Tensor:
        h_left, c_left = (self.h[j - 1], self.c[j - 1]) if j > 0 else (self.zeros, self.zeros)
        gates = F.linear(torch.cat([u, self.h_above[j], h_left], 1), self.l2r_w, self.l2r_b)
        h, c = lstm_cell(gates, c_left, self.groups)
        self.u[j], self.h[j], self.c[j] = u, h, c
        return h + self.r_above[j]

    def end_row(self, image_row: Tensor) -> None:
        # the right-to-left input gates of the finished row, from its layer inputs and pixels
        u_map = self.u.permute(1, 2, 0)[:, :, None]  # (B, in, 1, W)
        gates_in = self.lstm.right_to_left(u_map) + self.lstm.image_to_state(image_row[:, :, None])
        gates_in = gates_in[:, :, 0].permute(2, 0, 1)  # (W, B, 4h)
        r = torch.empty_like(self.r_above)
        r_right, c_right = self.zeros, self.zeros
        for j in range(self.width - 1, -1, -1):
            gates = gates_in[j] + F.linear(torch.cat([self.r_above[j], r_right], 1), self.r2l_w)
            r_right, c_right = lstm_cell(gates, c_right, self.groups)
            r[j] = r_right
        self.r_above = r
        self.h_above, self.h = self.h, self.h_above


class ResidualPixelSteps:
    """Per-pixel steps of a `ResidualLSTMLayer`: u + 1x1 output of the LSTM's column."""

    def __init__(self, layer: ResidualLSTMLayer, batch: int, width: int) -> None:
        if not hasattr(layer.lstm, "pixel_steps"):
            raise ValueError(f"expected an LSTM layer with per-pixel steps, given {type(layer.lstm).__name__}")
        self.lstm = layer.lstm.pixel_steps(batch, width)
        self.out_w, self.out_b = pointwise_matrix(layer.out), layer.out.bias

    def column(self, u: Tensor, j: int) -> Tensor:
        """Layer input at (i, j) (B, 2h) -> layer output there; records the column's state."""
        return u + F.linear(self.lstm.column(u, j), self.out_w, self.out_b)

    def end_row(self, image_row: Tensor) -> None:
        self.lstm.end_row(image_row)


class RasterLSTMSteps:
    """A PixelRNN trunk and head stepped one pixel at a time in raster order.

    `input` is the k x k mask-A convolution over the scaled pixels (`scale_input(x, levels)`),
    `bias` (B, F, 1, 1) or None a class bias added to its output, `layers` residual LSTM layers,
    `head` a sequence of ReLUs and 1x1 convolutions. `column(x, i, j)` computes the residual stream
    at (i, j) from the integer pixels x (B, C, H, W) (valid before (i, j), and at it for earlier
    channels), recording every layer's column; `end_row(x_row)` runs the layers' end-of-row passes
    for one finished row (B, C, W) (rows in order, each once, before any column of a later row);
    `head(u)` gives the distribution parameters (B, P) at the pixel.
    """

    def __init__(self, input: MaskedConv2d, bias: Tensor | None, layers: list[ResidualLSTMLayer],
                 head: nn.Sequential, levels: int, batch: int, width: int) -> None:
        kh, kw = input.kernel_size
        self.pad = kh // 2
        if kh != kw:
            raise ValueError(f"expected a square input kernel, given {input.kernel_size}")
        # rows below the centre of the mask-A kernel are all masked: keep the top pad + 1
        self.input_w = (input.weight * input.mask)[:, :, : self.pad + 1]
        self.input_b = input.bias
        self.bias = None if bias is None else bias[:, :, 0, 0]
        self.layers = [layer.pixel_steps(batch, width) for layer in layers]
        self.head_layers: list[tuple[bool, Tensor, Tensor | None]] = []
        relu = False
        for m in head:
            if isinstance(m, nn.ReLU):
                relu = True
            elif isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1):
                self.head_layers.append((relu, pointwise_matrix(m), m.bias))
                relu = False
            else:
                raise ValueError(f"expected a head of ReLUs and 1x1 convolutions, given {type(m).__name__}")
        self.width, self.levels = width, levels

    def end_row(self, x_row: Tensor) -> None:
        row = scale_input(x_row, self.levels)
        for layer in self.layers:
            layer.end_row(row)

    def column(self, x: Tensor, i: int, j: int) -> Tensor:
        p, w = self.pad, self.width
        top, left, right = max(i - p, 0), max(j - p, 0), min(j + p + 1, w)
        patch = scale_input(x[:, :, top : i + 1, left:right], self.levels)
        patch = F.pad(patch, (left - (j - p), j + p + 1 - right, top - (i - p), 0))  # zeros outside the image
        u = F.conv2d(patch, self.input_w, self.input_b)[:, :, 0, 0]
        if self.bias is not None:
            u = u + self.bias
        for layer in self.layers:
            u = layer.column(u, j)
        return u

    def head(self, u: Tensor) -> Tensor:
        for relu, weight, bias in self.head_layers:
            u = F.linear(torch.relu(u) if relu else u, weight, bias)
        return u
