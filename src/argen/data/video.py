"""Video data: the standard Moving MNIST generator over the embedded digits, and clips cut from
any array of frames. Items are (T, C, H, W) uint8, the same dataset API as images.

Moving MNIST (defaults = the standard setting, REFERENCE.md): a 64x64 canvas, 2 digits of 28x28,
20 frames. Each digit gets a position uniform in [0, 1)^2 (scaled by the free range 64 - 28 = 36
px), a direction with uniform angle, and moves 0.1 of the free range (3.6 px) per frame; the step
comes first, then the frame is recorded; a coordinate leaving [0, 1] is clamped and that velocity
component flipped (a bounce). Digits are pasted at the truncated pixel position with an
elementwise max. Clip i of a split is a pure function of (seed, split, i); train clips use train
digits and test clips test digits, so no digit crosses the split.

CPU-sized views come from clip options in the dataset name (catalog.py): `ClipSource` keeps the
first N frames (`-10f`; the trajectories draw all their random numbers before the first step, so
these are exactly the first frames of the 20-frame clip) and area-downscales frames (`-32`: 2x2
block averages of the 64x64 canvas, `area_downscale`). Sources for files on disk, read lazily:
`IndexedSource` (memory-mapped arrays: mnist_test_seq.npy, BAIR arrays) and `FrameFolderSource`
(BAIR trajectories as folders of numbered frames).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from argen.data.dataset import ArgenDataset, ArraySource
from argen.data.embedded import embedded_mnist
from argen.data.readers import to_nchw
from argen.data.views import View, item_rng

_TAG_MOVING = 0x3D1
_SPLIT_CODE = {"train": 0, "test": 1, "all": 2}
DEFAULT_NUM_SEQUENCES = {"train": 10_000, "test": 1_000, "all": 11_000}


@dataclass(frozen=True)
class MovingMnistConfig:
    num_frames: int = 20
    canvas_size: int = 64
    num_digits: int = 2
    step_length: float = 0.1  # fraction of the free range per frame

    def validate(self, digit_size: int) -> None:
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, given {self.num_frames}")
        if self.num_digits < 1:
            raise ValueError(f"num_digits must be >= 1, given {self.num_digits}")
        if self.canvas_size < digit_size:
            raise ValueError(f"canvas_size must be >= the digit size {digit_size}, given {self.canvas_size}")
        if not self.step_length >= 0:
            raise ValueError(f"step_length must be >= 0, given {self.step_length}")


def trajectories(rng: np.random.Generator, num_frames: int, num_digits: int, step_length: float) -> np.ndarray:
    """Positions (T, D, 2) in [0, 1] as (y, x), bouncing off the borders (step, then record)."""
    pos = rng.random((num_digits, 2))
    theta = rng.random(num_digits) * 2 * np.pi
    vel = np.stack([np.sin(theta), np.cos(theta)], axis=1)
    out = np.empty((num_frames, num_digits, 2))
    for t in range(num_frames):
        pos = pos + vel * step_length
        hit = (pos <= 0.0) | (pos >= 1.0)
        pos = np.clip(pos, 0.0, 1.0)
        vel = np.where(hit, -vel, vel)
        out[t] = pos
    return out


def render_clip(digits: np.ndarray, positions: np.ndarray, canvas_size: int) -> np.ndarray:
    """Paste digits (D, h, w) at positions (T, D, 2) in [0, 1] -> (T, 1, S, S) uint8, max-blended."""
    num_frames, num_digits = positions.shape[:2]
    h, w = digits.shape[1:]
    corners = (positions * np.array([canvas_size - h, canvas_size - w])).astype(np.int64)
    clip = np.zeros((num_frames, 1, canvas_size, canvas_size), dtype=np.uint8)
    for t in range(num_frames):
        for d in range(num_digits):
            y, x = corners[t, d]
            region = clip[t, 0, y : y + h, x : x + w]
            np.maximum(region, digits[d], out=region)
    return clip


class MovingMnistSource:
    """Generates clip i on demand from (seed, split, i); nothing is stored but the digits."""

    levels = 256
    num_classes = None

    def __init__(self, digits: np.ndarray, split: str, seed: int, length: int, config: MovingMnistConfig) -> None:
        if digits.dtype != np.uint8 or digits.ndim != 3 or len(digits) == 0:
            raise ValueError(f"digits must be uint8 (N, h, w) with N >= 1, given {digits.dtype} {digits.shape}")
        if split not in _SPLIT_CODE:
            raise ValueError(f"split must be one of {tuple(_SPLIT_CODE)}, given {split!r}")
        if length < 0:
            raise ValueError(f"num_sequences must be >= 0, given {length}")
        config.validate(digits.shape[1])
        self.digits, self.split, self.seed, self.length, self.config = digits, split, seed, length, config
        self.item_shape = (config.num_frames, 1, config.canvas_size, config.canvas_size)

    def __len__(self) -> int:
        return self.length

    def clip_with_positions(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Clip (T, 1, S, S) and the digits' positions (T, D, 2) in [0, 1] (for tests and plots)."""
        c = self.config
        rng = item_rng(self.seed, _SPLIT_CODE[self.split], index, _TAG_MOVING)
        which = rng.integers(0, len(self.digits), size=c.num_digits)
        pos = trajectories(rng, c.num_frames, c.num_digits, c.step_length)
        return render_clip(self.digits[which], pos, c.canvas_size), pos

    def get(self, index: int) -> tuple[np.ndarray, int]:
        return self.clip_with_positions(index)[0], -1


