"""The interface every per-pixel distribution implements."""
from __future__ import annotations

import abc
from typing import ClassVar

from torch import Tensor

#: The most levels any distribution takes: a 16-bit value, e.g. the codes of a 16,384-entry tokenizer.
MAX_LEVELS = 65536


class PixelDistribution(abc.ABC):
    """Distribution of one pixel (C channels, each in [0, levels)) given network parameters."""

    #: The most value levels this distribution can model (a declared limit, checked here and by
    #: `ModelConfig.validate` through `ModelConfig.distribution_class`).
    max_levels: ClassVar[int] = MAX_LEVELS
    #: How the limit reads in error messages.
    description: ClassVar[str] = "distribution"

    def __init__(self, channels: int, levels: int) -> None:
        if channels < 1:
            raise ValueError(f"channels must be >= 1, given {channels}")
        if not 2 <= levels <= self.max_levels:
            raise ValueError(f"levels must be in [2, {self.max_levels}] for a {self.description}, given {levels}")
        self.channels = channels
        self.levels = levels

    @property
    @abc.abstractmethod
    def num_params(self) -> int:
        """Number of parameter channels P the network must output per pixel."""

    @abc.abstractmethod
    def conditionals(self, params: Tensor, x: Tensor) -> Tensor:
        """(B, C, L, *S) normalized log-probabilities of each channel given the earlier ones."""

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """(B, *S) log-probability of each pixel, channels summed."""
        table = self.conditionals(params, x)
        return table.gather(2, x.unsqueeze(2)).squeeze(2).sum(1)

    @property
    def output_depends_on_current_pixel(self) -> bool:
        """True when channel c's distribution needs the network to have seen channels < c.

        Categorical heads get the channel dependence from masked networks, so the network must
        be rerun after each channel is drawn; the logistic mixture encodes it in the parameters.
        """
        return True
