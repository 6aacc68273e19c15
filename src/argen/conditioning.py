"""What a model is conditioned on, declared once: `CondSpec`.

Every model declares a `CondSpec` (`model.cond_spec`, from its config's `cond_spec()`); input
checks, the trainer, the command line and the samplers read it instead of asking whether a model
has `num_classes`. Kinds and the `cond` tensor each takes:

  none     cond is None
  class    class labels (B,) long in [0, num_classes)            ModelConfig.num_classes
  tokens   a token sequence (B, L) long in [0, vocab_size),       text for text-to-image
           1 <= L <= max_len (any L >= 1 when max_len is None)
  frames   context frames (B, frames, C, H, W) long in            video continuation
           [0, levels), (C, H, W) = frame_shape when given
  image    a condition image (B, C, H, W) long in [0, levels),    edge map -> image (IQ-VAE)
           (C, H, W) = image_shape

`cond=None` is accepted by every kind: the unconditional case (a conditional model's null
condition, which classifier-free guidance also needs).

One policy picks conditions when nothing is given (`sample_conditions`: all `klass`, or the
classes 0..C-1 cycling), shared by `argen sample`, the trainer's sample grids and the sample
metrics; `batch_condition` says what a model gets from a data batch (x, y).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

CondKind = Literal["none", "class", "tokens", "frames", "image"]
KINDS: tuple[str, ...] = ("none", "class", "tokens", "frames", "image")


def _positive(name: str, value: Any, required: bool) -> None:
    if value is None:
        if required:
            raise ValueError(f"CondSpec: {name} is required for this kind, given None")
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"CondSpec: {name} must be an integer >= 1, given {value!r}")


@dataclass(frozen=True)
class CondSpec:
    """The conditioning input a model takes (see the module doc for the kinds)."""

    kind: CondKind = "none"
    num_classes: int | None = None  # kind "class"
    vocab_size: int | None = None  # kind "tokens"
    max_len: int | None = None  # kind "tokens": the longest sequence (None: any length)
    frames: int | None = None  # kind "frames": number of context frames k
    frame_shape: tuple[int, ...] | None = None  # kind "frames": (C, H, W) of a frame (None: any)
    levels: int | None = None  # kind "frames": value levels of a frame (None: any non-negative); "image": required
    image_shape: tuple[int, ...] | None = None  # kind "image": (C, H, W) of the condition image
    #: kind "class": label `num_classes` is also valid, the null class classifier-free guidance runs
    #: on (`num_classes` stays the number of real classes: `sample_conditions` never draws it)
    null_class: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"CondSpec: kind must be one of {list(KINDS)}, given {self.kind!r}")
        _positive("num_classes", self.num_classes, self.kind == "class")
        _positive("vocab_size", self.vocab_size, self.kind == "tokens")
        _positive("max_len", self.max_len, False)
        _positive("frames", self.frames, self.kind == "frames")
        _positive("levels", self.levels, self.kind == "image")
        if self.frame_shape is not None:
            object.__setattr__(self, "frame_shape", tuple(self.frame_shape))
            for s in self.frame_shape:
                _positive("frame_shape", s, True)
        if self.kind == "image" and (self.image_shape is None or len(tuple(self.image_shape)) != 3):
            raise ValueError(f"CondSpec: kind 'image' needs image_shape (C, H, W), given {self.image_shape!r}")
        if self.image_shape is not None:
            object.__setattr__(self, "image_shape", tuple(self.image_shape))
            for s in self.image_shape:
                _positive("image_shape", s, True)
        used = {"class": ("num_classes",), "tokens": ("vocab_size", "max_len"),
                "frames": ("frames", "frame_shape", "levels"), "image": ("image_shape", "levels"),
                "none": ()}[self.kind]
        stray = [n for n in ("num_classes", "vocab_size", "max_len", "frames", "frame_shape", "levels", "image_shape")
                 if n not in used and getattr(self, n) is not None]
        if self.null_class and self.kind != "class":
            stray.append("null_class")
        if stray:
            raise ValueError(f"CondSpec: kind {self.kind!r} takes no {', '.join(stray)}")

    # ----- constructors ------------------------------------------------------------------------
    @classmethod
    def none(cls) -> CondSpec:
        return cls()

    @classmethod
    def classes(cls, num_classes: int | None, null_class: bool = False) -> CondSpec:
        """Class labels; `None` or 0 classes (a model built without labels) is kind "none".
        `null_class`: the label `num_classes` is accepted too (a learned unconditional input)."""
        return cls("class", num_classes=num_classes, null_class=null_class) if num_classes else cls()

    @classmethod
    def tokens(cls, vocab_size: int, max_len: int | None = None) -> CondSpec:
        return cls("tokens", vocab_size=vocab_size, max_len=max_len)

    @classmethod
    def context_frames(cls, frames: int, frame_shape: tuple[int, ...] | None = None,
                       levels: int | None = None) -> CondSpec:
        return cls("frames", frames=frames, frame_shape=frame_shape, levels=levels)

    @classmethod
    def image(cls, shape: tuple[int, ...], levels: int) -> CondSpec:
        """A condition image (B, C, H, W) with values in [0, levels), e.g. an edge map."""
        return cls("image", image_shape=tuple(shape), levels=levels)

    # ----- facts -------------------------------------------------------------------------------
    @property
    def conditional(self) -> bool:
        return self.kind != "none"

    def expected(self, batch: int | str = "B") -> str:
        """The shape and range a `cond` of this kind has, in words (for error messages)."""
        if self.kind == "class":
            null = f" or the null class {self.num_classes}" if self.null_class else ""
            return f"torch.long labels of shape ({batch},) in [0, {self.num_classes - 1}]{null}"
        if self.kind == "tokens":
            length = "L" if self.max_len is None else f"L <= {self.max_len}"
            return f"torch.long tokens of shape ({batch}, {length}) in [0, {self.vocab_size - 1}]"
        if self.kind == "frames":
            shape = ", ".join(map(str, self.frame_shape)) if self.frame_shape else "C, H, W"
            values = f" in [0, {self.levels - 1}]" if self.levels else ""
            return f"torch.long context frames of shape ({batch}, {self.frames}, {shape}){values}"
        if self.kind == "image":
            shape = ", ".join(map(str, self.image_shape))
            return f"torch.long condition images of shape ({batch}, {shape}) in [0, {self.levels - 1}]"
        return "cond=None"

    # ----- checking ----------------------------------------------------------------------------
    def check(self, cond: Any, batch: int) -> None:
        """Raise ValueError naming the expected and the given value unless `cond` fits this spec."""
        if cond is None:
            return
        if self.kind == "none":
            raise ValueError("expected cond=None: this model was built without conditioning (no num_classes)")
        if not isinstance(cond, Tensor):
            raise ValueError(f"expected cond as {self.expected(batch)}, given {type(cond).__name__}")
        given = f"{cond.dtype} {tuple(cond.shape)}"
        if cond.dtype != torch.long or not self._shape_ok(tuple(cond.shape), batch):
            raise ValueError(f"expected cond as {self.expected(batch)}, given {given}")
        if not cond.numel():
            return
        lo, hi = int(cond.min()), int(cond.max())
        top = {"class": self.num_classes, "tokens": self.vocab_size, "frames": self.levels,
               "image": self.levels}[self.kind]
        if self.null_class:
            if lo < 0 or hi > self.num_classes:
                raise ValueError(f"expected labels in [0, {self.num_classes - 1}] or the null class "
                                 f"{self.num_classes}, given range [{lo}, {hi}]")
            return
        what = {"class": "labels", "tokens": "tokens", "frames": "frame values", "image": "condition values"}[self.kind]
        if lo < 0 or (top is not None and hi >= top):
            bound = f"[0, {top - 1}]" if top is not None else "[0, ...)"
            raise ValueError(f"expected {what} in {bound}, given range [{lo}, {hi}]")

    def _shape_ok(self, shape: tuple[int, ...], batch: int) -> bool:
        if self.kind == "class":
            return shape == (batch,)
        if self.kind == "tokens":
            return (len(shape) == 2 and shape[0] == batch and shape[1] >= 1
                    and (self.max_len is None or shape[1] <= self.max_len))
        if self.kind == "image":
            return shape == (batch, *self.image_shape)
        # frames: (B, k, C, H, W)
        if len(shape) != 5 or shape[:2] != (batch, self.frames):
            return False
        return self.frame_shape is None or shape[2:] == self.frame_shape


def batch_condition(spec: CondSpec, y: Tensor | None) -> Tensor | None:
    """The `cond` a model gets for a data batch (x, y): y itself for a conditional model, else None.

    A data set yields (x, y) with y the conditioning input (class labels today; tokens or frames
    for data sets that carry them); `spec.check` validates it when the model sees it.
    """
    return y if spec.conditional and y is not None else None


def sample_conditions(spec: CondSpec, n: int, klass: int | None = None, *, device: Any = None,
                      option: str = "klass") -> Tensor | None:
    """Conditions for `n` unprompted samples: all `klass`, or classes 0..C-1 cycling.

    One policy for `argen sample --class`, the trainer's sample grids and the sample metrics.
    Models that take no class labels get None (kinds "tokens"/"frames" sample unconditionally
    unless the caller passes a cond); `klass` for such a model is a ValueError naming `option`.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"expected n an integer >= 1, given {n!r}")
    if spec.kind != "class":
        if klass is not None:
            raise ValueError(f"{option} needs a class-conditional model; this one was trained without labels"
                             + ("" if spec.kind == "none" else f" (it is conditioned on {spec.kind})"))
        return None
    classes = int(spec.num_classes)
    if klass is not None:
        if isinstance(klass, bool) or not isinstance(klass, int) or not 0 <= klass < classes:
            raise ValueError(f"{option} must be in [0, {classes - 1}], given {klass}")
        return torch.full((n,), klass, dtype=torch.long, device=device)
    return torch.arange(n, device=device) % classes


__all__ = ["CondSpec", "CondKind", "KINDS", "batch_condition", "sample_conditions"]
