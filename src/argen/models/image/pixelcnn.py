"""PixelCNN (van den Oord et al., 2016): masked convolutions over R, G, B channel groups.

7x7 mask-A input layer, residual blocks (1x1 down, 3x3 mask B, 1x1 up), two ReLU + 1x1 mask-B
layers, and an L-way softmax per sub-pixel. The masks leave the known blind spot of PixelCNN in
place (Gated PixelCNN removes it).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from argen.distributions import Categorical
from argen.fields import spec
from argen.models.base import ARModel, Capabilities, ModelConfig
from argen.nn import ClassEmbedding, MaskedConv2d, masked_output_head, scale_input
from argen.registry import register_model


@dataclass
class PixelCNNConfig(ModelConfig):
    hidden: int = spec(96, ge=1)  # features of the residual stream; a multiple of 2 * channels
    n_blocks: int = spec(6, ge=0)  # residual blocks (0: the input layer feeds the head)
    head: int = spec(96, ge=1)  # features of the output layers; a multiple of channels
    first_kernel: int = spec(7, ge=3)  # odd

    def validate(self) -> None:
        super().validate()
        c = self.image_shape[0]
        if self.hidden % (2 * c) or self.head % c:
            raise ValueError(
                f"hidden must be divisible by {2 * c} and head by {c} (channel groups), given hidden={self.hidden}, head={self.head}"
            )
        if self.first_kernel % 2 == 0:
            raise ValueError(f"first_kernel must be odd and >= 3, given {self.first_kernel}")


class MaskedResidualBlock(nn.Module):
    """h -> h/2 (1x1) -> h/2 (3x3) -> h (1x1), all mask B, ReLU before each conv (PixelRNN paper)."""

    def __init__(self, h: int, groups: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.ReLU(), MaskedConv2d(h, h // 2, 1, "B", groups),
            nn.ReLU(), MaskedConv2d(h // 2, h // 2, 3, "B", groups),
            nn.ReLU(), MaskedConv2d(h // 2, h, 1, "B", groups),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


@register_model("pixelcnn", tiny=dict(hidden=12, n_blocks=1, head=12, first_kernel=3))
class PixelCNN(ARModel):
    """PixelCNN: masked convolutions (mask A then B) with a per-sub-pixel L-way softmax."""

    config_class = PixelCNNConfig
    config: PixelCNNConfig
    #: exact cached sampling: per step only the outputs the new pixel affects are computed
    capabilities = Capabilities(stepper_kind="conv_plan")

    def __init__(self, config: PixelCNNConfig) -> None:
        super().__init__(config)
        c, cfg = config.image_shape[0], config
        self.distribution = Categorical(c, cfg.levels)
        self.input = MaskedConv2d(c, cfg.hidden, cfg.first_kernel, "A", c)
        self.class_bias = ClassEmbedding(cfg.num_classes, cfg.hidden)
        self.blocks = nn.Sequential(*[MaskedResidualBlock(cfg.hidden, c) for _ in range(cfg.n_blocks)])
        self.head = masked_output_head(cfg.hidden, cfg.head, self.distribution.num_params, c)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        h = self.input(scale_input(x, self.levels))
        bias = self.class_bias(cond)
        if bias is not None:
            h = h + bias
        return self.head(self.blocks(h))