def moving_mnist(
    split: str = "train",
    *,
    seed: int = 0,
    num_sequences: int | None = None,
    num_frames: int = 20,
    canvas_size: int = 64,
    num_digits: int = 2,
    step_length: float = 0.1,
    views: tuple[View, ...] = (),
    name: str = "moving-mnist",
) -> ArgenDataset:
    """Moving MNIST clips (T, 1, S, S), 256 levels, unlabelled (y = -1).

    Defaults are the standard setting; `num_sequences` defaults to 10,000 train / 1,000 test
    (the clips are generated on the fly, so any number costs no memory).
    """
    if split not in DEFAULT_NUM_SEQUENCES:
        raise ValueError(f"split must be one of {tuple(DEFAULT_NUM_SEQUENCES)}, given {split!r}")
    digits, _ = embedded_mnist(split)
    length = DEFAULT_NUM_SEQUENCES[split] if num_sequences is None else num_sequences
    config = MovingMnistConfig(num_frames, canvas_size, num_digits, step_length)
    source = MovingMnistSource(digits, split, seed, length, config)
    return ArgenDataset(name, source, views, seed=seed, split=split)


def clips_from_frames(frames: np.ndarray, length: int, stride: int | None = None) -> np.ndarray:
    """Cut a frame sequence (N, H, W), (N, C, H, W) or (N, H, W, C) uint8 into clips (M, T, C, H, W).

    Clip m holds frames [m*stride, m*stride + length); `stride` defaults to `length` (no overlap).
    """
    f = to_nchw(np.asarray(frames), "frames")
    if f.ndim != 4:
        raise ValueError(f"frames must be one sequence of images, given shape {np.shape(frames)}")
    stride = length if stride is None else stride
    if length < 1 or stride < 1:
        raise ValueError(f"length and stride must be >= 1, given length={length}, stride={stride}")
    if len(f) < length:
        raise ValueError(f"need at least length={length} frames, given {len(f)}")
    starts = np.arange(0, len(f) - length + 1, stride)
    return np.stack([f[s : s + length] for s in starts])


def clip_dataset(frames: np.ndarray, length: int, stride: int | None = None, *,
                 name: str = "clips", levels: int = 256) -> ArgenDataset:
    """A video dataset of the clips `clips_from_frames` cuts (unlabelled)."""
    return ArgenDataset(name, ArraySource(clips_from_frames(frames, length, stride), None, levels=levels))


# ---------------------------------------------------------------------------------------------
# clip options: fewer frames, smaller frames (name suffixes -Nf and -S, see catalog.py)


