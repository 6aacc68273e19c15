"""NADE: the neural autoregressive distribution estimator (Larochelle & Murray, 2011).

Every sub-pixel d (raster order, R before G before B within a pixel) has a hidden layer
h_d = sigmoid(c + W[:, <d] x_<d) whose weights W (H x D) are shared by all d: the pre-activation
of d+1 is that of d plus one column, a_{d+1} = a_d + W[:, d] x_d. So the whole likelihood is one
pass of O(D H): the per-sub-pixel contributions W[:, d] x_d, an exclusive cumulative sum over d,
a sigmoid. The output of d is a softmax over the L levels (a sigmoid when L = 2) of
b_d + U_d (V_d h_d): V_d (rank x H) and U_d (L x rank) per sub-pixel (`SubpixelHead`); with two
levels and rank 1 this is the paper's p(x_d = 1) = sigmoid(b_d + V_d . h_d), with L levels a
rank-`rank` softmax instead of D full (L x H) matrices (100M weights for 8-bit MNIST with 500 units).
Inputs are the scaled values, one per sub-pixel (see nn.masked_linear). A class label adds a
learned vector to c.

Cached sampling is the recurrence itself (stepper kind "subpixel_state", `subpixel_steps`): the
state is a_d (B, H); a step computes h_d and the logits of the current sub-pixel and adds one
column, O(H * rank) per sub-pixel instead of the O(D H) pass the naive sampler reruns each time.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from argen.distributions import Categorical
from argen.fields import spec
from argen.models.base import ARModel, Capabilities, ModelConfig
from argen.nn import ClassEmbedding, scale_input
from argen.nn.masked_linear import SubpixelHead, flatten_subpixels, subpixel_params
from argen.registry import register_model


@dataclass
class NADEConfig(ModelConfig):
    hidden: int = spec(500, ge=1)  # H, the paper's MNIST size
    rank: int = spec(4, ge=1)  # output features per sub-pixel; 1 with two levels is the paper's sigmoid output


def exclusive_cumsum(t: Tensor) -> Tensor:
    """Sums over dim 1 of the entries before each one (the first gets zero): W[:, <d] x_<d."""
    return torch.cat([torch.zeros_like(t[:, :1]), t[:, :-1]], 1).cumsum(1)


class NADESteps:
    """NADE stepped one sub-pixel at a time (for the "subpixel_state" kind): the running
    pre-activation a (B, H) of the next sub-pixel."""

    def __init__(self, model: "NADE", a: Tensor) -> None:
        self.model, self.a, self.next = model, a, 0

    def absorb(self, values: Tensor) -> None:
        n = values.shape[1]
        self.a = self.a + scale_input(values, self.model.levels) @ self.model.weight[self.next:self.next + n]
        self.next += n

    def peek(self, values: Tensor) -> Tensor:
        n = values.shape[1]
        index = slice(self.next, self.next + n)
        contrib = scale_input(values, self.model.levels)[:, :, None] * self.model.weight[index]  # (B, n, H)
        a = self.a[:, None] + exclusive_cumsum(contrib)  # sub-pixel k sees values[:, :k]
        return self.model.readout(torch.sigmoid(a), index)


@register_model("nade", tiny=dict(hidden=8, rank=2), variants={"rank1": dict(hidden=6, rank=1)})
class NADE(ARModel):
    """NADE: shared-weight hidden states over all earlier sub-pixels, O(D H) likelihood in one pass."""

    config_class = NADEConfig
    config: NADEConfig
    #: cached sampling: the recurrence a_{d+1} = a_d + W[:, d] x_d, one O(H) update per sub-pixel
    capabilities = Capabilities(stepper_kind="subpixel_state")

    def __init__(self, config: NADEConfig) -> None:
        super().__init__(config)
        d, h, k = self.num_dims, config.hidden, config.rank
        self.distribution = Categorical(config.image_shape[0], config.levels)
        self.weight = nn.Parameter(torch.randn(d, h) / d**0.5)  # W transposed: row d is W[:, d]
        self.c = nn.Parameter(torch.zeros(h))
        self.class_bias = ClassEmbedding(config.num_classes, h)
        self.out_weight = nn.Parameter(torch.randn(d, k, h) / h**0.5)  # V_d
        self.out_bias = nn.Parameter(torch.zeros(d, k))
        self.head = SubpixelHead(d, k, config.levels)

    def initial_state(self, cond: Tensor | None, batch: int) -> Tensor:
        """(B, H) pre-activation of the first sub-pixel: c plus the class vector."""
        a = self.c.expand(batch, -1)
        bias = self.class_bias(cond)
        return a if bias is None else a + bias[:, :, 0, 0]

    def readout(self, h: Tensor, index: slice | None = None) -> Tensor:
        """(B, n, H) hidden states of sub-pixels `index` (all when None) -> (B, n, L) logits."""
        v, vb = (self.out_weight, self.out_bias) if index is None else (self.out_weight[index], self.out_bias[index])
        return self.head(torch.einsum("bnh,nkh->bnk", h, v) + vb, index)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        contrib = scale_input(flatten_subpixels(x), self.levels)[:, :, None] * self.weight  # (B, D, H)
        a = self.initial_state(cond, x.shape[0])[:, None] + exclusive_cumsum(contrib)  # a_d sees x_<d
        return subpixel_params(self.readout(torch.sigmoid(a)), *self.data_shape)

    def subpixel_steps(self, cond: Tensor | None, batch: int) -> NADESteps:
        """The recurrence stepped one sub-pixel at a time (the "subpixel_state" stepper kind)."""
        return NADESteps(self, self.initial_state(cond, batch))
