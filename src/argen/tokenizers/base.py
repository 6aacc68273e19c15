"""The tokenizer contract and its registry.

A tokenizer maps an image batch (B, C, H, W) long in [0, levels) to a grid of discrete codes
(B, h, w) long in [0, codebook_size) and back; a two-stage model's prior is an ordinary AR model
over that grid. A video tokenizer (`VideoTokenizer`, modality "video") maps clips (B, T, C, H, W)
to code volumes (B, t, s, h, w) the same way; its prior is an ordinary video model over them
(`prior_shape`). Tokenizers train by reconstruction, not likelihood (`objective`), possibly in
several phases with one optimizer each (`optimizer_phases`: VQ-GAN's discriminator has its own),
and may gather statistics the trainer all-reduces (`has_training_stats`: EMA codebooks).

Training protocol, read by `argen.train.Trainer` (no trainer code here): per step, for each phase
in `training_phases(step)` ("model" first), `phase_loss(phase, x, step)` gives the loss for that
phase's optimizer over `phase_parameters(phase)` and statistics {name: (sum, count)}; the trainer
sums them over micro-batches and ranks, logs every 0-d one as sum / count, and calls
`update_statistics(all of them)` once after the optimizer steps. Evaluation: `eval_stats(x)` per
held-out batch (sums), `summarize(totals)` turns the summed totals into numbers. A tokenizer that
declares `uses_condition` (IQ-VAE) also gets the batch's y: `phase_loss(phase, x, step, cond=y)`
and `eval_stats(x, cond=y)`.
"""
from __future__ import annotations

import abc
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from argen.conditioning import CondSpec
from argen.fields import restore_tuples, spec, validate_fields

Stats = dict[str, tuple[Tensor, Tensor]]

#: Pixel values a tokenizer takes: 8-bit data at most (codes of codes are not images).
MAX_PIXEL_LEVELS = 256


