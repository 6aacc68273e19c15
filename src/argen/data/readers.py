"""File-format readers for real data sets. Each returns uint8 NumPy arrays in (N, C, H, W) layout
(or (N, T, C, H, W) for video) plus int64 labels, and raises a clear error on anything malformed.

- IDX (MNIST, Fashion-MNIST), gzipped or not: magic number, dimensions and size are validated.
- CIFAR-10 python pickle batches (data_batch_1..5, test_batch), from a folder or the .tar.gz.
  Unpickling is restricted to the NumPy globals those files use, so a hostile pickle cannot run
  code.
- A folder of images (imageio), optionally one sub-folder per class.
- NumPy arrays: `.npy` (+ optional `<stem>_labels.npy`) or `.npz` with `images` (+ `labels`,
  `levels`); uint8 pixels or uint16 codes (a tokenizer's code grids, up to 65,536 levels).

Sources without a published split (folders, arrays) are split by position: item i is in the test
split when i % 10 == 9 (10%, spread over the whole set, and so over the classes of a folder that is
sorted by class); split 'all' takes everything.
"""
from __future__ import annotations

import gzip
import io
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

SPLITS = ("train", "test", "all")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")

# ---------------------------------------------------------------------------------------------
# splits


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, given {split!r}")


def positional_split(n: int, split: str) -> np.ndarray:
    """Indices of `split` for a source of n items with no published split (test: i % 10 == 9)."""
    check_split(split)
    idx = np.arange(n)
    if split == "all":
        return idx
    test = idx % 10 == 9
    out = idx[test] if split == "test" else idx[~test]
    if len(out) == 0:
        raise ValueError(f"split {split!r} of {n} items is empty (test takes every 10th item); use split='all'")
    return out


# ---------------------------------------------------------------------------------------------
# IDX

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _read_maybe_gzip(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: corrupt gzip data ({e})") from e
    return raw


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (plain or gzipped) into a NumPy array in native byte order.

    Layout: 2 zero bytes, a type byte (0x08 uint8 ... 0x0E float64), a byte with the number of
    dimensions d, d big-endian uint32 sizes, then the data, big-endian, row-major.
    """
    path = Path(path)
    raw = _read_maybe_gzip(path)
    if len(raw) < 4:
        raise ValueError(f"{path}: IDX file too short for a header ({len(raw)} bytes)")
    zero, code, ndim = raw[0:2], raw[2], raw[3]
    if zero != b"\x00\x00" or code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(
            f"{path}: bad IDX magic number 0x{raw[:4].hex()}; expected 0x0000TTDD with type TT in "
            f"{sorted(hex(c) for c in _IDX_DTYPES)} and DD >= 1 dimensions"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: IDX header needs {header} bytes, file has {len(raw)}")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{path}: IDX dims {dims} of {dtype} need {expected} bytes, file has {len(raw)}")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="), copy=True)


def find_idx(root: Path, prefix: str, kind: str) -> Path:
    """Find e.g. train-images-idx3-ubyte[.gz] (or the dotted train-images.idx3-ubyte) in root."""
    rank = "3" if kind == "images" else "1"
    stems = (f"{prefix}-{kind}-idx{rank}-ubyte", f"{prefix}-{kind}.idx{rank}-ubyte")
    for stem in stems:
        for name in (stem, stem + ".gz"):
            if (root / name).is_file():
                return root / name
    raise FileNotFoundError(f"no {stems[0]}[.gz] in {root}")


def read_idx_split(root: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-style folder of four IDX files -> (images (N, 1, H, W) uint8, labels (N,) int64)."""
    check_split(split)
    root = Path(root)
    if split == "all":
        parts = [read_idx_split(root, s) for s in ("train", "test")]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    prefix = "train" if split == "train" else "t10k"
    img_path, lab_path = find_idx(root, prefix, "images"), find_idx(root, prefix, "labels")
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"{img_path}: expected uint8 images (N, H, W), given {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"{lab_path}: expected uint8 labels (N,), given {labels.dtype} {labels.shape}")
    if len(labels) != len(images):
        raise ValueError(f"{lab_path}: {len(labels)} labels for {len(images)} images in {img_path}")
    return images[:, None], labels.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# CIFAR-10 python pickles

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}