def area_downscale(x: np.ndarray, factor: int) -> np.ndarray:
    """Average non-overlapping factor x factor blocks of uint8 (..., H, W), rounding half up.

    The 32x32 Moving MNIST is the 64x64 canvas downscaled this way (the standard dynamics, the
    digits 14 px), not a second generator setting: one clip gives both sizes, and v >= 128 after
    the average keeps the strokes' shape under `-binary`.
    """
    if factor == 1:
        return x
    *lead, h, w = x.shape
    if h % factor or w % factor:
        raise ValueError(f"frames of {h}x{w} do not divide into {factor}x{factor} blocks")
    blocks = x.reshape(*lead, h // factor, factor, w // factor, factor).astype(np.int64)
    total = blocks.sum((-1, -3))
    return ((2 * total + factor * factor) // (2 * factor * factor)).astype(x.dtype)


class ClipSource:
    """A video source seen through clip options: its first `frames` frames, frames area-downscaled
    to `size` x `size`. Items stay a pure function of the index (no randomness is added)."""

    def __init__(self, source: Any, frames: int | None = None, size: int | None = None) -> None:
        shape = tuple(source.item_shape)
        if len(shape) != 4:
            raise ValueError(f"clip options (-Nf, -S) are for video data (T, C, H, W), given items of shape {shape}")
        t, c, h, w = shape
        if frames is not None and not 1 <= frames <= t:
            raise ValueError(f"-{frames}f needs 1 <= frames <= {t} (the clips' length), given {frames}")
        factor = 1
        if size is not None:
            if size < 1 or h != w or h % size:
                raise ValueError(f"-{size} needs square frames whose side is a multiple of {size}, given {h}x{w}")
            factor = h // size
        self.source, self.frames, self.factor = source, frames or t, factor
        self.levels, self.num_classes = source.levels, source.num_classes
        self.item_shape = (self.frames, c, h // factor, w // factor)

    def __len__(self) -> int:
        return len(self.source)

    def get(self, index: int) -> tuple[np.ndarray, int]:
        x, y = self.source.get(index)
        x = x[: self.frames]
        if self.factor > 1:
            if self.levels > 256:
                raise ValueError(f"downscaling averages pixel intensities; given data with {self.levels} levels (codes)")
            x = area_downscale(x, self.factor)
        return x, y


# ---------------------------------------------------------------------------------------------
# video files on disk


class IndexedSource:
    """Items of an array-like (N, T, C, H, W) (a memory map, so a 800 MB file costs no memory),
    taken at `indices`; `layout` 'nt' reads item i as array[idx], 'tn' as array[:, idx]
    (the (T, N, H, W) layout of mnist_test_seq.npy)."""

    def __init__(self, array: np.ndarray, indices: np.ndarray, item_shape: tuple[int, ...], *,
                 layout: str = "nt", convert: Any = None, levels: int = 256) -> None:
        self.array, self.indices, self.layout, self.convert = array, indices, layout, convert
        self.item_shape, self.levels, self.num_classes = tuple(item_shape), levels, None

    def __len__(self) -> int:
        return len(self.indices)

    def get(self, index: int) -> tuple[np.ndarray, int]:
        i = int(self.indices[index])
        x = np.asarray(self.array[i] if self.layout == "nt" else self.array[:, i])
        x = self.convert(x) if self.convert is not None else x
        return np.ascontiguousarray(x), -1


class FrameFolderSource:
    """Trajectories stored as folders of numbered frame images (0.png, 1.png, ...), read on demand."""

    def __init__(self, folders: list[Path], num_frames: int, item_shape: tuple[int, ...]) -> None:
        self.folders, self.num_frames = folders, num_frames
        self.item_shape, self.levels, self.num_classes = tuple(item_shape), 256, None

    def __len__(self) -> int:
        return len(self.folders)

    def get(self, index: int) -> tuple[np.ndarray, int]:
        from argen.data.readers import read_frame_folder

        x = read_frame_folder(self.folders[index], self.num_frames)
        if tuple(x.shape) != self.item_shape:
            raise ValueError(f"{self.folders[index]}: frames of shape {tuple(x.shape[1:])}, expected "
                             f"{self.item_shape[1:]} like the first trajectory")
        return x, -1