@dataclass
class TokenizerConfig:
    """Fields every tokenizer has; subclasses add theirs, each declared with `argen.fields.spec`."""

    image_shape: tuple[int, int, int] = spec((1, 28, 28), ge=1)  # (C, H, W), C in {1, 3}
    levels: int = spec(256, ge=2, le=MAX_PIXEL_LEVELS)  # pixel levels of the data

    def __post_init__(self) -> None:
        restore_tuples(self)  # JSON round trips (checkpoints) turn tuples into lists

    def validate(self) -> None:
        """Raise ValueError naming expected and given values; subclasses add cross-field rules."""
        validate_fields(self, "tokenizer")
        if self.image_shape[0] not in (1, 3):
            raise ValueError(f"tokenizer.image_shape channels must be 1 or 3, given {self.image_shape[0]}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Tokenizer(nn.Module, abc.ABC):
    """Images (B, C, H, W) long in [0, levels) <-> codes (B, h, w) long in [0, codebook_size)."""

    config_class: ClassVar[type[TokenizerConfig]] = TokenizerConfig
    model_name: ClassVar[str] = "?"  # set by @register_tokenizer (checkpoints record it)
    kind: ClassVar[str] = "tokenizer"  # checkpoints record it; argen.load dispatches on it
    modality: ClassVar[str] = "image"  # "image" or "video" (VideoTokenizer); the registry entry reports it
    objective: ClassVar[str] = "reconstruction"  # pixel models: "likelihood"
    has_training_stats: ClassVar[bool] = False  # True for EMA codebooks
    optimizer_phases: ClassVar[tuple[str, ...]] = ("model",)
    #: True when training / evaluation also need each batch's y (IQ-VAE's edge maps): the trainer and
    #: `argen eval` then call `phase_loss(phase, x, step, cond=y)` and `eval_stats(x, cond=y)`
    uses_condition: ClassVar[bool] = False
    #: no Polyak average of the weights: an averaged encoder would not match the codebook buffers,
    #: which follow the live encoder (the trainer ignores train.ema_decay)
    weight_averaging: ClassVar[bool] = False

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise ValueError(f"expected a {self.config_class.__name__}, given {type(config).__name__}")
        config.validate()
        self.config = config

    # ----- facts ---------------------------------------------------------------------------------
    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.config.image_shape)  # type: ignore[return-value]

    @property
    def data_shape(self) -> tuple[int, ...]:
        """What the trainer checks batches against: one image (C, H, W)."""
        return self.image_shape

    @property
    def levels(self) -> int:
        return self.config.levels

    @property
    @abc.abstractmethod
    def code_shape(self) -> tuple[int, int]:
        """(h, w) of the code grid of one image."""

    @property
    @abc.abstractmethod
    def codebook_size(self) -> int:
        """Codes take values in [0, codebook_size)."""

    @property
    def num_tokens(self) -> int:
        return math.prod(self.code_shape)

    @property
    def prior_shape(self) -> tuple[int, ...]:
        """The data shape of a prior over the codes: (1, h, w) for an image tokenizer's grid (one channel),
        the code volume (t, s, h, w) itself for a video tokenizer (s channels)."""
        return (1, *self.code_shape)

    @property
    def num_dims(self) -> int:
        return math.prod(self.image_shape)

    @property
    def cond_spec(self) -> CondSpec:
        """Tokenizers are unconditional."""
        return CondSpec.classes(None)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ----- a condition encoded with the image (IQ-VAE); none by default -------------------------------
    @property
    def condition_spec(self) -> CondSpec | None:
        """The condition input this tokenizer also encodes (e.g. an edge map), or None."""
        return None

    @property
    def condition_vocab(self) -> int | None:
        """Condition tokens take values in [0, condition_vocab); None without a condition."""
        return None

    @property
    def condition_len(self) -> int | None:
        """Tokens per encoded condition; None without a condition."""
        return None

    def encode_condition(self, c: Tensor) -> Tensor:
        """(B, ...) condition -> (B, condition_len) long tokens; a tokenizer without one refuses."""
        raise ValueError(f"tokenizer {self.model_name!r} encodes no condition (condition_spec is None)")

    # ----- the contract ------------------------------------------------------------------------
    @abc.abstractmethod
    def encode(self, x: Tensor) -> Tensor:
        """(B, C, H, W) long in [0, levels) -> (B, h, w) long codes; never updates statistics."""

    @abc.abstractmethod
    def decode(self, codes: Tensor) -> Tensor:
        """(B, h, w) long codes -> (B, C, H, W) long in [0, levels)."""

    def reconstruct(self, x: Tensor) -> Tensor:
        """decode(encode(x))."""
        return self.decode(self.encode(x))

    def check_input(self, x: Tensor) -> None:
        """Raise ValueError naming expected and given dtype / shape / range of a batch of `data_shape`
        items (images, or clips for a video tokenizer)."""
        if not isinstance(x, Tensor):
            raise ValueError(f"expected a torch.Tensor, given {type(x).__name__}")
        if x.dtype != torch.long:
            raise ValueError(f"expected dtype torch.long (integer pixel values), given {x.dtype}")
        shape = tuple(self.data_shape)
        if tuple(x.shape[1:]) != shape or x.dim() != len(shape) + 1:
            what = "clips of shape" if len(shape) == 4 else "shape"
            raise ValueError(f"expected {what} (B, {', '.join(map(str, shape))}), given {tuple(x.shape)}")
        if x.numel():
            lo, hi = int(x.min()), int(x.max())
            if lo < 0 or hi >= self.levels:
                raise ValueError(f"expected values in [0, {self.levels - 1}], given range [{lo}, {hi}]")

    def check_codes(self, codes: Tensor) -> None:
        """Raise ValueError naming expected and given dtype / shape / range of a batch of `code_shape` codes."""
        if not isinstance(codes, Tensor):
            raise ValueError(f"expected a torch.Tensor of codes, given {type(codes).__name__}")
        if codes.dtype != torch.long:
            raise ValueError(f"expected codes of dtype torch.long, given {codes.dtype}")
        shape = tuple(self.code_shape)
        if tuple(codes.shape[1:]) != shape or codes.dim() != len(shape) + 1:
            raise ValueError(f"expected codes of shape (B, {', '.join(map(str, shape))}), given {tuple(codes.shape)}")
        if codes.numel():
            lo, hi = int(codes.min()), int(codes.max())
            if lo < 0 or hi >= self.codebook_size:
                raise ValueError(f"expected codes in [0, {self.codebook_size - 1}], given range [{lo}, {hi}]")

    # ----- training protocol -------------------------------------------------------------------
    def training_phases(self, step: int) -> tuple[str, ...]:
        """The phases (each with its optimizer) active at `step`; "model" always, first."""
        return ("model",)

    def check_phase(self, phase: str) -> None:
        if phase not in self.optimizer_phases:
            raise ValueError(f"expected a phase in {list(self.optimizer_phases)}, given {phase!r}")

    def phase_parameters(self, phase: str) -> list[nn.Parameter]:
        """The parameters `phase`'s optimizer updates (by default all of them, for "model")."""
        self.check_phase(phase)
        return list(self.parameters())

    @abc.abstractmethod
    def phase_loss(self, phase: str, x: Tensor, step: int) -> tuple[Tensor, Stats]:
        """The loss to backpropagate for `phase` and statistics {name: (sum, count)}."""

    def update_statistics(self, stats: Stats) -> None:
        """Fold the step's summed statistics in (EMA codebooks, restarts); unknown names are ignored."""

    @abc.abstractmethod
    def eval_stats(self, x: Tensor) -> Stats:
        """Sums over a held-out batch (squared error and its count, code histogram, ...)."""

    @abc.abstractmethod
    def summarize(self, totals: Stats) -> dict[str, float]:
        """Numbers from summed `eval_stats`: "mse", "psnr", "usage", "perplexity", "window_usage"."""


