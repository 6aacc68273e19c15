"""MADE: masked autoencoder for distribution estimation (Germain, Gregor, Murray & Larochelle, 2015).

An MLP over the D = C*H*W sub-pixels (scaled values in, see nn.masked_linear) whose weight masks
make output d depend only on sub-pixels earlier in an order: every sub-pixel gets a degree
(its rank in the order, channels of a pixel in turn), every hidden unit a random degree m in
[lowest degree of the layer below, D - 1]; a hidden unit reads units of degree <= m, output d reads
hidden units of degree < degree(d) (`argen.nn.masked_linear.made_masks`). Any number of hidden
layers (`hidden`, one size per layer), ReLU between them; each sub-pixel's `rank` output features
go through its own L-way softmax (`SubpixelHead`; two levels and rank 1: the paper's sigmoid output).

Masks. The config's `mask` (an index) picks one of a fixed, seeded family: mask 0 is the raster
order, masks i > 0 of an order-agnostic MADE a random order; each has its own random connectivity
drawn from a generator seeded by (mask_seed, i), so it is the same on every load and machine and
is never stored in a checkpoint. log_prob, conditionals, sampling and `generation_order()` use it.
Order- and connectivity-agnostic training (`order_agnostic=True`, the paper's section 4): each call
of `loss` in training mode draws a new order and new hidden degrees from the global torch RNG (so
`torch.manual_seed` and the trainer's resume reproduce it exactly; with DDP each rank draws its
own), or, with `train_masks = n`, one of the fixed masks 0..n-1 (the paper's "n masks" setting).
Evaluation may average over masks: log_prob_ensemble = logsumexp_i log p(x | mask_i) - log n, a
valid mixture likelihood (`eval_orders(n)`, `argen eval --orders n`).

Sampling and completion: one full forward pass per sub-pixel (the naive sampler) along the mask's
order. That is the exact sampler for a MADE, and no cheaper one exists: the hidden layers read
every earlier sub-pixel through a nonlinearity, so no state of size below a full pass carries over
from one sub-pixel to the next (NADE's shared weights are what make its recurrence possible).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from argen.distributions import Categorical
from argen.fields import spec
from argen.models.base import ARModel, Capabilities, ModelConfig, check_flag
from argen.nn import ClassEmbedding, scale_input
from argen.nn.masked_linear import (
    MaskedLinear,
    SubpixelHead,
    flatten_subpixels,
    made_degrees,
    made_masks,
    subpixel_degrees,
    subpixel_params,
)
from argen.registry import register_model

#: A mask of the fixed family, as `eval_orders` names it (the CLI prints "mask:i").
MaskSpec = tuple[str, int]


@dataclass
class MADEConfig(ModelConfig):
    hidden: tuple[int, ...] = spec((500,), ge=1, min_len=1)  # units per hidden layer, the paper's 1 x 500
    rank: int = spec(4, ge=1)  # output features per sub-pixel; 1 with two levels is the paper's sigmoid output
    order_agnostic: bool = spec(False)  # a new order and connectivity per training minibatch
    train_masks: int = spec(0, ge=0)  # 0: a fresh mask per minibatch; n: draw among the fixed masks 0..n-1
    mask: int = spec(0, ge=0)  # the fixed mask log_prob and sampling use (0: raster order)
    mask_seed: int = spec(0, ge=0)  # seeds the fixed masks' orders and connectivity

    def validate(self) -> None:
        super().validate()
        if self.train_masks and not self.order_agnostic:
            raise ValueError(f"model.train_masks needs order_agnostic=True (one mask otherwise), given train_masks={self.train_masks}")
        if self.train_masks and self.mask >= self.train_masks:
            raise ValueError(f"model.mask must be one of the {self.train_masks} training masks (< train_masks), given {self.mask}")


@register_model(
    "made",
    tiny=dict(hidden=(16,), rank=2),
    # order-agnostic variants a little wider: a fresh connectivity per step learns slower
    variants={"deep": dict(hidden=(16, 12)), "agnostic": dict(hidden=(64,), order_agnostic=True, mask=3),
              "masks4": dict(hidden=(48,), order_agnostic=True, train_masks=4, mask=1)},
)
class MADE(ARModel):
    """MADE: masked MLP, any depth, order/connectivity-agnostic training and mask ensembles."""

    config_class = MADEConfig
    config: MADEConfig
    #: naive sampling (one pass per sub-pixel, the exact sampler); `log_prob_ensemble` over `eval_orders(n)`
    capabilities = Capabilities(order_ensembles=True)

    def __init__(self, config: MADEConfig) -> None:
        super().__init__(config)
        d, k = self.num_dims, config.rank
        self.distribution = Categorical(config.image_shape[0], config.levels)
        sizes = (d, *config.hidden)
        self.layers = nn.ModuleList([MaskedLinear(a, b) for a, b in zip(sizes[:-1], sizes[1:])])
        self.layers.append(MaskedLinear(sizes[-1], d * k))
        self.class_bias = ClassEmbedding(config.num_classes, config.hidden[0])
        self.head = SubpixelHead(d, k, config.levels)
        self._fixed: dict[tuple[int, str], tuple[Tensor, list[Tensor]]] = {}  # (index, device) -> (ranks, masks)

    # ----- masks ---------------------------------------------------------------------------------
    def _build(self, ranks: Tensor, generator: torch.Generator | None) -> list[Tensor]:
        degrees = subpixel_degrees(ranks, self.channels)
        return made_masks(degrees, made_degrees(self.num_dims, self.config.hidden, generator), self.config.rank)

    def fixed_mask(self, index: int) -> tuple[Tensor, list[Tensor]]:
        """(ranks (P,), masks) of fixed mask `index`: pixel ranks in raster index order and one
        (out, in) mask per layer, on the parameters' device. Seeded by (mask_seed, index)."""
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f"expected a mask index >= 0, given {index!r}")
        device = self.layers[0].weight.device
        key = (index, str(device))
        if key not in self._fixed:
            g = torch.Generator().manual_seed(self.config.mask_seed * 1_000_003 + index)
            positions = math.prod(self.position_shape)
            random_order = self.config.order_agnostic and index > 0
            ranks = torch.randperm(positions, generator=g) if random_order else torch.arange(positions)
            self._fixed[key] = (ranks, [m.to(device) for m in self._build(ranks, g)])
        return self._fixed[key]

    def draw_mask(self) -> list[Tensor]:
        """A training mask of an order-agnostic MADE, from the global torch RNG: a fresh order and
        connectivity, or one of the fixed masks 0..train_masks-1."""
        if self.config.train_masks:
            return self.fixed_mask(int(torch.randint(self.config.train_masks, ())))[1]
        ranks = torch.randperm(math.prod(self.position_shape))
        return [m.to(self.layers[0].weight.device) for m in self._build(ranks, None)]

    def order_of(self, index: int) -> list[tuple[int, ...]]:
        """The generation order (positions) of fixed mask `index`."""
        ranks = self.fixed_mask(index)[0]
        width = self.position_shape[-1]
        return [divmod(int(p), width) for p in torch.argsort(ranks).tolist()]

    def generation_order(self) -> list[tuple[int, ...]]:
        return self.order_of(self.config.mask)

    # ----- the network ---------------------------------------------------------------------------
    def _run(self, x: Tensor, cond: Tensor | None, masks: Sequence[Tensor]) -> Tensor:
        h = scale_input(flatten_subpixels(x), self.levels)
        for i, (layer, mask) in enumerate(zip(self.layers, masks)):
            h = layer(h, mask)
            if i == 0:
                bias = self.class_bias(cond)
                if bias is not None:
                    h = h + bias[:, :, 0, 0]
            if i < len(self.layers) - 1:
                h = torch.relu(h)
        logits = self.head(h.view(x.shape[0], self.num_dims, self.config.rank))
        return subpixel_params(logits, *self.data_shape)

    def forward(self, x: Tensor, cond: Tensor | None = None, mask: int | None = None) -> Tensor:
        """Parameters (B, C*L, H, W) under fixed mask `mask` (default: the config's)."""
        return self._run(x, cond, self.fixed_mask(self.config.mask if mask is None else mask)[1])

    # ----- likelihood ----------------------------------------------------------------------------
    def log_prob(self, x: Tensor, cond: Tensor | None = None, reduce: bool = True, mask: int | None = None) -> Tensor:
        """Exact log-likelihood in nats under fixed mask `mask` (default: the config's): (B,) or (B, H, W)."""
        self.check_input(x, cond)
        check_flag("reduce", reduce)
        per_pixel = self.distribution.log_prob(self(x, cond, mask), x)
        return per_pixel.flatten(1).sum(1) if reduce else per_pixel

    def loss(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """Mean NLL per dimension; in training mode an order-agnostic MADE draws its mask first."""
        if not (self.training and self.config.order_agnostic):
            return super().loss(x, cond)
        self.check_input(x, cond)
        per_pixel = self.distribution.log_prob(self._run(x, cond, self.draw_mask()), x)
        return -per_pixel.flatten(1).sum(1).mean() / self.num_dims

    def eval_orders(self, n: int) -> list[MaskSpec]:
        """The n masks log_prob_ensemble(x, n) averages over: the config's mask first, then the
        lowest other indices (among the training masks when `train_masks` is set)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"expected a count of masks >= 1, given {n!r}")
        cfg = self.config
        if n > 1 and not cfg.order_agnostic:
            raise ValueError(f"this MADE was trained on one mask (order_agnostic=False): expected 1 mask, given {n}")
        if cfg.train_masks and n > cfg.train_masks:
            raise ValueError(f"expected at most train_masks={cfg.train_masks} masks (those it was trained on), given {n}")
        others = [i for i in range(cfg.mask + n) if i != cfg.mask]
        return [("mask", i) for i in [cfg.mask, *others[:n - 1]]]

    def log_prob_ensemble(self, x: Tensor, orders: int | Sequence[MaskSpec | int] = 8,
                          cond: Tensor | None = None) -> Tensor:
        """(B,) log of the mean likelihood over masks: logsumexp_i log p(x | mask_i) - log n.

        `orders` is a count (the masks of eval_orders(n)) or a list of ("mask", i) specs or indices.
        """
        if isinstance(orders, bool):
            raise ValueError(f"expected a count of masks or a list of masks, given {orders!r}")
        specs = self.eval_orders(orders) if isinstance(orders, int) else list(orders)
        if not specs:
            raise ValueError("expected at least one mask, given none")
        indices = []
        for s in specs:
            if isinstance(s, tuple) and len(s) == 2 and s[0] == "mask":
                s = s[1]
            if isinstance(s, bool) or not isinstance(s, int) or s < 0:
                raise ValueError(f"expected masks as ('mask', i) or i >= 0, given {s!r}")
            indices.append(s)
        lps = torch.stack([self.log_prob(x, cond, mask=i) for i in indices])  # (n, B)
        return torch.logsumexp(lps, 0) - math.log(len(indices))
