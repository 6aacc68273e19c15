"""Recurrent pieces for 2-D LSTMs over images (PixelRNN; later ConvLSTM-style video models).

The LSTM here is written as a pure step `state' = cell(gates, state)`, where `gates` are the
4*hidden pre-activations that convolutions produce (input-to-state + state-to-state). A model
scans a step over rows or diagonals for training; a cached sampler can call the same step with a
carried state instead of rerunning the whole scan.

Gate layout (why it matters): masked networks split features into contiguous channel groups
(R, G, B; see `nn.masked`). The 4*hidden gate features are laid out [group][gate][unit] so that a
masked convolution producing them assigns all four gates of a hidden unit to that unit's group;
the cell then keeps group g's state a function of group <= g inputs at the current pixel.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

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
