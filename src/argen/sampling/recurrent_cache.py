"""Exact cached sampling for PixelRNN (Row LSTM and Diagonal BiLSTM): carry the recurrent states
instead of rerunning the network, and compute per pixel only the one column each layer gains.

Why one column per layer is enough (raster order, pixel (i, j)): every layer's output at (i, j)
depends on the current row only at columns <= j, and on earlier rows only through states that are
final once those rows are done:

- first layer, k x k mask A: the pixels of rows i - k//2 .. i around (i, j) (one small conv on a
  patch);
- Row LSTM layer: gates(i, j) = input-to-state(u(i, j-1), u(i, j)) (1x3 mask B, the right tap is
  masked) + state-to-state(h(i-1, j-1..j+1)), cell state c(i-1, j). The state-to-state term of the
  whole row is computed once when row i-1 is finished; per pixel it is one small matmul, a cell
  update and the 1x1 output;
- Diagonal BiLSTM layer: the left-to-right direction is the 2-D recurrence
  h(i, j) = cell(x(i, j), h(i-1, j), h(i, j-1); c(i, j-1)) (the diagonal scan is only a way to
  run it in parallel), so per pixel it is one cell update from the carried upper and left states.
  The right-to-left direction is shifted down one row, so pixel (i, j) reads it from row i-1
  only: when row i-1 is finished it is run once over that row, right to left, from the carried
  row i-2 states (its gate input includes the unmasked pixels of row i-1, complete by then);
- residual 1x1 mask-B output and the 1x1 head: per pixel.

Complexity: O(n_layers) work per pixel (and per channel: the current pixel's column is recomputed
for each channel, as the naive sampler reruns the network) plus O(n_layers * W) per finished row,
i.e. O(n_layers) amortised per pixel for both models -- the cost of one forward pass per image
instead of one per sub-pixel (the naive sampler's O(C*H*W) passes). The Diagonal BiLSTM's
per-row right-to-left pass is W sequential cell steps per layer.

The features at (i, j) never depend on the last channel of pixel (i, j) (mask A excludes it, the
unmasked image input of the right-to-left direction is read a row later), so the column computed
for the last channel is final and is kept; a column of a known pixel (`skip`) is computed once.

Exactness: parameters equal the naive ones up to float round-off (matmuls on one column sum in
another order than convolutions over the map), not bitwise; samples from the same uniforms are
identical unless a uniform falls within round-off of a bin edge (tests check both).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from argen.nn import scale_input
from argen.nn.recurrent import lstm_cell


def _matrix(conv: nn.Conv2d) -> Tensor:
    """(out, in) matrix of a 1x1 (masked) convolution."""
    weight = conv.weight * conv.mask if hasattr(conv, "mask") else conv.weight
    return weight[:, :, 0, 0]


class _LayerCache:
    """Buffers of one residual LSTM layer, laid out (W, B, features) so a column is one slice."""

    def __init__(self, layer: nn.Module, batch: int, width: int, groups: int) -> None:
        self.lstm, self.groups, self.width = layer.lstm, groups, width
        self.out_w, self.out_b = _matrix(layer.out), layer.out.bias
        hidden = self.lstm.hidden
        ref = self.out_w
        self.zeros = ref.new_zeros(batch, hidden)  # states left of column 0
        self.u = ref.new_zeros(width, batch, 2 * hidden)  # layer inputs of the current row

    def column(self, u: Tensor, j: int) -> Tensor:
        """Layer input at (i, j) (B, 2h) -> layer output there; records the column's state."""
        raise NotImplementedError

    def end_row(self, image_row: Tensor) -> None:
        """Row i is finished (image_row: its scaled pixels (B, C, W)): prepare row i + 1."""
        raise NotImplementedError


class _RowLSTMCache(_LayerCache):
    def __init__(self, layer: nn.Module, batch: int, width: int, groups: int) -> None:
        super().__init__(layer, batch, width, groups)
        conv = self.lstm.input_to_state
        weight = conv.weight * conv.mask  # (4h, 2h, 1, 3): taps (j-1, j, j+1), the last masked
        self.gate_w = torch.cat([weight[:, :, 0, 0], weight[:, :, 0, 1]], 1)  # reads [u(i, j-1), u(i, j)]
        self.gate_b = conv.bias
        h = self.lstm.hidden
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
        return u + F.linear(h, self.out_w, self.out_b)

    def end_row(self, image_row: Tensor) -> None:
        self.from_above = self._state_to_state(self.h)
        self.c_above, self.c = self.c, self.c_above


class _DiagonalBiLSTMCache(_LayerCache):
    def __init__(self, layer: nn.Module, batch: int, width: int, groups: int) -> None:
        super().__init__(layer, batch, width, groups)
        h = self.lstm.hidden
        s2s = self.lstm.state_to_state.weight  # (8h, h, 2): [l2r; r2l] outputs, taps (upper, previous)
        # left-to-right: reads [u(i, j), h(i-1, j), h(i, j-1)]
        self.l2r_w = torch.cat([_matrix(self.lstm.left_to_right), s2s[: 4 * h, :, 0], s2s[: 4 * h, :, 1]], 1)
        self.l2r_b = self.lstm.left_to_right.bias
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
        return u + F.linear(h + self.r_above[j], self.out_w, self.out_b)

    def end_row(self, image_row: Tensor) -> None:
        # the right-to-left input gates of the finished row, from its layer inputs and pixels
        u_map = self.u.permute(1, 2, 0)[:, :, None]  # (B, 2h, 1, W)
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


