"""Downloads for users with internet: MNIST, Fashion-MNIST and CIFAR-10, checked against the
checksums their distributors publish (MD5; SHA-256 is accepted too), written atomically.

Nothing in argen downloads implicitly: `load_dataset` only reads files, and these functions run
only when called (e.g. `argen.data.download_cifar10()`). The URL tables are module attributes so
a mirror can be swapped in (and tests point them at local file:// URLs).
"""
from __future__ import annotations

import hashlib
import shutil
import tarfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from argen.data.paths import data_home
from argen.data.readers import CIFAR10_ARCHIVE, CIFAR10_BATCHES, CIFAR10_FOLDER
from argen.fileio import atomic_write

# Tried in order; a network error moves on to the next mirror, a checksum mismatch stops.
MNIST_MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://yann.lecun.com/exdb/mnist/",
]
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
FASHION_MNIST_MIRRORS = ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"]
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
CIFAR10_MIRRORS = ["https://www.cs.toronto.edu/~kriz/"]
CIFAR10_MD5 = {CIFAR10_ARCHIVE: "c58f30108f718f92721af3b95e74349a"}

_CHUNK = 1 << 20


def file_digest(path: str | Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _expected(md5: str | None, sha256: str | None) -> tuple[str, str]:
    if sha256:
        return "sha256", sha256.lower()
    if md5:
        return "md5", md5.lower()
    raise ValueError("a download needs a published checksum: give md5= or sha256=")


def download_url(url: str, path: str | Path, *, md5: str | None = None, sha256: str | None = None,
                 timeout: float = 60.0) -> Path:
    """Fetch `url` to `path`, verifying its checksum; skip the fetch if `path` already matches.

    The bytes go to a temporary file beside `path` and are renamed into place only once the
    checksum matches, so `path` is never partial or wrong. A mismatch raises ValueError.
    """
    algorithm, want = _expected(md5, sha256)
    path = Path(path)
    if path.is_file() and file_digest(path, algorithm) == want:
        return path

    def fetch(tmp: Path) -> None:
        h = hashlib.new(algorithm)
        with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            for block in iter(lambda: resp.read(_CHUNK), b""):
                h.update(block)
                out.write(block)
        got = h.hexdigest()
        if got != want:  # raised before the rename: `path` is never a wrong file
            raise ValueError(f"checksum mismatch for {url}: {algorithm} expected {want}, given {got}")

    return atomic_write(path, fetch, suffix=".part")


def _fetch(name: str, checksum: str, mirrors: list[str], dest: Path) -> Path:
    errors = []
    for base in mirrors:
        try:
            return download_url(base + name, dest / name, md5=checksum)
        except (urllib.error.URLError, OSError) as e:  # network trouble: try the next mirror
            errors.append(f"{base + name}: {e}")
    raise OSError(f"could not download {name}:\n  " + "\n  ".join(errors))


def download_mnist(root: str | Path | None = None) -> Path:
    """The full MNIST (60,000 + 10,000) as IDX .gz files into `root` (default <data home>/mnist).

    Load it afterwards with `load_dataset('mnist-full', root=root)`.
    """
    dest = Path(root) if root is not None else data_home() / "mnist"
    for name, md5 in MNIST_MD5.items():
        _fetch(name, md5, MNIST_MIRRORS, dest)
    return dest


def download_fashion_mnist(root: str | Path | None = None) -> Path:
    """Fashion-MNIST IDX .gz files into `root` (default <data home>/fashion-mnist)."""
    dest = Path(root) if root is not None else data_home() / "fashion-mnist"
    for name, md5 in FASHION_MNIST_MD5.items():
        _fetch(name, md5, FASHION_MNIST_MIRRORS, dest)
    return dest


def extract_cifar10(archive: str | Path, dest: str | Path) -> Path:
    """Extract only the expected batch files of a CIFAR-10 archive into dest/cifar-10-batches-py.

    Members are looked up by their known names, so a crafted archive cannot write elsewhere.
    """
    out = Path(dest) / CIFAR10_FOLDER
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:gz") as tar:
        for name in CIFAR10_BATCHES["train"] + CIFAR10_BATCHES["test"] + ["batches.meta"]:
            member = tar.getmember(f"{CIFAR10_FOLDER}/{name}")
            src = tar.extractfile(member) if member.isfile() else None
            if src is None:
                raise ValueError(f"{archive}: {member.name} is not a regular file")
            atomic_write(out / name, lambda tmp, src=src: _copy_to(src, tmp), suffix=".part")
    return out


def _copy_to(src: Any, path: Path) -> None:
    with open(path, "wb") as f:
        shutil.copyfileobj(src, f)


def download_cifar10(root: str | Path | None = None, *, extract: bool = True) -> Path:
    """CIFAR-10 python version into `root` (default <data home>/cifar10); returns root.

    Load it afterwards with `load_dataset('cifar10', root=root)` (the default root needs none).
    """
    dest = Path(root) if root is not None else data_home() / "cifar10"
    archive = _fetch(CIFAR10_ARCHIVE, CIFAR10_MD5[CIFAR10_ARCHIVE], CIFAR10_MIRRORS, dest)
    if extract:
        extract_cifar10(archive, dest)
    return dest
