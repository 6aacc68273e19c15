"""The model contract (DESIGN.md) in one base class.

Subclasses implement `forward(x, cond) -> params` (B, P, *S) and choose a `distribution`; the base
class supplies input checking, `log_prob`, `loss`, `conditionals`, sampling and completion through
the shared samplers, so every model behaves the same at its boundary.
"""
from __future__ import annotations

import abc
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from argen.conditioning import CondSpec
from argen.distributions import MAX_LEVELS, Categorical, PixelDistribution
from argen.fields import restore_tuples, spec, validate_fields
from argen.positions import channels_first, raster

#: The most levels that are pixel intensities (8 bits); more are codes of a tokenizer (a code grid).
PIXEL_LEVELS = 256


@dataclass
class ModelConfig:
    """Fields every image model has. Subclasses add their hyperparameters.

    Every field is declared with `argen.fields.spec` (its type and range); `validate` checks them
    all through `validate_fields` and subclasses add only cross-field rules (divisibility etc.).

    What a config declares beyond its fields (subclasses override what differs):
    `data_shape` (one example, channel axis third from last: (C, H, W) images, (T, C, H, W)
    video), `distribution_class()` (whose `max_levels` bounds `levels`: 65,536 for a categorical
    head, 256 for a logistic mixture) and `cond_spec()` (what `cond` is; `num_classes` means class
    labels). With more than 256 levels the data is a code grid (1, h, w), not pixels.
    """

    image_shape: tuple[int, int, int] = spec((1, 28, 28), ge=1)  # (C, H, W); C is 1 or 3 (1 for a code grid)
    levels: int = spec(256, ge=2, le=MAX_LEVELS)
    num_classes: int | None = spec(None, ge=1)
    #: True for a family whose channel axis may hold a code volume's s codes per position (a video
    #: prior over (t, s, h, w) codes: sliced VQ, packed hierarchies): any s >= 1, and levels above
    #: 256 with s > 1. Pixel families keep C in (1, 3) and more than 256 levels on one channel only.
    code_channels: ClassVar[bool] = False

    def __post_init__(self) -> None:
        restore_tuples(self)  # JSON round trips (checkpoints) turn tuples into lists

    def validate(self) -> None:
        """Raise ValueError naming expected and given values; subclasses extend with cross-field rules."""
        validate_fields(self, "model")
        channels = self.data_shape[-3]
        if channels not in (1, 3) and not self.code_channels:
            raise ValueError(f"{self.shape_field} channels must be 1 or 3, given {channels}")
        dist = self.distribution_class()
        if self.levels > dist.max_levels:
            raise ValueError(f"model.levels: this model's {dist.description} takes at most {dist.max_levels} "
                             f"levels, given {self.levels} (a categorical-head model takes up to {MAX_LEVELS})")
        channels = self.data_shape[-3]
        if self.levels > PIXEL_LEVELS and channels != 1 and not self.code_channels:
            raise ValueError(f"model.levels above {PIXEL_LEVELS} are codes, not pixels: a code grid has 1 channel "
                             f"(shape (1, h, w)), given {channels} channels with {self.levels} levels")

    @property
    def data_shape(self) -> tuple[int, ...]:
        """One example without the batch dim: (C, H, W) for images; a video config gives (T, C, H, W)."""
        return tuple(self.image_shape)

    @property
    def shape_field(self) -> str:
        """The config field holding `data_shape` (the CLI sets it from the dataset)."""
        return "image_shape"

    def distribution_class(self) -> type[PixelDistribution]:
        """The per-position distribution of the model's head; its `max_levels` bounds `levels`."""
        return Categorical

    def cond_spec(self) -> CondSpec:
        """What the model is conditioned on: class labels when built with `num_classes`, else nothing."""
        return CondSpec.classes(self.num_classes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class VideoModelConfig(ModelConfig):
    """Fields every video model has: `video_shape` (T, C, H, W) replaces `image_shape`, which a video
    config refuses (it would be a second, contradicting shape). Positions are (t, h, w)."""

    image_shape: tuple[int, int, int] | None = spec(None, ge=1)  # not used by video models: leave None
    video_shape: tuple[int, int, int, int] = spec((10, 1, 32, 32), ge=1)  # (T, C, H, W)

    def validate(self) -> None:
        if self.image_shape is not None:
            raise ValueError(f"model.image_shape: a video model takes video_shape (T, C, H, W), given image_shape "
                             f"{self.image_shape}")
        super().validate()

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.video_shape)

    @property
    def shape_field(self) -> str:
        return "video_shape"


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
    """Raise ValueError unless these sampling options are usable (`argen.sampling.SamplingConfig`
    checks them; kept for callers of the old helper)."""
    from argen.sampling import SamplingConfig

    SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, generator=generator, progress=progress,
                   naive=naive)


