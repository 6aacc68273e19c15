"""PixelSNAIL (Chen et al., 2018): causal convolutions interleaved with causal self-attention.

The residual stream `ul` starts as in PixelCNN++ (a down-shifted 1x3 and a right-shifted 2x1
convolution of the image), so `ul` at pixel p depends only on pixels before p in raster order.
Each of `n_blocks` blocks runs `resnets_per_block` gated residual blocks of down-right-shifted
2x2 convolutions, then an attention block:

    kv  = gated 1x1 block([x, ul, coords])   keys/values: the image, the features, a coordinate grid
    q   = gated 1x1 block([ul, coords])      queries: the residual stream
    a   = attention(q, kv), strictly causal  pixel p reads keys at pixels < p only
    ul  = gated 1x1 block(ul, aux=a)

Strict causality is what makes the image itself a legal key: pixel p' < p contributes its value
x_p' and its features ul_p' (which depend on pixels < p'); nothing at p or later is read. One
attention block therefore gives every pixel access to all earlier pixels, however shallow the
convolutions. The first pixel has no earlier pixel and gets a zero attention output (the output
projection has no bias).

The head is 1x1(elu(ul)) -> discretized logistic mixture (shared with PixelCNN++), which models
the channels of a pixel jointly, so no channel masks are needed. No downsampling: any H x W works.
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
from argen.nn.attention import CausalPattern, MultiHeadAttention, map_attention
from argen.nn.shifted import DownRightShiftedConv2d, DownShiftedConv2d, GatedResidualBlock, down_shift, right_shift
from argen.registry import register_model


@dataclass
class PixelSNAILConfig(ModelConfig):
    """Defaults are CPU-friendly; the paper (CIFAR-10) uses 256 filters, 12 blocks of 4 residual
    blocks, keys of 16 and values of 128 channels, 10 mixture components."""

    filters: int = spec(64, ge=1)
    n_blocks: int = spec(4, ge=1)
    resnets_per_block: int = spec(2, ge=1)
    heads: int = spec(1, ge=1)
    key_dim: int = spec(16, ge=1)  # per head
    value_dim: int = spec(64, ge=1)  # per head
    components: int = spec(5, ge=1)
    dropout: float = spec(0.1, ge=0.0, lt=1.0)

    def distribution_class(self) -> type[DiscretizedLogisticMixture]:
        return DiscretizedLogisticMixture  # at most 256 levels


def _conv1x1(in_ch: int, out_ch: int) -> nn.Module:
    return nn.Conv2d(in_ch, out_ch, 1)


class AttentionBlock(nn.Module):
    """Queries from the residual stream, keys/values from [image, features, coordinates]."""

    def __init__(self, cfg: PixelSNAILConfig, channels: int) -> None:
        super().__init__()
        nf = cfg.filters
        kv_ch, q_ch = channels + nf + 2, nf + 2

        def gated(ch: int, aux: int = 0) -> GatedResidualBlock:
            return GatedResidualBlock(ch, _conv1x1, aux_channels=aux, num_classes=cfg.num_classes, dropout=cfg.dropout)

        self.kv_block, self.q_block = gated(kv_ch), gated(q_ch)
        self.attn = MultiHeadAttention(q_ch, cfg.heads, kv_dim=kv_ch, qk_dim=cfg.key_dim * cfg.heads,
                                       v_dim=cfg.value_dim * cfg.heads, out_dim=nf, dropout=cfg.dropout, out_bias=False)
        self.mix = gated(nf, nf)

    def attention(self, xs: Tensor, ul: Tensor, coords: Tensor, pattern: CausalPattern, cond: Tensor | None) -> Tensor:
        """(B, filters, H, W) attention output; zero at the first pixel."""
        kv = self.kv_block(torch.cat([xs, ul, coords], 1), cond=cond)
        q = self.q_block(torch.cat([ul, coords], 1), cond=cond)
        return map_attention(self.attn, pattern, q, kv)

    def forward(self, xs: Tensor, ul: Tensor, coords: Tensor, pattern: CausalPattern, cond: Tensor | None) -> Tensor:
        return self.mix(ul, self.attention(xs, ul, coords, pattern, cond), cond=cond)


@register_model("pixelsnail", tiny=dict(filters=8, n_blocks=1, resnets_per_block=1, key_dim=4, value_dim=8,
                                        components=2, dropout=0.0))
class PixelSNAIL(ARModel):
    """PixelSNAIL: gated shifted-conv residual blocks + strictly causal attention, logistic mixture head."""

    config_class = PixelSNAILConfig
    config: PixelSNAILConfig
    #: exact cached sampling: per step only the outputs the new pixel affects are computed, and
    #: each attention query reads a growing cache of projected keys/values
    capabilities = Capabilities(stepper_kind="conv_plan")
    coords: Tensor

    def __init__(self, config: PixelSNAILConfig) -> None:
        super().__init__(config)
        cfg = config
        c, h, w = cfg.image_shape
        nf = cfg.filters
        self.distribution = DiscretizedLogisticMixture(c, cfg.levels, cfg.components)
        self.pattern = CausalPattern(h * w, strict=True)
        # coordinate grid in [-0.5, 0.5): tells attention where each key and query sits
        rows = (torch.arange(h, dtype=torch.float32) - h / 2) / h
        cols = (torch.arange(w, dtype=torch.float32) - w / 2) / w
        grid = torch.stack([rows[:, None].expand(h, w), cols[None, :].expand(h, w)])[None]
        self.register_buffer("coords", grid, persistent=False)

        # input: the scaled image plus a channel of ones, so zero padding is told apart from black
        self.init_above = DownShiftedConv2d(c + 1, nf, (1, 3))
        self.init_left = DownRightShiftedConv2d(c + 1, nf, (2, 1))
        self.resnets = nn.ModuleList(
            nn.ModuleList(
                GatedResidualBlock(nf, DownRightShiftedConv2d, num_classes=cfg.num_classes, dropout=cfg.dropout)
                for _ in range(cfg.resnets_per_block)
            )
            for _ in range(cfg.n_blocks)
        )
        self.attention = nn.ModuleList(AttentionBlock(cfg, c) for _ in range(cfg.n_blocks))
        self.out = nn.Conv2d(nf, self.distribution.num_params, 1)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        xs = scale_input(x, self.levels)
        xp = torch.cat([xs, torch.ones_like(xs[:, :1])], 1)
        ul = down_shift(self.init_above(xp)) + right_shift(self.init_left(xp))  # pixels before (i, j)
        coords = self.coords.expand(x.shape[0], -1, -1, -1)
        for resnets, attn in zip(self.resnets, self.attention):
            for block in resnets:
                ul = block(ul, cond=cond)
            ul = attn(xs, ul, coords, self.pattern, cond)
        return self.out(F.elu(ul))
