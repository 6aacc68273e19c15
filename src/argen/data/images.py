"""Image files for the CLI: sample grids as PNG, and reading/writing single uint8 images.

Model data is integer levels in [0, levels); files hold 0..255, so `save_grid` scales by
255 / (levels - 1) (binary data becomes black and white). Writes are atomic (temporary file, then
rename) so an interrupted run never leaves a truncated PNG.
"""
from __future__ import annotations

import math
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from torch import Tensor

from argen.fileio import atomic_write


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as uint8 (H, W) if grey or (H, W, 3) if colour.

    Grey-with-alpha and RGBA are accepted only when fully opaque (the alpha channel is dropped);
    bilevel images become 0/255; 16-bit and multi-frame files raise ValueError.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    a = np.asarray(iio.imread(path))
    if a.ndim == 4:  # e.g. a GIF read as (frames, H, W, C)
        if a.shape[0] != 1:
            raise ValueError(f"{path}: expected a single image, given {a.shape[0]} frames")
        a = a[0]
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.dtype != np.uint8:
        raise ValueError(f"{path}: expected 8-bit pixels, given dtype {a.dtype}")
    if a.ndim == 3 and a.shape[2] in (2, 4):
        if (a[..., -1] != 255).any():
            raise ValueError(f"{path}: has transparent pixels; flatten it onto a background first")
        a = a[..., :-1]
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
        raise ValueError(f"{path}: expected a grey (H, W) or RGB (H, W, 3) image, given shape {a.shape}")
    return a


def write_image(path: str | Path, array: np.ndarray) -> None:
    """Write uint8 (H, W), (H, W, 1) or (H, W, 3) to `path`; the format follows the suffix."""
    path = Path(path)
    a = np.asarray(array)
    if a.dtype != np.uint8:
        raise ValueError(f"write_image needs uint8 pixels, given dtype {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
        raise ValueError(f"write_image needs shape (H, W), (H, W, 1) or (H, W, 3), given {a.shape}")
    if not path.suffix:
        raise ValueError(f"write_image needs a file suffix that names the format (e.g. .png), given {path}")
    atomic_write(path, lambda tmp: iio.imwrite(tmp, a, extension=path.suffix), suffix=path.suffix)


#: The most levels image output takes (8-bit pixels).
MAX_IMAGE_LEVELS = 256


def to_uint8(x: Tensor | np.ndarray, levels: int) -> np.ndarray:
    """Integer levels in [0, levels) -> uint8 0..255 (v * 255 / (levels - 1), rounded).

    Only pixel data (at most 256 levels) is an image: more levels are the codes of a tokenizer,
    which a picture would misrepresent, so they are refused (decode them to pixels first).
    """
    if isinstance(levels, int) and levels > MAX_IMAGE_LEVELS:
        raise ValueError(f"cannot show data with {levels} levels as an image: images take at most "
                         f"{MAX_IMAGE_LEVELS} levels (a token grid is not an image; decode the codes to pixels first)")
    if not 2 <= levels <= MAX_IMAGE_LEVELS:
        raise ValueError(f"levels must be in [2, {MAX_IMAGE_LEVELS}], given {levels}")
    a = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"expected integer pixel levels, given dtype {a.dtype}")
    if a.size and (a.min() < 0 or a.max() >= levels):
        raise ValueError(f"pixel values must lie in [0, {levels}), given range [{a.min()}, {a.max()}]")
    return np.rint(a.astype(np.float64) * (255.0 / (levels - 1))).astype(np.uint8)


def make_grid(
    x: Tensor | np.ndarray, levels: int, nrow: int | None = None, padding: int = 2, pad_value: int = 0
) -> np.ndarray:
    """Tile images (N, C, H, W) into one uint8 picture (H', W') or (H', W', 3).

    `nrow` is the number of images per row (default ceil(sqrt(N))). Video (N, T, C, H, W) is laid
    out one clip per row, frames left to right (nrow is then T).
    """
    a = to_uint8(x, levels)
    if a.ndim == 5:
        n, t = a.shape[:2]
        a = a.reshape(n * t, *a.shape[2:])
        nrow = t
    if a.ndim != 4 or a.shape[1] not in (1, 3) or a.shape[0] == 0:
        raise ValueError(f"make_grid needs (N, C, H, W) with N >= 1 and C in (1, 3), given shape {tuple(a.shape)}")
    n, c, h, w = a.shape
    ncol = nrow or math.ceil(math.sqrt(n))  # images per row
    rows = math.ceil(n / ncol)
    grid = np.full((c, rows * (h + padding) + padding, ncol * (w + padding) + padding), pad_value, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, ncol)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top : top + h, left : left + w] = a[i]
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)


def save_grid(
    x: Tensor | np.ndarray, levels: int, path: str | Path, nrow: int | None = None, padding: int = 2
) -> Path:
    """Write `make_grid(x, levels, nrow)` as an image file (PNG for a .png path); returns the path."""
    path = Path(path)
    write_image(path, make_grid(x, levels, nrow=nrow, padding=padding))
    return path

