"""VideoGPT's prior (Yan et al., 2021): a GPT over the code volume of a video tokenizer.

Data are code volumes (B, t, s, h, w) long in [0, levels): t code frames, s codes per position
(1 for a plain VQ, S for sliced VQ, a packed hierarchy), h x w positions; `video_shape` =
the tokenizer's `code_shape`, `levels` = its codebook size (up to 65,536, any s: the config
declares `code_channels`). The model is an ordinary video `ARModel` with an exact likelihood
(nats per code), so the video conformance suite, `complete` and `predict` apply as to any video model.

Layout (VideoGPT gpt.py): the codes flattened in (t, h, w, s) raster order (s innermost, so a
position's s codes are predicted one after another), shifted right by one behind a start slot:
slot n carries code n-1 and predicts code n, slot 0 carries the start input (the class, below).
Every slot adds the position of the code it predicts: one learned table per axis (t, h, w),

    pos_embedding "concat" (VideoGPT): the three tables are d_model/3 wide, concatenated;
    pos_embedding "add": each is d_model wide, summed (any d_model);

plus, with s > 1, a learned table over the s code channels (added). Code values are embedded per
channel (a table of s * levels rows: channel c's codebook is its own, as in sliced VQ) where
VideoGPT reads the VQ-VAE's code vectors through a bias-free Linear: the prior stays independent
of the tokenizer's weights. Pre-norm causal trunk (`argen.nn.transformer.Transformer`), head to
`levels` logits, zero-initialised (`zero_head`, as VideoGPT): a fresh prior is uniform.

Classes (optional, `num_classes`): slot 0 carries the class (a table of num_classes + 1 rows, the
last the null class), as token_gpt (`argen.nn.transformer.ClassStartSlot`, shared): label dropout
in training for classifier-free guidance, `null_cond`, `cfg_scale`. VideoGPT itself conditions by
conditional LayerNorm; the start slot reaches every later slot through causal attention as well,
and keeps the one trunk shared with the other priors.

Conditioning on context frames, two ways:

(a) prefix: `predict(context)` / `complete` with the first k code frames known. The raster is
    causal over frames, so this is exact conditioning on them (the known codes are prefilled into
    the KV cache in one call, then the rest is decoded one code at a time).
(b) cross-attention, `context_frames = k' > 0` (VideoGPT's frame conditioning): a small
    bidirectional encoder (`enc_layers` blocks, full attention) reads the codes of the first k'
    code frames; every decoder block's cross-attention reads its output, for the slots that
    predict codes of frames >= k' only (`Transformer(cross_from=M)`, M = k' * h * w * s). The
    slots of the context frames do not see it (it is computed from them), so the joint
    likelihood stays a valid causal factorisation: p(frames < k') by the plain causal decoder,
    p(frames >= k' | earlier codes, encoder(frames < k')). In cached sampling the encoder runs
    once per sample, at the call that first reaches slot M (all k' frames known then, prefilled or
    generated; `slot_context`), and its per-layer K/V are kept in the cache's `ContextCache`.

Fixed position tables do not extrapolate to longer clips (VideoGPT issue #22): the clip length is
the config's `video_shape[0]`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from einops import rearrange
from torch import Tensor, nn

from argen.conditioning import CondSpec
from argen.distributions import MAX_LEVELS, Categorical
from argen.fields import spec
from argen.models.base import ARModel, Capabilities, VideoModelConfig
from argen.nn.attention import CausalPattern, FullPattern
from argen.nn.transformer import ClassStartSlot, SlotDecoder, Transformer, init_gpt
from argen.registry import register_model

POSITION_KINDS = ("concat", "add")


@dataclass
class VideoGPTConfig(VideoModelConfig):
    code_channels: ClassVar[bool] = True  # (t, s, h, w) code volumes: any s, up to 65,536 levels
    # Defaults: the Moving MNIST prior over a per-frame tokenizer's 10 x 8 x 8 codes with 256 codes
    # (4 layers, width 192 = 3 x 64 for the per-axis tables, 4 heads): about 2M parameters.
    video_shape: tuple[int, int, int, int] = spec((10, 1, 8, 8), ge=1)  # (t, s, h, w): a code volume
    levels: int = spec(256, ge=2, le=MAX_LEVELS)  # the tokenizer's codebook size
    d_model: int = spec(192, ge=1)
    n_layers: int = spec(4, ge=1)
    n_heads: int = spec(4, ge=1)  # divides d_model
    d_ff: int = spec(768, ge=1)
    dropout: float = spec(0.0, ge=0.0, lt=1.0)  # VideoGPT: 0.2 (attention 0.3) at BAIR scale
    pos_embedding: str = spec("concat", choices=POSITION_KINDS)  # concat: d_model divisible by 3
    # probability that a training label becomes the null class (classifier-free guidance)
    label_dropout: float = spec(0.1, ge=0.0, lt=1.0)
    zero_head: bool = True
    # cross-attention conditioning on the first k' code frames (0: none; they are then a prefix only)
    context_frames: int = spec(0, ge=0)
    enc_layers: int = spec(2, ge=1)  # depth of the context-frame encoder (with context_frames > 0)

    def validate(self) -> None:
        super().validate()
        if self.d_model % self.n_heads:
            raise ValueError(f"model.d_model must be divisible by n_heads={self.n_heads}, given {self.d_model}")
        if self.pos_embedding == "concat" and self.d_model % 3:
            raise ValueError(f"model.pos_embedding 'concat' splits d_model into three per-axis tables (t, h, w): "
                             f"expected d_model divisible by 3, given {self.d_model} (or pos_embedding 'add')")
        t = self.video_shape[0]
        if self.context_frames >= t:
            raise ValueError(f"model.context_frames must leave frames to predict: expected 0 <= context_frames < "
                             f"{t} (the clip's code frames), given {self.context_frames}")

    def cond_spec(self) -> CondSpec:
        """Class labels with the null class when built with `num_classes`, else nothing."""
        return CondSpec.classes(self.num_classes, null_class=True)


@register_model(
    "videogpt",
    tiny=dict(d_model=12, n_layers=2, n_heads=2, d_ff=24, zero_head=False),
    variants={"add": dict(pos_embedding="add", d_model=8),
              "cross": dict(context_frames=1, enc_layers=1)},
    modality="video",
)
class VideoGPT(ClassStartSlot, SlotDecoder, ARModel):
    """VideoGPT prior: a GPT over a video tokenizer's code volume, per-axis positions, context frames by prefix or cross-attention."""

    config_class = VideoGPTConfig
    config: VideoGPTConfig
    #: exact cached sampling from static KV caches (the kv_cache stepper: `embed`, `trunk`,
    #: `new_cache`, `pattern`, `slot_context`); guidance through the null class
    capabilities = Capabilities(stepper_kind="kv_cache", guidance=True)
    slot_t: Tensor
    slot_h: Tensor
    slot_w: Tensor
    slot_c: Tensor
    encoder: Transformer | None

    def __init__(self, config: VideoGPTConfig) -> None:
        super().__init__(config)
        cfg = config
        t, s, h, w = cfg.video_shape
        self.distribution = Categorical(s, cfg.levels)
        n, d = t * h * w * s, cfg.d_model
        code = torch.arange(n)  # slot n predicts code n of the (t, h, w, s) raster
        for name, value in dict(slot_t=code // (h * w * s), slot_h=code // (w * s) % h, slot_w=code // s % w,
                                slot_c=code % s).items():
            self.register_buffer(name, value, persistent=False)
        self.code_embed = nn.Embedding(s * cfg.levels, d)  # channel c's value v is row c * levels + v
        self.start_embed = nn.Embedding(cfg.num_classes + 1 if cfg.num_classes else 1, d)
        axis = d // 3 if cfg.pos_embedding == "concat" else d
        self.t_embed = nn.Parameter(torch.randn(t, axis) * 0.02)
        self.h_embed = nn.Parameter(torch.randn(h, axis) * 0.02)
        self.w_embed = nn.Parameter(torch.randn(w, axis) * 0.02)
        self.channel_embed = nn.Parameter(torch.randn(s, d) * 0.02) if s > 1 else None
        self.drop = nn.Dropout(cfg.dropout)
        # the slots predicting codes of frames >= k' cross-attend to the encoded context frames
        self.context_len = cfg.context_frames * h * w * s
        cross = dict(context_dim=d, cross_from=self.context_len) if self.context_len else {}
        self.decoder = Transformer(d, cfg.n_layers, cfg.n_heads, cfg.d_ff, CausalPattern(n), dropout=cfg.dropout,
                                   **cross)
        self.encoder = None
        if self.context_len:
            self.encoder = Transformer(d, cfg.enc_layers, cfg.n_heads, cfg.d_ff, FullPattern(self.context_len),
                                       dropout=cfg.dropout)
        self.head = nn.Linear(d, cfg.levels)
        init_gpt(self, [self.head], cfg.zero_head)

    @property
    def pattern(self) -> CausalPattern:
        """The decoder's attention pattern over the N slots (what the kv_cache stepper windows by)."""
        return self.decoder.pattern  # type: ignore[return-value]

    # ----- the sequence view -----------------------------------------------------------------------
    def positions(self, start: int, end: int) -> Tensor:
        """(end - start, d) position inputs of codes [start, end) of the raster: per-axis tables,
        concatenated or added, plus the code channel's (s > 1)."""
        ti, hi, wi = self.slot_t[start:end], self.slot_h[start:end], self.slot_w[start:end]
        if self.config.pos_embedding == "concat":
            pos = torch.cat([self.t_embed[ti], self.h_embed[hi], self.w_embed[wi]], -1)
        else:
            pos = self.t_embed[ti] + self.h_embed[hi] + self.w_embed[wi]
        if self.channel_embed is not None:
            pos = pos + self.channel_embed[self.slot_c[start:end]]
        return pos

    def code_tokens(self, x: Tensor, codes: slice) -> Tensor:
        """(B, n) rows of `code_embed` for the codes `codes` of the raster of x (B, t, s, h, w)."""
        flat = rearrange(x, "b t s h w -> b (t h w s)")[:, codes]
        return self.slot_c[codes] * self.levels + flat

    def embed(self, x: Tensor, cond: Tensor | None = None, start: int = 0, end: int | None = None) -> Tensor:
        """(B, T, d) inputs of slots [start, end) (default: all N): the shifted codes plus the
        positions of the codes the slots predict; slot 0 carries the class (or start token). A slot
        range reads only codes [start - 1, end - 1)."""
        start, end, prev = self.slot_range(start, end)
        h = self.code_embed(self.code_tokens(x, prev))
        if start == 0:
            first = self.start_embed(self.start_rows(cond, x.shape[0]))
            h = torch.cat([first[:, None], h], 1)
        return self.drop(h + self.positions(start, end))

    def encode_context(self, x: Tensor) -> Tensor:
        """(B, M, d): the bidirectional encoding of the first `context_frames` code frames of x,
        what the later frames' slots cross-attend to (reads nothing else of x)."""
        if self.encoder is None:
            raise ValueError("encode_context needs a model built with context_frames > 0, given context_frames=0")
        m = self.context_len
        h = self.code_embed(self.code_tokens(x, slice(0, m))) + self.positions(0, m)
        return self.encoder(self.drop(h))

    def slot_context(self, x: Tensor, cond: Tensor | None, start: int, end: int) -> Tensor | None:
        """The encoded context frames for the cached call that first reaches slot M (the first slot
        that cross-attends): the k' frames are all known by then. None for every other call."""
        if self.encoder is None or not start <= self.context_len < end:
            return None
        return self.encode_context(x)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """(B, t, s, h, w) codes -> Categorical parameters (B, s*levels, t, h, w)."""
        context = None if self.encoder is None else self.encode_context(x)
        logits = self.trunk(self.embed(x, cond), context=context)  # (B, N, L) in raster order
        t, s, h, w = self.config.video_shape
        return rearrange(logits, "b (t h w s) l -> b (s l) t h w", t=t, h=h, w=w, s=s)


__all__ = ["VideoGPT", "VideoGPTConfig"]