#: PSNR of a perfect reconstruction is infinite; report at most this (dB) so logs stay finite JSON.
MAX_PSNR = 100.0


def reconstruction_summary(totals: Stats, codebook_size: int) -> dict[str, float]:
    """The numbers every tokenizer reports from summed eval statistics: "mse" ([0, 1] scale, over
    every value), "psnr" (dB, peak 1, at most MAX_PSNR) from "sq_err"; "usage" (distinct codes /
    codebook_size) and "perplexity" (of the code histogram) from "codes"."""
    from argen.nn.quantize import perplexity

    out: dict[str, float] = {}
    if "sq_err" in totals:
        err, count = (float(t) for t in totals["sq_err"])
        mse = err / max(count, 1.0)
        out["mse"] = mse
        out["psnr"] = MAX_PSNR if mse <= 10 ** (-MAX_PSNR / 10) else -10.0 * math.log10(mse)
    if "codes" in totals:
        hist = totals["codes"][0].double()
        out["usage"] = int((hist > 0).sum()) / codebook_size
        out["perplexity"] = float(perplexity(hist))
    return out


# ----- video tokenizers (issue 13) --------------------------------------------------------------------
@dataclass
class VideoTokenizerConfig(TokenizerConfig):
    """Fields every video tokenizer has: `video_shape` (T, C, H, W) replaces `image_shape`, which a
    video config refuses (a second, contradicting shape), as in `argen.models.base.VideoModelConfig`."""

    image_shape: tuple[int, int, int] | None = spec(None, ge=1)  # not used by video tokenizers: leave None
    video_shape: tuple[int, int, int, int] = spec((10, 1, 32, 32), ge=1)  # (T, C, H, W), C in {1, 3}

    def validate(self) -> None:
        if self.image_shape is not None:
            raise ValueError(f"tokenizer.image_shape: a video tokenizer takes video_shape (T, C, H, W), given "
                             f"image_shape {self.image_shape}")
        validate_fields(self, "tokenizer")
        if len(self.video_shape) != 4:
            raise ValueError(f"tokenizer.video_shape must be (T, C, H, W), given {self.video_shape}")
        if self.video_shape[1] not in (1, 3):
            raise ValueError(f"tokenizer.video_shape channels must be 1 or 3, given {self.video_shape[1]}")


