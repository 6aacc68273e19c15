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

The layers live in `argen.nn.recurrent` with their per-pixel steps. Cached sampling (stepper kind
"recurrent": `argen.sampling.recurrent_cache` drives `raster_steps`) carries the states:
the Row LSTM's state for row i is (h, c) of row i-1, and the gates of pixel (i, j) depend on this
row only at columns j-1 and j, so per pixel each layer computes one column from the carried
row-above state. The Diagonal BiLSTM's left-to-right direction is the 2-D recurrence
h(i, j) = f(x(i, j), h(i-1, j), h(i, j-1)): per pixel one cell update from the carried upper and
left states; the shifted right-to-left direction only needs rows < i, so it runs once per
finished row. O(n_layers) work per pixel either way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from argen.distributions import Categorical
from argen.fields import spec
from argen.models.base import ARModel, Capabilities, ModelConfig
from argen.nn import ClassEmbedding, MaskedConv2d, masked_output_head, scale_input
from argen.nn.recurrent import DiagonalBiLSTM, RasterLSTMSteps, ResidualLSTMLayer, RowLSTM
from argen.registry import register_model

__all__ = ["PixelRNNConfig", "PixelRNN", "RowLSTMPixelRNN", "DiagonalBiLSTMPixelRNN",
           "RowLSTM", "DiagonalBiLSTM", "ResidualLSTMLayer"]  # the layers: re-exported from argen.nn.recurrent

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


class PixelRNN(ARModel):
    """Shared body of both PixelRNN models; subclasses choose the LSTM layer."""

    config_class = PixelRNNConfig
    config: PixelRNNConfig
    #: exact cached sampling: carried LSTM states, one new column per layer per pixel
    capabilities = Capabilities(stepper_kind="recurrent")
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

    def raster_steps(self, cond: Tensor | None, batch: int) -> RasterLSTMSteps:
        """The network stepped one pixel at a time in raster order, for `batch` images (the
        per-step API the "recurrent" stepper kind drives; `argen.nn.recurrent.RasterLSTMSteps`)."""
        return RasterLSTMSteps(self.input, self.class_bias(cond), list(self.layers), self.head, self.levels, batch,
                               self.spatial_shape[-1])

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
