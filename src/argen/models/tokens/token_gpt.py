"""Token GPT: a decoder-only transformer prior over a tokenizer's code grid (VQ-VAE / VQ-GAN / FSQ).

Data are codes (B, 1, h, w) long in [0, levels), levels = the codebook size (up to 65,536); the
model is an ordinary `ARModel` over that grid, so it has exact log-likelihoods (nats per code),
sampling, completion and the conformance suite like any pixel model. Other channel counts are
refused: a token prior takes a code grid (1, h, w).

Layout (LlamaGen / taming): the h*w codes in raster order, shifted right by one behind a start
slot. Slot s carries code s-1 and predicts code s; slot 0 carries the start input:

    slot 0:      class embedding (class-conditional: a table of num_classes + 1 rows, the last the
                 null class), or one learned start token (unconditional)
    slot s > 0:  code embedding of code s-1
    every slot:  + the learned row and column vectors of the code it predicts (pos_embedding
                 "learned", one table per axis, added), or no absolute position and 2-D RoPE in
                 every self-attention layer instead ("rope": half of each head's dims rotate by
                 row, half by column; slot s sits at the grid position of code s).

Causal attention on the shared trunk (`argen.nn.transformer.Transformer`, pre-norm, static KV
cache with prefill / decode), then a head to `levels` logits, zero-initialised (`zero_head`) so a
fresh prior is uniform over codes. The class enters through slot 0 only: with full causal
attention every slot sees it.

Classifier-free guidance: in training mode each label is replaced by the null class with
probability `label_dropout` (drawn from torch's RNG), so the one network also learns the
unconditional distribution; `cond=None` means the null class, and `null_cond(batch)`
(`argen.nn.transformer.ClassStartSlot`, shared with VideoGPT) gives the
null labels the sampler's unconditional stepper runs on (`SamplingConfig.cfg_scale`). The null
label `num_classes` is a valid `cond` value for this model (`CondSpec.null_class`).

Cached sampling is the generic kv_cache stepper (`argen.sampling.transformer_cache`): it prefills
slot 0 (and any known prefix), then decodes one slot per code from static caches, calling this
model's `embed(x, cond, start, end)`, `trunk`, `new_cache` and `pattern`.

Built with `context_dim`, the decoder cross-attends in every block to a context the model's
`slot_context` gives (token_gpt has none; `parti` (models/tokens/parti.py) is this class with a
text encoder whose caption encoding it hands over, computed once per sample).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from argen.conditioning import CondSpec
from argen.distributions import MAX_LEVELS, Categorical
from argen.fields import spec
from argen.models.base import ARModel, Capabilities, ModelConfig
from argen.nn.attention import CausalPattern, Rotary
from argen.nn.transformer import ClassStartSlot, GridSlots, SlotDecoder, Transformer, init_gpt
from argen.registry import register_model

POSITION_KINDS = ("learned", "rope")


def code_grid(image_shape: tuple[int, ...], model_name: str) -> tuple[int, int]:
    """(h, w) of a prior's code grid image_shape (1, h, w). Checked by the model, not in validate:
    a config describes any data; a prior over a tokenizer's codes takes one kind."""
    c, h, w = image_shape
    if c != 1:
        raise ValueError(f"{model_name} is a prior over a tokenizer's code grid: expected image_shape (1, h, w), "
                         f"given {tuple(image_shape)} ({c} channels)")
    return h, w


@dataclass
class CodeGridConfig(ModelConfig):
    """The decoder over a code grid that token_gpt and the priors built on its layout (parti) share."""

    # Defaults: the MNIST prior of a 7x7 tokenizer with 128 codes (4 layers, width 128, 4 heads,
    # 49 codes + the start slot): about 0.8M parameters, trainable on a CPU.
    image_shape: tuple[int, int, int] = spec((1, 7, 7), ge=1)  # (1, h, w): a code grid
    levels: int = spec(128, ge=2, le=MAX_LEVELS)  # the tokenizer's codebook size
    d_model: int = spec(128, ge=1)
    n_layers: int = spec(4, ge=1)
    n_heads: int = spec(4, ge=1)  # divides d_model (rope: d_model / n_heads divisible by 4)
    d_ff: int = spec(512, ge=1)
    dropout: float = spec(0.0, ge=0.0, lt=1.0)
    pos_embedding: str = spec("learned", choices=POSITION_KINDS)
    # a zero head makes a fresh prior uniform over codes (LlamaGen, VideoGPT)
    zero_head: bool = True

    def validate(self) -> None:
        super().validate()
        if self.d_model % self.n_heads:
            raise ValueError(f"model.d_model must be divisible by n_heads={self.n_heads}, given {self.d_model}")
        head = self.d_model // self.n_heads
        if self.pos_embedding == "rope" and head % 4:
            raise ValueError(f"model.pos_embedding 'rope' needs a head width (d_model / n_heads) divisible by 4 "
                             f"(half the dims per grid axis, in pairs), given {head}")