class VideoTokenizer(Tokenizer):
    """Clips (B, T, C, H, W) long in [0, levels) <-> code volumes (B, t, s, h, w) long in [0, codebook_size).

    t code frames, each of s codes per position (1 for a plain VQ, S for S sliced codebooks, a packed
    hierarchy) over h x w positions; one code frame covers `frame_stride` video frames. A prior over
    the codes is any registered video model with video_shape = code_shape and levels = codebook_size.
    Everything else (training protocol, statistics) is the image Tokenizer's. `eval_stats` / `summarize`
    here give mse / psnr / ssim (per frame) / usage / perplexity for any video tokenizer; a family with
    more numbers (window_usage) extends them.
    """

    config_class: ClassVar[type[TokenizerConfig]] = VideoTokenizerConfig
    modality: ClassVar[str] = "video"

    # ----- facts ---------------------------------------------------------------------------------
    @property
    def video_shape(self) -> tuple[int, int, int, int]:
        return tuple(self.config.video_shape)  # type: ignore[attr-defined, return-value]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one frame."""
        return self.video_shape[1:]  # type: ignore[return-value]

    @property
    def data_shape(self) -> tuple[int, ...]:
        """What the trainer checks batches against: one clip (T, C, H, W)."""
        return self.video_shape

    @property
    @abc.abstractmethod
    def code_shape(self) -> tuple[int, int, int, int]:  # type: ignore[override]
        """(t, s, h, w) of the code volume of one clip."""

    @property
    def prior_shape(self) -> tuple[int, ...]:
        return tuple(self.code_shape)

    @property
    def frame_stride(self) -> int:
        """Video frames per code frame: 1 for per-frame tokenizers, the temporal stride of a 3-D VQ-VAE."""
        t_frames, t_codes = self.video_shape[0], self.code_shape[0]
        if t_frames % t_codes:
            raise ValueError(f"{self.model_name}: {t_frames} frames do not split into {t_codes} code frames")
        return t_frames // t_codes

    @property
    def temporally_causal(self) -> bool:
        """True when code frame j depends only on video frames < (j + 1) * frame_stride, so encoding
        known context frames fixes their code frames whatever follows (per-frame tokenizers: always;
        a 3-D encoder only with causal temporal padding). Prediction from context relies on it."""
        return True

    @property
    def num_dims(self) -> int:
        return math.prod(self.video_shape)

    # ----- the contract ------------------------------------------------------------------------
    @abc.abstractmethod
    def encode(self, x: Tensor) -> Tensor:
        """(B, T, C, H, W) long in [0, levels) -> (B, t, s, h, w) long codes; never updates statistics."""

    @abc.abstractmethod
    def decode(self, codes: Tensor) -> Tensor:
        """(B, t, s, h, w) long codes -> (B, T, C, H, W) long in [0, levels)."""

    # ----- evaluation (shared by every video tokenizer) -------------------------------------------
    @torch.no_grad()
    def eval_stats(self, x: Tensor) -> Stats:
        """{"sq_err": (squared error of reconstruct(x) on the [0, 1] scale, number of values),
        "ssim": (sum of per-frame SSIM, number of frames), "codes": (code histogram (K,), ones)}."""
        from argen.metrics.video import frame_ssim  # lazy: metrics are not needed to build a tokenizer

        codes = self.encode(x)
        recon = self.decode(codes)
        dev = x.device
        err = ((recon - x).double() / (self.levels - 1)).pow(2).sum()
        ssim = frame_ssim(recon, x, self.levels)
        hist = torch.bincount(codes.reshape(-1), minlength=self.codebook_size).double()
        return {"sq_err": (err, torch.tensor(float(x.numel()), dtype=torch.float64, device=dev)),
                "ssim": (ssim.sum().to(dev), torch.tensor(float(ssim.numel()), dtype=torch.float64, device=dev)),
                "codes": (hist, torch.ones_like(hist))}

    def summarize(self, totals: Stats) -> dict[str, float]:
        """mse ([0, 1] scale), psnr (dB, peak 1, at most 100), ssim (mean per frame), usage (distinct
        codes / codebook_size) and perplexity (of the code histogram), from summed `eval_stats`."""
        out = reconstruction_summary(totals, self.codebook_size)
        if "ssim" in totals:
            s, count = (float(t) for t in totals["ssim"])
            out["ssim"] = s / max(count, 1.0)
        return out


