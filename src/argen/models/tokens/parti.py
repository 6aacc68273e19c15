"""Parti-style text-to-image prior: an encoder-decoder transformer over a tokenizer's code grid,
conditioned on a caption (Yu et al. 2022; survey 3.4).

Data are codes (B, 1, h, w) long in [0, levels) like token_gpt's; `cond` is the caption as token
ids (B, L) long in [0, cond_vocab), L <= cond_len, padded with 0 (`argen.text`: 0 = "<pad>",
1 = "<null>", words from 2). The likelihood is exact: log p(codes | caption), nats per code.

    text encoder   caption ids -> embedding + learned positions (cond_len of them) -> the shared
                   trunk (`argen.nn.transformer.Transformer`) with a bidirectional pattern
                   (`FullPattern`); padding keys are masked out of its self-attention
    image decoder  token_gpt's layout exactly (this class is a `TokenGPT` built with cross-attention):
                   the codes in raster order shifted behind one learned start slot, learned row /
                   column positions or 2-D RoPE, causal self-attention, and in every block a
                   cross-attention to the text encoding, whose padding positions are masked too

So a caption's padding never matters: a caption padded to any length <= cond_len gives the same
log_prob. The caption enters only through the cross-attention (the start slot is one token for
every caption), so causality over the codes holds for any caption.

Classifier-free guidance (Parti; LlamaGen): in training mode each caption is replaced by the null
caption [NULL, PAD, ...] with probability `caption_dropout` (torch's RNG), so the one network also
learns p(codes) unconditionally; `cond=None` means the null caption, and `null_cond(batch)` gives
the rows the sampler's unconditional stepper runs on (`SamplingConfig.cfg_scale`).

Cached sampling is the generic kv_cache stepper (`argen.sampling.transformer_cache`) over the
decoder, as for token_gpt. The text encoder runs once per sample: `slot_context` hands the
encoding to the stepper's first call (slot 0), the trunk projects its cross-attention keys/values
into the cache's `ContextCache` there, and every later decode step reuses them.

Reranking several samples by a score the model computes (Parti's contrastive reranking, with the
model's own pointwise mutual information instead of a CoCa/CLIP scorer): `argen.sampling.rerank`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from argen.conditioning import CondSpec
from argen.fields import spec
from argen.models.base import Capabilities
from argen.models.tokens.token_gpt import CodeGridConfig, TokenGPT
from argen.nn.attention import FullPattern
from argen.nn.transformer import Transformer, init_gpt_weights
from argen.registry import register_model
from argen.text import NULL, PAD


@dataclass
class PartiConfig(CodeGridConfig):
    """token_gpt's decoder fields plus the text encoder's and the caption vocabulary's."""

    #: what the command line may condition this model on (it fills cond_vocab / cond_len from the data)
    condition_kinds: ClassVar[tuple[str, ...]] = ("tokens",)
    # the caption vocabulary size (ids in [0, cond_vocab): PAD, NULL and at least one word) and the
    # longest caption in tokens; required to build the model (the CLI reads them from the dataset)
    cond_vocab: int | None = spec(None, ge=3)
    cond_len: int | None = spec(None, ge=1)
    text_layers: int = spec(2, ge=1)  # encoder depth; its width, heads and MLP are the decoder's
    # probability that a training caption becomes the null caption (classifier-free guidance; Parti/LlamaGen 0.1)
    caption_dropout: float = spec(0.1, ge=0.0, lt=1.0)

    def validate(self) -> None:
        super().validate()
        if self.num_classes is not None:
            raise ValueError(f"model.num_classes: parti is conditioned on caption tokens (cond_vocab, cond_len), "
                             f"not class labels: expected None, given {self.num_classes}")

    def cond_spec(self) -> CondSpec:
        """Caption tokens (B, L <= cond_len) in [0, cond_vocab)."""
        if self.cond_vocab is None or self.cond_len is None:
            raise ValueError(f"parti needs cond_vocab and cond_len (the caption vocabulary size and the longest "
                             f"caption; `argen train parti --tokenizer RUN --conditional` over mnist-captions codes "
                             f"sets them from the data), given cond_vocab={self.cond_vocab}, cond_len={self.cond_len}")
        return CondSpec.tokens(self.cond_vocab, self.cond_len)


@register_model(
    "parti",
    tiny=dict(d_model=16, n_layers=2, n_heads=2, d_ff=32, zero_head=False, text_layers=1, cond_vocab=7, cond_len=4),
)
class Parti(TokenGPT):
    """Parti: text encoder + token_gpt's decoder with cross-attention, caption dropout for CFG."""

    config_class = PartiConfig
    config: PartiConfig  # type: ignore[assignment]
    #: exact cached sampling (the kv_cache stepper, the encoding computed once per sample) and
    #: guidance through the null caption
    capabilities = Capabilities(stepper_kind="kv_cache", guidance=True)

    def __init__(self, config: PartiConfig) -> None:
        config.validate()  # the field checks first (ValueErrors naming the field), then:
        config.cond_spec()  # raises unless cond_vocab and cond_len are set
        super().__init__(config, context_dim=config.d_model)
        cfg = config
        d, length = cfg.d_model, int(cfg.cond_len)  # type: ignore[arg-type]
        self.text_embed = nn.Embedding(int(cfg.cond_vocab), d)  # type: ignore[arg-type]
        self.text_pos = nn.Parameter(torch.randn(length, d) * 0.02)
        self.encoder = Transformer(d, cfg.text_layers, cfg.n_heads, cfg.d_ff, FullPattern(length), dropout=cfg.dropout)
        self.text_embed.apply(init_gpt_weights)
        self.encoder.apply(init_gpt_weights)

    # ----- conditioning ----------------------------------------------------------------------------
    def null_cond(self, batch: int) -> Tensor:
        """(batch, cond_len) null captions [NULL, PAD, ...]: the unconditional input of guidance."""
        out = torch.full((batch, int(self.config.cond_len)), PAD, dtype=torch.long, device=self.device)  # type: ignore[arg-type]
        out[:, 0] = NULL
        return out

    def captions(self, cond: Tensor | None, batch: int) -> Tensor:
        """(batch, cond_len) caption ids padded to cond_len (None: the null caption), each replaced
        by the null caption with probability `caption_dropout` in training mode (torch's RNG)."""
        null = self.null_cond(batch)
        if cond is None:
            return null
        ids = F.pad(cond, (0, null.shape[1] - cond.shape[1]), value=PAD)
        p = self.config.caption_dropout
        if self.training and p > 0:
            ids = torch.where((torch.rand(batch, device=ids.device) < p)[:, None], null, ids)
        return ids

    def encode_text(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Caption ids (B, cond_len) -> (encoding (B, cond_len, d), mask (B, cond_len) bool, True =
        a real token): padding is hidden from the encoder's self-attention and, through the mask,
        from the decoder's cross-attention."""
        mask = ids != PAD
        h = self.drop(self.text_embed(ids) + self.text_pos)
        return self.encoder(h, key_mask=mask), mask

    def slot_context(self, x: Tensor, cond: Tensor | None, start: int, end: int) -> tuple[Tensor, Tensor] | None:
        """The caption's encoding and mask for a call that starts at slot 0 (a full pass, or a
        sample's first cached call); None later: the cross K/V are in the cache by then."""
        if start > 0:
            return None
        return self.encode_text(self.captions(cond, x.shape[0]))
