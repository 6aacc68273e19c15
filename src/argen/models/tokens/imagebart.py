"""ImageBART: coarse-to-fine multinomial diffusion over a tokenizer's code grid, each reverse step
an autoregressive transformer (Esser et al. 2021; facts from CompVis/imagebart, models/diffusion.py).

Data are codes x_0 (B, 1, h, w) long in [0, K), K = `levels` (the codebook size).

Forward process (`scales` = n): x_t keeps each token of x_{t-1} and redraws it uniformly from the K
codes with probability beta_t, independently per token. The geometric schedule of IB
(`redraw_prob="geometric"`: beta = [0, 1/n, 1/(n-1), ..., 1]) gives alpha_bar_t = (n - t)/n, so
q(x_t | x_0) = alpha_bar_t onehot(x_0) + (1 - alpha_bar_t)/K and x_n is pure noise. The posterior
(IB's `get_scales`, per token):

    q(x_{t-1} | x_t, x_0)  proportional to  (abar_{t-1} onehot(x_0) + (1 - abar_{t-1})/K)
                                            * (alpha_t onehot(x_t) + (1 - alpha_t)/K)

with normaliser abar_t [x_0 = x_t] + (1 - abar_t)/K. It is a delta on x_0 at t = 1 and q(x_{n-1} | x_0)
at t = n (alpha_n = 0), so one formula (`posterior`, `posterior_kl`) serves every scale.

Reverse model: p(x_{n-1}) prod_{t=n-1..1} p(x_{t-1} | x_t), every factor autoregressive in raster order.
- Scale n (the top): x_n carries nothing, so p(x_{n-1}) is a decoder-only token GPT (`self.top`, an
  ordinary `token_gpt` built inside this model, class-conditional when the model is).
- Scales t = n-1 .. 1: an encoder-decoder on the shared trunk (`argen.nn.transformer.Transformer`).
  The encoder is bidirectional over [scale token; class token (with classes); x_t tokens + grid
  positions]; the decoder is causal over x_{t-1} in slot layout (slot 0 a start input, slot s carries
  token s-1 and predicts token s) and cross-attends to the encoding in every block. `shared_scales`
  uses one encoder-decoder for all lower scales (told apart by the scale token); the default is one
  per scale, as IB trains one transformer per scale.

Likelihood: not exact (`exact_likelihood = False`, `exact_in_order = False`). `log_prob` is an
unbiased estimate of the evidence lower bound

    log p(x_0) >= E_q[ -KL(q(x_{n-1}|x_0) || p(x_{n-1})) - sum_{t=2}^{n-1} KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t))
                       + log p(x_0 | x_1) ]

from one draw of the forward chain x_1 .. x_{n-1} ~ q per example; each KL against an
autoregressive p is the sum over tokens of the closed-form per-token KL with the drawn x_{t-1} as
the decoder's prefix (the chain rule of KL for a factorised q: unbiased, lower variance than the
plain Monte-Carlo log-ratio). `reduce=False` gives each position's share (all scales summed).
Without a generator the draw comes from a fixed seed (`ELBO_SEED`), so evaluation repeats exactly.

Those shares also bound completion: summed over the unknown positions of a mask, they are an
unbiased estimate of a lower bound on log p_c(x_unknown | x_known), where p_c is the distribution
`complete(x, known)` samples from (the known codes' chains drawn from q, every scale's unknown
codes from its decoder). Why: the forward chain factorises over positions, so the bound of the
joint splits into the known positions' chains (p_c averages over them: Jensen) and the unknown
positions' terms, each the per-token KL of a decoder whose inputs are exactly what completion
feeds it. `benchmarks/imagebart_completion.py` reports this number for the top half given the bottom.

Training (`loss`): -bound in nats per code, all scales every batch by default (IB's joint training
config); `train_scale = t` trains only scale t (IB's separate per-scale runs; the other networks
get no gradient: set train.find_unused_parameters under DDP). Each scale's loss is IB's mixture
`soft_weight` * KL(q || p) + (1 - soft_weight) * CE(x_{t-1} drawn from q) per token; IB defaults
to the hard CE (alpha = 0), here the default 1.0 makes the training loss the bound itself (both
have the same expected gradient: they differ by the entropy of q, a constant).

Sampling (stepper kind "scales", `argen.sampling.scale_sampler`): exact ancestral sampling from the
top down: the top GPT with its KV-cached stepper, then every scale's decoder with its encoding
computed once, the cross-attention K/V projected once per sample and a static self-attention KV
cache (`naive=True`: a full decoder pass per token, drawing the same samples). Completion keeps the
known codes at every scale (see `argen.sampling.scale_sampler`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from argen.conditioning import CondSpec
from argen.distributions import MAX_LEVELS, Categorical
from argen.fields import spec
from argen.models.base import ARModel, Capabilities, ModelConfig, check_count, check_flag
from argen.models.tokens.token_gpt import TokenGPT, TokenGPTConfig, code_grid
from argen.nn.attention import CausalPattern, FullPattern
from argen.nn.transformer import GridSlots, SlotDecoder, Transformer, TransformerCache, init_gpt
from argen.registry import register_model

#: The seed of the forward-chain draw `log_prob` uses when given no generator (repeatable evaluation).
ELBO_SEED = 0


def geometric_schedule(scales: int) -> tuple[list[float], list[float], list[float]]:
    """(beta, alpha, alpha_bar), each of length scales + 1, index t = 0 .. n: IB's geometric
    schedule beta = [0, 1/n, 1/(n-1), ..., 1], alpha = 1 - beta, alpha_bar_t = prod alpha = (n - t)/n."""
    if isinstance(scales, bool) or not isinstance(scales, int) or scales < 1:
        raise ValueError(f"expected a number of scales >= 1, given {scales!r}")
    beta = [0.0] + [1.0 / k for k in range(scales, 0, -1)]
    alpha = [1.0 - b for b in beta]
    abar = [(scales - t) / scales for t in range(scales + 1)]  # the closed form of cumprod(alpha)
    return beta, alpha, abar


@dataclass
class ImageBARTConfig(ModelConfig):
    # Defaults: the MNIST prior of a 7x7 tokenizer (REFERENCE section "small CPU configurations"):
    # 3 scales of 49 codes, a 4-layer top GPT and 2 + 2-layer encoder-decoders at width 128.
    image_shape: tuple[int, int, int] = spec((1, 7, 7), ge=1)  # (1, h, w): a code grid
    levels: int = spec(128, ge=2, le=MAX_LEVELS)  # the tokenizer's codebook size K
    scales: int = spec(3, ge=2, le=16)  # n: x_n is pure noise; a top GPT and n - 1 encoder-decoders
    d_model: int = spec(128, ge=1)
    n_heads: int = spec(4, ge=1)  # divides d_model
    d_ff: int = spec(512, ge=1)
    top_layers: int = spec(4, ge=1)  # the top scale's decoder-only GPT
    encoder_layers: int = spec(2, ge=1)  # per lower scale: bidirectional over [scale; class; x_t]
    decoder_layers: int = spec(2, ge=1)  # per lower scale: causal over x_{t-1}, cross-attending
    dropout: float = spec(0.0, ge=0.0, lt=1.0)
    # IB's alpha: per-token loss soft_weight * KL(q || p) + (1 - soft_weight) * CE(x_{t-1} ~ q)
    soft_weight: float = spec(1.0, ge=0.0, le=1.0)
    # None: every scale's term every batch (the whole bound); t in [1, scales]: only scale t's term
    train_scale: int | None = spec(None, ge=1)
    # one encoder-decoder for every lower scale (told apart by the scale token) instead of one each
    shared_scales: bool = False
    # zero heads make a fresh model's every reverse step uniform over codes
    zero_head: bool = True

    def validate(self) -> None:
        super().validate()
        if self.d_model % self.n_heads:
            raise ValueError(f"model.d_model must be divisible by n_heads={self.n_heads}, given {self.d_model}")
        if self.train_scale is not None and self.train_scale > self.scales:
            raise ValueError(f"model.train_scale must be None or in [1, scales={self.scales}], given {self.train_scale}")

    def cond_spec(self) -> CondSpec:
        """Class labels when built with `num_classes`, else nothing (no null class: no guidance)."""
        return CondSpec.classes(self.num_classes)


class ScaleNet(GridSlots, SlotDecoder, nn.Module):
    """The encoder-decoder of one or more lower scales: p(x_{t-1} | x_t) autoregressive over x_{t-1}.

    Encoder input: [scale token; class token (with classes); code embedding of x_t + grid position],
    full attention. Decoder: slot s carries code s-1 of x_{t-1} (slot 0 the scale's start vector),
    plus the grid position of the code it predicts; causal self-attention and cross-attention to the
    whole encoding in every block; a head to K logits. The decoder's slot range, `trunk` (with the
    encoding as its context) and `new_cache` are `SlotDecoder`'s, the grid positions `GridSlots`'.
    """

    def __init__(self, cfg: ImageBARTConfig, n_scales: int) -> None:
        super().__init__()
        _, h, w = cfg.image_shape
        n, d = h * w, cfg.d_model
        self.n_scales, self.num_classes = n_scales, cfg.num_classes
        self.code_embed = nn.Embedding(cfg.levels, d)  # x_t and x_{t-1} share the codebook's meaning
        self.learn_grid_positions(h, w, d)
        self.scale_embed = nn.Embedding(n_scales, d)
        self.start_embed = nn.Embedding(n_scales, d)
        self.class_embed = nn.Embedding(cfg.num_classes, d) if cfg.num_classes else None
        self.prefix = 1 + (1 if cfg.num_classes else 0)
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder = Transformer(d, cfg.encoder_layers, cfg.n_heads, cfg.d_ff, FullPattern(self.prefix + n),
                                   dropout=cfg.dropout)
        self.decoder = Transformer(d, cfg.decoder_layers, cfg.n_heads, cfg.d_ff, CausalPattern(n),
                                   dropout=cfg.dropout, context_dim=d)
        self.head = nn.Linear(d, cfg.levels)
        self.register_grid(h, w)

    def encode(self, index: int, x_t: Tensor, cond: Tensor | None) -> Tensor:
        """(B, prefix + N, d): the bidirectional encoding of [scale; class; x_t]."""
        b = x_t.shape[0]
        parts = [self.scale_embed(torch.full((b, 1), index, dtype=torch.long, device=x_t.device))]
        if self.class_embed is not None:
            if cond is None:
                raise ValueError(f"expected class labels ({b},) for a class-conditional imagebart, given None")
            parts.append(self.class_embed(cond)[:, None])
        parts.append(self.add_grid_positions(self.code_embed(x_t.flatten(1))))
        return self.encoder(self.drop(torch.cat(parts, 1)))

    def embed(self, index: int, x_prev: Tensor, start: int = 0, end: int | None = None) -> Tensor:
        """(B, end - start, d) decoder inputs of slots [start, end) (default all N): codes
        [start - 1, end - 1) of x_{t-1} shifted behind the start vector, plus the position of the
        code each slot predicts."""
        start, end, prev = self.slot_range(start, end)
        b = x_prev.shape[0]
        h = self.code_embed(x_prev.flatten(1)[:, prev])
        if start == 0:
            first = self.start_embed(torch.full((b, 1), index, dtype=torch.long, device=x_prev.device))
            h = torch.cat([first, h], 1)
        return self.drop(self.add_grid_positions(h, start, end))


@register_model(
    "imagebart",
    tiny=dict(scales=2, d_model=16, n_heads=2, d_ff=32, top_layers=1, encoder_layers=1, decoder_layers=1,
              zero_head=False),
    variants={"shared3": dict(scales=3, shared_scales=True)},
)
class ImageBART(ARModel):
    """ImageBART: coarse-to-fine multinomial diffusion over codes, an AR transformer per reverse step."""

    config_class = ImageBARTConfig
    config: ImageBARTConfig
    #: log_prob is an ELBO estimate (module doc), in every order: no exact per-position conditionals
    exact_likelihood = False
    exact_in_order: ClassVar[bool] = False
    #: sampled scale by scale (`argen.sampling.scale_sampler`); no per-position stepper over x_0
    capabilities = Capabilities(stepper_kind="scales")

    def __init__(self, config: ImageBARTConfig) -> None:
        super().__init__(config)
        cfg = config
        code_grid(cfg.image_shape, self.model_name)
        self.distribution = Categorical(1, cfg.levels)
        self.beta, self.alpha, self.abar = geometric_schedule(cfg.scales)
        self.top = TokenGPT(TokenGPTConfig(
            image_shape=tuple(cfg.image_shape), levels=cfg.levels, num_classes=cfg.num_classes, d_model=cfg.d_model,
            n_layers=cfg.top_layers, n_heads=cfg.n_heads, d_ff=cfg.d_ff, dropout=cfg.dropout, label_dropout=0.0,
            zero_head=cfg.zero_head))
        lower = cfg.scales - 1
        self.nets = nn.ModuleList([ScaleNet(cfg, lower)] if cfg.shared_scales else
                                  [ScaleNet(cfg, 1) for _ in range(lower)])
        init_gpt(self.nets, [net.head for net in self.nets], cfg.zero_head)

    @property
    def scales(self) -> int:
        """n: the number of reverse steps (the top GPT and n - 1 encoder-decoders)."""
        return self.config.scales

    @property
    def steps_by_position(self) -> bool:
        """False: generation runs scale by scale (x_{n-1}, then each x_{t-1}), not over x_0's positions."""
        return False

    # ----- the forward process -----------------------------------------------------------------
    def _check_scale(self, t: int, lo: int = 1, hi: int | None = None) -> None:
        hi = self.scales if hi is None else hi
        if isinstance(t, bool) or not isinstance(t, int) or not lo <= t <= hi:
            raise ValueError(f"expected a scale t in [{lo}, {hi}], given {t!r}")

    def forward_chain(self, x0: Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
        """[x_0, x_1, ..., x_{n-1}]: one draw of the forward Markov chain (x_n, pure noise, is never
        needed). Per scale one uniform per token decides the redraw and one code replaces it, drawn
        on the generator's device, so a fixed generator gives the same chain on any device."""
        dev = generator.device if generator is not None else x0.device
        chain = [x0]
        for t in range(1, self.scales):
            redraw = torch.rand(x0.shape, generator=generator, device=dev) < self.beta[t]
            noise = torch.randint(0, self.levels, x0.shape, generator=generator, device=dev)
            chain.append(torch.where(redraw.to(x0.device), noise.to(x0.device), chain[-1]))
        return chain

    def posterior(self, x0: Tensor, xt: Tensor, t: int) -> Tensor:
        """(B, K, h, w) q(x_{t-1} | x_t, x_0) for codes (B, 1, h, w), t in [1, n] (dense; for
        checks and small K: the loss uses `posterior_kl`, which never builds it)."""
        self._check_scale(t)
        k = self.levels
        a_prev, a_t = self.abar[t - 1], self.alpha[t]
        one0 = F.one_hot(x0[:, 0], k).permute(0, 3, 1, 2).double()
        onet = F.one_hot(xt[:, 0], k).permute(0, 3, 1, 2).double()
        q = (a_prev * one0 + (1 - a_prev) / k) * (a_t * onet + (1 - a_t) / k)
        return (q / q.sum(1, keepdim=True)).float()

    def posterior_kl(self, logp: Tensor, x0: Tensor, xt: Tensor, t: int) -> Tensor:
        """(B, h, w) KL(q(x_{t-1} | x_t, x_0) || p) per token, p given as log-probs (B, K, h, w).

        In closed form without a (B, K, h, w) posterior: q is one value u on every code but x_0 and
        x_t (u c1 c2 / Z with c1 = (1 - abar_{t-1})/K, c2 = (1 - alpha_t)/K), so
        KL = sum q log q - u sum_k log p_k - (q_x0 - u) log p_x0 - [x_t != x_0] (q_xt - u) log p_xt.
        """
        self._check_scale(t)
        k = self.levels
        a_prev, a_t, a_cur = self.abar[t - 1], self.alpha[t], self.abar[t]
        c1, c2 = (1 - a_prev) / k, (1 - a_t) / k
        x0, xt = x0[:, 0], xt[:, 0]
        same = x0 == xt
        z = a_cur * same.to(logp.dtype) + (1 - a_cur) / k  # the normaliser (IB's Z_alt)
        u = c1 * c2 / z
        q0 = torch.where(same, (a_prev + c1) * (a_t + c2), (a_prev + c1) * c2) / z
        qt = torch.where(same, u, c1 * (a_t + c2) / z)  # at x_t != x_0; u (no extra mass) when x_t = x_0
        lp0 = logp.gather(1, x0[:, None])[:, 0]
        lpt = logp.gather(1, xt[:, None])[:, 0]
        others = k - 2 + same.to(logp.dtype)  # codes that take the value u
        neg_entropy = others * torch.xlogy(u, u) + torch.xlogy(q0, q0) + torch.where(same, 0.0, torch.xlogy(qt, qt))
        cross = u * logp.sum(1) + (q0 - u) * lp0 + (qt - u) * lpt
        return neg_entropy - cross

    # ----- the reverse networks ----------------------------------------------------------------
    def _net(self, t: int) -> tuple[ScaleNet, int]:
        self._check_scale(t, 1, self.scales - 1)
        return (self.nets[0], t - 1) if self.config.shared_scales else (self.nets[t - 1], 0)

    def scale_context(self, t: int, x_t: Tensor, cond: Tensor | None = None) -> Tensor:
        """(B, M, d) the encoding of x_t (B, 1, h, w) for scale t in [1, n-1]: what scale t's
        decoder cross-attends to (computed once per sample when sampling)."""
        net, index = self._net(t)
        return net.encode(index, x_t, cond)

    def scale_embed(self, t: int, x_prev: Tensor, start: int = 0, end: int | None = None) -> Tensor:
        """(B, T, d) scale t's decoder inputs of slots [start, end) (default all N) from x_{t-1}."""
        net, index = self._net(t)
        return net.embed(index, x_prev, start, end)

    def scale_trunk(self, t: int, h: Tensor, context: Tensor | None = None, cache: TransformerCache | None = None,
                    start: int = 0) -> Tensor:
        """Slot inputs (B, T, d) -> logits (B, T, K) of scale t's decoder: all N slots with the
        `context` (no cache), or slots [start, start + T) from `cache` (the context given at the
        first call only: its cross-attention K/V then stay in the cache)."""
        net, _ = self._net(t)
        return net.trunk(h, cache, start, context=context)

    def scale_new_cache(self, t: int, batch: int) -> TransformerCache:
        """A static KV cache (self-attention per slot, cross-attention K/V once) for scale t's decoder."""
        net, _ = self._net(t)
        return net.new_cache(batch)

    def scale_logits(self, t: int, x_prev: Tensor, x_t: Tensor, cond: Tensor | None = None,
                     context: Tensor | None = None) -> Tensor:
        """(B, K, h, w) logits of p(x_{t-1} | x_t) at every code of x_{t-1} given the codes before it
        (teacher forcing); `context` = `scale_context(t, x_t, cond)` when the caller has it."""
        context = self.scale_context(t, x_t, cond) if context is None else context
        logits = self.scale_trunk(t, self.scale_embed(t, x_prev), context)
        return rearrange(logits, "b (h w) k -> b k h w", h=self.position_shape[0])

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """Refused: the model has no single set of per-position parameters over x_0 (its likelihood
        is a bound over scales); use `log_prob` / `elbo_terms`, `scale_logits` or `top`."""
        raise ValueError("imagebart has no per-position conditionals p(x_0[i] | x_0[<i]): expected log_prob, "
                         "elbo_terms or scale_logits, given a direct call of the model")

    # ----- the bound ---------------------------------------------------------------------------
    def scale_loss(self, x0: Tensor, chain: list[Tensor], t: int, cond: Tensor | None = None,
                   soft: float = 1.0) -> Tensor:
        """(B, h, w) per-token loss of scale t in [1, n] given a forward chain [x_0, ..., x_{n-1}]:
        soft * KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) + (1 - soft) * CE(the chain's x_{t-1})."""
        self._check_scale(t)
        if len(chain) != self.scales:
            raise ValueError(f"expected a chain [x_0, ..., x_{self.scales - 1}] of {self.scales} grids, given {len(chain)}")
        n = self.scales
        if t == n:
            logits = self.top(chain[n - 1], cond)
            xt = torch.zeros_like(x0)  # x_n is pure noise: alpha_n = 0 makes q ignore it
        else:
            logits = self.scale_logits(t, chain[t - 1], chain[t], cond)
            xt = chain[t]
        logp = logits.float().log_softmax(1)
        loss = torch.zeros(logp.shape[:1] + logp.shape[2:], dtype=logp.dtype, device=logp.device)
        if soft > 0:
            loss = loss + soft * self.posterior_kl(logp, x0, xt, t)
        if soft < 1:
            loss = loss - (1 - soft) * logp.gather(1, chain[t - 1])[:, 0]
        return loss

    def elbo_terms(self, x: Tensor, cond: Tensor | None = None, *,
                   generator: torch.Generator | None = None) -> Tensor:
        """(B, n, h, w): minus each scale's KL term per token, index t - 1 for scale t (index n - 1
        the top GPT's KL(q(x_{n-1}|x_0) || p)), from one forward-chain draw; their sum is the ELBO
        estimate. generator None: the fixed seed `ELBO_SEED`."""
        self.check_input(x, cond)
        if generator is None:
            generator = torch.Generator(device=x.device).manual_seed(ELBO_SEED)
        return self.chain_terms(x, self.forward_chain(x, generator), cond)

    def chain_terms(self, x: Tensor, chain: list[Tensor], cond: Tensor | None = None) -> Tensor:
        """(B, n, h, w) the bound's terms (minus each scale's per-token KL) at a given forward chain."""
        return -torch.stack([self.scale_loss(x, chain, t, cond) for t in range(1, self.scales + 1)], 1)

    def log_prob(self, x: Tensor, cond: Tensor | None = None, reduce: bool = True, *,
                 generator: torch.Generator | None = None, samples: int = 1) -> Tensor:
        """The ELBO estimate in nats (a lower bound on log p(x) in expectation, not exact): (B,), or
        with reduce=False each position's share (B, h, w), scales summed. Averages `samples`
        forward-chain draws from `generator` (None: a fixed seed, so the number repeats)."""
        self.check_input(x, cond)
        check_flag("reduce", reduce)
        check_count("samples", samples)
        if generator is None:
            generator = torch.Generator(device=x.device).manual_seed(ELBO_SEED)
        total = sum(self.elbo_terms(x, cond, generator=generator).sum(1) for _ in range(samples)) / samples
        return total.flatten(1).sum(1) if reduce else total

    def conditionals(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """Refused: a bound over scales has no exact per-position tables (entropy coding needs them)."""
        raise ValueError("imagebart has no exact per-position conditionals (its likelihood is a bound over "
                         "diffusion scales): expected a model with exact_likelihood for conditionals(), given imagebart")

    def loss(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """Training loss in nats per code: the bound's terms (with IB's soft/hard mix `soft_weight`)
        of every scale, or of `train_scale` only; the forward chain from torch's RNG."""
        self.check_input(x, cond)
        chain = self.forward_chain(x)
        t_only = self.config.train_scale
        scales = [t_only] if t_only is not None else range(1, self.scales + 1)
        soft = self.config.soft_weight
        total = sum(self.scale_loss(x, chain, t, cond, soft).flatten(1).sum(1) for t in scales)
        return total.mean() / self.num_dims

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scales={self.scales}, abar={[round(a, 4) for a in self.abar]}"

