"""`argen compress` and `argen decompress`: a trained model as a lossless image codec.

Images are read as stored pixel values (PNG/BMP/TIFF/PGM/PPM via imageio, or .npy arrays) and
must already be in the model's range [0, levels) — a 2-level model compresses 0/1 images. Each
image is restored under its original file name, in the same lossless format (a name without a
suffix is restored as .png; lossy formats are never written).

Writes are atomic and never clobber by surprise:

- `compress -o FILE` refuses an existing FILE unless `--overwrite`; the archive is written to a
  temporary file next to FILE and renamed into place, so FILE is the old file or the whole new
  archive, never half of one.
- `decompress -o DIR` decodes and verifies every image in memory first, then writes them into a
  temporary directory next to (or inside) DIR. A new DIR appears by one rename, complete or not
  at all; into an existing DIR the finished files are moved in, and a file already there is
  refused unless `--overwrite` (a kill may leave a hidden `.DIR.partial-*` directory, never a
  half-written image).
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from argen.compress.codec import DEFAULT_SUFFIX, LOSSLESS_SUFFIXES, restored_name
from argen.fileio import atomic_write, file_mode


def _kind(suffix: str) -> str:
    return "NumPy .npy file" if suffix == ".npy" else f"{suffix.lstrip('.').upper()} image"


def read_pixels(path: Path) -> np.ndarray:
    """One image file -> integer array (C, H, W).

    A missing file raises FileNotFoundError; an empty, damaged or non-image file raises
    ValueError with one line that names it.
    """
    from argen.data.images import read_image

    suffix = path.suffix.lower()
    if suffix not in LOSSLESS_SUFFIXES:
        raise ValueError(f"{path}: expected a lossless image ({', '.join(LOSSLESS_SUFFIXES)}), given {path.suffix!r}")
    if not path.exists():
        raise FileNotFoundError(f"no image file at {str(path)!r}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, expected an image file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty, expected a {_kind(suffix)}")
    try:
        arr = np.load(path, allow_pickle=False) if suffix == ".npy" else read_image(path)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as e:  # noqa: BLE001 - imageio/numpy backends raise many kinds of errors on bad files
        if isinstance(e, ValueError) and str(e).startswith(str(path)):  # read_image's own reasons (16-bit, ...)
            raise
        raise ValueError(f"{path}: not a valid {_kind(suffix)} (damaged or another kind of file)") from None
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{path}: expected one array in the .npy file, given {type(arr).__name__}")
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3 and arr.shape[-1] in (1, 3) and arr.shape[0] not in (1, 3):
        arr = np.moveaxis(arr, -1, 0)
    if arr.ndim != 3:
        raise ValueError(f"{path}: expected an image (H, W), (H, W, C) or (C, H, W), given shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{path}: expected integer pixels, given dtype {arr.dtype}")
    return arr


def archive_name(path: Path) -> str:
    """The name an input is stored under: its file name if that format is lossless, else stem + .png."""
    return path.name if path.suffix.lower() in LOSSLESS_SUFFIXES else path.stem + DEFAULT_SUFFIX


def write_pixels(path: Path, arr: np.ndarray) -> None:
    from argen.data.images import write_image

    suffix = path.suffix.lower()
    if suffix not in LOSSLESS_SUFFIXES:  # names are checked when the archive is read; never write lossy files
        raise ValueError(f"{path}: refusing to write a non-lossless format {path.suffix!r}")
    if suffix == ".npy":
        with open(path, "xb") as fh:
            np.save(fh, arr.astype(np.uint8))
    else:
        write_image(path, np.moveaxis(arr, 0, -1) if arr.shape[0] == 3 else arr[0])


def _check_new_file(out: Path, overwrite: bool) -> None:
    if out.is_dir():
        raise ValueError(f"-o {out} is a directory, expected the path of the .argz file to write")
    if out.exists() and not overwrite:
        raise ValueError(f"{out} already exists; pass --overwrite to replace it")


def write_file_atomic(out: Path, data: bytes, overwrite: bool) -> None:
    """Write `data` to `out` via a temporary file and a rename; refuse an existing `out` unless `overwrite`."""
    _check_new_file(out, overwrite=True)  # a directory is never replaced
    atomic_write(out, data, suffix=".partial", exclusive=not overwrite)


def restore_images(out: Path, files: list[tuple[str, np.ndarray]], overwrite: bool) -> None:
    """Write every (file name, image) into directory `out` as atomically as the file system allows.

    All files go to a temporary directory first; a new `out` is then that directory renamed (one
    atomic step), an existing one receives the finished files by rename.
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"-o {out} exists and is not a directory")
    existed = out.is_dir()
    base = out if existed else out.parent
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=base, prefix=f".{out.resolve().name}.partial-"))
    try:
        for name, im in files:
            target = tmp / name
            if target.exists():  # e.g. names that differ only in case on a case-insensitive file system
                raise ValueError(f"image names collide on this file system: {name!r}")
            write_pixels(target, im)
            os.chmod(target, file_mode())
        if not existed:
            os.chmod(tmp, file_mode(0o777))
            os.rename(tmp, out)
            return
        for name, _ in files:
            if not overwrite and (out / name).exists():
                raise ValueError(f"{out / name} already exists; pass --overwrite to replace it")
            os.replace(tmp / name, out / name)
        tmp.rmdir()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def cmd_compress(args: argparse.Namespace) -> int:
    from argen.compress.codec import check_names, compress_arrays
    from argen.runs import EXIT_OK, device_arg, load_run, say

    paths = [Path(p) for p in args.images]
    names = [archive_name(p) for p in paths]
    check_names(names, len(names))  # distinct, plain, lossless: before any work
    out = Path(args.output)
    _check_new_file(out, args.overwrite)
    images = [read_pixels(p) for p in paths]  # input errors before the (slow) model load
    model = load_run(args.run, device_arg(args.device))
    for p, im in zip(paths, images):
        if tuple(im.shape) != tuple(model.data_shape):
            raise ValueError(f"{p}: expected shape {tuple(model.data_shape)} (the model's), given {tuple(im.shape)}")
        if im.min() < 0 or im.max() >= model.levels:
            raise ValueError(f"{p}: expected pixel values in [0, {model.levels - 1}], given range [{im.min()}, {im.max()}]")
    stack = np.stack(images)
    del images  # one copy of the pixels is enough
    t0 = time.perf_counter()
    f = compress_arrays(model, stack, names, batch_size=args.batch_size, progress=True, path=args.path)
    f.header["run"] = str(Path(args.run).resolve())
    data = f.to_bytes()
    seconds = time.perf_counter() - t0
    write_file_atomic(out, data, args.overwrite)
    say(f"{len(stack)} images -> {out} ({len(data)} bytes, {8 * len(data) / stack.size:.4f} bits/dim, "
        f"{len(stack) / max(seconds, 1e-9):.1f} images/s)")
    return EXIT_OK


