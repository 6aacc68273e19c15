"""PixelCNN priors over a two-level per-frame VQ-VAE's codes (Walker et al. 2021, "Predicting Video
with VQVAE"): the prior of the `hvqvae` tokenizer.

Data: code volumes (B, T, 5, h, w) long in [0, levels), levels = the codebook size, packed as
`argen.tokenizers.hvqvae` does: over the top grid (h, w), channel 0 is the top code of the cell and
channels 1..4 the four bottom codes of its 2x2 block in raster order. Positions are (t, h, w);
the generation order is raster over (t, h, w), and at each position the channels in turn:

    p(codes) = prod_t prod_(i, j) p(top_t(i, j) | top_t before (i, j), frames < t)
                                  * prod_k p(bottom_t(i, j, k) | top_t up to (i, j), bottom_t before
                                             (i, j, k), frames < t)

Three parts:

- past frames: each earlier frame's five code maps, embedded, go through a 3x3 conv and a ConvLSTM
  over time (`argen.nn.conv_lstm`, as in the Video Pixel Network); frame 0 reads a learned start
  feature instead. The state after frame t-1 is frame t's context, added to both stacks below;
- the top level first: a gated PixelCNN (`argen.nn.gated`, one channel group) over the top grid,
  reading the top codes only, so the top never depends on the bottom level of its frame;
- the bottom level: a gated PixelCNN over all five channels in five channel groups (top, then
  the four sub-positions in order; mask A at the centre so sub-position k sees the top code and
  sub-positions < k of its own cell), plus the top stack's features and the context.

What the contract's position-major order allows: a position's channels are drawn together, so the
bottom codes of cell (i, j) see the top codes of their frame up to and including (i, j) in raster
order, not the top codes of later cells (VQ-VAE-2's bottom prior reads the whole top map; here
that would break the (t, h, w) order every sampler and codec walks). Everything earlier in the
order is visible. Sampling uses the naive stepper (a forward pass per sub-pixel): code volumes are
small (a few hundred tokens per clip) and no cheaper exact stepper is declared.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from einops import rearrange
from torch import Tensor, nn

from argen.distributions import Categorical
from argen.fields import spec
from argen.models.base import ARModel, Capabilities, VideoModelConfig
from argen.nn import ClassEmbedding, masked_output_head
from argen.nn.conv_lstm import ConvLSTM
from argen.nn.gated import GatedStackLayer
from argen.positions import raster
from argen.registry import register_model

#: channels of an hvqvae code volume: the top code and the four bottom codes of its 2x2 block
CODE_CHANNELS = 5


@dataclass
class VQVAEVideoPixelCNNConfig(VideoModelConfig):
    """Default: hvqvae codes of 10-frame 32x32 clips (bottom 8x8, top 4x4), 128 codes."""

    video_shape: tuple[int, int, int, int] = spec((10, CODE_CHANNELS, 4, 4), ge=1)  # (t, 5, h_top, w_top)
    levels: int = spec(128, ge=2)  # the tokenizer's codebook size
    embed: int = spec(16, ge=1)  # features per embedded code
    hidden: int = spec(16, ge=1)  # top stack features; the bottom stack has 5 groups of this many
    top_layers: int = spec(3, ge=1)  # gated layers over the top grid
    bottom_layers: int = spec(3, ge=1)  # gated layers over the five channel groups
    kernel: int = spec(3, ge=3)  # odd
    lstm_hidden: int = spec(32, ge=1)  # the past-frames context's features

    #: the channel axis holds the 5 codes of a top cell, not pixels (see ModelConfig.code_channels)
    code_channels: ClassVar[bool] = True

    def validate(self) -> None:
        super().validate()
        channels = self.video_shape[1]
        if channels != CODE_CHANNELS:
            raise ValueError(f"model.video_shape: expected {CODE_CHANNELS} code channels (hvqvae: the top code and "
                             f"the 2x2 bottom codes per top cell), given {channels} in {tuple(self.video_shape)}")
        if self.kernel % 2 == 0:
            raise ValueError(f"model.kernel must be odd, given {self.kernel}")


class GatedStack(nn.Module):
    """Gated PixelCNN layers (`GatedStackLayer`) over `groups` channel groups with a side input:
    `forward(x, side)` -> the horizontal stack's features (B, hidden, H, W), causal over `x` in
    raster / channel-group order, reading `side` (B, side_ch, H, W) anywhere (it must depend only
    on what every position may see)."""

    def __init__(self, in_ch: int, hidden: int, layers: int, kernel: int, groups: int, side_ch: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            GatedStackLayer(in_ch if k == 0 else hidden, hidden, kernel, "A" if k == 0 else "B", groups,
                            residual=k > 0)
            for k in range(layers))
        # the side input enters both stacks after every layer (1x1, unmasked: it is causal already)
        self.side_v = nn.ModuleList(nn.Conv2d(side_ch, hidden, 1) for _ in range(layers))
        self.side_h = nn.ModuleList(nn.Conv2d(side_ch, hidden, 1) for _ in range(layers))

    def forward(self, x: Tensor, side: Tensor) -> Tensor:
        v = h = x
        for layer, sv, sh in zip(self.layers, self.side_v, self.side_h):
            v, h, _ = layer(v, h)
            v, h = v + sv(side), h + sh(side)
        return h


@register_model(
    "vqvae_video_pixelcnn",
    tiny=dict(embed=4, hidden=5, top_layers=1, bottom_layers=1, lstm_hidden=4),
    variants={"deeper": dict(top_layers=2, bottom_layers=2, kernel=5)},
    modality="video",
)
class VQVAEVideoPixelCNN(ARModel):
    """Walker et al.'s prior over hvqvae codes: past frames by ConvLSTM, the top level first, then the bottom."""

    config_class = VQVAEVideoPixelCNNConfig
    config: VQVAEVideoPixelCNNConfig
    #: a forward pass per sub-pixel (the reference sampler): code volumes are small
    capabilities = Capabilities(stepper_kind="naive")

    def __init__(self, config: VQVAEVideoPixelCNNConfig) -> None:
        super().__init__(config)
        cfg = config
        s, e, hid, lv = CODE_CHANNELS, cfg.embed, cfg.hidden, cfg.levels
        self.distribution = Categorical(s, lv)
        # one table per channel (channel c's code v is row c * levels + v): the top and each
        # sub-position have their own embedding
        self.embedding = nn.Embedding(s * lv, e)
        self.register_buffer("offsets", torch.arange(s) * lv, persistent=False)
        # past frames -> context
        self.frame_in = nn.Conv2d(s * e, cfg.lstm_hidden, 3, padding=1)
        self.start = nn.Parameter(torch.zeros(1, cfg.lstm_hidden, 1, 1))
        self.lstm = ConvLSTM(cfg.lstm_hidden, cfg.lstm_hidden, 3)
        self.class_bias = ClassEmbedding(cfg.num_classes, cfg.lstm_hidden)
        # the top level: its own codes and the context
        self.top = GatedStack(e, hid, cfg.top_layers, cfg.kernel, 1, cfg.lstm_hidden)
        self.top_head = nn.Sequential(nn.ReLU(), nn.Conv2d(hid, hid, 1), nn.ReLU(), nn.Conv2d(hid, lv, 1))
        # the bottom level: all five channel groups, the top stack's features and the context
        self.bottom = GatedStack(s * e, s * hid, cfg.bottom_layers, cfg.kernel, s, cfg.lstm_hidden + hid)
        self.bottom_head = masked_output_head(s * hid, s * hid, s * lv, s)

    # ----- order ------------------------------------------------------------------------------------
    def generation_order(self) -> list[tuple[int, ...]]:
        """Raster over (t, h, w) of the top grid; at each position channel 0 (the top code) first,
        then the four bottom codes of its 2x2 block in raster order."""
        return raster(self.position_shape)

    # ----- pieces -------------------------------------------------------------------------------------
    def embed_codes(self, x: Tensor) -> Tensor:
        """(N, 5, h, w) long codes -> (N, 5, E, h, w) embeddings (each channel its own table)."""
        return self.embedding(x + self.offsets[:, None, None]).permute(0, 1, 4, 2, 3)

    def contexts(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """(B, T, F, h, w): frame t's context from frames < t of code volumes `x` (B, T, 5, h, w)."""
        b, t, _, h, w = x.shape
        start = self.start.expand(b, -1, h, w)[:, None]
        if t > 1:
            prev = self.embed_codes(x[:, :-1].flatten(0, 1)).flatten(1, 2)
            feats = torch.relu(self.frame_in(prev)).unflatten(0, (b, t - 1))
            start = torch.cat([start, feats], dim=1)
        states, _ = self.lstm(start)
        bias = self.class_bias(cond)
        return states if bias is None else states + bias[:, None]

    # ----- the network --------------------------------------------------------------------------------
    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """(B, 5*L, T, h, w) logits for code volumes (B, T, 5, h, w): channel 0's from the top stack,
        channels 1..4's from the bottom stack."""
        b, lv = x.shape[0], self.levels
        ctx = self.contexts(x, cond).flatten(0, 1)  # (B*T, F, h, w)
        emb = self.embed_codes(x.flatten(0, 1))  # (B*T, 5, E, h, w)
        top_h = self.top(emb[:, 0], ctx)
        top_logits = self.top_head(top_h)
        bottom_h = self.bottom(emb.flatten(1, 2), torch.cat([ctx, top_h], dim=1))
        bottom_logits = self.bottom_head(bottom_h)[:, lv:]  # group 0 of the bottom stack is unused
        params = torch.cat([top_logits, bottom_logits], dim=1)
        return rearrange(params, "(b t) p h w -> b p t h w", b=b)


__all__ = ["VQVAEVideoPixelCNNConfig", "VQVAEVideoPixelCNN", "GatedStack", "CODE_CHANNELS"]
