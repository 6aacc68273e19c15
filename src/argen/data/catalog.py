"""Names -> datasets: `load_dataset('mnist-dynbin')`, `list_datasets()` for `argen datasets`.

A name is a base followed by zero or more view suffixes, applied left to right
(`mnist-color-3bit` colours, then quantizes). Bases:

  mnist            the 10,000 embedded digits (9,000 train / 1,000 test), 1x28x28, 256 levels
  mnist-full       the full MNIST from IDX files in `root` (default <data home>/mnist;
                   `argen.data.download_mnist()` fetches them)
  fashion-mnist    IDX files in `root`, else Debian's /usr/share/datasets/fashion-mnist/
                   (apt install dataset-fashion-mnist), else <data home>/fashion-mnist
  cifar10          python pickle batches in `root` (default <data home>/cifar10)
  mnist-captions   the embedded digits in named colours with captions ("a red seven on a blue
                   background"), 3x28x28, 256 levels; y = caption tokens; splits train, test and
                   test-novel (compositions held out of training; argen.data.captions)
  mnist-edges      the embedded digits with their edge maps as the condition, 1x28x28, 256 levels;
                   y = edge map (1, 28, 28) in {0, 1} (argen.data.edges)
  moving-mnist     20-frame 64x64 clips of 2 embedded digits, (20, 1, 64, 64), unlabelled
  mnist-test-seq   the canonical Moving MNIST file mnist_test_seq.npy (20, N, 64, 64) uint8 ->
                   items (20, 1, 64, 64); found at `root` (the file or its folder), else
                   <data home>/moving-mnist/; also `mnist-test-seq:PATH`. Split: the first 90% of
                   the sequences train, the last 10% test
  folder:PATH      a folder of images (see readers.read_image_folder)
  npy:PATH         a .npy / .npz array file (see readers.read_npy)
  bair:PATH        BAIR robot pushing, preprocessed: an array file (N, T, 64, 64, 3) uint8 (.npy,
                   memory-mapped, or .npz), or a folder of trajectory folders of frames 0.png,
                   1.png, ...; `train/` + `test/` sub-folders are the splits, else every 10th clip
                   is test (readers.read_bair)
  video-folder:PATH  a folder of video files (.gif; .mp4 etc. with imageio-ffmpeg), cut into
                   clips of 16 frames (-Nf sets the length) without overlap; every 10th clip is
                   test (readers.read_video_folder)

Video bases take clip options right after the base name, before the view suffixes:
  -Nf   the first N frames of every clip (for video-folder: clips of N frames)
  -S    frames area-downscaled to S x S (S divides the side: moving-mnist-32 averages 2x2 blocks
        of the 64x64 canvas, so the digits move exactly as in the standard 64x64 clips)
so `moving-mnist-32-10f-binary` is the first 10 frames at 32x32, binarized (v >= 128 after the
average). For the path bases a relative PATH is taken relative to `root` when given; suffixes
are split off PATH only when PATH itself does not exist. Splits are 'train', 'test' and 'all';
they never depend on `seed`, which only drives random views and Moving MNIST.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from argen.data import readers
from argen.data.captions import CaptionSource
from argen.data.dataset import ArgenDataset, ArraySource, Source
from argen.data.edges import EdgeSource
from argen.data.embedded import embedded_mnist
from argen.data.paths import DEBIAN_FASHION_MNIST, EMBEDDED_MNIST, data_home
from argen.data.video import (
    DEFAULT_NUM_SEQUENCES,
    ClipSource,
    FrameFolderSource,
    IndexedSource,
    MovingMnistConfig,
    MovingMnistSource,
)
from argen.data.views import VIEW_HELP, View, split_view_suffix

MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    description: str
    shape: tuple[int, ...]  # () when it depends on the files
    levels: int
    num_classes: int | None
    available: bool
    location: str


# ---------------------------------------------------------------------------------------------
# where file-based data sets are found


def _idx_present(folder: Path) -> bool:
    try:
        for prefix in ("train", "t10k"):
            readers.find_idx(folder, prefix, "images")
            readers.find_idx(folder, prefix, "labels")
    except FileNotFoundError:
        return False
    return True


def _cifar_present(folder: Path) -> bool:
    names = readers.CIFAR10_BATCHES["train"] + readers.CIFAR10_BATCHES["test"]
    return (any(all((d / n).is_file() for n in names) for d in (folder, folder / readers.CIFAR10_FOLDER))
            or (folder / readers.CIFAR10_ARCHIVE).is_file())


def _candidates(base: str, root: str | Path | None) -> list[Path]:
    if root is not None:
        return [Path(root).expanduser()]
    if base == "fashion-mnist":
        return [DEBIAN_FASHION_MNIST, data_home() / "fashion-mnist"]
    return [data_home() / {"mnist-full": "mnist", "cifar10": "cifar10"}[base]]


_HINTS = {
    "mnist-full": "argen.data.download_mnist(root) fetches it",
    "fashion-mnist": "install it with `apt install dataset-fashion-mnist`, or argen.data.download_fashion_mnist(root)",
    "cifar10": "argen.data.download_cifar10(root) fetches it",
}


def _locate(base: str, root: str | Path | None) -> Path:
    present = _cifar_present if base == "cifar10" else _idx_present
    places = _candidates(base, root)
    for p in places:
        if p.is_dir() and present(p):
            return p
    raise FileNotFoundError(f"{base} not found in {', '.join(map(str, places))}; {_HINTS[base]}")


# ---------------------------------------------------------------------------------------------
# bases: (split, root, seed) -> (source, class names)

Base = Callable[[str, Path | None, int], tuple[Source, list[str] | None]]


def _no_root(base: str, root: Path | None) -> None:
    if root is not None:
        raise ValueError(f"{base} is built from the embedded digits and takes no root, given root={root}; "
                         "for MNIST files on disk use 'mnist-full'")


def _mnist(split: str, root: Path | None, seed: int) -> tuple[Source, list[str] | None]:
    _no_root("mnist", root)
    images, labels = embedded_mnist(split)
    return ArraySource(images[:, None], labels.astype("int64"), 256, 10), MNIST_CLASSES


def _mnist_captions(split: str, root: Path | None, seed: int) -> tuple[Source, list[str] | None]:
    _no_root("mnist-captions", root)
    images, labels = embedded_mnist("test" if split == "test-novel" else split)
    return CaptionSource(images[:, None], labels, split), None


def _mnist_edges(split: str, root: Path | None, seed: int) -> tuple[Source, list[str] | None]:
    _no_root("mnist-edges", root)
    images, _ = embedded_mnist(split)
    return EdgeSource(images[:, None]), None


def _idx_base(base: str, classes: list[str]) -> Base:
    def build(split: str, root: Path | None, seed: int) -> tuple[Source, list[str] | None]:
        images, labels = readers.read_idx_split(_locate(base, root), split)
        return ArraySource(images, labels, 256, 10), classes

    return build


def _cifar10(split: str, root: Path | None, seed: int) -> tuple[Source, list[str] | None]:
    images, labels = readers.read_cifar10(_locate("cifar10", root), split)
    return ArraySource(images, labels, 256, 10), CIFAR10_CLASSES


def _moving_mnist(split: str, root: Path | None, seed: int) -> tuple[Source, list[str] | None]:
    _no_root("moving-mnist", root)
    digits, _ = embedded_mnist(split)
    return MovingMnistSource(digits, split, seed, DEFAULT_NUM_SEQUENCES[split], MovingMnistConfig()), None


def _test_seq_path(root: Path | None) -> Path:
    if root is not None:
        return root if root.is_file() else root / readers.MNIST_TEST_SEQ
    return data_home() / "moving-mnist" / readers.MNIST_TEST_SEQ


def _test_seq_source(path: Path, split: str) -> Source:
    array, idx = readers.read_mnist_test_seq(path, split)
    t, _, h, w = array.shape
    return IndexedSource(array, idx, (t, 1, h, w), layout="tn", convert=lambda a: a[:, None])


def _mnist_test_seq(split: str, root: Path | None, seed: int) -> tuple[Source, list[str] | None]:
    return _test_seq_source(_test_seq_path(root), split), None


def _mnist_test_seq_path(path: Path, split: str) -> tuple[Source, list[str] | None]:
    return _test_seq_source(path, split), None


def _bair(path: Path, split: str) -> tuple[Source, list[str] | None]:
    array, keys, shape = readers.read_bair(path, split)
    if array is None:
        return FrameFolderSource(list(keys), shape[0], shape), None
    return IndexedSource(array, np.asarray(keys), shape, convert=lambda a: readers.video_to_tchw(a[None], str(path))[0]), None


#: Clip length of `video-folder:` when no -Nf is given.
VIDEO_FOLDER_FRAMES = 16


def _video_folder(path: Path, split: str, frames: int | None = None) -> tuple[Source, list[str] | None]:
    clips = readers.read_video_folder(path, frames or VIDEO_FOLDER_FRAMES, split)
    return ArraySource(clips, None, 256), None


def _folder(path: Path, split: str) -> tuple[Source, list[str] | None]:
    images, labels, classes = readers.read_image_folder(path, split)
    return ArraySource(images, labels, 256, None if classes is None else len(classes)), classes


def _npy(path: Path, split: str) -> tuple[Source, list[str] | None]:
    data, labels, levels = readers.read_npy(path, split, with_levels=True)
    return ArraySource(data, labels, levels), None


BASES: dict[str, Base] = {
    "mnist": _mnist,
    "mnist-captions": _mnist_captions,
    "mnist-edges": _mnist_edges,
    "mnist-full": _idx_base("mnist-full", MNIST_CLASSES),
    "fashion-mnist": _idx_base("fashion-mnist", FASHION_MNIST_CLASSES),
    "cifar10": _cifar10,
    "moving-mnist": _moving_mnist,
    "mnist-test-seq": _mnist_test_seq,
}
#: Splits a base has beyond train / test / all.
EXTRA_SPLITS: dict[str, tuple[str, ...]] = {"mnist-captions": ("test-novel",)}
PATH_BASES = {"folder": _folder, "npy": _npy, "bair": _bair, "video-folder": _video_folder,
              "mnist-test-seq": _mnist_test_seq_path}


@dataclass(frozen=True)
class ClipOption:
    """A clip option of a video base (`-10f`: the first 10 frames; `-32`: 32x32 frames)."""

    suffix: str
    frames: int | None = None
    size: int | None = None


_CLIP_SUFFIX = re.compile(r"-(\d+)(f?)$")


def split_clip_suffix(name: str) -> tuple[str, ClipOption] | None:
    """'moving-mnist-32' -> ('moving-mnist', ClipOption('32', size=32)); None if no clip option ends it."""
    m = _CLIP_SUFFIX.search(name)
    if m is None:
        return None
    n = int(m.group(1))
    opt = ClipOption(f"{n}f", frames=n) if m.group(2) else ClipOption(str(n), size=n)
    return name[: m.start()], opt


def _split_suffix(name: str) -> tuple[str, View | ClipOption] | None:
    return split_view_suffix(name) or split_clip_suffix(name)


def _clip_options(name: str, parts: list[View | ClipOption]) -> tuple[list[ClipOption], list[View]]:
    """Separate clip options (which must come first, right after the base) from the views."""
    clips = [p for p in parts if isinstance(p, ClipOption)]
    views = [p for p in parts if not isinstance(p, ClipOption)]
    if parts[: len(clips)] != clips:
        raise ValueError(f"dataset {name!r}: clip options (-Nf, -S) come right after the base name, before the view "
                         f"suffixes, e.g. moving-mnist-32-10f-binary")
    for kind in ("frames", "size"):
        if sum(getattr(c, kind) is not None for c in clips) > 1:
            raise ValueError(f"dataset {name!r}: at most one {'-Nf' if kind == 'frames' else '-S'} option, given "
                             f"{[c.suffix for c in clips]}")
    return clips, views


def _known_names() -> str:
    bases = list(BASES) + [f"{p}:PATH" for p in PATH_BASES]
    return f"bases: {', '.join(bases)}; view suffixes: {', '.join(VIEW_HELP)}; video clip options: -Nf, -S"


def parse_name(name: str, root: str | Path | None = None) -> tuple[str, Path | None, list[Any]]:
    """'mnist-color-3bit' -> ('mnist', None, [Colorize, Quantize(3)]); 'npy:x.npy' -> ('npy', path, []).

    The list holds the view suffixes and, for video bases, the clip options (`ClipOption`) first.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"dataset name must be a non-empty string, given {name!r}; {_known_names()}")
    name = name.strip()
    kind, sep, rest = name.partition(":")
    if sep and kind.lower() in PATH_BASES:
        views: list[Any] = []
        path = Path(rest).expanduser()
        if root is not None and not path.is_absolute():
            path = Path(root).expanduser() / path
        while not path.exists():
            parsed = _split_suffix(path.name)
            if parsed is None or not parsed[0]:
                break
            path = path.with_name(parsed[0])
            views.insert(0, parsed[1])
        if not path.exists():
            raise FileNotFoundError(f"{kind}: path {Path(rest)} does not exist (looked at {path})")
        return kind.lower(), path, views
    base, views = name.lower(), []
    while base not in BASES:
        parsed = _split_suffix(base)
        if parsed is None:
            raise ValueError(f"unknown dataset {name!r}; {_known_names()}")
        base = parsed[0]
        views.insert(0, parsed[1])
    return base, None, views