def cmd_decompress(args: argparse.Namespace) -> int:
    from argen.compress.codec import CorruptFileError, decompress_arrays, read_container
    from argen.runs import EXIT_OK, CheckpointError, device_arg, load_run, say

    src = Path(args.file)
    if not src.is_file():
        raise FileNotFoundError(f"no compressed file at {str(src)!r}")
    try:
        f = read_container(src.read_bytes())
    except CorruptFileError as e:  # a damaged file is a file error (exit 3), not bad usage
        raise CheckpointError(f"corrupt archive: {src}: {e}") from None
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise ValueError(f"-o {out} exists and is not a directory")
    n = f.header["n"]
    files = [restored_name(name) for name in (f.header["names"] or [f"image_{i:05d}" for i in range(n)])]
    if out.is_dir() and not args.overwrite:
        clash = [name for name in files if (out / name).exists()]
        if clash:
            more = f" and {len(clash) - 3} more" if len(clash) > 3 else ""
            raise ValueError(f"{out} already has {', '.join(clash[:3])}{more}; pass --overwrite to replace them")
    run = args.run or f.header.get("run")
    if not run:
        raise ValueError("the file does not record its model; pass --run RUN")
    model = load_run(run, device_arg(args.device))
    t0 = time.perf_counter()
    try:
        images, names = decompress_arrays(model, f, progress=True)
    except CorruptFileError as e:
        raise CheckpointError(f"corrupt archive: {src}: {e}") from None
    seconds = time.perf_counter() - t0
    restore_images(out, [(restored_name(name), im) for name, im in zip(names, images)], args.overwrite)
    say(f"{len(names)} images -> {out}/ ({len(names) / max(seconds, 1e-9):.2f} images/s)")
    return EXIT_OK


def register(sub: Any) -> None:
    from argen.fields import int_arg
    from argen.runs import add_device_argument

    p = sub.add_parser(
        "compress", help="losslessly compress images with a trained model",
        description="Losslessly compress images with a trained model into one .argz archive. The archive is "
                    "written atomically (a temporary file renamed into place); an existing output file is "
                    "refused unless --overwrite.")
    p.add_argument("run", help="run directory of the model to code with")
    p.add_argument("images", nargs="+", help="image files (PNG/BMP/TIFF/PGM/PPM or .npy), pixel values in [0, levels); "
                                             "file names must be distinct")
    p.add_argument("-o", "--output", required=True, help="output .argz file (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file (atomically)")
    p.add_argument("--batch-size", type=int_arg(ge=1), default=32,
                   help="images per forward pass, >= 1; memory grows with it, not with the image count (default: 32)")
    p.add_argument("--path", choices=["parallel", "stepper"], default=None,
                   help="parallel: encode in one forward pass, decode with the naive sampler; stepper: encode and "
                        "decode through the model's cached sampler (default when it has one)")
    add_device_argument(p)
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser(
        "decompress", help="restore images from an .argz file under their original names",
        description="Restore the images of an .argz archive under their original file names (lossless formats "
                    "only). Every image is decoded and verified before anything is written; a new output "
                    "directory appears complete or not at all (one rename). Files already in an existing output "
                    "directory are refused unless --overwrite.")
    p.add_argument("file", help=".argz file written by `argen compress`")
    p.add_argument("-o", "--output", required=True, help="output directory (created if missing)")
    p.add_argument("--overwrite", action="store_true", help="replace files of the same names in an existing output "
                                                            "directory")
    p.add_argument("--run", default=None, help="model run directory (default: the one recorded in the file)")
    add_device_argument(p)
    p.set_defaults(func=cmd_decompress)