@dataclass(frozen=True)
class Capabilities:
    """What a model family declares about generation, read by sampling, the CLI, the codec, the
    benchmarks and the tests instead of probing signatures (`ARModel.capabilities`, a class attribute).

    stepper_kind: the sampler family in `argen.sampling.steppers` ("naive", "conv_plan",
        "recurrent", "kv_cache", "ardm"); the kind's factory uses the model's public surface only.
    parallel_steps: `sample` / `complete` take `steps=` (a budget of network calls; ARDM).
    sample_orders: `sample` / `complete` take `order=` (the pixel order(s) to generate in; ARDM).
    any_order: `forward` / `log_prob` / `conditionals` take `order=`, and completion walks
        `completion_order(mask)` (the known pixels first; LMConv).
    order_ensembles: `eval_orders(n)` and `log_prob_ensemble(x, orders, cond)` (LMConv).
    guidance: the model has a null condition, `null_cond(batch)`, so classifier-free guidance
        (`SamplingConfig.cfg_scale != 1`) is defined; without it cfg_scale != 1 is refused.
    Whether the model's likelihood is exact is the class attribute `exact_likelihood` (contract v1).
    """

    stepper_kind: str = "naive"
    parallel_steps: bool = False
    sample_orders: bool = False
    any_order: bool = False
    order_ensembles: bool = False
    guidance: bool = False

    @property
    def sample_options(self) -> tuple[str, ...]:
        """Keyword options `sample` / `complete` take besides the `SamplingConfig` fields."""
        return (("steps",) if self.parallel_steps else ()) + (("order",) if self.sample_orders else ())


def prediction_problem(model: Any, context: Tensor) -> tuple[Tensor, Tensor]:
    """Video prediction as a completion: the first k frames (B, k, C, H, W), checked against the
    model's clips, -> (clips (B, T, C, H, W) with the context in front and zeros after, known mask
    (B, T, H, W) True on the first k frames). Shared by every model that predicts by completing."""
    shape = tuple(model.data_shape)
    if len(shape) != 4:
        raise ValueError(f"predict is for video models (data (T, C, H, W)), given a model of data shape {shape}")
    if not isinstance(context, Tensor) or context.dim() != 5 or tuple(context.shape[2:]) != shape[1:] \
            or not 1 <= context.shape[1] < shape[0]:
        given = tuple(context.shape) if isinstance(context, Tensor) else type(context).__name__
        raise ValueError(f"expected context frames (B, k, {', '.join(map(str, shape[1:]))}) with 1 <= k < "
                         f"{shape[0]}, given {given}")
    if context.dtype != torch.long:
        raise ValueError(f"expected context frames of dtype torch.long (integer pixel values), given {context.dtype}")
    if context.numel() and (int(context.min()) < 0 or int(context.max()) >= model.levels):
        raise ValueError(f"expected context values in [0, {model.levels - 1}], given range "
                         f"[{int(context.min())}, {int(context.max())}]")
    b, k = context.shape[:2]
    x = torch.zeros((b, *shape), dtype=torch.long, device=context.device)
    x[:, :k] = context
    known = torch.zeros((b, *model.position_shape), dtype=torch.bool, device=context.device)
    known[:, :k] = True
    return x, known


