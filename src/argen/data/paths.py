"""Where data lives on disk: the embedded asset, the user's data home, Debian's dataset folder."""
from __future__ import annotations

import os
from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
EMBEDDED_MNIST = ASSETS_DIR / "mnist_10k.npz"
# Debian's `dataset-fashion-mnist` package installs the four IDX .gz files here.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def data_home() -> Path:
    """Default folder for downloaded data: $ARGEN_DATA_HOME, else ~/.cache/argen/data."""
    env = os.environ.get("ARGEN_DATA_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "argen" / "data"
