"""Discretized logistic mixture (PixelCNN++, Salimans et al. 2017).

Per pixel: K mixture logits; per channel c and component k a mean, a log-scale (clamped at -7)
and, for c > 0, coefficients (tanh) that make the mean depend linearly on the true earlier
channels: mu_G += a*x_R, mu_B += b*x_R + c*x_G. Data are scaled to [-1, 1]; bins have half
width 1/(levels-1); the lowest bin takes all mass below, the highest all mass above. Channels are
summed inside each component before the logsumexp over components, so one component explains
the whole pixel.

`conditionals` turns the joint into per-channel conditionals p(x_c | x_<c) exactly: the
component weights are updated by the likelihood of the earlier channels (Bayes), so sampling,
completion and entropy coding can proceed channel by channel.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from argen.distributions.base import PixelDistribution

LOG_SCALE_MIN = -7.0


class DiscretizedLogisticMixture(PixelDistribution):
    # Bins of width 2/(levels-1) on [-1, 1]: beyond 8-bit data the bins are too narrow for the
    # clamped log-scales (>= -7) to resolve, and the per-value table grows with levels.
    max_levels = 256
    description = "discretized logistic mixture head"

    def __init__(self, channels: int, levels: int, components: int = 10) -> None:
        super().__init__(channels, levels)
        if components < 1:
            raise ValueError(f"components must be >= 1, given {components}")
        self.components = components
        self.n_coeffs = channels * (channels - 1) // 2  # one per (c, j < c) pair

    @property
    def num_params(self) -> int:
        k, c = self.components, self.channels
        return k * (1 + 2 * c + self.n_coeffs)

    @property
    def output_depends_on_current_pixel(self) -> bool:
        return False

    # ----- parameter unpacking ------------------------------------------------------------------
    def _split(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """logit_pi (B,K,*S), means (B,K,C,*S), log_scales (B,K,C,*S), coeffs (B,K,n,*S)."""
        if params.shape[1] != self.num_params:
            raise ValueError(f"expected {self.num_params} parameter channels, given {params.shape[1]}")
        k, c = self.components, self.channels
        params = params.float()
        b, rest = params.shape[0], params.shape[2:]
        logit_pi, means, log_scales, coeffs = params.split([k, k * c, k * c, k * self.n_coeffs], dim=1)
        means = means.reshape(b, k, c, *rest)
        log_scales = log_scales.reshape(b, k, c, *rest).clamp(min=LOG_SCALE_MIN)
        coeffs = torch.tanh(coeffs.reshape(b, k, self.n_coeffs, *rest))
        return logit_pi, means, log_scales, coeffs

    def _scale(self, x: Tensor) -> Tensor:
        return x.float() * (2.0 / (self.levels - 1)) - 1.0

    def _adjusted_means(self, means: Tensor, coeffs: Tensor, xs: Tensor) -> Tensor:
        """mu_c = m_c + sum_{j<c} coeff_(c,j) * x_j with the true earlier channels (B,C,*S)."""
        out = [means[:, :, 0]]
        i = 0
        for c in range(1, self.channels):
            mu = means[:, :, c]
            for j in range(c):
                mu = mu + coeffs[:, :, i] * xs[:, j].unsqueeze(1)
                i += 1
            out.append(mu)
        return torch.stack(out, dim=2)

    def _bin_log_prob(self, v: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
        """log P(bin v) under a logistic(mean, exp(log_scale)); all tensors broadcast."""
        half = 1.0 / (self.levels - 1)
        centered = self._scale(v) - mean
        inv_s = torch.exp(-log_scale)
        plus_in = inv_s * (centered + half)
        min_in = inv_s * (centered - half)
        mid_in = inv_s * centered
        log_cdf_plus = plus_in - F.softplus(plus_in)  # log sigmoid(plus_in): lowest bin
        log_one_minus_cdf_min = -F.softplus(min_in)  # log(1 - sigmoid(min_in)): highest bin
        # difference of CDFs, taken on the side of the mean where sigmoids are not both near 1
        cdf_delta = torch.where(
            mid_in > 0,
            torch.sigmoid(-min_in) - torch.sigmoid(-plus_in),
            torch.sigmoid(plus_in) - torch.sigmoid(min_in),
        )
        log_pdf_mid = mid_in - log_scale - 2.0 * F.softplus(mid_in)
        inner = torch.where(
            cdf_delta > 1e-5,
            torch.log(cdf_delta.clamp(min=1e-12)),
            log_pdf_mid - math.log((self.levels - 1) / 2.0),
        )
        return torch.where(v == 0, log_cdf_plus, torch.where(v == self.levels - 1, log_one_minus_cdf_min, inner))

    # ----- the interface ------------------------------------------------------------------------
    def component_log_probs(self, params: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """log softmax(pi) (B,K,*S) and per-component per-channel log-probs at x (B,K,C,*S)."""
        logit_pi, means, log_scales, coeffs = self._split(params)
        mu = self._adjusted_means(means, coeffs, self._scale(x))
        lp = self._bin_log_prob(x.unsqueeze(1), mu, log_scales)
        return logit_pi.log_softmax(1), lp

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        log_pi, lp = self.component_log_probs(params, x)
        return torch.logsumexp(log_pi + lp.sum(2), dim=1)

    def conditionals(self, params: Tensor, x: Tensor) -> Tensor:
        logit_pi, means, log_scales, coeffs = self._split(params)
        mu = self._adjusted_means(means, coeffs, self._scale(x))  # (B,K,C,*S)
        log_pi = logit_pi.log_softmax(1)
        lp_true = self._bin_log_prob(x.unsqueeze(1), mu, log_scales)  # (B,K,C,*S)
        # posterior weight of each component after seeing channels < c
        prefix = torch.cat([torch.zeros_like(lp_true[:, :, :1]), lp_true[:, :, :-1].cumsum(2)], dim=2)
        log_w = log_pi.unsqueeze(2) + prefix
        log_w = log_w - log_w.logsumexp(1, keepdim=True)  # (B,K,C,*S)
        values = torch.arange(self.levels, device=params.device).view(1, 1, 1, -1, *[1] * (x.dim() - 2))
        lp_all = self._bin_log_prob(values, mu.unsqueeze(3), log_scales.unsqueeze(3))  # (B,K,C,L,*S)
        return torch.logsumexp(log_w.unsqueeze(3) + lp_all, dim=1)  # (B,C,L,*S)