class ARModel(nn.Module, abc.ABC):
    """An autoregressive model over integer data (B, *data_shape) with values in [0, levels):
    images (B, C, H, W), video (B, T, C, H, W), code grids (B, 1, h, w) of a tokenizer."""

    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    model_name: ClassVar[str] = "?"  # set by @register_model
    #: False for models whose log_prob is a bound (ARDM's ELBO, two-stage latent models).
    exact_likelihood: ClassVar[bool] = True
    #: True when `log_prob` under a given generation order (the model's own, or `order=` where it
    #: takes one) is exact, with per-position conditionals that sum to 1: every AR model, ARDM too
    #: (its default log_prob is an ELBO over random orders, exact for a given one). False for a
    #: bound in every order (ImageBART's ELBO over diffusion scales): the conformance suite then
    #: checks that the probabilities of a whole space sum to at most 1 instead of exactly 1.
    exact_in_order: ClassVar[bool] = True
    #: True for models that gather statistics while training (ARDM's per-step losses): they
    #: implement `loss_and_stats` and `update_statistics`, and the trainer all-reduces the stats.
    has_training_stats: ClassVar[bool] = False
    #: What the family can do when generating (its stepper kind, its extra sampling options).
    capabilities: ClassVar[Capabilities] = Capabilities()
    #: What a checkpoint of it is (`argen.checkpoint.KINDS`; tokenizers say "tokenizer").
    kind: ClassVar[str] = "model"
    #: What the trainer minimises (`argen.train.trainer.OBJECTIVES`): the negative log-likelihood.
    objective: ClassVar[str] = "likelihood"

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
        """Shape of one example without the batch dim: (C, H, W) for images, (T, C, H, W) for video."""
        return tuple(self.config.data_shape)

    @property
    def channels(self) -> int:
        """Sub-pixels per position: the channel axis, third from last in `data_shape`."""
        return self.data_shape[-3]

    @property
    def position_shape(self) -> tuple[int, ...]:
        """Positions the generation order walks over: `data_shape` without the channel axis,
        (H, W) for images, (T, H, W) for video. `log_prob(reduce=False)` has one value per position."""
        shape = self.data_shape
        return (*shape[:-3], *shape[-2:])

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Alias of `position_shape` (the name from before video)."""
        return self.position_shape

    @property
    def levels(self) -> int:
        """Values per sub-pixel: data lie in [0, levels); up to `max_levels`."""
        return self.config.levels

    @property
    def max_levels(self) -> int:
        """The most levels this model's head takes (65,536 categorical, 256 logistic mixture)."""
        return self.config.distribution_class().max_levels

    @property
    def cond_spec(self) -> CondSpec:
        """What `cond` is for this model (none, class labels, tokens, context frames)."""
        return self.config.cond_spec()

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
        """Distribution parameters (B, P, *position_shape) for every position given the ones before it."""

    def generation_order(self) -> list[tuple[int, ...]]:
        """Positions (tuples over `position_shape`) in the order the model generates them (raster by default)."""
        return raster(self.position_shape)

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
        """Raise ValueError unless `cond` fits the model's declared `cond_spec` (None always does):
        labels (B,), tokens (B, L) or context frames (B, k, C, H, W), see `argen.conditioning`."""
        self.cond_spec.check(cond, batch)

    # ----- likelihood ------------------------------------------------------------------------
    def log_prob(self, x: Tensor, cond: Tensor | None = None, reduce: bool = True) -> Tensor:
        """Exact log-likelihood in nats: (B,), or with reduce=False one value per position,
        (B, *position_shape): (B, H, W) for images, (B, T, H, W) for video, channels summed."""
        self.check_input(x, cond)
        check_flag("reduce", reduce)
        per_pixel = self.distribution.log_prob(self(x, cond), channels_first(x))
        return per_pixel.flatten(1).sum(1) if reduce else per_pixel

    def conditionals(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """(B, C, L, *position_shape) log p(x_c = v | everything before it), all in one pass.

        Entropy coding reads these tables; they are exact for the given `x` (its own earlier
        sub-pixels are the context).
        """
        self.check_input(x, cond)
        return self.distribution.conditionals(self(x, cond), channels_first(x))

    def loss(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """Scalar training loss: mean negative log-likelihood in nats per dimension."""
        return -self.log_prob(x, cond).mean() / self.num_dims

    def loss_and_stats(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, dict[str, tuple[Tensor, Tensor]]]:
        """The loss and {name: (sum, count)} statistics the trainer sums over ranks (none by default)."""
        return self.loss(x, cond), {}

    def update_statistics(self, stats: dict[str, tuple[Tensor, Tensor]]) -> None:
        """Fold all-reduced training statistics into the model (called on every rank after a step)."""

    # ----- generation ------------------------------------------------------------------------
    @property
    def sampling_defaults(self) -> dict[str, Any]:
        """`SamplingConfig` fields this model samples with when the caller gives no config (HARP's
        top-k, LVT's temperature); keywords override them, an explicit config replaces them. None here."""
        return {}

    # Sampling lives in `argen.sampling` and depends on this class's public surface, never the
    # reverse: `sample` / `complete` check their inputs and hand over to `argen.sampling.generate`,
    # which builds what the model declares in `capabilities` (imported here lazily, at call time).
    def stepper(self, cond: Tensor | None) -> Any:
        """The model's own stepper for the generic loop (`argen.sampling.autoregressive_fill`),
        built by `argen.sampling` from the declared `capabilities.stepper_kind`."""
        from argen.sampling import build_stepper

        return build_stepper(self, cond)

    @property
    def steps_by_position(self) -> bool:
        """True when generation can walk one position at a time with a stepper (the default); an
        upscale ARDM samples by stages and has no per-position stepper."""
        return True

    @property
    def own_stepper(self) -> bool:
        """True when the model samples with a stepper of its own kind rather than the naive one
        (from the declared stepper kind and the config: `steps_by_position`)."""
        return self.capabilities.stepper_kind != "naive" and self.steps_by_position

    def has_own_stepper(self) -> bool:
        """`own_stepper` (kept as a method for older callers)."""
        return self.own_stepper

    @torch.no_grad()
    def sample(self, n: int, cond: Tensor | None = None, config: Any = None, **options: Any) -> Tensor:
        """Draw `n` images (n, C, H, W) long in [0, levels).

        `config` is an `argen.sampling.SamplingConfig`; its fields may also be given as keywords
        (`sample(n, temperature=0.9, generator=g)`; keywords override the config's). Other keywords
        are the options the model declares (`capabilities.sample_options`, e.g. ARDM's steps and
        order). `naive=True` uses the reference sampler (a full forward pass per step) instead of
        the model's own stepper; both give identical samples from the same generator.
        """
        from argen.sampling import generate, split_options

        check_count("n", n)
        config, options = split_options(config, options, self.sampling_defaults)
        self.check_cond(cond, n)
        x = torch.zeros((n, *self.data_shape), dtype=torch.long, device=self.device)
        return generate(self, x, None, cond, config, **options)

    @torch.no_grad()
    def complete(self, x: Tensor, known: Tensor, cond: Tensor | None = None, config: Any = None,
                 **options: Any) -> Tensor:
        """Fill the pixels where `known` (B, H, W) or (H, W) bool is False; keep the rest.

        Options as in `sample`. A raster-order model conditions each filled pixel on the pixels
        before it in raster order (known or filled); known pixels later in the order cannot inform
        it (a model declaring `any_order` completes in an order that visits the known pixels first).
        """
        from argen.sampling import generate, split_options

        self.check_input(x, cond)
        config, options = split_options(config, options, self.sampling_defaults)
        known = self.check_known(known, x.shape[0])
        return generate(self, x.clone(memory_format=torch.contiguous_format), known, cond, config, **options)

    @torch.no_grad()
    def predict(self, context: Tensor, cond: Tensor | None = None, config: Any = None, **options: Any) -> Tensor:
        """Video prediction: given the first k frames (B, k, C, H, W), generate the remaining T - k
        frames of the model's clip length T; returns the whole clip (B, T, C, H, W).

        `complete` with the first k frames known (the protocol of VPN and the video models); options
        as in `sample`.
        """
        x, known = prediction_problem(self, context)
        return self.complete(x, known, cond, config, **options)

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

    def extra_repr(self) -> str:
        return f"name={self.model_name!r}, data_shape={self.data_shape}, levels={self.levels}"

