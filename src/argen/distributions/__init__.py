"""Per-pixel output distributions shared by every model.

A distribution maps a parameter tensor `params` of shape (B, P, *S) and integer data `x` of
shape (B, C, *S) (S: any spatial/temporal dims, possibly none) to

- `log_prob(params, x)`      -> (B, *S): log p(pixel), channels summed;
- `conditionals(params, x)`  -> (B, C, L, *S): log p(x_c = v | x_<c, context) for every value v,
  using the true earlier channels of `x`. Sampling, completion and entropy coding all use this
  table, so every model gets them the same way.
"""
from argen.distributions.base import MAX_LEVELS, PixelDistribution
from argen.distributions.categorical import Categorical

__all__ = ["MAX_LEVELS", "PixelDistribution", "Categorical", "make_distribution"]


def make_distribution(kind: str, channels: int, levels: int, **kw: int) -> PixelDistribution:
    """Build a distribution by name ("categorical" or "logistic_mixture")."""
    if kind == "categorical":
        return Categorical(channels, levels)
    if kind == "logistic_mixture":
        from argen.distributions.logistic_mixture import DiscretizedLogisticMixture

        return DiscretizedLogisticMixture(channels, levels, **kw)
    raise ValueError(f"unknown distribution {kind!r}; expected 'categorical' or 'logistic_mixture'")