def load_dataset(name: str, split: str = "train", *, root: str | None = None, seed: int = 0) -> ArgenDataset:
    """A Dataset of (x: long tensor ds.shape, y: long 0-dim, -1 if unlabelled); see the module doc."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, given {seed!r}")
    base, path, parts = parse_name(name, root)
    if split not in EXTRA_SPLITS.get(base, ()):
        readers.check_split(split)
    clips, views = _clip_options(name, parts)
    frames = next((c.frames for c in clips if c.frames is not None), None)
    size = next((c.size for c in clips if c.size is not None), None)
    if path is not None and base == "video-folder":
        source, classes = _video_folder(path, split, frames)
        frames = None  # the clip length, already cut
    elif path is not None:
        source, classes = PATH_BASES[base](path, split)
    else:
        source, classes = BASES[base](split, None if root is None else Path(root).expanduser(), seed)
    if frames is not None or size is not None:
        source = ClipSource(source, frames, size)
    full = (f"{base}:{path}" if path is not None else base) + "".join(f"-{v.suffix}" for v in parts)
    return ArgenDataset(full, source, views, seed=seed, split=split, class_names=classes)


def list_datasets(root: str | None = None) -> list[DatasetInfo]:
    """What `argen datasets` shows: each base (and common views), whether its data is here, where."""

    def where(base: str) -> tuple[bool, str]:
        try:
            return True, str(_locate(base, root))
        except FileNotFoundError:
            return False, " or ".join(str(p) for p in _candidates(base, root))

    emb = (EMBEDDED_MNIST.is_file(), str(EMBEDDED_MNIST))
    out = [
        DatasetInfo("mnist", "10,000 embedded MNIST digits (9,000 train / 1,000 test), 8-bit grey",
                    (1, 28, 28), 256, 10, *emb),
        DatasetInfo("mnist-binary", "embedded MNIST, static binarization (v >= 128)", (1, 28, 28), 2, 10, *emb),
        DatasetInfo("mnist-dynbin", "embedded MNIST, dynamically binarized, redrawn each epoch",
                    (1, 28, 28), 2, 10, *emb),
        DatasetInfo("mnist-4bit", "embedded MNIST quantized to 16 levels (any -Kbit, K=1..7)",
                    (1, 28, 28), 16, 10, *emb),
        DatasetInfo("mnist-color", "embedded MNIST, coloured digits on coloured backgrounds",
                    (3, 28, 28), 256, 10, *emb),
        DatasetInfo("mnist-captions", "embedded MNIST in named colours with captions (y: tokens); splits train, "
                    "test, test-novel (held-out compositions)", (3, 28, 28), 256, None, *emb),
        DatasetInfo("mnist-edges", "embedded MNIST with edge maps as the condition (y: (1, 28, 28) in {0, 1})",
                    (1, 28, 28), 256, None, *emb),
        DatasetInfo("moving-mnist", "Moving MNIST: 20 frames, 2 embedded digits bouncing on 64x64 "
                    "(10,000 train / 1,000 test clips, generated)", (20, 1, 64, 64), 256, None, *emb),
        DatasetInfo("moving-mnist-10f", "Moving MNIST, the first 10 frames (any -Nf, N <= 20)",
                    (10, 1, 64, 64), 256, None, *emb),
        DatasetInfo("moving-mnist-32", "Moving MNIST at 32x32 (2x2 area downscale of the 64x64 canvas)",
                    (20, 1, 32, 32), 256, None, *emb),
        DatasetInfo("moving-mnist-32-10f-binary", "Moving MNIST, 10 frames of 32x32, binarized (v >= 128)",
                    (10, 1, 32, 32), 2, None, *emb),
        DatasetInfo("moving-mnist-32-10f-2bit", "Moving MNIST, 10 frames of 32x32, 4 levels",
                    (10, 1, 32, 32), 4, None, *emb),
        DatasetInfo("mnist-test-seq", "the canonical Moving MNIST file mnist_test_seq.npy (20, N, 64, 64); "
                    "first 90% train / last 10% test; also mnist-test-seq:PATH",
                    (20, 1, 64, 64), 256, None, *_test_seq_where(root)),
        DatasetInfo("mnist-full", "full MNIST, 60,000 train / 10,000 test, IDX files",
                    (1, 28, 28), 256, 10, *where("mnist-full")),
        DatasetInfo("fashion-mnist", "Fashion-MNIST, 60,000 train / 10,000 test, IDX files",
                    (1, 28, 28), 256, 10, *where("fashion-mnist")),
        DatasetInfo("cifar10", "CIFAR-10, 50,000 train / 10,000 test, python pickle batches",
                    (3, 32, 32), 256, 10, *where("cifar10")),
        DatasetInfo("folder:PATH", "a folder of same-size grey or RGB images; sub-folders are classes",
                    (), 256, None, True, "PATH"),
        DatasetInfo("npy:PATH", "uint8 (or uint16 codes) array file .npy (+ <stem>_labels.npy) or .npz "
                    "(images, labels, levels)",
                    (), 256, None, True, "PATH"),
        DatasetInfo("bair:PATH", "BAIR robot pushing: (N, T, 64, 64, 3) uint8 .npy/.npz, or a folder of trajectory "
                    "folders of frames 0.png, 1.png, ...", (), 256, None, True, "PATH"),
        DatasetInfo("video-folder:PATH", f"a folder of video files (.gif; .mp4 with imageio-ffmpeg), clips of "
                    f"{VIDEO_FOLDER_FRAMES} frames (-Nf sets the length)", (), 256, None, True, "PATH"),
    ]
    return out


def _test_seq_where(root: str | None) -> tuple[bool, str]:
    path = _test_seq_path(None if root is None else Path(root).expanduser())
    return path.is_file(), str(path)