@dataclass
class TokenGPTConfig(CodeGridConfig):
    # probability that a training label becomes the null class (classifier-free guidance; LlamaGen 0.1)
    label_dropout: float = spec(0.1, ge=0.0, lt=1.0)

    def cond_spec(self) -> CondSpec:
        """Class labels with the null class when built with `num_classes`, else nothing."""
        return CondSpec.classes(self.num_classes, null_class=True)


@register_model(
    "token_gpt",
    tiny=dict(d_model=16, n_layers=2, n_heads=2, d_ff=32, zero_head=False),
    variants={"rope": dict(pos_embedding="rope")},
)
class TokenGPT(ClassStartSlot, GridSlots, SlotDecoder, ARModel):
    """Token GPT: decoder-only transformer prior over a tokenizer's code grid, class-conditional with CFG."""

    config_class = TokenGPTConfig
    config: TokenGPTConfig
    #: exact cached sampling from static KV caches; guidance through the null class (`null_cond`
    #: refuses for a model built without classes, which has no null class)
    capabilities = Capabilities(stepper_kind="kv_cache", guidance=True)

    def __init__(self, config: CodeGridConfig, context_dim: int | None = None, prefix: int = 0) -> None:
        """`context_dim`: the width of a context every decoder block cross-attends to (None: none;
        a prior built on this layout, parti, passes its text encoder's width). `prefix`: positions
        the decoder runs over before slot 0 (iqvae's condition tokens; their inputs are the
        subclass's), so its causal pattern spans prefix + N positions."""
        super().__init__(config)
        cfg = config
        h, w = code_grid(cfg.image_shape, self.model_name)
        self.distribution = Categorical(1, cfg.levels)
        n, d = h * w, cfg.d_model
        self.register_grid(h, w)  # grid position of the code slot s predicts
        self.code_embed = nn.Embedding(cfg.levels, d)
        # slot 0's input: one row per class and the null class last, or a single start token
        self.start_embed = nn.Embedding(cfg.num_classes + 1 if cfg.num_classes else 1, d)
        rotary = None
        if cfg.pos_embedding == "learned":
            self.learn_grid_positions(h, w, d)
        else:
            self.row_embed = self.col_embed = None
            rotary = Rotary(d // cfg.n_heads, torch.stack([self.slot_row, self.slot_col], 1))
        self.drop = nn.Dropout(cfg.dropout)
        self.decoder = Transformer(d, cfg.n_layers, cfg.n_heads, cfg.d_ff, CausalPattern(prefix + n),
                                   dropout=cfg.dropout, rotary=rotary, context_dim=context_dim)
        self.head = nn.Linear(d, cfg.levels)
        init_gpt(self, [self.head], cfg.zero_head)

    @property
    def pattern(self) -> CausalPattern:
        """The trunk's attention pattern over the N slots (what the kv_cache stepper windows by)."""
        return self.decoder.pattern

    # ----- the sequence view -----------------------------------------------------------------------
    def embed(self, x: Tensor, cond: Tensor | None = None, start: int = 0, end: int | None = None) -> Tensor:
        """(B, T, d) inputs of slots [start, end) (default: all N): `slot_inputs`, after dropout."""
        return self.drop(self.slot_inputs(x, cond, start, end))

    def slot_inputs(self, x: Tensor, cond: Tensor | None = None, start: int = 0, end: int | None = None) -> Tensor:
        """(B, T, d) inputs of slots [start, end) before dropout: the shifted codes plus positions;
        slot 0 carries the class (or start token). A slot range reads only codes [start - 1, end - 1),
        so cached sampling embeds just the slots it decodes."""
        start, end, prev = self.slot_range(start, end)
        h = self.code_embed(x.flatten(1)[:, prev])
        if start == 0:
            first = self.start_embed(self.start_rows(cond, x.shape[0]))
            h = torch.cat([first[:, None], h], 1)
        if self.row_embed is not None:
            h = self.add_grid_positions(h, start, end)
        return h

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """(B, 1, h, w) codes -> (B, levels, h, w) logits of each code given the codes before it."""
        context = self.slot_context(x, cond, 0, self.decoder.length)  # None: no cross-attention (token_gpt)
        logits = self.trunk(self.embed(x, cond), context=context)  # (B, N, L) in raster order
        return rearrange(logits, "b (h w) l -> b l h w", h=self.config.image_shape[1])
