"""Image Transformer (Parmar et al., 2018): a decoder-only transformer over sub-pixels.

The image is a sequence of N = C*H*W sub-pixels in the model's generation order (pixels in
raster order, or block by block for 2D local attention; channels innermost). The sequence is
shifted right by one behind a start token: slot s holds sub-pixel s-1 and predicts sub-pixel s,
so with attention that never looks past its own slot, sub-pixel s is predicted from sub-pixels
< s only. Each slot's input is

    value embedding of sub-pixel s-1 (one table per channel; the start token has its own row)
  + position embedding of sub-pixel s (row + column + channel, learned or sinusoidal)
  + class embedding (conditional models).

The class embedding goes into every slot, not only the start token, because local attention
cannot see the start token from far away (Parmar et al. also add it to every input).

Attention (`attention=`), from `argen.nn.attention`, on slots:
- "full": slot s attends to slots <= s (small images).
- "local1d": query blocks of `block_length` slots; slot s attends to slots in
  [block_start - memory_length, s]. With the shift, one layer at s reads the values of
  sub-pixels [block_start - memory_length - 1, s - 1].
- "local2d": query blocks of (block_h, block_w) pixels, generated block by block
  (`generation_order()` returns that order); slot s attends to earlier slots whose sub-pixel lies
  in its block's memory region (block_h + memory_h rows: memory_h above the block; columns from
  memory_w left of the block to memory_w right of it). One layer at s reads the values of the
  sub-pixels one step before those slots in the order.

The layers are the shared decoder trunk (`argen.nn.transformer.Transformer`: pre-norm blocks,
final LayerNorm, static KV cache with prefill / decode); this file holds only the slot
embeddings, the head and the layout. Layers stack, so the receptive field grows with depth (as
in the paper). The per-slot L-way
logits are put back in the (B, C*L, H, W) layout of `argen.distributions.Categorical`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from argen.distributions import Categorical
from argen.fields import spec
from argen.models.base import ARModel, Capabilities, ModelConfig
from argen.nn import ClassEmbedding
from argen.nn.attention import AttentionPattern, CausalPattern, Local1DPattern, Local2DPattern
from argen.nn.transformer import SlotDecoder, Transformer, init_gpt_weights
from argen.nn.unet import sinusoidal_embedding
from argen.registry import register_model

ATTENTION_KINDS = ("full", "local1d", "local2d")
POSITION_KINDS = ("learned", "sinusoidal")


@dataclass
class ImageTransformerConfig(ModelConfig):
    # Defaults sized for 28x28 data on a CPU: the paper's models (d_model 512, 12+ layers) need a
    # GPU; at d_model 256 / 8 layers / 256x768 windows a batch of 32 needs > 20 GB for backward.
    d_model: int = spec(128, ge=1)
    n_layers: int = spec(4, ge=1)
    n_heads: int = spec(4, ge=1)  # divides d_model
    d_ff: int = spec(512, ge=1)
    # attention-probability dropout costs ~30% of a CPU step; raise it for long runs
    dropout: float = spec(0.0, ge=0.0, lt=1.0)
    attention: str = spec("local1d", choices=ATTENTION_KINDS)
    block_length: int = spec(128, ge=1)  # local1d: query block, in sub-pixels
    memory_length: int = spec(256, ge=0)  # local1d: sub-pixels before the block each query block sees
    block_h: int = spec(8, ge=1)  # local2d: query block, in pixels
    block_w: int = spec(8, ge=1)
    memory_h: int = spec(8, ge=0)  # local2d: rows above the block in the memory region
    memory_w: int = spec(8, ge=0)  # local2d: columns left and right of the block in the memory region
    pos_embedding: str = spec("learned", choices=POSITION_KINDS)

    def validate(self) -> None:
        super().validate()
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model must be divisible by n_heads={self.n_heads}, given {self.d_model}")
        if self.pos_embedding == "sinusoidal" and self.d_model % 2:
            raise ValueError(f"sinusoidal positions need an even d_model (rows and columns get half each), given {self.d_model}")


def make_pattern(cfg: ImageTransformerConfig) -> AttentionPattern:
    c, h, w = cfg.image_shape
    if cfg.attention == "full":
        return CausalPattern(c * h * w)
    if cfg.attention == "local1d":
        return Local1DPattern(c * h * w, cfg.block_length, cfg.memory_length)
    return Local2DPattern(h, w, c, (cfg.block_h, cfg.block_w), (cfg.memory_h, cfg.memory_w))


@register_model(
    "image_transformer",
    tiny=dict(d_model=16, n_layers=2, n_heads=2, d_ff=32, dropout=0.0, block_length=4, memory_length=4,
              block_h=2, block_w=2, memory_h=1, memory_w=1),
    variants={"local2d": dict(attention="local2d"), "full": dict(attention="full"),
              "sinusoidal": dict(pos_embedding="sinusoidal")},
)
class ImageTransformer(SlotDecoder, ARModel):
    """Image Transformer: decoder-only transformer over sub-pixels with local 1D/2D or full attention."""

    config_class = ImageTransformerConfig
    config: ImageTransformerConfig
    #: exact cached sampling: prefill what is known, then decode one slot per sub-pixel from the
    #: static KV caches (`embed`, `trunk`, `new_cache` and `pattern` are what the sampler uses;
    #: `trunk` and `new_cache` come from `SlotDecoder`, shared with token GPT)
    capabilities = Capabilities(stepper_kind="kv_cache")
    slot_pixel: Tensor
    slot_channel: Tensor
    unslot: Tensor
    decoder: Transformer

    def __init__(self, config: ImageTransformerConfig) -> None:
        super().__init__(config)
        cfg = config
        c, h, w = cfg.image_shape
        self.distribution = Categorical(c, cfg.levels)
        self.pattern = pattern = make_pattern(cfg)
        if isinstance(pattern, Local2DPattern):
            self._order = list(pattern.order)
        else:
            self._order = [(i, j) for i in range(h) for j in range(w)]
        # slot s predicts sub-pixel (channel s % C) of the pixel order[s // C]
        pix = torch.tensor(self._order).repeat_interleave(c, 0)
        slot_pixel = pix[:, 0] * w + pix[:, 1]
        slot_channel = torch.arange(c).repeat(h * w)
        unslot = torch.empty(c * h * w, dtype=torch.long)
        unslot[slot_pixel * c + slot_channel] = torch.arange(c * h * w)  # (pixel, channel) -> slot
        self.register_buffer("slot_pixel", slot_pixel, persistent=False)
        self.register_buffer("slot_channel", slot_channel, persistent=False)
        self.register_buffer("unslot", unslot, persistent=False)

        d = cfg.d_model
        self.value_embed = nn.Embedding(c * cfg.levels + 1, d)  # per-channel value tables + start token
        self.class_embed = ClassEmbedding(cfg.num_classes, d)
        if cfg.pos_embedding == "learned":
            self.row_embed = nn.Parameter(torch.randn(h, d) * 0.02)
            self.col_embed = nn.Parameter(torch.randn(w, d) * 0.02)
        else:
            # rows in the first half of the width, columns in the second: summing two equal
            # tables would make (i, j) and (j, i) look alike
            rows, cols = sinusoidal_embedding(torch.arange(h), d // 2), sinusoidal_embedding(torch.arange(w), d // 2)
            self.register_buffer("row_embed", torch.cat([rows, torch.zeros_like(rows)], 1), persistent=False)
            self.register_buffer("col_embed", torch.cat([torch.zeros_like(cols), cols], 1), persistent=False)
        self.channel_embed = nn.Parameter(torch.randn(c, d) * 0.02)
        self.drop = nn.Dropout(cfg.dropout)
        # The shared decoder trunk (argen.nn.transformer; no cross-attention). Its parts are
        # registered here under the names they have had since the first checkpoints (`pattern`,
        # `blocks`, `norm`: same state-dict keys in the same order, same weight fingerprints for
        # compressed files), and the trunk object itself is held unregistered, so it adds no
        # second name for them. `.to()`, `.train()` and `apply` reach its parts through these.
        decoder = Transformer(d, cfg.n_layers, cfg.n_heads, cfg.d_ff, pattern, dropout=cfg.dropout)
        self.blocks, self.norm = decoder.blocks, decoder.norm
        self.__dict__["decoder"] = decoder
        self.head = nn.Linear(d, cfg.levels)
        self.apply(init_gpt_weights)
        if self.class_embed.embed is not None:  # classes start neutral (ClassEmbedding's convention)
            nn.init.zeros_(self.class_embed.embed.weight)

    def generation_order(self) -> list[tuple[int, ...]]:
        return list(self._order)

    # ----- the sequence view ---------------------------------------------------------------------
    def to_sequence(self, x: Tensor) -> Tensor:
        """(B, C, H, W) values -> (B, N) in slot order (sub-pixel s of the generation order)."""
        flat = rearrange(x, "b c h w -> b (h w) c")
        return flat[:, self.slot_pixel, self.slot_channel]

    def embed(self, x: Tensor, cond: Tensor | None = None, start: int = 0, end: int | None = None) -> Tensor:
        """(B, T, d) inputs of slots [start, end) (default: all N): the shifted sub-pixel values
        plus positions (and class). A slot range reads only the sub-pixels [start - 1, end - 1),
        so cached sampling embeds just the slots it decodes (same values as the full call)."""
        start, end, prev = self.slot_range(start, end)  # prev: sub-pixels that slots [start, end) carry
        flat = rearrange(x, "b c h w -> b (h w) c")
        tokens = self.slot_channel[prev] * self.levels + flat[:, self.slot_pixel[prev], self.slot_channel[prev]]
        if start == 0:  # slot 0 carries the start token
            first = torch.full_like(flat[:, :1, 0], self.value_embed.num_embeddings - 1)
            tokens = torch.cat([first, tokens], 1)
        h = self.value_embed(tokens)
        w, slots = self.config.image_shape[2], slice(start, end)
        pix = self.slot_pixel[slots]
        h = h + self.row_embed[pix // w] + self.col_embed[pix % w] + self.channel_embed[self.slot_channel[slots]]
        bias = self.class_embed(cond)
        if bias is not None:
            h = h + bias[:, None, :, 0, 0]
        return self.drop(h)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        logits = self.trunk(self.embed(x, cond))  # (B, N, L) in slot order
        c, h, w = self.config.image_shape
        return rearrange(logits[:, self.unslot], "b (h w c) l -> b (c l) h w", h=h, w=w, c=c)
