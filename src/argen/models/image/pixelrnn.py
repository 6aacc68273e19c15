"""PixelRNN (van den Oord et al., 2016): Row LSTM and Diagonal BiLSTM over R, G, B channel groups.

Both models: 7x7 mask-A input layer -> n residual LSTM layers (2h-feature stream, h-unit LSTM,
1x1 mask-B conv h -> 2h added back) -> ReLU, 1x1 mask B, ReLU, 1x1 mask B -> L-way softmax per
sub-pixel. Every convolution that touches the current pixel is masked over channel groups, and
the LSTM gates keep that grouping (`nn.recurrent`), so channel g at a pixel sees channels < g there.

- Row LSTM: input-to-state is a 1x3 conv along the row (mask B: left tap and the centre);
  state-to-state a 3-wide conv over the row above's hidden state, unmasked because that row is
  entirely in the past. Each layer sees a triangle above the pixel, not the whole context.
- Diagonal BiLSTM: the map is skewed (row i shifted right by i) so each column is a diagonal;
  1x1 mask-B input-to-state, 2x1 state-to-state over the previous diagonal (upper and left
  neighbours). The right-to-left direction runs on the flipped map and is shifted down one row,
  so together one layer sees every earlier pixel. One addition to the paper: the right-to-left
  direction also reads the pixel values (1x1, unmasked; after the shift they are all in rows
  above). Without it the last pixel of the previous row is a blind spot at any depth: no feature
  in rows < i encodes it (mask A keeps it out of its own position), and the row-i features that
  do sit at columns >= W - 1 - first_kernel // 2, in the future of the pixels before them.

Cached sampling (`argen.sampling.recurrent_cache`, the models' `stepper`) carries the states:
the Row LSTM's state for row i is (h, c) of row i-1, and the gates of pixel (i, j) depend on this
row only at columns j-1 and j, so per pixel each layer computes one column from the carried
row-above state. The Diagonal BiLSTM's left-to-right direction is the 2-D recurrence
h(i, j) = f(x(i, j), h(i-1, j), h(i, j-1)): per pixel one cell update from the carried upper and
left states; the shifted right-to-left direction only needs rows < i, so it runs once per
finished row. O(n_layers) work per pixel either way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from argen.distributions import Categorical
from argen.fields import spec
from argen.models.base import ARModel, ModelConfig
from argen.nn import ClassEmbedding, MaskedConv2d, masked_output_head, scale_input
from argen.nn.recurrent import LSTMState, init_forget_bias_, lstm_cell, lstm_scan, skew, unskew, zero_state
from argen.registry import register_model

#: Sizes `hidden` and `head` take when not given, for one channel; with C channels each is rounded
#: up to a multiple of C (every layer splits its features into C channel groups).
DEFAULT_HIDDEN, DEFAULT_HEAD = 64, 256


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


@dataclass
class PixelRNNConfig(ModelConfig):
    """`hidden` and `head` must be multiples of the channel count C (channel groups). Left out
    (None), they are filled in when the config is built: 64 and 256 rounded up to a multiple of C,
    so 64 and 256 for grey images (the paper's MNIST sizes) and 66 and 258 for RGB (CIFAR-10). The
    filled-in values are stored, so a saved config reloads as the same network."""

    hidden: int | None = spec(None, ge=1)  # LSTM units h per layer (and per direction); the residual stream has 2h
    n_layers: int = spec(7, ge=1)
    head: int | None = spec(None, ge=1)  # features of the two ReLU + 1x1 output layers
    first_kernel: int = spec(7, ge=3)  # odd

    def __post_init__(self) -> None:
        super().__post_init__()
        self._fill_sizes()

    def _fill_sizes(self) -> None:
        """hidden/head None -> the defaults rounded up to a multiple of the channel count."""
        shape = self.image_shape
        c = shape[0] if isinstance(shape, tuple) and shape and isinstance(shape[0], int) and shape[0] >= 1 else 1
        if self.hidden is None:
            self.hidden = _round_up(DEFAULT_HIDDEN, c)
        if self.head is None:
            self.head = _round_up(DEFAULT_HEAD, c)

    def validate(self) -> None:
        super().validate()
        self._fill_sizes()  # set to None after the config was built
        c = self.image_shape[0]
        if self.hidden % c or self.head % c:
            raise ValueError(
                f"hidden and head must be positive and divisible by {c} (channel groups), "
                f"given hidden={self.hidden}, head={self.head}"
            )
        if self.first_kernel % 2 == 0:
            raise ValueError(f"first_kernel must be odd and >= 3, given {self.first_kernel}")


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
        # the pixels themselves, for the shifted direction only (see the module docstring)
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


class ResidualLSTMLayer(nn.Module):
    """x (2h) + 1x1 mask-B conv of the LSTM's h outputs: the residual connection of PixelRNN."""

    def __init__(self, lstm: nn.Module, hidden: int, groups: int) -> None:
        super().__init__()
        self.lstm = lstm
        self.out = MaskedConv2d(hidden, 2 * hidden, 1, "B", groups)

    def forward(self, x: Tensor, image: Tensor) -> Tensor:
        return x + self.out(self.lstm(x, image))


class PixelRNN(ARModel):
    """Shared body of both PixelRNN models; subclasses choose the LSTM layer."""

    config_class = PixelRNNConfig
    config: PixelRNNConfig
    #: built as lstm_class(in_ch, hidden, groups, image_channels); called as lstm(h, image)
    lstm_class: ClassVar[type[nn.Module]]

    def __init__(self, config: PixelRNNConfig) -> None:
        super().__init__(config)
        c, cfg, width = config.image_shape[0], config, 2 * config.hidden
        self.distribution = Categorical(c, cfg.levels)
        self.input = MaskedConv2d(c, width, cfg.first_kernel, "A", c)
        self.class_bias = ClassEmbedding(cfg.num_classes, width)
        self.layers = nn.ModuleList(
            ResidualLSTMLayer(self.lstm_class(width, cfg.hidden, c, c), cfg.hidden, c) for _ in range(cfg.n_layers)
        )
        self.head = masked_output_head(width, cfg.head, self.distribution.num_params, c)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.forward_float(scale_input(x, self.levels), cond)

    def stepper(self, cond: Tensor | None) -> Any:
        """Exact cached sampling: carried LSTM states, one new column per layer per pixel."""
        from argen.sampling.recurrent_cache import RecurrentStepper

        return RecurrentStepper(self, cond)

    def forward_float(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """The network on already scaled float input (B, C, H, W), differentiable w.r.t. the pixels."""
        return self.head(self.trunk(x, cond))

    def trunk(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """The residual stream (B, 2h, H, W) before the per-pixel head, from scaled float input.

        The head only mixes features of one pixel, so the model's receptive field is the trunk's;
        the receptive-field tests read it here, where no ReLU can switch a dependency off.
        """
        h = self.input(x)
        bias = self.class_bias(cond)
        if bias is not None:
            h = h + bias
        for layer in self.layers:
            h = layer(h, x)
        return h


@register_model("pixelrnn_row", tiny=dict(hidden=6, n_layers=1, head=12, first_kernel=3))
class RowLSTMPixelRNN(PixelRNN):
    """PixelRNN with Row LSTM layers (triangular receptive field, row-parallel)."""

    lstm_class = RowLSTM


@register_model("pixelrnn_diag", tiny=dict(hidden=6, n_layers=1, head=12, first_kernel=3))
class DiagonalBiLSTMPixelRNN(PixelRNN):
    """PixelRNN with Diagonal BiLSTM layers (the whole causal context in every layer)."""

    lstm_class = DiagonalBiLSTM
