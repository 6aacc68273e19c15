"""FVSBN: the fully visible sigmoid belief network (Neal 1992; Bengio & Bengio 2000's fully visible
networks without hidden units), with a softmax in place of the sigmoid for more than two levels.

One regression per sub-pixel on all earlier sub-pixels (raster order, R before G before B within a
pixel), as one strictly lower-triangular masked linear layer: features s_d = b_d + W_d x_<d
(`rank` of them per sub-pixel), then the sub-pixel's logits = c_d + U_d s_d
(`argen.nn.masked_linear.SubpixelHead`). With two levels and rank 1 it is exactly the classic
logistic FVSBN; with rank >= L - 1 it is a full softmax regression per sub-pixel; smaller ranks
restrict each sub-pixel's L x D coefficient matrix to rank `rank` (8-bit MNIST: D*D*rank weights
instead of D*D*256). Inputs are the scaled values (one float per sub-pixel; see nn.masked_linear).

Cached sampling (stepper kind "subpixel_state"): the logits at d are linear in the earlier values,
so a step computes only the current pixel's rows of the masked layer, O(D * rank) per sub-pixel,
instead of the whole O(D^2 * rank) layer a full forward pass costs; `subpixel_steps` keeps the
values drawn so far (`FVSBNSteps`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from argen.distributions import Categorical
from argen.fields import spec
from argen.models.base import ARModel, Capabilities, ModelConfig
from argen.nn import ClassEmbedding, scale_input
from argen.nn.masked_linear import MaskedLinear, SubpixelHead, connectivity, flatten_subpixels, subpixel_params
from argen.registry import register_model


@dataclass
class FVSBNConfig(ModelConfig):
    rank: int = spec(4, ge=1)  # linear features per sub-pixel; 1 with two levels is the classic sigmoid FVSBN


class FVSBNSteps:
    """FVSBN stepped one sub-pixel at a time in raster order (for the "subpixel_state" kind): the
    scaled values so far, and per peek the rows of the masked layer for the next sub-pixels only."""

    def __init__(self, model: "FVSBN", bias: Tensor | None, batch: int) -> None:
        self.model, self.bias = model, bias  # bias: (B, D*rank) class bias or None
        self.values = torch.zeros(batch, model.num_dims, device=model.device)  # unseen entries are masked anyway
        self.next = 0

    def absorb(self, values: Tensor) -> None:
        n = values.shape[1]
        self.values[:, self.next:self.next + n] = scale_input(values, self.model.levels)
        self.next += n

    def peek(self, values: Tensor) -> Tensor:
        m, n, k = self.model, values.shape[1], self.model.config.rank
        ctx = self.values.clone()
        ctx[:, self.next:self.next + n] = scale_input(values, m.levels)  # read only by later sub-pixels (mask)
        rows = slice(self.next * k, (self.next + n) * k)
        weight = m.linear.weight[rows] * m.linear.mask[rows]  # only these rows: O(n * rank * D)
        feats = ctx @ weight.T + m.linear.bias[rows]  # (B, n*rank)
        if self.bias is not None:
            feats = feats + self.bias[:, rows]
        return m.head(feats.view(-1, n, k), slice(self.next, self.next + n))


@register_model("fvsbn", tiny=dict(rank=2), variants={"rank1": dict(rank=1)})
class FVSBN(ARModel):
    """FVSBN: one logistic/softmax regression per sub-pixel on all earlier sub-pixels (a masked linear layer)."""

    config_class = FVSBNConfig
    config: FVSBNConfig
    #: cached sampling: per sub-pixel only its rows of the masked layer (`subpixel_steps`)
    capabilities = Capabilities(stepper_kind="subpixel_state")

    def __init__(self, config: FVSBNConfig) -> None:
        super().__init__(config)
        c, d, k = config.image_shape[0], self.num_dims, config.rank
        self.distribution = Categorical(c, config.levels)
        self.linear = MaskedLinear(d, d * k)
        degrees = torch.arange(1, d + 1)  # raster sub-pixel order
        self.linear.set_mask(connectivity(degrees.repeat_interleave(k), degrees, strict=True))
        self.class_bias = ClassEmbedding(config.num_classes, d * k)
        self.head = SubpixelHead(d, k, config.levels)

    def _class_bias(self, cond: Tensor | None) -> Tensor | None:
        bias = self.class_bias(cond)
        return None if bias is None else bias[:, :, 0, 0]

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        feats = self.linear(scale_input(flatten_subpixels(x), self.levels))
        bias = self._class_bias(cond)
        if bias is not None:
            feats = feats + bias
        logits = self.head(feats.view(x.shape[0], self.num_dims, self.config.rank))
        return subpixel_params(logits, *self.data_shape)

    def subpixel_steps(self, cond: Tensor | None, batch: int) -> FVSBNSteps:
        """The model stepped one sub-pixel at a time in raster order (the "subpixel_state" stepper kind)."""
        return FVSBNSteps(self, self._class_bias(cond), batch)
