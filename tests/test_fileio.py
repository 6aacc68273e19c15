"""Every writer goes through argen.fileio.atomic_write: whole files, umask permissions, no leftovers."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from argen.data.images import read_image, write_image
from argen.fileio import atomic_write
from argen.metrics.frechet import StatsAccumulator


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o640
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_writers_give_the_umask_permissions(tmp_path, umask_027):
    import torch

    write_image(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    acc = StatsAccumulator()
    acc.update(torch.randn(5, 3))
    acc.compute().save(tmp_path / "s.safetensors")
    atomic_write(tmp_path / "b.bin", b"x")
    for name in ("a.png", "s.safetensors", "b.bin"):
        assert _mode(tmp_path / name) == umask_027, name


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "f.png"
    write_image(target, np.full((2, 2), 7, np.uint8))

    def boom(path):
        path.write_bytes(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom, suffix=".png")
    assert read_image(target).max() == 7 and sorted(p.name for p in tmp_path.iterdir()) == ["f.png"]


def test_exclusive_refuses_an_existing_file(tmp_path):
    atomic_write(tmp_path / "x", b"1")
    with pytest.raises(ValueError, match="already exists"):
        atomic_write(tmp_path / "x", b"2", exclusive=True)
    assert (tmp_path / "x").read_bytes() == b"1" and len(list(tmp_path.iterdir())) == 1
