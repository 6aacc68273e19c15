"""LMConv: locally masked convolutions for any generation order (Jain, Abbeel & Pathak, 2020).

One network, many orders: every convolution masks its taps per location so that each pixel sees
only pixels earlier in the chosen order (nn.locally_masked). The first layer hides the pixel
itself; later layers may read their own location, whose features already depend only on earlier
pixels. The network never sees any channel of the current pixel, so the per-pixel head must model
the channels jointly: the discretized logistic mixture does (its means depend on the true
earlier channels); a categorical head is exact only for one channel.

Backbone (a documented simplification of the paper's PixelCNN++ U-net): PixelCNN++ gated
residual blocks (nn.shifted.GatedResidualBlock) built from locally masked 3x3 convolutions,
without down/up-sampling (strided convolutions would mix pixels of different ranks); the paper
makes the same change to keep masks exact and widens the receptive field with dilations, as
here. A "down" pass runs `blocks_per_stage` blocks at each dilation in `dilations`; an "up" pass
runs them again in reverse, each block reading the matching down-pass output through a 1x1
convolution (PixelCNN++'s skip connections). The input carries a channel of ones, so the network
can tell a masked or padded tap (all zero) from a pixel whose value scales to zero.

Orders (argen.orders): the config's `order`/`variant` is the default for log_prob, sampling and
generation_order(). Training draws one order per call of `loss` (per batch, as in the paper)
uniformly from `eval_orders(train_orders)`, using the global torch RNG so that
`torch.manual_seed` makes training reproducible; with DDP each rank draws its own. Evaluation can
average the likelihood over n orders: log_prob_ensemble = logsumexp_i log p(x | order_i) - log n,
a valid (mixture) likelihood that is at least as good as the average of the single-order ones.
Completion generates the unknown pixels in an order that visits every known pixel first (the
variant of the default order that reaches them earliest, known pixels moved to the front), so
each filled pixel conditions on known pixels in every direction, not only those above it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from argen.distributions import Categorical
from argen.distributions.logistic_mixture import DiscretizedLogisticMixture
from argen.fields import spec
from argen.models.base import ARModel, Capabilities, ModelConfig, check_flag
from argen.nn import scale_input
from argen.nn.locally_masked import LocallyMaskedConv2d, OrderMasks
from argen.nn.shifted import GatedResidualBlock, concat_elu
from argen.orders import (
    NUM_VARIANTS,
    OrderSpec,
    get_order,
    list_orders,
    order_for_known,
    order_ranks,
    parse_order_name,
    resolve_order,
)
from argen.registry import register_model

HEADS = ("logistic_mixture", "categorical")


@dataclass
class LMConvConfig(ModelConfig):
    hidden: int = spec(32, ge=1)  # CPU-sized default (64 is ~6x slower per step on 2 cores)
    kernel_size: int = spec(3, ge=1)  # odd
    dilations: tuple[int, ...] = spec((1, 2, 4), ge=1, min_len=1)  # one stage per dilation
    blocks_per_stage: int = spec(2, ge=0)
    dropout: float = spec(0.0, ge=0.0, lt=1.0)
    head: str = spec("logistic_mixture", choices=HEADS)
    components: int = spec(10, ge=1)  # logistic mixture components
    order: str = spec("s_curve", choices=list_orders())  # default order: a name from argen.orders.list_orders()
    variant: int = spec(0, ge=0, le=NUM_VARIANTS - 1)  # its reflection/transpose variant, 0..7
    # loss draws from eval_orders(train_orders); 1 = default order only
    train_orders: int = spec(8, ge=1, le=NUM_VARIANTS * len(list_orders()))

    def validate(self) -> None:
        super().validate()
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, given {self.kernel_size}")
        if self.head == "categorical" and self.image_shape[0] != 1:
            raise ValueError(
                f"head='categorical' needs 1 channel (the network never sees the current pixel, so it cannot "
                f"condition G on R); given {self.image_shape[0]} channels: use head='logistic_mixture'"
            )

    def distribution_class(self) -> type[Categorical] | type[DiscretizedLogisticMixture]:
        return Categorical if self.head == "categorical" else DiscretizedLogisticMixture


def ensemble_orders(order: str, variant: int, n: int) -> list[tuple[str, int]]:
    """The n orders of an ensemble: the default order, its other 7 variants, then the variants of
    the remaining base orders (with the default config: the 8 s_curve variants first)."""
    first, _ = parse_order_name(order)
    names = [first] + [o for o in list_orders() if o != first]
    pool = [(first, (variant + i) % NUM_VARIANTS) for i in range(NUM_VARIANTS)]
    pool += [(name, v) for name in names[1:] for v in range(NUM_VARIANTS)]
    if not 1 <= n <= len(pool):
        raise ValueError(f"expected between 1 and {len(pool)} orders, given {n}")
    return pool[:n]


@register_model(
    "lmconv",
    tiny=dict(hidden=8, kernel_size=3, dilations=(1, 2), blocks_per_stage=1, components=2),
    variants={"categorical": dict(head="categorical"), "hilbert": dict(order="hilbert", variant=3)},
)
class LMConv(ARModel):
    """LMConv: locally masked convolutions, any generation order, ensembles and order-aware completion."""

    config_class = LMConvConfig
    config: LMConvConfig
    #: exact cached sampling in any order (per step, each layer computes its output at the next
    #: pixel only); forward / log_prob take `order=`; completion walks `completion_order(mask)`,
    #: the known pixels first (examples sharing a mask together, with the cached stepper for that
    #: order); `log_prob_ensemble` averages the likelihood over `eval_orders(n)`
    capabilities = Capabilities(stepper_kind="conv_plan", any_order=True, order_ensembles=True)

    def __init__(self, config: LMConvConfig) -> None:
        super().__init__(config)
        cfg, c = config, config.image_shape[0]
        self.distribution = (
            Categorical(c, cfg.levels) if cfg.head == "categorical"
            else DiscretizedLogisticMixture(c, cfg.levels, cfg.components)
        )
        self.masks = OrderMasks()  # the current order, shared by every locally masked layer
        k, h = cfg.kernel_size, cfg.hidden

        def block(dilation: int, aux: int) -> GatedResidualBlock:
            conv = lambda i, o: LocallyMaskedConv2d(i, o, k, dilation, include_centre=True, masks=self.masks)  # noqa: E731
            return GatedResidualBlock(h, conv, aux_channels=aux, num_classes=cfg.num_classes, dropout=cfg.dropout)

        self.input = LocallyMaskedConv2d(c + 1, h, k, 1, include_centre=False, masks=self.masks)
        stages = [d for d in cfg.dilations for _ in range(cfg.blocks_per_stage)]
        self.down = nn.ModuleList([block(d, 0) for d in stages])
        self.up = nn.ModuleList([block(d, h) for d in reversed(stages)])
        self.output = nn.Conv2d(2 * h, self.distribution.num_params, 1)

    # ----- orders ------------------------------------------------------------------------------
    def default_order(self) -> Tensor:
        """LongTensor (H*W, 2): the config's order, used when no other is given."""
        return get_order(self.config.order, *self.spatial_shape, self.config.variant)

    def generation_order(self) -> list[tuple[int, ...]]:
        return [tuple(p) for p in self.default_order().tolist()]

    def eval_orders(self, n: int) -> list[tuple[str, int]]:
        """(name, variant) of the n orders that log_prob_ensemble(x, n) averages over."""
        return ensemble_orders(self.config.order, self.config.variant, n)

    def completion_order(self, known: Tensor) -> Tensor:
        """(H*W, 2) order for completing an image whose `known` (H, W) pixels are given: the
        variant of the default order that visits them earliest, known pixels moved to the front
        (argen.orders.order_for_known), so every known pixel can inform the filled ones."""
        start = self.config.variant
        return order_for_known(known, self.config.order, [(start + i) % NUM_VARIANTS for i in range(NUM_VARIANTS)])

    def _ranks(self, order: OrderSpec | None) -> Tensor:
        """(H, W) or (B, H, W) ranks on the CPU (masks are built there once and cached)."""
        spec = self.default_order() if order is None else order
        return order_ranks(resolve_order(spec, *self.spatial_shape).cpu(), *self.spatial_shape)

    # ----- the network ---------------------------------------------------------------------------
    def forward(self, x: Tensor, cond: Tensor | None = None, order: OrderSpec | None = None) -> Tensor:
        """Parameters (B, P, H, W): each pixel's from the pixels before it in `order` (default:
        the config's; a (B, H*W, 2) tensor gives one order per example)."""
        ranks = self._ranks(order)
        if ranks.dim() == 3 and ranks.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"expected one order or {x.shape[0]} (one per example), given {ranks.shape[0]}")
        # the parameters' device, not x.device: the same, and known while the forward is traced
        self.masks.set_order(ranks, next(self.parameters()).device)
        h = scale_input(x, self.levels)
        h = self.input(torch.cat([h, torch.ones_like(h[:, :1])], dim=1))
        skips = []
        for blk in self.down:
            h = blk(h, cond=cond)
            skips.append(h)
        for blk in self.up:
            h = blk(h, aux=skips.pop(), cond=cond)
        return self.output(concat_elu(h))

    # ----- likelihood --------------------------------------------------------------------------
    def log_prob(self, x: Tensor, cond: Tensor | None = None, reduce: bool = True,
                 order: OrderSpec | None = None) -> Tensor:
        """Exact log-likelihood in nats under `order` (default: the config's): (B,) or (B, H, W)."""
        self.check_input(x, cond)
        check_flag("reduce", reduce)
        per_pixel = self.distribution.log_prob(self(x, cond, order), x)
        return per_pixel.flatten(1).sum(1) if reduce else per_pixel

    def conditionals(self, x: Tensor, cond: Tensor | None = None, order: OrderSpec | None = None) -> Tensor:
        """(B, C, L, H, W) log p(x_c = v | pixels before it in `order`, channels < c)."""
        self.check_input(x, cond)
        return self.distribution.conditionals(self(x, cond, order), x)

    def loss(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """Mean NLL per dimension under one order drawn (global RNG) from eval_orders(train_orders)."""
        orders = self.eval_orders(self.config.train_orders)
        name, variant = orders[int(torch.randint(len(orders), ()))]
        order = get_order(name, *self.spatial_shape, variant)
        return -self.log_prob(x, cond, order=order).mean() / self.num_dims

    def log_prob_ensemble(self, x: Tensor, orders: int | Sequence[OrderSpec] = 8,
                          cond: Tensor | None = None) -> Tensor:
        """(B,) log of the mean likelihood over orders: logsumexp_i log p(x | order_i) - log n.

        `orders` is a count (the orders of eval_orders(n)) or a list of order specs.
        """
        if isinstance(orders, bool):
            raise ValueError(f"expected a count of orders or a list of orders, given {orders!r}")
        specs = self.eval_orders(orders) if isinstance(orders, int) else list(orders)
        if not specs:
            raise ValueError("expected at least one order, given none")
        lps = torch.stack([self.log_prob(x, cond, order=spec) for spec in specs])  # (n, B)
        return torch.logsumexp(lps, 0) - math.log(len(specs))