# The only globals a CIFAR batch (a dict of bytes, lists and ndarrays) needs.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 writes bytes under protocol 2: encode(str, "latin1")
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's signature
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a data pickle")
        return super().find_class(module, name)


def _decode_cifar_batch(blob: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        d = _NumpyOnlyUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as e:  # a corrupt pickle can raise almost anything
        raise ValueError(f"{where}: not a CIFAR-10 pickle batch ({type(e).__name__}: {e})") from e
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected a dict, given {type(d).__name__}")
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    if "data" not in d or "labels" not in d:
        raise ValueError(f"{where}: expected keys 'data' and 'labels', given {sorted(d)}")
    data, labels = np.asarray(d["data"]), np.asarray(d["labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{where}: data must be uint8 (N, 3072), given {data.dtype} {data.shape}")
    if labels.shape != (len(data),) or (len(labels) and (labels.min() < 0 or labels.max() > 9)):
        raise ValueError(f"{where}: labels must be {len(data)} ints in 0..9, given shape {labels.shape}")
    # Each row: 1024 red, 1024 green, 1024 blue values, each plane row-major 32x32.
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def read_cifar10(root: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 -> (images (N, 3, 32, 32) uint8, labels (N,) int64).

    `root` may hold the batch files, a `cifar-10-batches-py/` folder, or `cifar-10-python.tar.gz`
    (read in place, without extracting).
    """
    check_split(split)
    root = Path(root)
    names = CIFAR10_BATCHES["train"] + CIFAR10_BATCHES["test"] if split == "all" else CIFAR10_BATCHES[split]
    blobs: list[tuple[bytes, str]] = []
    for folder in (root, root / CIFAR10_FOLDER):
        if all((folder / n).is_file() for n in names):
            blobs = [((folder / n).read_bytes(), str(folder / n)) for n in names]
            break
    else:
        archive = root / CIFAR10_ARCHIVE
        if not archive.is_file():
            raise FileNotFoundError(
                f"CIFAR-10 not found in {root}: expected {', '.join(names)} there or in {CIFAR10_FOLDER}/, "
                f"or {CIFAR10_ARCHIVE}; argen.data.download_cifar10({str(root)!r}) fetches it"
            )
        with tarfile.open(archive, "r:gz") as tar:
            for n in names:
                member = f"{CIFAR10_FOLDER}/{n}"
                try:
                    f = tar.extractfile(member)
                except KeyError:
                    f = None
                if f is None:
                    raise ValueError(f"{archive}: member {member} missing")
                blobs.append((f.read(), f"{archive}:{member}"))
    parts = [_decode_cifar_batch(b, w) for b, w in blobs]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


# ---------------------------------------------------------------------------------------------
# folders of images


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan_folder(folder: Path) -> tuple[list[Path], list[str] | None]:
    """Image paths and, if the images sit in sub-folders, their class folder names."""
    files, subdirs = _image_files(folder), [d for d in _class_dirs(folder) if _image_files(d)]
    if files and subdirs:
        raise ValueError(
            f"{folder}: has images both directly inside and in sub-folders {[d.name for d in subdirs]}; "
            "put every image in a class sub-folder, or none"
        )
    if files:
        return files, None
    if not subdirs:
        raise FileNotFoundError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in it or its sub-folders")
    paths, names = [], []
    for d in subdirs:
        for f in _image_files(d):
            paths.append(f)
            names.append(d.name)
    return paths, names


def read_image_folder(
    path: str | Path, split: str
) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    """A folder of same-size images -> (images (N, C, H, W) uint8, labels or None, class names).

    C is 1 when every image is grey and 3 otherwise (grey images are then repeated into RGB).
    Labels come from sub-folder names (sorted) when the images are in sub-folders. If the folder
    has `train/` and `test/` sub-folders, those are the splits; otherwise the positional split.
    """
    from argen.data.images import read_image

    check_split(split)
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    all_classes: list[str] | None = None
    if (root / "train").is_dir() and (root / "test").is_dir():
        wanted = ["train", "test"] if split == "all" else [split]
        scans = [_scan_folder(root / s) for s in wanted]
        paths = [p for s in scans for p in s[0]]
        if any((s[1] is None) != (scans[0][1] is None) for s in scans):
            raise ValueError(f"{root}: train/ and test/ must both use class sub-folders, or neither")
        names = None if scans[0][1] is None else [n for s in scans for n in s[1]]
        if names is not None:  # class indices over the union, so train and test agree
            all_classes = sorted({d.name for s in ("train", "test") for d in _class_dirs(root / s)})
        keep = np.arange(len(paths))
    else:
        paths, names = _scan_folder(root)
        all_classes = sorted(set(names)) if names is not None else None
        keep = positional_split(len(paths), split)
    paths = [paths[i] for i in keep]
    arrays = [read_image(p) for p in paths]
    first = arrays[0].shape[:2]
    for p, a in zip(paths, arrays):
        if a.shape[:2] != first:
            raise ValueError(f"{root}: images must all have one size (H, W); {paths[0].name} is {first}, "
                             f"{p.name} is {a.shape[:2]}")
    color = any(a.ndim == 3 for a in arrays)
    chw = [
        (np.repeat(a[None], 3, axis=0) if a.ndim == 2 else a.transpose(2, 0, 1)) if color else a[None]
        for a in arrays
    ]
    images = np.stack(chw).astype(np.uint8)
    if names is None:
        return images, None, None
    assert all_classes is not None
    index = {c: i for i, c in enumerate(all_classes)}
    labels = np.array([index[names[i]] for i in keep], dtype=np.int64)
    return images, labels, all_classes


# ---------------------------------------------------------------------------------------------
# NumPy arrays


def to_nchw(a: np.ndarray, where: str, dtypes: tuple[Any, ...] = (np.uint8,)) -> np.ndarray:
    """uint8 (N,H,W) | (N,C,H,W) | (N,H,W,C) | (N,T,C,H,W) -> (N,[T,]C,H,W), C in {1, 3}.

    `dtypes` widens the accepted element types (`read_npy` also takes uint16 codes).

    A 4-D array is read as (N, C, H, W) when its axis 1 is 1 or 3, else as (N, H, W, C) when its
    last axis is 1 or 3 (so an ambiguous (N, 3, H, 3) is channels-first). 5-D is video, as given.
    """
    if a.dtype not in tuple(np.dtype(d) for d in dtypes):
        allowed = " or ".join(f"{np.dtype(d).name} (values 0..{np.iinfo(d).max})" for d in dtypes)
        raise ValueError(f"{where}: arrays must be {allowed}, given dtype {a.dtype}")
    if a.ndim == 3:
        return a[:, None]
    if a.ndim == 4:
        if a.shape[1] in (1, 3):
            return a
        if a.shape[3] in (1, 3):
            return a.transpose(0, 3, 1, 2)
        raise ValueError(f"{where}: 4-D array needs 1 or 3 channels on axis 1 or 3, given shape {a.shape}")
    if a.ndim == 5 and a.shape[2] in (1, 3):
        return a
    raise ValueError(f"{where}: expected (N,H,W), (N,C,H,W), (N,H,W,C) or (N,T,C,H,W) with C in (1, 3), "
                     f"given shape {a.shape}")


def read_npy(path: str | Path, split: str, *, with_levels: bool = False) -> Any:
    """Arrays on disk -> (data (N, [T,] C, H, W) uint8 or uint16, labels (N,) int64 or None),
    and with `with_levels=True` also the number of levels (a third item).

    `x.npy` takes labels from `x_labels.npy` beside it if that exists; `x.npz` holds `images` and
    optionally `labels` and `levels` (a scalar, e.g. a tokenizer's codebook size). Levels are that
    scalar when given, else 256 for uint8 and 65,536 for uint16 data. Arrays are never unpickled
    (allow_pickle=False).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"array file {path} does not exist")
    levels = None
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            if "images" not in z:
                raise ValueError(f"{path}: .npz needs an 'images' array, given {sorted(z.files)}")
            data = z["images"]
            labels = z["labels"] if "labels" in z else None
            if "levels" in z:
                raw = z["levels"]
                if raw.shape != () or not np.issubdtype(raw.dtype, np.integer):
                    raise ValueError(f"{path}: 'levels' must be an integer scalar, given {raw.dtype} {raw.shape}")
                levels = int(raw)
    elif path.suffix == ".npy":
        data = np.load(path, allow_pickle=False)
        lab_path = path.with_name(path.stem + "_labels.npy")
        labels = np.load(lab_path, allow_pickle=False) if lab_path.is_file() else None
    else:
        raise ValueError(f"{path}: expected a .npy or .npz file, given suffix {path.suffix!r}")
    data = to_nchw(data, str(path), dtypes=(np.uint8, np.uint16))
    top = 256 if data.dtype == np.uint8 else 65536
    if levels is None:
        levels = top
    if not 2 <= levels <= top:
        raise ValueError(f"{path}: levels must be in [2, {top}] for {data.dtype} data, given {levels}")
    if data.size and int(data.max()) >= levels:
        raise ValueError(f"{path}: values must lie in [0, {levels}), given max {int(data.max())}")
    if labels is not None:
        if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer) or (labels < 0).any():
            raise ValueError(f"{path}: labels must be {len(data)} non-negative ints, "
                             f"given {labels.dtype} {labels.shape}")
        labels = labels.astype(np.int64)
    keep = positional_split(len(data), split)
    out = data[keep], (labels[keep] if labels is not None else None)
    return (*out, levels) if with_levels else out


# ---------------------------------------------------------------------------------------------
# video: Moving MNIST's mnist_test_seq.npy, BAIR robot pushing, folders of video files

#: The canonical Moving MNIST file (Srivastava et al.): uint8 (T=20, N=10000, 64, 64), time first.
MNIST_TEST_SEQ = "mnist_test_seq.npy"
VIDEO_SUFFIXES = (".gif", ".mp4", ".avi", ".mov", ".webm", ".mkv")


def first_last_split(n: int, split: str, what: str) -> np.ndarray:
    """Indices of `split` for sequences with no published split: the first 90% train, the last
    10% test (contiguous, so the test clips are one block, as usually done with mnist_test_seq)."""
    check_split(split)
    n_test = n // 10
    idx = np.arange(n)
    if split == "all":
        return idx
    out = idx[n - n_test:] if split == "test" else idx[: n - n_test]
    if len(out) == 0:
        raise ValueError(f"{what}: split {split!r} of {n} sequences is empty (test is the last 10%); use split='all'")
    return out


def read_mnist_test_seq(path: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """mnist_test_seq.npy -> (the (T, N, H, W) uint8 array, memory-mapped; the indices of `split`).

    Item i of the split is `array[:, indices[i]]` with a channel axis added: (T, 1, H, W).
    """
    path = Path(path)
    if path.is_dir():
        path = path / MNIST_TEST_SEQ
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (the Moving MNIST file {MNIST_TEST_SEQ}, shape (20, N, 64, 64))")
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{path}: not a NumPy array file ({e})") from None
    if a.dtype != np.uint8 or a.ndim != 4:
        raise ValueError(f"{path}: expected uint8 (T, N, H, W) like mnist_test_seq.npy's (20, 10000, 64, 64), "
                         f"given {a.dtype} {a.shape}")
    return a, first_last_split(a.shape[1], split, str(path))


def video_to_tchw(a: np.ndarray, where: str) -> np.ndarray:
    """Clips (N, T, H, W, C) or (N, T, C, H, W) (or (N, T, H, W) grey, W > 3) uint8 -> (N, T, C, H, W)."""
    if a.dtype != np.uint8:
        raise ValueError(f"{where}: expected uint8 clips, given dtype {a.dtype}")
    if a.ndim == 4 and a.shape[-1] not in (1, 3):  # (N, H, W, 3) is a batch of images, not grey clips
        return a[:, :, None]
    if a.ndim == 5 and a.shape[2] in (1, 3):
        return a
    if a.ndim == 5 and a.shape[4] in (1, 3):
        return a.transpose(0, 1, 4, 2, 3)
    raise ValueError(f"{where}: expected clips (N, T, H, W, C) or (N, T, C, H, W) with C in (1, 3), given shape {a.shape}")


def _frame_files(folder: Path) -> list[Path]:
    """Frame images named by their index (0.png, 1.png, ..., or frame_00.png), in numeric order."""
    import re

    keyed = []
    for p in _image_files(folder):
        m = re.search(r"(\d+)$", p.stem)
        if m is None:
            raise ValueError(f"{folder}: frame file {p.name} has no frame number (expected 0.png, 1.png, ...)")
        keyed.append((int(m.group(1)), p))
    return [p for _, p in sorted(keyed)]


def read_frame_folder(folder: str | Path, num_frames: int | None = None) -> np.ndarray:
    """One trajectory folder of numbered frames -> uint8 (T, C, H, W) (the first `num_frames`)."""
    from argen.data.images import read_image

    folder = Path(folder)
    files = _frame_files(folder)[:num_frames]
    if not files:
        raise FileNotFoundError(f"{folder}: no frame images (0.png, 1.png, ...)")
    frames = [read_image(p) for p in files]
    if any(f.shape != frames[0].shape for f in frames):
        raise ValueError(f"{folder}: frames differ in shape ({sorted({f.shape for f in frames})})")
    a = np.stack(frames)
    return a[:, None] if a.ndim == 3 else a.transpose(0, 3, 1, 2)


def read_bair(path: str | Path, split: str) -> tuple[Any, list[Any] | np.ndarray, tuple[int, ...]]:
    """BAIR robot pushing in a common preprocessed layout -> (what holds the clips, the split's keys, item shape).

    Layouts: (a) an array file `.npy` (memory-mapped) or `.npz` (key `videos`, `images` or its only
    array) of uint8 clips (N, T, 64, 64, 3) or (N, T, 3, 64, 64): returns (array, indices,
    shape); (b) a folder of trajectory folders, each holding frames 0.png, 1.png, ...: returns
    (None, folders, shape). Either may sit in `train/` and `test/` sub-folders (those are the
    splits); otherwise the positional split (every 10th clip is test).
    """
    check_split(split)
    root = Path(path)
    if root.is_dir() and (root / "train").is_dir() and (root / "test").is_dir():
        parts = [read_bair(root / s, "all") for s in (["train", "test"] if split == "all" else [split])]
        if len(parts) == 1:
            return parts[0]
        if any(p[0] is not None for p in parts) or parts[0][2] != parts[1][2]:
            raise ValueError(f"{root}: split 'all' of train/ and test/ needs trajectory folders of one shape in both")
        return None, [f for p in parts for f in p[1]], parts[0][2]
    if root.is_file() or (not root.exists() and root.suffix):
        if not root.is_file():
            raise FileNotFoundError(f"BAIR array file {root} does not exist")
        if root.suffix == ".npy":
            a = np.load(root, mmap_mode="r", allow_pickle=False)
        elif root.suffix == ".npz":
            with np.load(root, allow_pickle=False) as z:
                keys = [k for k in ("videos", "images") if k in z] or (z.files if len(z.files) == 1 else [])
                if not keys:
                    raise ValueError(f"{root}: .npz needs a 'videos' or 'images' array, given {sorted(z.files)}")
                a = z[keys[0]]
        else:
            raise ValueError(f"{root}: expected a .npy or .npz array of clips, or a folder of trajectories")
        shape = video_to_tchw(a[:0], str(root)).shape[1:]
        return a, positional_split(len(a), split), tuple(int(s) for s in shape)
    if not root.is_dir():
        raise FileNotFoundError(f"BAIR data {root} does not exist")
    folders = [d for d in _class_dirs(root) if _image_files(d)]
    if not folders:
        raise FileNotFoundError(f"{root}: no trajectory folders holding frames 0.png, 1.png, ...")
    counts = {d: len(_image_files(d)) for d in folders}
    t = min(counts.values())
    if len(set(counts.values())) > 1:
        raise ValueError(f"{root}: trajectories must all have one number of frames, given {sorted(set(counts.values()))}")
    first = read_frame_folder(folders[0], t)
    keep = positional_split(len(folders), split)
    return None, [folders[i] for i in keep], tuple(int(s) for s in first.shape)


def read_video_file(path: str | Path) -> np.ndarray:
    """A video file (.gif; .mp4 and others when imageio's ffmpeg plugin is installed) -> uint8 (N, H, W, C)."""
    import imageio.v3 as iio

    path = Path(path)
    try:
        a = np.asarray(iio.imread(path, index=None))
    except Exception as e:  # noqa: BLE001 - each plugin raises its own errors
        hint = " (reading .mp4 needs `pip install imageio-ffmpeg`)" if path.suffix.lower() != ".gif" else ""
        raise ValueError(f"{path}: cannot read it as a video ({type(e).__name__}: {e}){hint}") from None
    if a.ndim == 3:  # (N, H, W) grey
        a = a[..., None]
    if a.dtype != np.uint8 or a.ndim != 4:
        raise ValueError(f"{path}: expected 8-bit frames (N, H, W, C), given {a.dtype} {a.shape}")
    if a.shape[-1] in (2, 4):  # drop alpha (GIF frames come as RGBA from some plugins)
        a = a[..., :-1]
    return a


def read_video_folder(path: str | Path, length: int, split: str) -> np.ndarray:
    """A folder of video files -> clips uint8 (M, length, C, H, W) cut from each file.

    Each file (sorted by name) gives clips of `length` frames without overlap (frames
    [0, T), [T, 2T), ...; a shorter tail is dropped, a file shorter than T gives none). C is 1 when
    every frame of every file is grey (R == G == B), else 3. Split: the positional split over the
    clips (every 10th clip is test).
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"video folder {root} does not exist")
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{root}: no video files ({', '.join(VIDEO_SUFFIXES)})")
    clips, size = [], None
    for f in files:
        a = read_video_file(f)
        if size is None:
            size = a.shape[1:3]
        if a.shape[1:3] != size:
            raise ValueError(f"{root}: videos must all have one frame size; {files[0].name} is {size}, {f.name} is "
                             f"{a.shape[1:3]}")
        a = np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a  # one channel count for the stack
        for s in range(0, len(a) - length + 1, length):
            clips.append(a[s : s + length])
    if not clips:
        raise ValueError(f"{root}: no file has {length} frames (the clip length); choose fewer frames with -Nf")
    x = np.stack(clips)  # (M, T, H, W, C)
    if x.shape[-1] == 3 and (x == x[..., :1]).all():
        x = x[..., :1]
    x = x.transpose(0, 1, 4, 2, 3)
    return np.ascontiguousarray(x[positional_split(len(x), split)])
