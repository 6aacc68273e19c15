"""The one Dataset class behind every name `load_dataset` knows: a source of uint8 (pixels) or
uint16 (codes, up to 65,536 levels) items plus a chain of views, returning
`(x: long (C, H, W) or (T, C, H, W), y)` per index, y a long 0-dim class label (-1 unlabelled) or,
for data with another condition (`ds.cond_spec`), that condition: caption tokens (L,) or a condition
image (C, H, W)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from argen.conditioning import CondSpec
from argen.data.views import View


class Source(Protocol):
    """Raw items before views: uint8 or uint16 arrays of `item_shape` with values in [0, levels),
    each with a label (an int, -1 unlabelled) or a condition array (tokens, an image). A source may
    also carry `cond_spec` (what its conditions are; default: class labels when it has classes) and
    `vocabulary` (an `argen.text.Vocabulary` for token conditions)."""

    item_shape: tuple[int, ...]
    levels: int
    num_classes: int | None

    def __len__(self) -> int: ...

    def get(self, index: int) -> tuple[np.ndarray, int | np.ndarray]: ...


#: Item dtypes a source may hold, and the most levels each can represent.
ITEM_DTYPES = {np.dtype(np.uint8): 256, np.dtype(np.uint16): 65536}


@dataclass
class ArraySource:
    """Items held in memory: data (N, *item_shape) uint8 (up to 256 levels) or uint16 (up to 65,536,
    e.g. the codes of a tokenizer), labels (N,) ints or None (unlabelled), or per-item condition
    arrays (N, ...) described by `cond_spec` (caption tokens (N, L), condition images (N, C, H, W))."""

    data: np.ndarray
    labels: np.ndarray | None = None
    levels: int = 256
    num_classes: int | None = None
    cond_spec: CondSpec | None = None
    vocabulary: object = None  # an argen.text.Vocabulary for token conditions

    def __post_init__(self) -> None:
        if self.data.dtype not in ITEM_DTYPES or self.data.ndim not in (4, 5):
            raise ValueError(f"data must be uint8 or uint16 (N, C, H, W) or (N, T, C, H, W), "
                             f"given {self.data.dtype} {self.data.shape}")
        top = ITEM_DTYPES[self.data.dtype]
        if isinstance(self.levels, bool) or not isinstance(self.levels, (int, np.integer)) or not 2 <= self.levels <= top:
            raise ValueError(f"levels must be in [2, {top}] for {self.data.dtype} data, given {self.levels}")
        self.levels = int(self.levels)
        if self.data.size and int(self.data.max()) >= self.levels:
            raise ValueError(f"data values must lie in [0, {self.levels}), given max {int(self.data.max())}")
        conditions = self.cond_spec is not None and self.cond_spec.kind not in ("class", "none")
        if self.labels is not None and not conditions and self.labels.shape != (len(self.data),):
            raise ValueError(f"labels must have shape ({len(self.data)},), given {self.labels.shape}")
        if conditions and (self.labels is None or len(self.labels) != len(self.data)):
            raise ValueError(f"a source with {self.cond_spec.kind} conditions needs one per item "
                             f"({len(self.data)}), given {None if self.labels is None else len(self.labels)}")
        if self.labels is not None and self.num_classes is None and not conditions:
            self.num_classes = int(self.labels.max()) + 1 if len(self.labels) else 0
        self.item_shape = tuple(int(s) for s in self.data.shape[1:])

    def __len__(self) -> int:
        return len(self.data)

    def get(self, index: int) -> tuple[np.ndarray, int | np.ndarray]:
        if self.labels is None:
            return self.data[index], -1
        y = self.labels[index]
        return self.data[index], (int(y) if np.ndim(y) == 0 else y)


class ArgenDataset(Dataset):
    """`ds[i] -> (x, y)`; see the data API: name, shape, levels, num_classes, set_epoch.

    Randomness (dynamic binarization, colours) is keyed by (seed, epoch, index), never by call
    order, so DataLoader workers and repeated reads agree. `set_epoch` must be called before the
    DataLoader iterator is created (workers copy the dataset when they start).
    """

    def __init__(self, name: str, source: Source, views: Sequence[View] = (), *, seed: int = 0,
                 split: str = "train", class_names: list[str] | None = None) -> None:
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, given {seed!r}")
        self.name = name
        self.split = split
        self.source = source
        self.views = tuple(views)
        self.seed = seed
        self.epoch = 0
        self.class_names = class_names
        self.num_classes: int | None = source.num_classes
        spec = getattr(source, "cond_spec", None)
        #: what y is: class labels (labelled data), none (unlabelled), caption tokens or a condition image
        self.cond_spec: CondSpec = spec if spec is not None else CondSpec.classes(self.num_classes)
        #: the caption vocabulary (token conditions), else None
        self.vocabulary = getattr(source, "vocabulary", None)
        channels, levels = source.item_shape[-3], source.levels
        for v in self.views:
            v.check_levels(levels)
            v.check(channels, levels)
            channels, levels = v.out_channels(channels), v.out_levels(levels)
        self.levels: int = levels
        self.shape: tuple[int, ...] = (*source.item_shape[:-3], channels, *source.item_shape[-2:])

    def __len__(self) -> int:
        return len(self.source)

    def set_epoch(self, epoch: int) -> None:
        """Redraw dynamically binarized items for `epoch`; other views ignore it."""
        if not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, given {epoch!r}")
        self.epoch = int(epoch)

    def raw(self, index: int) -> tuple[np.ndarray, int | np.ndarray]:
        """The uint8 / uint16 item after views, and its label (-1 if unlabelled) or condition array."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {self.name} with {n} items")
        index %= n
        x, y = self.source.get(index)
        levels = self.source.levels
        for v in self.views:
            x = v.apply(x, levels, seed=self.seed, epoch=self.epoch, index=index)
            levels = v.out_levels(levels)
        return x, y

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x, y = self.raw(int(index))
        y = torch.tensor(y, dtype=torch.long) if np.ndim(y) == 0 else torch.from_numpy(np.array(y, dtype=np.int64))
        return torch.from_numpy(np.ascontiguousarray(x)).long(), y

    def __repr__(self) -> str:
        return (f"ArgenDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, shape={self.shape}, "
                f"levels={self.levels}, num_classes={self.num_classes})")
