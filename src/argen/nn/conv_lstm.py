"""Convolutional LSTM (Shi et al. 2015) over time: the recurrence of the Video Pixel Network.

One 3x3 convolution over [x_t, h_{t-1}] gives the four gates (laid out as `argen.nn.recurrent`
does: output, forget, input, candidate); the cell update is `argen.nn.recurrent.lstm_cell`. Maps
keep their spatial size, so the state at every pixel summarises the frames seen so far around it.

`ConvLSTMCell.step(x_t, state) -> (h_t, state)` is the whole update for one frame; the layer's
`forward` is that step scanned over the time axis, so a sampler that carries the state frame by
frame gets exactly what a pass over the whole clip gives.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from argen.nn.recurrent import LSTMState, init_forget_bias_, lstm_cell


class ConvLSTMCell(nn.Module):
    """gates = conv_k([x_t, h_{t-1}]); c_t = f c_{t-1} + i g; h_t = o tanh(c_t) (same-size maps)."""

    def __init__(self, in_ch: int, hidden: int, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size % 2 == 0 or kernel_size < 1:
            raise ValueError(f"ConvLSTM kernel_size must be odd and >= 1, given {kernel_size}")
        if in_ch < 1 or hidden < 1:
            raise ValueError(f"ConvLSTM needs in_ch >= 1 and hidden >= 1, given in_ch={in_ch}, hidden={hidden}")
        self.in_ch, self.hidden = in_ch, hidden
        self.gates = nn.Conv2d(in_ch + hidden, 4 * hidden, kernel_size, padding=kernel_size // 2)
        init_forget_bias_(self.gates.bias)  # remember by default: gradients reach early frames

    def initial_state(self, x: Tensor) -> LSTMState:
        """All-zero (h, c), each (B, hidden, H, W), for a frame batch `x` (B, in_ch, H, W)."""
        h = x.new_zeros(x.shape[0], self.hidden, *x.shape[2:])
        return h, h.clone()

    def step(self, x: Tensor, state: LSTMState | None = None) -> tuple[Tensor, LSTMState]:
        """One frame: x (B, in_ch, H, W) and the carried (h, c) (zeros when None) -> (h_t, (h_t, c_t))."""
        if x.dim() != 4 or x.shape[1] != self.in_ch:
            raise ValueError(f"expected a frame batch (B, {self.in_ch}, H, W), given {tuple(x.shape)}")
        h, c = self.initial_state(x) if state is None else state
        if h.shape != (x.shape[0], self.hidden, *x.shape[2:]) or c.shape != h.shape:
            raise ValueError(f"expected a state of shape {(x.shape[0], self.hidden, *x.shape[2:])}, given "
                             f"{tuple(h.shape)} and {tuple(c.shape)}")
        h, c = lstm_cell(self.gates(torch.cat([x, h], dim=1)), c)
        return h, (h, c)

    def forward(self, x: Tensor, state: LSTMState | None = None) -> tuple[Tensor, LSTMState]:
        return self.step(x, state)


class ConvLSTM(nn.Module):
    """A `ConvLSTMCell` run over the time axis of (B, T, C, H, W) sequences."""

    def __init__(self, in_ch: int, hidden: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.cell = ConvLSTMCell(in_ch, hidden, kernel_size)

    @property
    def hidden(self) -> int:
        return self.cell.hidden

    def step(self, x: Tensor, state: LSTMState | None = None) -> tuple[Tensor, LSTMState]:
        """One time step (B, C, H, W) from the carried state; see `ConvLSTMCell.step`."""
        return self.cell.step(x, state)

    def forward(self, x: Tensor, state: LSTMState | None = None) -> tuple[Tensor, LSTMState]:
        """x (B, T, C, H, W) -> hidden outputs (B, T, hidden, H, W) and the final (h, c), from which
        a later call resumes (chunked evaluation, cached sampling)."""
        if x.dim() != 5 or x.shape[1] < 1:
            raise ValueError(f"expected a sequence (B, T >= 1, {self.cell.in_ch}, H, W), given {tuple(x.shape)}")
        outs = []
        for frame in x.unbind(1):
            h, state = self.cell.step(frame, state)
            outs.append(h)
        assert state is not None
        return torch.stack(outs, 1), state


__all__ = ["ConvLSTMCell", "ConvLSTM"]
