"""Gated PixelCNN (van den Oord et al., 2016, "Conditional Image Generation with PixelCNN Decoders").

A vertical stack (rows above) and a horizontal stack (the current row so far) of gated
tanh * sigmoid layers, with no blind spot; the vertical stack feeds the horizontal one (1x1 conv,
shifted down one row), never the reverse. Residual connections and a 1x1 conv on the
horizontal stack, optional skip connections summed into the head, optional class conditioning
(a learned per-class bias before every gate), and an L-way softmax per sub-pixel whose R, G, B
ordering is kept by channel-group masks at the current pixel (mask A in the first layer, B
after). The layer itself lives in `argen.nn.gated`.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from argen.distributions import Categorical
from argen.fields import spec
from argen.models.base import ARModel, Capabilities, ModelConfig
from argen.nn import masked_output_head, scale_input
from argen.nn.gated import GatedStackLayer
from argen.registry import register_model


@dataclass
class GatedPixelCNNConfig(ModelConfig):
    """Defaults fit 28x28 MNIST on a CPU in minutes: 8 layers of kernel 5 reach 17 rows up, 16
    columns to either side and 16 to the left in the current row. `hidden` and `head` must be
    divisible by the channel count (72 works for 1 and 3 channels)."""

    hidden: int = spec(72, ge=1)
    n_layers: int = spec(8, ge=1)
    kernel: int = spec(5, ge=3)  # odd
    skip: bool = spec(True)
    head: int = spec(144, ge=1)

    def validate(self) -> None:
        super().validate()
        c = self.image_shape[0]
        if self.hidden % c or self.head % c:
            raise ValueError(
                f"hidden and head must be positive multiples of {c} (channel groups), given hidden={self.hidden}, head={self.head}"
            )
        if self.kernel % 2 == 0:
            raise ValueError(f"kernel must be odd and >= 3, given {self.kernel}")


@register_model("gated_pixelcnn", tiny=dict(hidden=12, n_layers=2, kernel=3, head=12))
class GatedPixelCNN(ARModel):
    """Gated PixelCNN: vertical + horizontal gated stacks without a blind spot, L-way softmax."""

    config_class = GatedPixelCNNConfig
    config: GatedPixelCNNConfig
    #: exact cached sampling: per step only the outputs the new pixel affects are computed
    capabilities = Capabilities(stepper_kind="conv_plan")

    def __init__(self, config: GatedPixelCNNConfig) -> None:
        super().__init__(config)
        c, cfg = config.image_shape[0], config
        self.distribution = Categorical(c, cfg.levels)
        skip = cfg.hidden if cfg.skip else 0
        self.layers = nn.ModuleList(
            GatedStackLayer(
                c if i == 0 else cfg.hidden, cfg.hidden, cfg.kernel, "A" if i == 0 else "B", c,
                residual=i > 0, skip_channels=skip, num_classes=cfg.num_classes,
            )
            for i in range(cfg.n_layers)
        )
        self.head = masked_output_head(cfg.hidden, cfg.head, self.distribution.num_params, c)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        v = h = scale_input(x, self.levels)
        skips: Tensor | None = None
        for layer in self.layers:
            v, h, s = layer(v, h, cond)
            if s is not None:
                skips = s if skips is None else skips + s
        return self.head(skips if skips is not None else h)