class RecurrentStepper:
    """Stepper for `autoregressive_fill` over a PixelRNN (raster order), carrying LSTM states."""

    def __init__(self, model: Any, cond: Tensor | None) -> None:
        from argen.models.image.pixelrnn import DiagonalBiLSTM, RowLSTM

        c, height, width = model.data_shape
        if list(model.generation_order()) != [(i, j) for i in range(height) for j in range(width)]:
            raise ValueError("cached PixelRNN sampling needs the raster generation order")
        kinds = {RowLSTM: _RowLSTMCache, DiagonalBiLSTM: _DiagonalBiLSTMCache}
        lstm_types = {type(layer.lstm) for layer in model.layers}
        if len(lstm_types) != 1 or next(iter(lstm_types)) not in kinds:
            raise ValueError(f"expected layers of one kind among {[k.__name__ for k in kinds]}, "
                             f"given {sorted(t.__name__ for t in lstm_types)}")
        self.layer_cache = kinds[next(iter(lstm_types))]
        self.model, self.cond = model, cond
        self.channels, self.height, self.width = c, height, width
        p = model.config.first_kernel // 2
        self.pad = p
        # rows below the centre of the mask-A kernel are all masked: keep the top p + 1
        self.input_w = (model.input.weight * model.input.mask)[:, :, : p + 1]
        self.input_b = model.input.bias
        head = [m for m in model.head if isinstance(m, nn.Conv2d)]
        self.head_w = [_matrix(m) for m in head]
        self.head_b = [m.bias for m in head]
        self.layers: list[_LayerCache] | None = None
        self.batch = 0
        self.bias: Tensor | None = None
        self.next = 0  # columns of pixels [0, next) (raster) are final
        self.rows_done = 0  # rows [0, rows_done) have had their end-of-row pass

    def _start(self, x: Tensor) -> None:
        self.batch = batch = x.shape[0]
        self.layers = [self.layer_cache(layer, batch, self.width, self.channels) for layer in self.model.layers]
        bias = self.model.class_bias(self.cond)
        self.bias = None if bias is None else bias[:, :, 0, 0]

    def _column(self, x: Tensor, i: int, j: int) -> Tensor:
        """The residual stream at (i, j) (B, 2h) from the current pixel values; records the states."""
        assert self.layers is not None
        while self.rows_done < i:  # rows above are finished: run their end-of-row passes
            row = scale_input(x[:, :, self.rows_done], self.model.levels)
            for layer in self.layers:
                layer.end_row(row)
            self.rows_done += 1
        p, w = self.pad, self.width
        top, left, right = max(i - p, 0), max(j - p, 0), min(j + p + 1, w)
        patch = scale_input(x[:, :, top : i + 1, left:right], self.model.levels)
        patch = F.pad(patch, (left - (j - p), j + p + 1 - right, top - (i - p), 0))  # zeros outside the image
        u = F.conv2d(patch, self.input_w, self.input_b)[:, :, 0, 0]
        if self.bias is not None:
            u = u + self.bias
        for layer in self.layers:
            u = layer.column(u, j)
        return u

    def _catch_up(self, x: Tensor, t: int) -> None:
        while self.next < t:
            self._column(x, *divmod(self.next, self.width))
            self.next += 1

    def _index(self, x: Tensor, pos: tuple[int, ...]) -> int:
        if self.layers is None:
            self._start(x)
        elif x.shape[0] != self.batch:
            raise ValueError(f"expected a batch of {self.batch} (the carried states' size), given {x.shape[0]}")
        i, j = (int(v) for v in pos)
        if not (0 <= i < self.height and 0 <= j < self.width):
            raise ValueError(f"expected a position in the {self.height}x{self.width} image, given {tuple(pos)}")
        t = i * self.width + j
        if t < self.next:
            raise ValueError(f"cached sampling goes in raster order: expected a position at or after "
                             f"{divmod(self.next, self.width)}, given {tuple(pos)}")
        return t

    @torch.no_grad()
    def params_at(self, x: Tensor, pos: tuple[int, ...], channel: int) -> Tensor:
        if not 0 <= channel < self.channels:
            raise ValueError(f"expected a channel in [0, {self.channels}), given {channel}")
        t = self._index(x, pos)
        self._catch_up(x, t)
        u = self._column(x, *divmod(t, self.width))
        if channel == self.channels - 1:  # features at pos do not depend on the last channel
            self.next = t + 1
        for weight, bias in zip(self.head_w, self.head_b):
            u = F.linear(torch.relu(u), weight, bias)
        return u

    @torch.no_grad()
    def skip(self, x: Tensor, pos: tuple[int, ...]) -> None:
        """`pos` is known: compute its column once so later pixels see it."""
        self._catch_up(x, self._index(x, pos) + 1)


__all__ = ["RecurrentStepper"]
