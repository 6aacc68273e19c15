"""PixelCNN++ (Salimans et al., 2017): shifted convolutions, gated residual blocks, U-net, and a
discretized logistic mixture likelihood.

Two streams: `u` (down-shifted 2x3 convolutions; row i sees image rows < i) and `ul`
(down-right-shifted 2x2; pixel (i, j) sees image pixels before it in raster order, and gets `u`
through 1x1 links). The up pass runs `blocks_per_stage` gated residual blocks at full, half and
quarter resolution with stride-2 shifted convolutions in between, keeping every output; the
down pass mirrors it with transposed shifted convolutions and consumes those outputs as skip
connections (the network fails to train without them). The head is 1x1(elu(ul)) -> mixture
parameters; the mixture models the three channels of a pixel jointly (its means depend
linearly on the earlier channels), so the network never needs channel masks.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from argen.distributions.logistic_mixture import DiscretizedLogisticMixture
from argen.fields import spec
from argen.models.base import ARModel, Capabilities, ModelConfig
from argen.nn import scale_input
from argen.nn.shifted import (
    DownRightShiftedConv2d,
    DownRightShiftedConvTranspose2d,
    DownShiftedConv2d,
    DownShiftedConvTranspose2d,
    GatedResidualBlock,
    down_shift,
    right_shift,
)
from argen.registry import register_model

N_STAGES = 3  # full, half and quarter resolution: two stride-2 downsamplings


@dataclass
class PixelCNNppConfig(ModelConfig):
    """Defaults fit 28x28 MNIST on a CPU in minutes (the paper: 160 filters, 5 blocks, 10
    components on CIFAR-10).

    dropout: the paper uses 0.5 against overfitting on CIFAR-10 with 160 filters and hundreds
    of epochs. A 64-filter model trained for minutes underfits rather than overfits, and heavy
    dropout only slows it down, so the default is 0.1; use 0.5 for long runs on CIFAR-size data.
    """

    filters: int = spec(64, ge=1)
    blocks_per_stage: int = spec(2, ge=1)
    components: int = spec(5, ge=1)
    dropout: float = spec(0.1, ge=0.0, lt=1.0)

    def validate(self) -> None:
        super().validate()
        _, h, w = self.image_shape
        if h % 4 or w % 4:
            raise ValueError(f"pixelcnn_pp needs H and W divisible by 4 (two stride-2 downsamplings), given {h}x{w}")

    def distribution_class(self) -> type[DiscretizedLogisticMixture]:
        return DiscretizedLogisticMixture  # at most 256 levels


@register_model("pixelcnn_pp", tiny=dict(filters=4, blocks_per_stage=1, components=2))
class PixelCNNpp(ARModel):
    """PixelCNN++: shifted-conv U-net of gated residual blocks with a discretized logistic mixture."""

    config_class = PixelCNNppConfig
    config: PixelCNNppConfig
    #: exact cached sampling: per step only the outputs the new pixel affects are computed
    capabilities = Capabilities(stepper_kind="conv_plan")

    def __init__(self, config: PixelCNNppConfig) -> None:
        super().__init__(config)
        cfg = config
        c, nf, n = cfg.image_shape[0], cfg.filters, cfg.blocks_per_stage
        self.distribution = DiscretizedLogisticMixture(c, cfg.levels, cfg.components)

        def block(conv: type[nn.Module], aux: int) -> GatedResidualBlock:
            return GatedResidualBlock(nf, conv, aux_channels=aux, num_classes=cfg.num_classes, dropout=cfg.dropout)

        # input: the scaled image plus a channel of ones, so zero padding is told apart from black
        self.u_init = DownShiftedConv2d(c + 1, nf, (2, 3))
        self.ul_init_above = DownShiftedConv2d(c + 1, nf, (1, 3))
        self.ul_init_left = DownRightShiftedConv2d(c + 1, nf, (2, 1))

        # up pass: per stage n (u, ul) block pairs; ul takes u as aux
        self.up_u = nn.ModuleList(nn.ModuleList(block(DownShiftedConv2d, 0) for _ in range(n)) for _ in range(N_STAGES))
        self.up_ul = nn.ModuleList(nn.ModuleList(block(DownRightShiftedConv2d, nf) for _ in range(n)) for _ in range(N_STAGES))
        self.down_u_conv = nn.ModuleList(DownShiftedConv2d(nf, nf, (2, 3), stride=2) for _ in range(N_STAGES - 1))
        self.down_ul_conv = nn.ModuleList(DownRightShiftedConv2d(nf, nf, (2, 2), stride=2) for _ in range(N_STAGES - 1))

        # down pass, coarsest stage first: n blocks there, n + 1 at the others (the extra one
        # consumes the output of the stride-2 convolution); u takes its up-pass skip as aux, ul
        # takes [u, its up-pass skip]
        sizes = [n] + [n + 1] * (N_STAGES - 1)
        self.dn_u = nn.ModuleList(nn.ModuleList(block(DownShiftedConv2d, nf) for _ in range(k)) for k in sizes)
        self.dn_ul = nn.ModuleList(nn.ModuleList(block(DownRightShiftedConv2d, 2 * nf) for _ in range(k)) for k in sizes)
        self.up_u_conv = nn.ModuleList(DownShiftedConvTranspose2d(nf, nf, (2, 3), stride=2) for _ in range(N_STAGES - 1))
        self.up_ul_conv = nn.ModuleList(DownRightShiftedConvTranspose2d(nf, nf, (2, 2), stride=2) for _ in range(N_STAGES - 1))

        self.out = nn.Conv2d(nf, self.distribution.num_params, 1)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        xs = scale_input(x, self.levels)
        xs = torch.cat([xs, torch.ones_like(xs[:, :1])], dim=1)
        u = down_shift(self.u_init(xs))  # row i: image rows < i
        ul = down_shift(self.ul_init_above(xs)) + right_shift(self.ul_init_left(xs))  # pixels before (i, j)
        us, uls = [u], [ul]
        for stage in range(N_STAGES):
            for bu, bul in zip(self.up_u[stage], self.up_ul[stage]):
                u = bu(u, cond=cond)
                ul = bul(ul, u, cond=cond)
                us.append(u)
                uls.append(ul)
            if stage < N_STAGES - 1:
                u, ul = self.down_u_conv[stage](u), self.down_ul_conv[stage](ul)
                us.append(u)
                uls.append(ul)

        u, ul = us.pop(), uls.pop()
        for stage in range(N_STAGES):
            if stage > 0:
                u, ul = self.up_u_conv[stage - 1](u), self.up_ul_conv[stage - 1](ul)
            for bu, bul in zip(self.dn_u[stage], self.dn_ul[stage]):
                u = bu(u, us.pop(), cond=cond)
                ul = bul(ul, torch.cat([u, uls.pop()], dim=1), cond=cond)
        assert not us and not uls, "every up-pass output is consumed exactly once"
        return self.out(F.elu(ul))
