"""Autoregressive Diffusion Models (Hoogeboom et al., 2022): order-agnostic and upscale ARDMs.

An ARDM is one non-causal network that, given any subset of the D = C*H*W sub-pixels, predicts
a distribution for every other one. Hidden sub-pixels are replaced by an absorbing token and the
mask is concatenated, so nothing inside the network needs to be causal (an ordinary U-Net).

Training (order-agnostic): t ~ U{0..D-1}, a random permutation sigma, mask = sigma < t; the
log-likelihood of the D - t hidden dims, weighted by D / (D - t), is an unbiased estimate of
E_sigma log p_sigma(x) <= log p(x) (the ELBO: log p(x) >= E_t [D * L_t]). Every order sigma
defines an exact autoregressive model, so `log_prob(x, order=...)` is an exact likelihood (D
network calls) while `log_prob(x)` is the stochastic ELBO; `exact_likelihood` is False.

Upscale ARDM (`upscale_bits > 0`): the bits of each value are split into stages, most
significant first (`upscale_bits=2` on 8-bit data is the paper's "upscale 4": branching factor
4, four stages). Stage s is an order-agnostic ARDM over the stage-s digits of all D dims,
conditioned on the coarser digits of every dim; the network is shared and told the stage.
log p(x) = sum_s log p(digit_s | coarser digits), so the ELBO samples a stage too (weight S).
A digit that would make the value exceed `levels - 1` gets no mass, so any `levels` works.

Parallel sampling with a budget of k calls follows the paper's dynamic programme over the
per-step losses L_t recorded during training (a buffer saved with the weights); the sampler, the
plan cache and the programme live in `argen.sampling` (`ardm_sampler`, `ardm_schedule`; this file
holds the network, the likelihood and what the model declares). The model declares the losses
as training statistics (`has_training_stats`): `loss_and_stats` returns each step's (sum, count)
of L_t per t, the
trainer sums them over micro-batches and ranks and calls `update_statistics`, so every rank keeps
the same curve; `loss` itself never changes a buffer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from argen.distributions import Categorical
from argen.fields import spec
from argen.models.base import ARModel, Capabilities, ModelConfig, check_flag
from argen.nn import ClassEmbedding
from argen.nn.unet import TimestepEmbedding, UNet
from argen.orders import OrderSpec, order_ranks, resolve_order
from argen.registry import register_model


@dataclass
class ARDMConfig(ModelConfig):
    # CPU-sized defaults (0.7M parameters); the paper's CIFAR model is a 32-block U-Net on a GPU.
    hidden: int = spec(32, ge=1)
    channel_mults: tuple[int, ...] = spec((1, 2), ge=1, min_len=1)  # U-Net width per level, x hidden
    blocks_per_level: int = spec(1, ge=1)
    attention: bool = spec(False)
    dropout: float = spec(0.0, ge=0.0, lt=1.0)
    embed_dim: int = spec(32, ge=1)  # width of the learned embedding of each sub-pixel's (partially known) value
    upscale_bits: int = spec(0, ge=0, le=8)  # 0: plain order-agnostic ARDM; b > 0: stages of b bits, MSB first
    order_seed: int = spec(0, ge=0, lt=2 ** 63)  # seed of the fixed pixel order `generation_order()` returns
    step_loss_decay: float = spec(0.99, ge=0.0, lt=1.0)  # EMA decay of the recorded per-step losses L_t


def fill_unrecorded(values: Tensor, counts: Tensor) -> Tensor:
    """Linearly interpolate a recorded curve at the steps that were never recorded (count 0).

    Ends are held constant. Raises ValueError when nothing was recorded at all.
    """
    values = values.detach().double().cpu().flatten()
    seen = counts.detach().cpu().flatten() > 0
    if not bool(seen.any()):
        raise ValueError("no step losses were recorded (train the model with loss() in training mode first)")
    if bool(seen.all()):
        return values
    xs = torch.nonzero(seen).flatten()
    ys = values[xs]
    grid = torch.arange(values.numel())
    idx = torch.searchsorted(xs, grid).clamp(1, max(xs.numel() - 1, 1))
    if xs.numel() == 1:
        return torch.full_like(values, float(ys[0]))
    x0, x1 = xs[idx - 1], xs[idx]
    y0, y1 = ys[idx - 1], ys[idx]
    w = ((grid - x0).double() / (x1 - x0).double()).clamp(0.0, 1.0)
    return y0 + w * (y1 - y0)


class BitStages:
    """How values in [0, levels) split into stages of bits, most significant first.

    After j stages a value is known up to its prefix `v >> low[j]` (j = 0: nothing; j = S: all).
    Each (depth j, prefix) pair is one input token, so the network sees exactly what is known.
    With one stage this is the plain ARDM: token 0 is the absorbing state, tokens 1.. the values.
    """

    def __init__(self, levels: int, upscale_bits: int) -> None:
        total = max(1, (levels - 1).bit_length())
        if upscale_bits == 0 or upscale_bits >= total:
            bits = [total]
        else:
            n = math.ceil(total / upscale_bits)
            bits = [total - upscale_bits * (n - 1)] + [upscale_bits] * (n - 1)  # remainder on top
        self.levels, self.bits, self.num_stages = levels, bits, len(bits)
        self.low = [sum(bits[j:]) for j in range(len(bits) + 1)]
        self.n_prefix = [((levels - 1) >> lo) + 1 for lo in self.low]
        self.offsets = [sum(self.n_prefix[:j]) for j in range(len(bits) + 1)]
        self.num_tokens = sum(self.n_prefix)
        # digit values stage s can take: all 2^bits, except a top stage cut short by `levels`
        self.digits = [min(2 ** b, self.n_prefix[s + 1]) for s, b in enumerate(bits)]
        self.head = max(self.digits)

    def _table(self, values: list[int], index: Tensor) -> Tensor:
        return torch.tensor(values, dtype=torch.long, device=index.device)[index]

    def tokens(self, x: Tensor, depth: Tensor) -> Tensor:
        """Token of each dim given how many stages of it are known (`depth`, same shape as x)."""
        return self._table(self.offsets, depth) + (x >> self._table(self.low, depth))

    def digit(self, x: Tensor, stage: Tensor) -> Tensor:
        """Stage-`stage` digit of x; `stage` broadcasts against x."""
        return (x >> self._table(self.low[1:], stage)) & (self._table([2 ** b for b in self.bits], stage) - 1)

    def allowed(self, x: Tensor, stage: Tensor) -> Tensor:
        """(..., head) bool: digits the stage may take given the coarser prefix of x."""
        d = torch.arange(self.head, device=x.device)
        prefix = (x >> self._table(self.low, stage))[..., None]
        full = (prefix << self._table(self.bits, stage)[..., None]) | d
        return (full < self._table(self.n_prefix[1:], stage)[..., None]) & (d < self._table(self.digits, stage)[..., None])


@register_model("ardm", tiny=dict(hidden=16, channel_mults=(1,), blocks_per_level=1, attention=False, embed_dim=4),
                variants={"upscale": dict(upscale_bits=1), "attention": dict(attention=True)})
class ARDM(ARModel):
    """Autoregressive Diffusion Model: order-agnostic (or bit-upscaling) with parallel sampling."""

    config_class = ARDMConfig
    config: ARDMConfig
    exact_likelihood = False
    #: Sampled by the "ardm" kind (`argen.sampling.ardm_sampler`): parallel generation with at most
    #: `steps` network calls (the dynamic programme over the recorded L_t) in a random order per
    #: example unless `order` is given; `naive=True` is the sequential reference, one call per
    #: sub-pixel in `order` (default: `generation_order()`), drawing what `order=generation_order()`
    #: draws. Completion puts the known dims first in every order.
    capabilities = Capabilities(stepper_kind="ardm", parallel_steps=True, sample_orders=True)
    #: The trainer gathers the per-step losses L_t through `loss_and_stats` / `update_statistics`.
    has_training_stats = True

    def __init__(self, config: ARDMConfig) -> None:
        super().__init__(config)
        cfg, c = config, self.channels
        self.stages = BitStages(cfg.levels, cfg.upscale_bits)
        # The head: per sub-pixel logits over the current stage's digits (all L values when plain).
        self.distribution = Categorical(c, self.stages.head)
        emb_dim = 4 * cfg.hidden
        self.token_embed = nn.Embedding(c * self.stages.num_tokens, cfg.embed_dim)
        self.time_embed = TimestepEmbedding(emb_dim)
        self.stage_embed = nn.Embedding(self.stages.num_stages, emb_dim) if self.stages.num_stages > 1 else None
        self.class_embed = ClassEmbedding(cfg.num_classes, emb_dim)
        self.net = UNet(c * cfg.embed_dim + c, self.distribution.num_params, cfg.hidden, emb_dim, cfg.channel_mults,
                        cfg.blocks_per_level, cfg.attention, cfg.dropout)
        n_steps = self.stages.num_stages * self.num_dims
        # L_t per (stage, t), nats per dim, and how often each was updated; saved with the weights.
        self.register_buffer("step_loss", torch.zeros(n_steps))
        self.register_buffer("step_loss_count", torch.zeros(n_steps, dtype=torch.long))
        self._order_cache: list[tuple[int, int]] | None = None

    @property
    def num_stages(self) -> int:
        return self.stages.num_stages

    @property
    def steps_by_position(self) -> bool:
        """A plain ARDM has a per-sub-pixel stepper; an upscale ARDM samples by stages only."""
        return self.num_stages == 1

    # ----- the network -------------------------------------------------------------------------
    def forward(self, x: Tensor, cond: Tensor | None = None, known: Tensor | None = None,
                stage: Tensor | None = None) -> Tensor:
        """Logits (B, C*K, H, W) for every sub-pixel given those where `known` (B, C, H, W) is True.

        K = levels for the plain model (the stage-`stage` digits for upscale). Unknown dims enter
        as the absorbing token (upscale: as their coarser prefix), so their values never matter.
        `known=None` means nothing known (t = 0); `stage=None` means stage 0.
        """
        b = x.shape[0]
        known = torch.zeros_like(x, dtype=torch.bool) if known is None else known
        stage = torch.zeros(b, dtype=torch.long, device=x.device) if stage is None else stage
        depth = stage.view(b, 1, 1, 1) + known.long()
        tokens = self.stages.tokens(x, depth)
        tokens = tokens + self.stages.num_tokens * torch.arange(self.channels, device=x.device).view(1, -1, 1, 1)
        h = rearrange(self.token_embed(tokens), "b c h w e -> b (c e) h w")
        h = torch.cat([h, known.to(h.dtype)], dim=1)
        t = known.flatten(1).sum(1)
        emb = self.time_embed(t.float() / self.num_dims)
        if self.stage_embed is not None:
            emb = emb + self.stage_embed(stage)
        class_bias = self.class_embed(cond)
        if class_bias is not None:
            emb = emb + class_bias.flatten(1)
        return self.net(h, emb)

    def step_log_probs(self, x: Tensor, known: Tensor, stage: Tensor, cond: Tensor | None = None) -> Tensor:
        """(B, C, K, H, W) normalized log-probs of each dim's stage digit given the known dims."""
        logits = self.distribution.logits(self(x, cond, known, stage)).float()
        if self.num_stages > 1:
            allowed = self.stages.allowed(x, stage.view(-1, 1, 1, 1).expand_as(x))  # (B, C, H, W, K)
            logits = logits.masked_fill(~rearrange(allowed, "b c h w k -> b c k h w"), float("-inf"))
        return logits.log_softmax(2)

    # ----- orders ----------------------------------------------------------------------------
    def generation_order(self) -> list[tuple[int, int]]:
        """A fixed random pixel order drawn from `order_seed`; channels go R, G, B within a pixel."""
        if self._order_cache is None:
            h, w = self.spatial_shape
            perm = torch.randperm(h * w, generator=torch.Generator().manual_seed(self.config.order_seed))
            self._order_cache = [(int(p) // w, int(p) % w) for p in perm]
        return list(self._order_cache)

    def dim_ranks(self, order: OrderSpec, batch: int) -> Tensor:
        """(B, D) step at which each sub-pixel (flattened C, H, W) is generated under a pixel order.

        `order` is anything `argen.orders.resolve_order` takes: (H*W, 2) positions (or a list of
        (row, col)), or (B, H*W, 2) for one order per example. Channels go R, G, B within a pixel.
        """
        h, w = self.spatial_shape
        spec = resolve_order(order, h, w)
        if spec.dim() == 3 and spec.shape[0] != batch:
            raise ValueError(f"expected one order or {batch} per-example orders, given {spec.shape[0]}")
        pix = order_ranks(spec, h, w).to(self.device)  # (H, W) or (B, H, W)
        ranks = pix.unsqueeze(-3) * self.channels + torch.arange(self.channels, device=self.device).view(-1, 1, 1)
        return ranks.expand(batch, *self.data_shape).reshape(batch, self.num_dims)

    # ----- likelihood ------------------------------------------------------------------------
    def _check_draws(self, b: int, t: Tensor | None, sigma: Tensor | None, stage: Tensor | None) -> None:
        d = self.num_dims
        if t is not None and (not isinstance(t, Tensor) or t.dtype != torch.long or tuple(t.shape) != (b,)
                              or int(t.min()) < 0 or int(t.max()) >= d):
            raise ValueError(f"expected t as torch.long ({b},) in [0, {d - 1}], given {t!r}")
        if sigma is not None:
            if not isinstance(sigma, Tensor) or sigma.dtype != torch.long or tuple(sigma.shape) != (b, d):
                raise ValueError(f"expected sigma as a torch.long ({b}, {d}) permutation, given "
                                 f"{getattr(sigma, 'dtype', type(sigma).__name__)} {tuple(getattr(sigma, 'shape', ()))}")
            if not torch.equal(sigma.sort(1).values, torch.arange(d, device=sigma.device).expand(b, d)):
                raise ValueError("expected each row of sigma to be a permutation of range(D)")
        if stage is not None and (not isinstance(stage, Tensor) or stage.dtype != torch.long or tuple(stage.shape) != (b,)
                                  or int(stage.min()) < 0 or int(stage.max()) >= self.num_stages):
            raise ValueError(f"expected stage as torch.long ({b},) in [0, {self.num_stages - 1}], given {stage!r}")

    def _elbo_terms(self, x: Tensor, cond: Tensor | None, t: Tensor | None, sigma: Tensor | None,
                    stage: Tensor | None, generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
        """log p of each hidden dim's digit (0 at known dims) (B, C, H, W), with the t and stage used."""
        b, d = x.shape[0], self.num_dims
        self._check_draws(b, t, sigma, stage)
        gdev = generator.device if generator is not None else x.device
        if stage is None:
            stage = torch.randint(self.num_stages, (b,), generator=generator, device=gdev).to(x.device)
        if t is None:
            t = torch.randint(d, (b,), generator=generator, device=gdev).to(x.device)
        if sigma is None:
            sigma = torch.rand(b, d, generator=generator, device=gdev).argsort(1).to(x.device)
        rank = sigma.to(x.device).argsort(1)
        known = (rank < t.to(x.device)[:, None]).view_as(x)
        stage, t = stage.to(x.device), t.to(x.device)
        table = self.step_log_probs(x, known, stage, cond)
        digit = self.stages.digit(x, stage.view(-1, 1, 1, 1))
        lp = table.gather(2, digit.unsqueeze(2)).squeeze(2)
        return lp.masked_fill(known, 0.0), t, stage

    def elbo(self, x: Tensor, cond: Tensor | None = None, *, reduce: bool = True, t: Tensor | None = None,
             sigma: Tensor | None = None, stage: Tensor | None = None,
             generator: torch.Generator | None = None) -> Tensor:
        """One-sample ELBO in nats: S * D / (D - t) * sum of log p over the hidden dims.

        t (B,), sigma (B, D) permutations of the flattened (C, H, W) dims and the stage (B,) are
        drawn from `generator` unless given. Averaged over draws it is E_sigma log p_sigma(x).
        reduce=False gives each position's weighted term (B, H, W), channels summed.
        """
        self.check_input(x, cond)
        check_flag("reduce", reduce)
        lp, t, _ = self._elbo_terms(x, cond, t, sigma, stage, generator)
        weight = self.num_stages * self.num_dims / (self.num_dims - t).to(lp.dtype)
        per_pos = lp.sum(1) * weight.view(-1, 1, 1)
        return per_pos.flatten(1).sum(1) if reduce else per_pos

    def _exact_tables(self, x: Tensor, cond: Tensor | None, ranks: Tensor, max_batch: int) -> list[Tensor]:
        """Per stage, (B, C, K, H, W): each dim's digit log-probs at the step that generates it."""
        b, d, k = x.shape[0], self.num_dims, self.stages.head
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive integer, given {max_batch!r}")
        sigma = ranks.argsort(1)  # sigma[b, t]: the dim generated at step t
        pairs_b = torch.arange(b, device=x.device).repeat_interleave(d)
        pairs_t = torch.arange(d, device=x.device).repeat(b)
        tables = []
        for s in range(self.num_stages):
            table = torch.empty(b, d, k, device=x.device)
            for bi, ti in zip(pairs_b.split(max_batch), pairs_t.split(max_batch)):
                known = (ranks[bi] < ti[:, None]).view(-1, *self.data_shape)
                stage = torch.full_like(bi, s)
                lp = rearrange(self.step_log_probs(x[bi], known, stage, None if cond is None else cond[bi]),
                               "n c k h w -> n (c h w) k")
                dims = sigma[bi, ti]
                table[bi, dims] = lp[torch.arange(len(bi), device=x.device), dims]
            tables.append(rearrange(table, "b (c h w) k -> b c k h w", c=self.channels, h=self.spatial_shape[0]))
        return tables

    def log_prob(self, x: Tensor, cond: Tensor | None = None, reduce: bool = True, order: OrderSpec | None = None, *,
                 generator: torch.Generator | None = None, max_batch: int = 256) -> Tensor:
        """Nats: the ELBO estimate when `order` is None, else the exact log-likelihood under `order`.

        order=None: one draw of (stage,) t and sigma per example from `generator` (a lower bound in
        expectation, see `elbo`). With a pixel `order` (see `dim_ranks`): exact, from D network
        calls per stage batched `max_batch` inputs at a time; reduce=False then gives (B, H, W)
        log p(pixel | pixels before it in the order), channels (and stages) summed.
        """
        self.check_input(x, cond)
        check_flag("reduce", reduce)
        if order is None:
            return self.elbo(x, cond, reduce=reduce, generator=generator)
        tables = self._exact_tables(x, cond, self.dim_ranks(order, x.shape[0]), max_batch)
        per_dim = sum(
            tab.gather(2, self.stages.digit(x, torch.tensor(s, device=x.device)).unsqueeze(2)).squeeze(2)
            for s, tab in enumerate(tables)
        )
        per_pos = per_dim.sum(1)
        return per_pos.flatten(1).sum(1) if reduce else per_pos

    def digit_conditionals(self, x: Tensor, cond: Tensor | None = None, order: OrderSpec | None = None,
                           max_batch: int = 256) -> list[Tensor]:
        """Per stage, (B, C, K, H, W) exact digit conditionals under `order` (default: generation_order)."""
        self.check_input(x, cond)
        order = self.generation_order() if order is None else order
        return self._exact_tables(x, cond, self.dim_ranks(order, x.shape[0]), max_batch)

    def conditionals(self, x: Tensor, cond: Tensor | None = None, order: OrderSpec | None = None,
                     max_batch: int = 256) -> Tensor:
        """(B, C, L, H, W) exact log p(x_c = v | dims before it in `order`) (default: generation_order)."""
        if self.num_stages > 1:
            raise ValueError(f"an upscale ARDM ({self.num_stages} stages) factorizes over digits, not values: "
                             "expected digit_conditionals(), given a call to conditionals()")
        return self.digit_conditionals(x, cond, order, max_batch)[0]

    def _step_losses(self, x: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        """(B,) samples of L_t in nats per dim (one stochastic draw per example) and their (stage, t) index."""
        self.check_input(x, cond)
        lp, t, stage = self._elbo_terms(x, cond, None, None, None, None)
        per_dim = -lp.flatten(1).sum(1) / (self.num_dims - t).to(lp.dtype)  # sample of L_t
        return per_dim, stage * self.num_dims + t

    def loss(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """-ELBO in nats per dim (one stochastic draw per example). Changes no buffer: training
        records L_t through `loss_and_stats` and `update_statistics`."""
        per_dim, _ = self._step_losses(x, cond)
        return self.num_stages * per_dim.mean()

    def loss_and_stats(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, dict[str, tuple[Tensor, Tensor]]]:
        """`loss(x, cond)` and this batch's per-step losses: {"step_loss": (sums, counts)}, each
        (S*D,), the sum of the L_t samples drawn at each (stage, t) and how many there were."""
        per_dim, index = self._step_losses(x, cond)
        n = self.step_loss.numel()
        with torch.no_grad():
            sums = torch.zeros(n, device=per_dim.device).index_add_(0, index, per_dim.detach().float())
            counts = torch.bincount(index, minlength=n)
        return self.num_stages * per_dim.mean(), {"step_loss": (sums, counts)}

    @torch.no_grad()
    def update_statistics(self, stats: dict[str, tuple[Tensor, Tensor]]) -> None:
        """Fold one training step's summed L_t samples (from `loss_and_stats`, summed over
        micro-batches and ranks) into the recorded curve: per (stage, t) drawn in the step, a
        running mean for the first updates, then an EMA with `step_loss_decay` (early, untrained
        losses fade out). Ranks given the same statistics keep the same curve."""
        n = self.step_loss.numel()
        if set(stats) != {"step_loss"}:
            raise ValueError(f"expected statistics {{'step_loss'}}, given {sorted(stats)}")
        sums, counts = stats["step_loss"]
        if tuple(sums.shape) != (n,) or tuple(counts.shape) != (n,):
            raise ValueError(f"expected step_loss sums and counts of shape ({n},), given "
                             f"{tuple(sums.shape)} and {tuple(counts.shape)}")
        sums = sums.to(self.step_loss.device, torch.float32)
        counts = counts.to(self.step_loss.device)
        seen = counts > 0
        mean = sums[seen] / counts[seen]
        w = torch.clamp(1.0 / (self.step_loss_count[seen] + 1).float(), min=1.0 - self.config.step_loss_decay)
        self.step_loss[seen] += w * (mean - self.step_loss[seen])
        self.step_loss_count[seen] += 1

    def step_loss_curve(self) -> Tensor:
        """(S, D) recorded L_t in nats per dim, unrecorded steps interpolated (ValueError if none)."""
        curve = fill_unrecorded(self.step_loss, self.step_loss_count)
        return curve.view(self.num_stages, self.num_dims)

    @torch.no_grad()
    def measure_step_losses(self, x: Tensor, cond: Tensor | None = None, points: int = 64,
                            generator: torch.Generator | None = None, max_batch: int = 256) -> Tensor:
        """(S, D) L_t in nats per dim measured on data `x` at `points` evenly spaced t per stage
        (a fresh random order per example), linearly interpolated between them."""
        self.check_input(x, cond)
        d, s = self.num_dims, self.num_stages
        grid = torch.linspace(0, d - 1, min(points, d)).round().long().unique()
        values = torch.zeros(s * d, dtype=torch.float64)
        counts = torch.zeros(s * d, dtype=torch.long)
        for stage in range(s):
            for t in grid.tolist():
                total = 0.0
                for i in range(0, x.shape[0], max_batch):
                    xb = x[i:i + max_batch]
                    cb = cond[i:i + max_batch] if cond is not None else None
                    b = xb.shape[0]
                    lp, _, _ = self._elbo_terms(xb, cb, torch.full((b,), t, device=xb.device),
                                                None, torch.full((b,), stage, device=xb.device), generator)
                    total += float(-lp.flatten(1).sum(1).double().sum()) / (d - t)
                values[stage * d + t], counts[stage * d + t] = total / x.shape[0], 1
        return fill_unrecorded(values, counts).view(s, d)
