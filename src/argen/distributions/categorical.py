"""L-way softmax per sub-pixel (Bernoulli-equivalent when levels == 2)."""
from __future__ import annotations

from einops import rearrange
from torch import Tensor

from argen.distributions.base import PixelDistribution


class Categorical(PixelDistribution):
    """Parameters are C*L logits per pixel, grouped channel-major: [R's L logits, G's, B's].

    The grouping matters: masked networks assign output feature f to channel f // L, and the
    masks must agree with this reshape (see nn.masked).
    """

    description = "categorical head"

    @property
    def num_params(self) -> int:
        return self.channels * self.levels

    def logits(self, params: Tensor) -> Tensor:
        if params.shape[1] != self.num_params:
            raise ValueError(f"expected {self.num_params} parameter channels, given {params.shape[1]}")
        return rearrange(params, "b (c l) ... -> b c l ...", c=self.channels)

    def conditionals(self, params: Tensor, x: Tensor) -> Tensor:
        return self.logits(params).float().log_softmax(2)

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        logits = self.logits(params).float()
        # log_softmax at the data value without materialising the whole table twice
        picked = logits.gather(2, x.unsqueeze(2)).squeeze(2)
        return (picked - logits.logsumexp(2)).sum(1)
