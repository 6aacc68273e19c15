"""Video Transformer (Weissenborn, Täckström & Uszkoreit, "Scaling Autoregressive Video Models", 2020).

A clip (T, C, H, W) is one 3-D volume of (t, h, w) positions generated in subscale order: the
volume is cut into s_t * s_h * s_w slices (slice (a, b, c) holds the positions with
t mod s_t = a, h mod s_h = b, w mod s_w = c; `argen.orders.subscale_order`), slices are generated
one after another in lexicographic order of their offsets, positions inside a slice in raster
order, and the channels of a position one at a time (channels innermost). `generation_order()`
returns that order; `log_prob` is exact (a Categorical over `levels` per sub-pixel).

What is kept from the paper:
- the subscale order (slices in lexicographic offset order, raster inside a slice, channel by
  channel: the paper's channel predictor predicts one channel at a time from the earlier ones,
  here each channel is its own step of the sequence);
- block-local self-attention over the 3-D volume with block shapes that alternate between layers
  (`block_shapes`, given in slice units as in the paper; default (5, 2, 2) / (1, 4, 4) on a slice
  of (5, 16, 16), see the config), masked so a position sees only what comes before it in the
  generation order;
- position embeddings per axis (t, h, w) plus a slice embedding (and a channel embedding).

What is simplified, and why:
- The paper's encoder / decoder split (an unmasked encoder over the one-hot of the slices
  generated so far, others a pad value, behind a strided 3-D convolution; a decoder over the
  current slice with a masked 3x3x3 convolution and masked block-local layers) is replaced by a
  single decoder-only trunk (`argen.nn.transformer.Transformer`) over the whole subscale-ordered
  sequence of N = T*H*W*C sub-pixels. A block is a region of the full-resolution volume:
  the slice-unit block shape times the subscale factors, so it holds that block of every slice.
  A query then sees, in its block, all positions of the earlier slices and the earlier positions
  of its own slice: what the encoder gave the decoder (earlier slices) and what the masked
  convolution / masked layers gave it (the current slice), in one pattern
  (`argen.nn.attention.Block3DPattern`). Why: one causal sequence model fits the shared trunk
  and its exact KV-cache sampler (`kv_cache` stepper: each sub-pixel is decoded once, instead of
  re-running an encoder per slice), and causality is a property of one mask that the tests check.
  The cost: attention in place of the encoder's strided convolution (no down-sampling of earlier
  slices), and a block reaches the earlier slices only inside its own region (depth and the
  alternating block shapes widen it, as in the paper).
- The sequence is shifted right by one behind a start token (slot s carries sub-pixel s-1 and
  predicts sub-pixel s, as in the Image Transformer), which is what makes cached decoding exact.
  Its first layer places each key at the sub-pixel its slot carries (`key_shift=1`), so it reads
  exactly the earlier values of the query's block; later layers place slots at the sub-pixel they
  predict. The masked 3x3x3 convolution is dropped (the first layer reads the block's earlier
  values directly).
- Pre-norm GPT blocks with learned embeddings, no RMSProp schedule or other training details;
  defaults are CPU-sized (~1M parameters at d_model 128, 6 layers, for (10, 1, 32, 32) Moving MNIST).

Known limitation: `complete` / `predict` walk the generation order and keep the known pixels; a
known pixel later in the subscale order (e.g. a context frame's pixel of the last slice) cannot
inform an unknown one earlier in it, so prediction conditions each generated pixel on the
context pixels of its own and earlier slices (all of them by the last slice).
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
from argen.nn import ClassEmbedding
from argen.nn.attention import Block3DPattern, LayerPatterns
from argen.nn.transformer import SlotDecoder, Transformer, init_gpt_weights
from argen.orders import subscale_order, subscale_slice
from argen.registry import register_model


@dataclass
class VideoTransformerConfig(VideoModelConfig):
    # a prior over (t, s, h, w) code volumes too (LVT's sliced VQ: s = 4 codebooks of 512): any
    # channel count, more than 256 levels with several channels
    code_channels: ClassVar[bool] = True
    # CPU-sized: ~1.0M parameters at these defaults (the paper: width 512, 8 + 8 layers)
    d_model: int = spec(128, ge=1)
    n_layers: int = spec(6, ge=1)
    n_heads: int = spec(4, ge=1)  # divides d_model
    d_ff: int = spec(384, ge=1)
    dropout: float = spec(0.0, ge=0.0, lt=1.0)
    subscale: tuple[int, int, int] = spec((2, 2, 2), ge=1)  # (s_t, s_h, s_w); need not divide (T, H, W)
    # block shapes in slice units, flattened: (bt, bh, bw) per entry, cycled over the layers; a block
    # larger than the slice spans it. Default (5, 2, 2) then (1, 4, 4), alternating: all 10 frames of
    # a 4x4 patch (160 positions over the 8 slices at 32x32), then 2 frames of an 8x8 patch (128).
    # The reference's (5, 4, 4) / (1, 4, 4) makes 640-position blocks at 32x32: CPU attention then
    # costs several times the rest of the step (block_shapes=(5, 4, 4, 1, 4, 4) selects it).
    block_shapes: tuple[int, ...] = spec((5, 2, 2, 1, 4, 4), ge=1, min_len=3)

    def validate(self) -> None:
        super().validate()
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model must be divisible by n_heads={self.n_heads}, given {self.d_model}")
        if len(self.block_shapes) % 3:
            raise ValueError(f"block_shapes lists (bt, bh, bw) triples: expected a multiple of 3 values, given "
                             f"{len(self.block_shapes)} ({self.block_shapes})")

    def layer_blocks(self) -> list[tuple[int, int, int]]:
        """Each layer's attention block in full-resolution pixels (t, h, w): its slice-unit shape
        times the subscale factors, clipped to the volume."""
        t, _, h, w = self.video_shape
        shapes = [tuple(self.block_shapes[i : i + 3]) for i in range(0, len(self.block_shapes), 3)]
        out = []
        for layer in range(self.n_layers):
            shape = shapes[layer % len(shapes)]
            out.append(tuple(min(b * s, n) for b, s, n in zip(shape, self.subscale, (t, h, w))))
        return out  # type: ignore[return-value]


@register_model(
    "video_transformer",
    tiny=dict(d_model=16, n_layers=2, n_heads=2, d_ff=32, subscale=(2, 2, 2), block_shapes=(1, 2, 2, 2, 1, 1)),
    variants={"raster": dict(subscale=(1, 1, 1), block_shapes=(2, 2, 2, 4, 1, 1)),
              "one_shape": dict(n_layers=3, block_shapes=(1, 1, 2))},
    modality="video",
)
class VideoTransformer(SlotDecoder, ARModel):
    """Video Transformer: subscale slices, block-local 3-D attention with alternating block shapes, KV-cache decoding."""

    config_class = VideoTransformerConfig
    config: VideoTransformerConfig
    #: exact cached sampling from static KV caches: `embed`, `trunk`, `new_cache` and `pattern`
    #: (one pattern per layer) are what the kv_cache stepper uses
    capabilities = Capabilities(stepper_kind="kv_cache")
    slot_t: Tensor
    slot_h: Tensor
    slot_w: Tensor
    slot_pos: Tensor
    slot_slice: Tensor
    slot_channel: Tensor
    unslot: Tensor

    def __init__(self, config: VideoTransformerConfig) -> None:
        super().__init__(config)
        cfg = config
        t, c, h, w = cfg.video_shape
        self.distribution = Categorical(c, cfg.levels)
        self._order = subscale_order((t, h, w), cfg.subscale)
        pix = torch.tensor(self._order, dtype=torch.long).repeat_interleave(c, 0)  # (N, 3): slot s predicts this pixel
        slot_channel = torch.arange(c).repeat(t * h * w)
        slot_pos = (pix[:, 0] * h + pix[:, 1]) * w + pix[:, 2]
        slot_slice = torch.tensor([subscale_slice(p, cfg.subscale) for p in self._order]).repeat_interleave(c)
        unslot = torch.empty(len(slot_pos), dtype=torch.long)
        unslot[slot_pos * c + slot_channel] = torch.arange(len(slot_pos))  # (pixel, channel) -> slot
        for name, value in dict(slot_t=pix[:, 0], slot_h=pix[:, 1], slot_w=pix[:, 2], slot_pos=slot_pos,
                                slot_slice=slot_slice, slot_channel=slot_channel, unslot=unslot).items():
            self.register_buffer(name, value.contiguous(), persistent=False)

        # one Block3DPattern per distinct (block, key_shift); layer 0 places keys at the value they carry
        made: dict[tuple, Block3DPattern] = {}
        patterns = []
        for layer, block in enumerate(cfg.layer_blocks()):
            key = (block, int(layer == 0))
            if key not in made:
                made[key] = Block3DPattern((t, h, w), block, self._order, c, key_shift=key[1])
            patterns.append(made[key])

        d = cfg.d_model
        self.value_embed = nn.Embedding(c * cfg.levels + 1, d)  # per-channel value tables + start token
        self.t_embed = nn.Parameter(torch.randn(t, d) * 0.02)
        self.h_embed = nn.Parameter(torch.randn(h, d) * 0.02)
        self.w_embed = nn.Parameter(torch.randn(w, d) * 0.02)
        self.slice_embed = nn.Parameter(torch.randn(cfg.subscale[0] * cfg.subscale[1] * cfg.subscale[2], d) * 0.02)
        self.channel_embed = nn.Parameter(torch.randn(c, d) * 0.02)
        self.class_embed = ClassEmbedding(cfg.num_classes, d)
        self.drop = nn.Dropout(cfg.dropout)
        self.decoder = Transformer(d, cfg.n_layers, cfg.n_heads, cfg.d_ff, LayerPatterns(patterns), dropout=cfg.dropout)
        self.head = nn.Linear(d, cfg.levels)
        self.apply(init_gpt_weights)
        if self.class_embed.embed is not None:  # classes start neutral (ClassEmbedding's convention)
            nn.init.zeros_(self.class_embed.embed.weight)

    @property
    def pattern(self) -> LayerPatterns:
        """The trunk's per-layer attention patterns over the N slots (what the kv_cache stepper windows by)."""
        return self.decoder.pattern  # type: ignore[return-value]

    def generation_order(self) -> list[tuple[int, ...]]:
        return list(self._order)

    def embed(self, x: Tensor, cond: Tensor | None = None, start: int = 0, end: int | None = None) -> Tensor:
        """(B, S, d) inputs of slots [start, end) (default: all N): the shifted sub-pixel values
        plus the (t, h, w), slice and channel embeddings of the sub-pixel each slot predicts (and
        the class). A slot range reads only the sub-pixels [start - 1, end - 1) of `x` (B, T, C, H, W)."""
        start, end, prev = self.slot_range(start, end)
        flat = rearrange(x, "b t c h w -> b (t h w) c")
        tokens = self.slot_channel[prev] * self.levels + flat[:, self.slot_pos[prev], self.slot_channel[prev]]
        if start == 0:  # slot 0 carries the start token
            first = torch.full_like(flat[:, :1, 0], self.value_embed.num_embeddings - 1)
            tokens = torch.cat([first, tokens], 1)
        s = slice(start, end)
        h = (self.value_embed(tokens) + self.t_embed[self.slot_t[s]] + self.h_embed[self.slot_h[s]]
             + self.w_embed[self.slot_w[s]] + self.slice_embed[self.slot_slice[s]] + self.channel_embed[self.slot_channel[s]])
        bias = self.class_embed(cond)
        if bias is not None:
            h = h + bias[:, None, :, 0, 0]
        return self.drop(h)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """(B, T, C, H, W) -> Categorical parameters (B, C*L, T, H, W)."""
        logits = self.trunk(self.embed(x, cond))  # (B, N, L) in slot order
        t, c, h, w = self.config.video_shape
        return rearrange(logits[:, self.unslot], "b (t h w c) l -> b (c l) t h w", t=t, h=h, w=w, c=c)


__all__ = ["VideoTransformer", "VideoTransformerConfig"]