def is_video_tokenizer(obj: Any) -> bool:
    """True for a video tokenizer class or instance (its `modality` is "video")."""
    return getattr(obj, "modality", "image") == "video"


# ----- registry ------------------------------------------------------------------------------------
_REGISTRY: dict[str, "TokenizerEntry"] = {}

T = TypeVar("T")


@dataclass(frozen=True)
class TokenizerEntry:
    name: str
    cls: type
    description: str
    tiny: dict[str, Any] = field(default_factory=dict)

    @property
    def modality(self) -> str:
        """"image" or "video": the class's `modality` (VideoTokenizer subclasses are "video")."""
        return getattr(self.cls, "modality", "image")


def register_tokenizer(name: str, *, tiny: dict[str, Any], description: str = "") -> Callable[[T], T]:
    """Class decorator registering a tokenizer under `name`, with a tiny configuration for tests."""

    def deco(cls: T) -> T:
        if name in _REGISTRY:
            raise ValueError(f"tokenizer name {name!r} is already registered by {_REGISTRY[name].cls!r}")
        if not hasattr(cls, "config_class"):
            raise TypeError(f"{cls!r} needs a `config_class` dataclass attribute to be registered")
        doc = description or next(iter((cls.__doc__ or "").strip().splitlines()), "")
        _REGISTRY[name] = TokenizerEntry(name, cls, doc, dict(tiny))
        cls.model_name = name  # type: ignore[attr-defined]
        return cls

    return deco


def _ensure_imported() -> None:
    # Importing the package runs every @register_tokenizer decorator once.
    import argen.tokenizers  # noqa: F401


def list_tokenizers(modality: str | None = None) -> list[str]:
    """Names of all registered tokenizers, sorted; `modality` ("image" / "video") keeps those of that kind."""
    _ensure_imported()
    if modality is not None and modality not in ("image", "video"):
        raise ValueError(f"expected modality 'image', 'video' or None, given {modality!r}")
    return sorted(n for n, e in _REGISTRY.items() if modality is None or e.modality == modality)


def get_tokenizer_entry(name: str) -> TokenizerEntry:
    _ensure_imported()
    if name not in _REGISTRY:
        raise ValueError(f"unknown tokenizer {name!r}; expected one of {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def build_tokenizer_config(name: str, **kwargs: Any) -> TokenizerConfig:
    """The config of tokenizer `name` from keyword arguments; unknown keys are a ValueError."""
    cfg_cls = get_tokenizer_entry(name).cls.config_class
    known = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {unknown} for tokenizer {name!r}; expected some of {sorted(known)}")
    return cfg_cls(**kwargs)


def create_tokenizer(name: str, **kwargs: Any) -> Tokenizer:
    """Build a registered tokenizer: `create_tokenizer("vqvae", image_shape=(1, 28, 28))`."""
    return get_tokenizer_entry(name).cls(build_tokenizer_config(name, **kwargs))


def tiny_tokenizer_kwargs(name: str) -> dict[str, Any]:
    """The tiny configuration a tokenizer registered for tests (hyperparameters only)."""
    return dict(get_tokenizer_entry(name).tiny)
