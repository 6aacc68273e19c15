"""Views: pure per-item transforms that turn a base dataset into a variant (`mnist-binary`, ...).

A view maps a uint8 item with `levels` grey levels, shape (..., C, H, W) (an image or a video
clip), to another uint8 item, and says how it changes the channel count and the level count. Views
that draw random numbers get them from a generator keyed by (seed, epoch, index, view tag), so an
item is a pure function of those numbers: reproducible in any DataLoader worker, in any order.

Suffixes (applied left to right after the base name):
  -binary   static threshold: 1 where v >= levels/2 (v >= 128 for 8-bit data), levels 2
  -dynbin   dynamic binarization: Bernoulli(p = v / (levels - 1)), redrawn every epoch, levels 2
  -Kbit     quantize to 2**K levels by dropping low bits (K = 1..7): v * 2**K // levels
  -color    a grey item coloured: foreground and background RGB colours drawn per item (fixed for
            a given seed and index, the same for every frame of a clip), 3 channels, 256 levels
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

# Distinct tags keep the random streams of different views independent of each other.
_TAG_DYNBIN = 0xD1B
_TAG_COLOR = 0xC010


def item_rng(*key: int) -> np.random.Generator:
    """A generator that depends only on `key` (non-negative ints), via NumPy's SeedSequence."""
    return np.random.default_rng([int(k) for k in key])


@dataclass(frozen=True)
class View:
    """Base class; subclasses override `out_levels`, `out_channels` and `apply`."""

    suffix: str
    #: The most input levels the view takes. Every view here transforms 8-bit pixel intensities;
    #: data with more levels (uint16 codes of a tokenizer) are not pixels, and views refuse them.
    max_levels: ClassVar[int] = 256

    def check_levels(self, levels: int) -> None:
        """Raise ValueError if data with `levels` levels is more than this view takes."""
        if levels > self.max_levels:
            raise ValueError(f"-{self.suffix} is a view of pixel intensities (at most {self.max_levels} levels), "
                             f"given data with {levels} levels (codes of a tokenizer are not pixels)")

    def out_levels(self, levels: int) -> int:
        return levels

    def out_channels(self, channels: int) -> int:
        return channels

    def check(self, channels: int, levels: int) -> None:
        """Raise ValueError if the view cannot take data with these channels and levels."""

    def apply(self, x: np.ndarray, levels: int, *, seed: int, epoch: int, index: int) -> np.ndarray:
        raise NotImplementedError

    @property
    def random_per_epoch(self) -> bool:
        return False


@dataclass(frozen=True)
class Binarize(View):
    suffix: str = "binary"

    def out_levels(self, levels: int) -> int:
        return 2

    def apply(self, x: np.ndarray, levels: int, *, seed: int, epoch: int, index: int) -> np.ndarray:
        # 2*v >= levels is v >= 128 for 256 levels, and the upper half for any other count.
        return (2 * x.astype(np.int32) >= levels).astype(np.uint8)


@dataclass(frozen=True)
class DynamicBinarize(View):
    suffix: str = "dynbin"

    def out_levels(self, levels: int) -> int:
        return 2

    @property
    def random_per_epoch(self) -> bool:
        return True

    def apply(self, x: np.ndarray, levels: int, *, seed: int, epoch: int, index: int) -> np.ndarray:
        rng = item_rng(seed, epoch, index, _TAG_DYNBIN)
        p = x.astype(np.float64) / (levels - 1)
        # u < p: never 1 where v == 0 (p = 0), always 1 where v == levels-1 (p = 1, u < 1).
        return (rng.random(x.shape) < p).astype(np.uint8)


@dataclass(frozen=True)
class Quantize(View):
    bits: int = 4
    suffix: str = "kbit"

    def out_levels(self, levels: int) -> int:
        return 2**self.bits

    def check(self, channels: int, levels: int) -> None:
        if not 1 <= self.bits <= 7:
            raise ValueError(f"-Kbit needs K in 1..7, given K={self.bits}")
        if 2**self.bits >= levels:
            raise ValueError(f"-{self.bits}bit needs data with more than {2**self.bits} levels, given {levels}")

    def apply(self, x: np.ndarray, levels: int, *, seed: int, epoch: int, index: int) -> np.ndarray:
        return (x.astype(np.int32) * 2**self.bits // levels).astype(np.uint8)


def _luma(rgb: np.ndarray) -> float:
    return float(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])


@dataclass(frozen=True)
class Colorize(View):
    suffix: str = "color"
    min_contrast: float = 96.0  # luma difference between foreground and background, out of 255

    def out_levels(self, levels: int) -> int:
        return 256

    def out_channels(self, channels: int) -> int:
        return 3

    def check(self, channels: int, levels: int) -> None:
        if channels != 1:
            raise ValueError(f"-color needs grey data (1 channel), given {channels} channels")

    def colors(self, seed: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(foreground, background) RGB in 0..255 for item `index`; redrawn until they contrast."""
        rng = item_rng(seed, index, _TAG_COLOR)
        while True:
            fg, bg = rng.integers(0, 256, size=(2, 3))
            if abs(_luma(fg) - _luma(bg)) >= self.min_contrast:
                return fg.astype(np.float64), bg.astype(np.float64)

    def apply(self, x: np.ndarray, levels: int, *, seed: int, epoch: int, index: int) -> np.ndarray:
        fg, bg = self.colors(seed, index)
        alpha = x[..., 0, :, :].astype(np.float64)[..., None, :, :] / (levels - 1)  # (..., 1, H, W)
        out = bg[:, None, None] + (fg - bg)[:, None, None] * alpha  # (..., 3, H, W)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)


VIEW_HELP = {
    "-binary": "static binarization (v >= 128), 2 levels",
    "-dynbin": "dynamic binarization, Bernoulli(v/255) redrawn each epoch (set_epoch), 2 levels",
    "-Kbit": "quantized to 2**K levels, K in 1..7 (e.g. -5bit)",
    "-color": "grey digits coloured on coloured backgrounds, 3 channels, 256 levels",
}

_SUFFIX = re.compile(r"-(binary|dynbin|color|colour|(\d+)bit)$")


def split_view_suffix(name: str) -> tuple[str, View] | None:
    """'mnist-5bit' -> ('mnist', Quantize(5)); None when the name ends in no view suffix."""
    m = _SUFFIX.search(name)
    if m is None:
        return None
    word = m.group(1)
    if m.group(2) is not None:
        bits = int(m.group(2))
        if not 1 <= bits <= 7:
            raise ValueError(f"-Kbit needs K in 1..7, given {name!r}")
        view: View = Quantize(bits=bits, suffix=f"{bits}bit")
    elif word == "binary":
        view = Binarize()
    elif word == "dynbin":
        view = DynamicBinarize()
    else:
        view = Colorize()
    return name[: m.start()], view
