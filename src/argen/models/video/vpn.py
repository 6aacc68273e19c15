"""Video Pixel Network (Kalchbrenner et al. 2017): exact likelihood over (t, h, w, colour).

    p(x) = prod_t prod_(h, w, c) p(x_t(h, w, c) | x_<t, x_t before (h, w, c) in raster / colour order)

Three parts, all resolution-preserving:

- encoder: per frame, a 3x3 input conv to 2c features and residual multiplicative blocks
  (`argen.nn.multiplicative`, dilations cycling through `dilations`), unmasked: it only ever sees
  frames that are already complete;
- ConvLSTM over time (`argen.nn.conv_lstm`): its state after the encoded frame t-1 summarises
  frames < t; frame 0 reads a learned "previous frame" feature map (a per-channel vector) instead;
- decoder: a PixelCNN over the current frame, mask-A input conv, masked residual multiplicative
  blocks and a mask-B head with the R < G < B colour groups (`argen.nn.masked`); the ConvLSTM state
  (plus a class bias with `num_classes`) enters the first layer and every block through unmasked
  1x1 projections, which is causal because it depends on earlier frames only.

The head is an L-way categorical per channel (2 levels: the Bernoulli of binary Moving MNIST).

Cached sampling (stepper kind "frame_cache", `argen.sampling.frame_cache`): per frame the sampler
calls `frame_context(x, t, state, cond)` once (encoder on frame t-1 + one ConvLSTM step), then
generates the frame's pixels through the conv planner's cached version of `decoder` with that
context as a fixed side input, so no pixel reruns the encoder, the ConvLSTM or other frames.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from argen.distributions import Categorical
from argen.fields import spec
from argen.models.base import ARModel, Capabilities, VideoModelConfig
from argen.nn import ClassEmbedding, MaskedConv2d, masked_output_head, scale_input
from argen.nn.conv_lstm import ConvLSTM
from argen.nn.multiplicative import MaskedResidualMultiplicativeBlock, ResidualMultiplicativeBlock
from argen.nn.recurrent import LSTMState
from argen.registry import register_model


@dataclass
class VPNConfig(VideoModelConfig):
    """The CPU default: 32x32 binary Moving MNIST, c = 16, 4 + 4 blocks, ConvLSTM 32 (~0.24M)."""

    video_shape: tuple[int, int, int, int] = spec((10, 1, 32, 32), ge=1)  # (T, C, H, W)
    levels: int = spec(2, ge=2)  # 2: binary frames (the sigmoid of VPN's MNIST model as a 2-way softmax)
    width: int = spec(16, ge=1)  # c: the residual stream has 2c features, the MUs c; a multiple of C
    encoder_blocks: int = spec(4, ge=0)  # unmasked residual multiplicative blocks per frame
    decoder_blocks: int = spec(4, ge=0)  # masked residual multiplicative blocks
    dilations: tuple[int, ...] = spec((1, 2, 4, 8), ge=1, min_len=1)  # the encoder's blocks cycle through these
    lstm_hidden: int = spec(32, ge=1)  # ConvLSTM state features (the decoder's context)
    lstm_kernel: int = spec(3, ge=1)  # odd
    first_kernel: int = spec(3, ge=1)  # the decoder's mask-A input conv; odd

    def validate(self) -> None:
        super().validate()
        c = self.video_shape[1]
        if self.width % c:
            raise ValueError(f"model.width must be divisible by the {c} channels (colour groups), given {self.width}")
        for name in ("lstm_kernel", "first_kernel"):
            k = getattr(self, name)
            if k % 2 == 0:
                raise ValueError(f"model.{name} must be odd, given {k}")


class VPNEncoder(nn.Module):
    """One complete frame (B, C, H, W) long -> (B, 2c, H, W) features (unmasked, dilated RMBs)."""

    def __init__(self, channels: int, levels: int, width: int, blocks: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.levels = levels
        self.input = nn.Conv2d(channels, 2 * width, 3, padding=1)
        self.blocks = nn.Sequential(*[ResidualMultiplicativeBlock(width, dilations[k % len(dilations)])
                                      for k in range(blocks)])

    def forward(self, frame: Tensor) -> Tensor:
        return self.blocks(self.input(scale_input(frame, self.levels)))


class VPNDecoder(nn.Module):
    """The per-frame PixelCNN: `forward(frame, context)` -> (B, C*L, H, W) logits, where the value at
    (h, w, c) depends on `frame` only before (h, w, c) in raster / colour order and on `context`
    (B, F, H, W) anywhere. Built from convolutions and pointwise ops only, so the conv planner
    caches it with `context` as a fixed side input."""

    def __init__(self, channels: int, levels: int, width: int, blocks: int, context_channels: int,
                 first_kernel: int) -> None:
        super().__init__()
        self.levels = levels
        self.input = MaskedConv2d(channels, 2 * width, first_kernel, "A", channels)
        self.context = nn.Conv2d(context_channels, 2 * width, 1)
        self.blocks = nn.ModuleList(MaskedResidualMultiplicativeBlock(width, channels, context_channels)
                                    for _ in range(blocks))
        self.head = masked_output_head(2 * width, 2 * width, channels * levels, channels)

    def forward(self, frame: Tensor, context: Tensor) -> Tensor:
        h = self.input(scale_input(frame, self.levels)) + self.context(context)
        for block in self.blocks:
            h = block(h, context)
        return self.head(h)


@register_model(
    "vpn",
    tiny=dict(width=3, encoder_blocks=1, decoder_blocks=1, dilations=(1, 2), lstm_hidden=4),
    variants={"deeper": dict(encoder_blocks=2, decoder_blocks=2, first_kernel=5, lstm_kernel=1)},
    modality="video",
)
class VPN(ARModel):
    """Video Pixel Network: MU encoder per frame, ConvLSTM over time, masked MU decoder with colour order."""

    config_class = VPNConfig
    config: VPNConfig
    #: the frame context once per frame, the decoder through the conv planner within it
    capabilities = Capabilities(stepper_kind="frame_cache")

    def __init__(self, config: VPNConfig) -> None:
        super().__init__(config)
        cfg = config
        _, c, _, _ = cfg.video_shape
        self.distribution = Categorical(c, cfg.levels)
        self.encoder = VPNEncoder(c, cfg.levels, cfg.width, cfg.encoder_blocks, cfg.dilations)
        # the encoder output standing in for the frame before frame 0 (broadcast over positions)
        self.start = nn.Parameter(torch.zeros(1, 2 * cfg.width, 1, 1))
        self.lstm = ConvLSTM(2 * cfg.width, cfg.lstm_hidden, cfg.lstm_kernel)
        self.class_bias = ClassEmbedding(cfg.num_classes, cfg.lstm_hidden)
        self.decoder = VPNDecoder(c, cfg.levels, cfg.width, cfg.decoder_blocks, cfg.lstm_hidden, cfg.first_kernel)

    # ----- the frame context (encoder + ConvLSTM) -------------------------------------------------
    def _with_class(self, h: Tensor, cond: Tensor | None) -> Tensor:
        bias = self.class_bias(cond)
        return h if bias is None else h + bias

    def contexts(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """(B, T, F, H, W): the decoder's context for every frame of clips `x` (B, T, C, H, W), frame t's
        computed from frames < t only (one batched encoder pass, then the ConvLSTM over time)."""
        b, t, _, h, w = x.shape
        start = self.start.expand(b, -1, h, w)[:, None]
        if t > 1:
            prev = self.encoder(x[:, :-1].flatten(0, 1)).unflatten(0, (b, t - 1))
            start = torch.cat([start, prev], dim=1)
        states, _ = self.lstm(start)
        bias = self.class_bias(cond)
        return states if bias is None else states + bias[:, None]

    def frame_context(self, x: Tensor, t: int, state: LSTMState | None,
                      cond: Tensor | None = None) -> tuple[Tensor, LSTMState]:
        """The decoder's context for frame `t` of clips `x` (B, T, C, H, W), of which frames < t are
        read, from the ConvLSTM `state` after frame t - 1 (None for t = 0): returns (context
        (B, F, H, W), the state after frame t) for the next call. Equal to `contexts(x, cond)[:, t]`."""
        frames = self.data_shape[0]
        if not 0 <= t < frames:
            raise ValueError(f"expected a frame index in [0, {frames}), given {t}")
        if (state is None) != (t == 0):
            raise ValueError(f"expected state=None exactly for frame 0, given t={t} and "
                             f"{'no state' if state is None else 'a state'}")
        b, _, _, h, w = x.shape
        feat = self.start.expand(b, -1, h, w) if t == 0 else self.encoder(x[:, t - 1])
        out, state = self.lstm.step(feat, state)
        return self._with_class(out, cond), state

    # ----- the network ----------------------------------------------------------------------------
    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """(B, C*L, T, H, W) logits for clips (B, T, C, H, W) long: each frame's decoder over the frame
        itself, conditioned on the context of the frames before it."""
        b = x.shape[0]
        ctx = self.contexts(x, cond)
        params = self.decoder(x.flatten(0, 1), ctx.flatten(0, 1))
        return rearrange(params, "(b t) p h w -> b p t h w", b=b)


__all__ = ["VPNConfig", "VPN", "VPNEncoder", "VPNDecoder"]
