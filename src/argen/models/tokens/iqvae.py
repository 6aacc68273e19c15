"""IQ-VAE's prior (Zhan et al., ECCV 2022): an AR transformer over image tokens given condition
tokens, trained with Gumbel sampling against exposure bias.

Data are the image codes (B, 1, h, w) long in [0, levels) of a tokenizer (the `iqvae` tokenizer:
levels = its codebook size); `cond` is the condition's tokens (B, cond_len) long in
[0, cond_vocab) (the `iqvae` tokenizer's `encode_condition`: the codes of the edge map, from the
same shared codebook). Condition tokens are a fixed-length code sequence, not text: every id,
0 included, is a real code, so nothing is masked as padding and a cond must have exactly cond_len
tokens.

Layout (taming's cond-transformer, with an explicit start slot): one causal sequence on the shared
trunk (`argen.nn.transformer.Transformer`),

    positions [0, P)        the P = cond_len condition tokens (their own embedding table) plus a
                            learned position vector each; cond=None gives the table's one extra
                            null row P times. Training never drops the condition, so that row stays
                            as initialised: cond=None is defined but is no learned unconditional
                            model (no guidance is declared; `argen sample` asks for --condition)
    positions P + s, s < N  image slot s: a learned start token (s = 0) or the code s-1, plus the
                            learned row and column vectors of code s (token_gpt's layout)

and logits only for the N image slots (a zero-initialised head, so a fresh prior is uniform over
codes). An unconditional model (cond_vocab None) has no prefix (P = 0). Built without the prefix
this is token_gpt's layout exactly: the class is a `TokenGPT` (no classes: one start token) whose
decoder runs over P + N positions (`prefix=P`), with the condition prefix put in front of
token_gpt's `slot_inputs`.

Gumbel sampling (`gumbel_feed`, training mode only; inferred from the paper's text, which says the
model's own Gumbel samples are fed back in training): a first pass without gradient predicts every
image code from the teacher-forced codes; Gumbel-max samples of those predictions (argmax of
logits + Gumbel noise, i.e. exact samples of the predicted distributions, drawn from torch's RNG)
replace each teacher input independently with probability gumbel_feed; the loss is the second
pass's likelihood of the TRUE codes. The input carrying code s-1 is replaced by a sample that
depends only on codes < s-1, so the training objective stays causal. In eval mode (log_prob,
sampling) nothing is replaced: the exact likelihood is untouched.

Cached sampling is the generic kv_cache stepper (`argen.sampling.transformer_cache`): its first
call (slots from 0) prefills the condition prefix with slot 0 (and any known prefix of codes), then
one slot per code. `embed(x, cond, start, end)` and `trunk(h, cache, start)` speak image-slot
coordinates; the trunk shifts them by P itself, so the stepper's window (of `pattern`, the causal
pattern over the N image slots) is not needed and is ignored.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from einops import rearrange
from torch import Tensor, nn

from argen.conditioning import CondSpec
from argen.distributions import MAX_LEVELS
from argen.fields import spec
from argen.models.base import Capabilities
from argen.models.tokens.token_gpt import CodeGridConfig, TokenGPT
from argen.nn.attention import CausalPattern
from argen.nn.transformer import TransformerCache, init_gpt_weights
from argen.registry import register_model


@dataclass
class IQVAEPriorConfig(CodeGridConfig):
    # Defaults: token_gpt's MNIST prior (4 layers, width 128) over a 7x7 grid of 128 codes, given the
    # 49 codes of the edge map. The image slots are token_gpt's layout (CodeGridConfig), with learned
    # grid positions only: RoPE would need positions for the condition prefix too.
    pos_embedding: str = spec("learned", choices=("learned",))
    cond_vocab: int | None = spec(None, ge=1, le=MAX_LEVELS)  # condition tokens in [0, cond_vocab); None: none
    cond_len: int | None = spec(None, ge=1)  # condition tokens per example (exactly)
    # probability that a teacher input is replaced by the model's own Gumbel sample (training only)
    gumbel_feed: float = spec(0.1, ge=0.0, le=1.0)

    condition_kinds: ClassVar[tuple[str, ...]] = ("tokens",)

    def validate(self) -> None:
        super().validate()
        if self.num_classes is not None:
            raise ValueError(f"model.num_classes: iqvae is conditioned on condition tokens (cond_vocab, cond_len), "
                             f"not class labels: expected None, given {self.num_classes}")
        if (self.cond_vocab is None) != (self.cond_len is None):
            raise ValueError(f"model.cond_vocab and model.cond_len come together (both None: unconditional), "
                             f"given cond_vocab={self.cond_vocab}, cond_len={self.cond_len}")

    def cond_spec(self) -> CondSpec:
        """Condition tokens (B, cond_len) when built with cond_vocab, else nothing."""
        return CondSpec.tokens(self.cond_vocab, self.cond_len) if self.cond_vocab else CondSpec.none()


@register_model("iqvae", tiny=dict(d_model=16, n_layers=2, n_heads=2, d_ff=32, zero_head=False, cond_vocab=8,
                                   cond_len=4))
class IQVAEPrior(TokenGPT):
    """IQ-VAE prior: causal transformer over [condition tokens; image tokens], with Gumbel-sampled training inputs."""

    config_class = IQVAEPriorConfig
    config: IQVAEPriorConfig  # type: ignore[assignment]
    #: exact cached sampling; no guidance (the null condition is never trained)
    capabilities = Capabilities(stepper_kind="kv_cache")

    def __init__(self, config: IQVAEPriorConfig) -> None:
        prefix = config.cond_len or 0
        super().__init__(config, prefix=prefix)  # token_gpt's slots (no classes: one start token) behind the prefix
        d = config.d_model
        self.prefix = prefix
        self.slot_pattern = CausalPattern(self.decoder.length - prefix)
        self.cond_embed: nn.Embedding | None = None
        self.cond_pos: nn.Parameter | None = None
        if config.cond_vocab:
            self.cond_embed = nn.Embedding(config.cond_vocab + 1, d)  # the last row: the null condition
            self.cond_embed.apply(init_gpt_weights)
            self.cond_pos = nn.Parameter(torch.randn(prefix, d) * 0.02)

    @property
    def num_slots(self) -> int:
        """N image slots (the decoder runs over the P prefix positions too)."""
        return self.slot_pattern.length

    @property
    def pattern(self) -> CausalPattern:
        """Causal attention over the N image slots (the prefix is visible to every slot)."""
        return self.slot_pattern

    def null_cond(self, batch: int) -> Tensor:
        raise ValueError("iqvae has no trained null condition for classifier-free guidance (expected cfg_scale=1)")

    def check_cond(self, cond: Tensor | None, batch: int) -> None:
        super().check_cond(cond, batch)
        if cond is not None and cond.shape[1] != self.prefix:
            raise ValueError(f"iqvae takes exactly cond_len={self.prefix} condition tokens per example "
                             f"(a code sequence, no padding), given {cond.shape[1]}")

    # ----- the sequence view ------------------------------------------------------------------------
    def condition_prefix(self, cond: Tensor | None, batch: int) -> Tensor:
        """(B, P, d) embeddings of the condition tokens (cond None: the null row P times)."""
        if self.cond_embed is None or self.cond_pos is None:
            return self.code_embed.weight.new_zeros(batch, 0, self.config.d_model)
        if cond is None:
            cond = torch.full((batch, self.prefix), self.config.cond_vocab, dtype=torch.long, device=self.device)
        return self.cond_embed(cond) + self.cond_pos

    def embed(self, x: Tensor, cond: Tensor | None = None, start: int = 0, end: int | None = None) -> Tensor:
        """Inputs of image slots [start, end) (default all N), (B, T, d): token_gpt's `slot_inputs`
        (slot s carries code s-1, slot 0 the start token); from slot 0 the condition prefix comes
        first, (B, P + T, d)."""
        h = self.slot_inputs(x, None, start, end)
        if start == 0:
            h = torch.cat([self.condition_prefix(cond, x.shape[0]), h], 1)
        return self.drop(h)

    def trunk(self, h: Tensor, cache: TransformerCache | None = None, start: int = 0, window: object = None,
              context: object = None) -> Tensor:
        """`embed`'s output for image slots from `start` -> their logits (B, T, levels). Without a cache
        the whole sequence (start 0); with one, earlier positions come from it. `window` (the
        stepper's, in image-slot coordinates) is ignored: the trunk windows the shifted range itself;
        `context` is always None (no cross-attention: `slot_context`'s default)."""
        offset = 0 if start == 0 else self.prefix
        out = self.decoder(h) if cache is None else self.decoder.prefill(h, cache, start=start + offset)
        if start == 0:
            out = out[:, self.prefix:]
        return self.head(out)

    def _logits(self, x: Tensor, cond: Tensor | None) -> Tensor:
        return self.trunk(self.embed(x, cond))  # (B, N, L)

    def gumbel_inputs(self, x: Tensor, cond: Tensor | None) -> Tensor:
        """x with each code replaced, with probability gumbel_feed, by a Gumbel-max sample of the
        model's own prediction for it (from a first pass on the true codes; no gradient)."""
        with torch.no_grad():
            logits = self._logits(x, cond).float()
            u = torch.rand_like(logits).clamp_(1e-10, 1.0 - 1e-7)
            sampled = (logits - torch.log(-torch.log(u))).argmax(-1)  # (B, N)
            replace = torch.rand(sampled.shape, device=x.device) < self.config.gumbel_feed
            codes = x.flatten(1)
            return torch.where(replace, sampled, codes).view_as(x)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """(B, 1, h, w) codes -> (B, levels, h, w) logits of each code given the codes before it
        (and the condition); training mode with gumbel_feed > 0 feeds Gumbel samples (module doc)."""
        inputs = x
        if self.training and self.config.gumbel_feed > 0:
            inputs = self.gumbel_inputs(x, cond)
        logits = self._logits(inputs, cond)
        return rearrange(logits, "b (h w) l -> b l h w", h=self.config.image_shape[1])
