"""The model contract (DESIGN.md) in one base class.

Subclasses implement `forward(x, cond) -> params` (B, P, *S) and choose a `distribution`; the base
class supplies input checking, `log_prob`, `loss`, `conditionals`, sampling and completion through
the shared samplers, so every model behaves the same at its boundary.
"""
from __future__ import annotations

import abc
import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from argen.distributions import PixelDistribution
from argen.fields import spec, validate_fields
from argen.sampling.logits import check_sampling_options


@dataclass
class ModelConfig:
    """Fields every image model has. Subclasses add their hyperparameters.

    Every field is declared with `argen.fields.spec` (its type and range); `validate` checks them
    all through `validate_fields` and subclasses add only cross-field rules (divisibility etc.).
    """

    image_shape: tuple[int, int, int] = spec((1, 28, 28), ge=1)  # (C, H, W); C is 1 or 3
    levels: int = spec(256, ge=2, le=256)
    num_classes: int | None = spec(None, ge=1)

    def __post_init__(self) -> None:
        # JSON round trips (checkpoints) turn tuples into lists; keep configs comparable. No other
        # conversion: a wrong type is reported by `validate`, never silently truncated.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                setattr(self, f.name, tuple(value))

    def validate(self) -> None:
        """Raise ValueError naming expected and given values; subclasses extend with cross-field rules."""
        validate_fields(self, "model")
        if self.image_shape[0] not in (1, 3):
            raise ValueError(f"image_shape channels must be 1 or 3, given {self.image_shape[0]}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_flag(name: str, value: Any) -> None:
    """Raise ValueError unless `value` is a bool (1, 'no' or None are not flags)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, given {value!r}")


def check_count(name: str, value: Any) -> None:
    """Raise ValueError unless `value` is an int >= 1 (not a bool, not a float)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, given {value!r}")


def check_generate_options(generator: Any, temperature: Any, top_k: Any, top_p: Any, progress: Any,
                           naive: Any) -> None:
    """The arguments every `sample` / `complete` takes (models that override them call this too)."""
    check_sampling_options(temperature, top_k, top_p, generator)
    check_flag("progress", progress)
    check_flag("naive", naive)


class ARModel(nn.Module, abc.ABC):
    """An autoregressive model over integer images (B, C, H, W) with values in [0, levels)."""

    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    model_name: ClassVar[str] = "?"  # set by @register_model
    #: False for models whose log_prob is a bound (ARDM's ELBO, two-stage latent models).
    exact_likelihood: ClassVar[bool] = True
    #: True for models that gather statistics while training (ARDM's per-step losses): they
    #: implement `loss_and_stats` and `update_statistics`, and the trainer all-reduces the stats.
    has_training_stats: ClassVar[bool] = False

    distribution: PixelDistribution

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise ValueError(f"expected a {self.config_class.__name__}, given {type(config).__name__}")
        config.validate()
        self.config = config

    # ----- shape facts -------------------------------------------------------------------
    @property
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one example without the batch dim: (C, H, W) for images."""
        return tuple(self.config.image_shape)

    @property
    def channels(self) -> int:
        return self.data_shape[-3]

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Positions the generation order walks over: (H, W) for images."""
        return self.data_shape[-2:]

    @property
    def levels(self) -> int:
        return self.config.levels

    @property
    def num_dims(self) -> int:
        """Number of sub-pixels (C*H*W): the denominator of bits/dim."""
        return math.prod(self.data_shape)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ----- the network ---------------------------------------------------------------------
    @abc.abstractmethod
    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """Distribution parameters (B, P, H, W) for every pixel given the pixels before it."""

    def generation_order(self) -> list[tuple[int, ...]]:
        """Positions in the order the model generates them (raster by default)."""
        return list(itertools.product(*(range(s) for s in self.spatial_shape)))

    # ----- input checks ----------------------------------------------------------------------
    def check_input(self, x: Tensor, cond: Tensor | None = None) -> None:
        """Raise ValueError naming expected and given when `x` or `cond` break the contract."""
        if not isinstance(x, Tensor):
            raise ValueError(f"expected a torch.Tensor, given {type(x).__name__}")
        if x.dtype != torch.long:
            raise ValueError(f"expected dtype torch.long (integer pixel values), given {x.dtype}")
        if x.dim() != len(self.data_shape) + 1 or tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"expected shape (B, {', '.join(map(str, self.data_shape))}), given {tuple(x.shape)}")
        if x.numel():
            lo, hi = int(x.min()), int(x.max())
            if lo < 0 or hi >= self.levels:
                raise ValueError(f"expected values in [0, {self.levels - 1}], given range [{lo}, {hi}]")
        self.check_cond(cond, x.shape[0])

    def check_cond(self, cond: Tensor | None, batch: int) -> None:
        if cond is None:
            return
        n = self.config.num_classes
        if not n:
            raise ValueError("expected cond=None: this model was built without num_classes")
        if not isinstance(cond, Tensor) or cond.dtype != torch.long or tuple(cond.shape) != (batch,):
            given = f"{cond.dtype} {tuple(cond.shape)}" if isinstance(cond, Tensor) else type(cond).__name__
            raise ValueError(f"expected cond as torch.long labels of shape ({batch},), given {given}")
        if batch and (int(cond.min()) < 0 or int(cond.max()) >= n):
            raise ValueError(f"expected labels in [0, {n - 1}], given range [{int(cond.min())}, {int(cond.max())}]")

    # ----- likelihood ------------------------------------------------------------------------
    def log_prob(self, x: Tensor, cond: Tensor | None = None, reduce: bool = True) -> Tensor:
        """Exact log-likelihood in nats: (B,), or per position (B, H, W) with reduce=False."""
        self.check_input(x, cond)
        check_flag("reduce", reduce)
        per_pixel = self.distribution.log_prob(self(x, cond), x)
        return per_pixel.flatten(1).sum(1) if reduce else per_pixel

    def conditionals(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """(B, C, L, H, W) log p(x_c = v | everything before it), all conditionals in one pass.

        Entropy coding reads these tables; they are exact for the given `x` (its own earlier
        sub-pixels are the context).
        """
        self.check_input(x, cond)
        return self.distribution.conditionals(self(x, cond), x)

    def loss(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """Scalar training loss: mean negative log-likelihood in nats per dimension."""
        return -self.log_prob(x, cond).mean() / self.num_dims

    def loss_and_stats(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, dict[str, tuple[Tensor, Tensor]]]:
        """The loss and {name: (sum, count)} statistics the trainer sums over ranks (none by default)."""
        return self.loss(x, cond), {}

    def update_statistics(self, stats: dict[str, tuple[Tensor, Tensor]]) -> None:
        """Fold all-reduced training statistics into the model (called on every rank after a step)."""

    # ----- generation ------------------------------------------------------------------------
    def stepper(self, cond: Tensor | None) -> Any:
        """Object that computes parameters at one position during sampling.

        The default reruns the whole network (the reference naive path); models with a cached
        path override this.
        """
        from argen.sampling.naive import NaiveStepper

        return NaiveStepper(self, cond)

    @classmethod
    def has_own_stepper(cls) -> bool:
        """True when the model samples with its own (cached) stepper rather than the naive one."""
        return cls.stepper is not ARModel.stepper

    @torch.no_grad()
    def sample(
        self,
        n: int,
        cond: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        progress: bool = False,
        naive: bool = False,
    ) -> Tensor:
        """Draw `n` images (n, C, H, W) long in [0, levels).

        `naive=True` uses the reference sampler (a full forward pass per step) instead of the
        model's own (cached) stepper; both give identical samples from the same generator.
        """
        check_count("n", n)
        check_generate_options(generator, temperature, top_k, top_p, progress, naive)
        self.check_cond(cond, n)
        x = torch.zeros((n, *self.data_shape), dtype=torch.long, device=self.device)
        return self._generate(x, None, cond, generator, temperature, top_k, top_p, progress, naive)

    @torch.no_grad()
    def complete(
        self,
        x: Tensor,
        known: Tensor,
        cond: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        progress: bool = False,
        naive: bool = False,
    ) -> Tensor:
        """Fill the pixels where `known` (B, H, W) or (H, W) bool is False; keep the rest.

        A raster-order model conditions each filled pixel on the pixels before it in raster
        order (known or filled); known pixels later in the order cannot inform it.
        """
        self.check_input(x, cond)
        check_generate_options(generator, temperature, top_k, top_p, progress, naive)
        known = self.check_known(known, x.shape[0])
        return self._generate(x.clone(), known, cond, generator, temperature, top_k, top_p, progress, naive)

    def check_known(self, known: Tensor, batch: int) -> Tensor:
        """Validate a pixel-level known mask and broadcast it to (B, *spatial)."""
        want = tuple(self.spatial_shape)
        if not isinstance(known, Tensor) or known.dtype != torch.bool:
            raise ValueError(f"expected known as a torch.bool tensor, given {getattr(known, 'dtype', type(known).__name__)}")
        if tuple(known.shape) == want:
            known = known.expand(batch, *want)
        if tuple(known.shape) != (batch, *want):
            raise ValueError(f"expected known of shape {want} or {(batch, *want)}, given {tuple(known.shape)}")
        return known.to(self.device)

    def _generate(self, x: Tensor, known: Tensor | None, cond: Tensor | None, generator: torch.Generator | None,
                  temperature: float, top_k: int | None, top_p: float | None, progress: bool,
                  naive: bool = False) -> Tensor:
        from argen.sampling.naive import NaiveStepper, autoregressive_fill

        was_training = self.training
        self.eval()
        try:
            return autoregressive_fill(
                self, x, known, cond, NaiveStepper(self, cond) if naive else self.stepper(cond),
                generator=generator, temperature=temperature,
                top_k=top_k, top_p=top_p, progress=progress,
            )
        finally:
            self.train(was_training)

    def extra_repr(self) -> str:
        return f"name={self.model_name!r}, data_shape={self.data_shape}, levels={self.levels}"

