"""`argen compress` and `argen decompress`: a trained model as a lossless image codec.

Images are read as stored pixel values (PNG/BMP/TIFF/PGM via imageio, or .npy arrays) and must
already be in the model's range [0, levels) — a 2-level model compresses 0/1 images. Each image is
restored under its original file name, in the same lossless format.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

LOSSLESS_SUFFIXES = {".png", ".bmp", ".tif", ".tiff", ".pgm", ".ppm", ".npy"}


def read_pixels(path: Path) -> np.ndarray:
    """One image file -> integer array (C, H, W)."""
    from argen.data.images import read_image

    if path.suffix.lower() not in LOSSLESS_SUFFIXES:
        raise ValueError(f"{path}: expected a lossless image ({', '.join(sorted(LOSSLESS_SUFFIXES))}), given {path.suffix!r}")
    arr = np.load(path, allow_pickle=False) if path.suffix.lower() == ".npy" else read_image(path)
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3 and arr.shape[-1] in (1, 3) and arr.shape[0] not in (1, 3):
        arr = np.moveaxis(arr, -1, 0)
    if arr.ndim != 3:
        raise ValueError(f"{path}: expected an image (H, W), (H, W, C) or (C, H, W), given shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{path}: expected integer pixels, given dtype {arr.dtype}")
    return arr


def write_pixels(path: Path, arr: np.ndarray) -> None:
    from argen.data.images import write_image

    if path.suffix.lower() == ".npy":
        np.save(path, arr.astype(np.uint8))
    else:
        write_image(path, np.moveaxis(arr, 0, -1) if arr.shape[0] == 3 else arr[0])


def cmd_compress(args: argparse.Namespace) -> int:
    from argen.cli import EXIT_OK, _device, load_run, say
    from argen.compress.codec import compress_arrays

    paths = [Path(p) for p in args.images]
    names = [p.name for p in paths]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"expected distinct file names (they are restored by name), given duplicates {dupes}")
    model = load_run(args.run, _device(args.device))
    images = [read_pixels(p) for p in paths]
    for p, im in zip(paths, images):
        if tuple(im.shape) != tuple(model.data_shape):
            raise ValueError(f"{p}: expected shape {tuple(model.data_shape)} (the model's), given {tuple(im.shape)}")
        if im.min() < 0 or im.max() >= model.levels:
            raise ValueError(f"{p}: expected pixel values in [0, {model.levels - 1}], given range [{im.min()}, {im.max()}]")
    t0 = time.perf_counter()
    f = compress_arrays(model, np.stack(images), names, batch_size=args.batch_size, progress=True, path=args.path)
    f.header["run"] = str(Path(args.run).resolve())
    data = f.to_bytes()
    seconds = time.perf_counter() - t0
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    raw = sum(im.size for im in images)
    say(f"{len(images)} images -> {out} ({len(data)} bytes, {8 * len(data) / raw:.4f} bits/dim, "
        f"{len(images) / seconds:.1f} images/s)")
    return EXIT_OK


def cmd_decompress(args: argparse.Namespace) -> int:
    from argen.cli import EXIT_OK, CheckpointError, _device, load_run, say
    from argen.compress.codec import CorruptFileError, decompress_arrays, read_container

    src = Path(args.file)
    if not src.is_file():
        raise FileNotFoundError(f"no compressed file at {str(src)!r}")
    try:
        f = read_container(src.read_bytes())
    except CorruptFileError as e:  # a damaged file is a file error (exit 3), not bad usage
        raise CheckpointError(f"{src}: {e}") from None
    run = args.run or f.header.get("run")
    if not run:
        raise ValueError("the file does not record its model; pass --run RUN")
    model = load_run(run, _device(args.device))
    t0 = time.perf_counter()
    try:
        images, names = decompress_arrays(model, f, progress=True)
    except CorruptFileError as e:
        raise CheckpointError(f"{src}: {e}") from None
    seconds = time.perf_counter() - t0
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for name, im in zip(names, images):
        write_pixels(out / os.path.basename(name), im)
    say(f"{len(names)} images -> {out}/ ({len(names) / seconds:.2f} images/s)")
    return EXIT_OK


def register(sub: Any) -> None:
    from argen.cli import _add_device

    p = sub.add_parser("compress", help="losslessly compress images with a trained model")
    p.add_argument("run", help="run directory of the model to code with")
    p.add_argument("images", nargs="+", help="image files (PNG/BMP/TIFF/PGM or .npy), pixel values in [0, levels)")
    p.add_argument("-o", "--output", required=True, help="output .argz file")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    p.add_argument("--path", choices=["parallel", "stepper"], default=None,
                   help="parallel: encode in one forward pass, decode with the naive sampler; stepper: encode and "
                        "decode through the model's cached sampler (default when it has one)")
    _add_device(p)
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("decompress", help="restore images from an .argz file under their original names")
    p.add_argument("file", help=".argz file written by `argen compress`")
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.add_argument("--run", default=None, help="model run directory (default: the one recorded in the file)")
    _add_device(p)
    p.set_defaults(func=cmd_decompress)
