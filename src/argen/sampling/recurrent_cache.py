"""Exact cached sampling for PixelRNN (Row LSTM and Diagonal BiLSTM): carry the recurrent states
instead of rerunning the network, and compute per pixel only the one column each layer gains.

The steps themselves live next to the layers (`argen.nn.recurrent`: each layer's `pixel_steps`,
chained by `RasterLSTMSteps`); a model offers them through `raster_steps(cond, batch)` (its
declared stepper kind "recurrent"), and `RecurrentStepper` only drives them: the raster walk, the
end-of-row passes, catching up over known pixels, and the checks.

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

import itertools
from typing import Any

import torch
from torch import Tensor


class RecurrentStepper:
    """Stepper for `autoregressive_fill` over a model with raster per-pixel steps (PixelRNN).

    Uses the model's public surface only: `data_shape`, `generation_order()` (must be raster) and
    `raster_steps(cond, batch)`, an object with `column(x, i, j)`, `end_row(x_row)` and `head(u)`
    (`argen.nn.recurrent.RasterLSTMSteps`).
    """

    def __init__(self, model: Any, cond: Tensor | None) -> None:
        c, height, width = model.data_shape
        raster = list(itertools.product(range(height), range(width)))
        if [tuple(int(v) for v in p) for p in model.generation_order()] != raster:
            raise ValueError("cached PixelRNN sampling needs the raster generation order")
        self.model, self.cond = model, cond
        self.channels, self.height, self.width = c, height, width
        self.steps: Any = None
        self.batch = 0
        self.next = 0  # columns of pixels [0, next) (raster) are final
        self.rows_done = 0  # rows [0, rows_done) have had their end-of-row pass

    def _column(self, x: Tensor, i: int, j: int) -> Tensor:
        """The residual stream at (i, j) (B, F) from the current pixel values; records the states."""
        while self.rows_done < i:  # rows above are finished: run their end-of-row passes
            self.steps.end_row(x[:, :, self.rows_done])
            self.rows_done += 1
        return self.steps.column(x, i, j)

    def _catch_up(self, x: Tensor, t: int) -> None:
        while self.next < t:
            self._column(x, *divmod(self.next, self.width))
            self.next += 1

    def _index(self, x: Tensor, pos: tuple[int, ...]) -> int:
        if self.steps is None:
            self.batch = x.shape[0]
            self.steps = self.model.raster_steps(self.cond, self.batch)
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
        return self.steps.head(u)

    @torch.no_grad()
    def skip(self, x: Tensor, pos: tuple[int, ...]) -> None:
        """`pos` is known: compute its column once so later pixels see it."""
        self._catch_up(x, self._index(x, pos) + 1)


__all__ = ["RecurrentStepper"]
