"""Output distributions: normalization, chain rule, and the logistic mixture against quadrature."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import integrate

from argen.distributions import Categorical, make_distribution
from argen.distributions.logistic_mixture import DiscretizedLogisticMixture


def _logistic_pdf(u: float, mean: float, scale: float) -> float:
    z = (u - mean) / scale
    return math.exp(-abs(z)) / (scale * (1 + math.exp(-abs(z))) ** 2)


def _bin_integral(v: int, levels: int, mean: float, scale: float) -> float:
    """Mass of the logistic on bin v of [-1, 1] by quadrature (edge bins extend to infinity)."""
    centre = 2 * v / (levels - 1) - 1
    half = 1 / (levels - 1)
    lo = -np.inf if v == 0 else centre - half
    hi = np.inf if v == levels - 1 else centre + half
    pts = [mean] if lo < mean < hi else None
    if np.isinf(lo) or np.isinf(hi):
        val, _ = integrate.quad(_logistic_pdf, lo, hi, args=(mean, scale), epsabs=1e-13, epsrel=1e-10)
    else:
        val, _ = integrate.quad(_logistic_pdf, lo, hi, args=(mean, scale), points=pts, epsabs=1e-13, epsrel=1e-10)
    return val


@pytest.mark.parametrize("channels,levels", [(1, 256), (1, 5), (3, 4), (3, 16)])
def test_logistic_mixture_matches_quadrature(channels, levels):
    torch.manual_seed(1)
    d = DiscretizedLogisticMixture(channels, levels, components=3)
    params = torch.randn(1, d.num_params, dtype=torch.float64)
    k = d.components
    # moderate scales so every bin uses the exact CDF difference
    params[:, k + k * channels: k + 2 * k * channels] = torch.empty(k * channels).uniform_(-2.5, -0.5)
    x = torch.randint(0, levels, (1, channels))
    logit_pi, means, log_scales, coeffs = d._split(params)
    xs = d._scale(x)
    mu = d._adjusted_means(means, coeffs, xs)[0]  # (K, C)
    pi = logit_pi.softmax(1)[0]
    expected = 0.0
    for comp in range(k):
        prod = float(pi[comp])
        for c in range(channels):
            prod *= _bin_integral(int(x[0, c]), levels, float(mu[comp, c]), math.exp(float(log_scales[0, comp, c])))
        expected += prod
    got = float(d.log_prob(params, x)[0])
    assert got == pytest.approx(math.log(expected), abs=1e-4)


def test_logistic_mixture_tail_fallback_is_close():
    """Far from the mean the CDF difference underflows; the pdf-at-centre fallback stays accurate."""
    d = DiscretizedLogisticMixture(1, 256, components=1)
    params = torch.tensor([[0.0, -0.9, -5.0]])  # mean -0.9, scale e^-5
    v = 250  # ~ +0.96, far in the upper tail but not the edge bin
    got = float(d.log_prob(params, torch.tensor([[v]]))[0])
    expected = math.log(_bin_integral(v, 256, -0.9, math.exp(-5.0)))
    assert got == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("dist", [Categorical(3, 4), DiscretizedLogisticMixture(3, 4, 2), DiscretizedLogisticMixture(1, 256, 4)])
def test_conditionals_normalized_and_chain_rule(dist):
    torch.manual_seed(0)
    p = torch.randn(4, dist.num_params, 3, 2)
    x = torch.randint(0, dist.levels, (4, dist.channels, 3, 2))
    table = dist.conditionals(p, x)
    assert table.shape == (4, dist.channels, dist.levels, 3, 2)
    torch.testing.assert_close(table.logsumexp(2), torch.zeros(4, dist.channels, 3, 2), atol=1e-5, rtol=0)
    chain = table.gather(2, x.unsqueeze(2)).squeeze(2).sum(1)
    torch.testing.assert_close(chain, dist.log_prob(p, x), atol=1e-5, rtol=1e-5)


def test_mixture_joint_normalizes_over_all_pixel_values():
    d = DiscretizedLogisticMixture(3, 4, components=5)
    p = torch.randn(1, d.num_params).expand(64, -1)
    vals = torch.tensor(list(itertools.product(range(4), repeat=3)))
    assert abs(float(d.log_prob(p, vals).double().logsumexp(0))) < 1e-5


def test_mixture_channel_conditional_ignores_later_channels():
    d = DiscretizedLogisticMixture(3, 8, components=3)
    p = torch.randn(1, d.num_params)
    x = torch.tensor([[1, 2, 3]])
    y = torch.tensor([[1, 5, 0]])
    a, b = d.conditionals(p, x), d.conditionals(p, y)
    torch.testing.assert_close(a[:, :2], b[:, :2])  # R and G tables depend only on R
    assert not torch.allclose(a[:, 2], b[:, 2])


def test_bad_arguments():
    with pytest.raises(ValueError, match="levels"):
        Categorical(1, 1)
    with pytest.raises(ValueError, match="components"):
        DiscretizedLogisticMixture(1, 4, 0)
    with pytest.raises(ValueError, match="parameter channels"):
        Categorical(1, 4).log_prob(torch.zeros(1, 5), torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown distribution"):
        make_distribution("gaussian", 1, 4)
