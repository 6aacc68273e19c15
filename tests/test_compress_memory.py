"""`compress_arrays` streams: its peak memory depends on the batch size, not on the image count.

The probability tables (steps x batch x levels float64 arrays, ~1.6 MB per 28x28 256-level image)
are numpy allocations, which tracemalloc traces exactly and deterministically — unlike RSS,
which depends on the allocator and on whatever else the process did. Encoding used to keep every
batch's tables until the end (peak ~ linear in the image count); each batch is now entropy-coded
as soon as its tables exist and dropped.
"""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from argen.compress import compress_arrays, decompress_arrays
from tests.helpers import make_tiny


def _peak_bytes(model, images: np.ndarray, path: str, batch_size: int) -> tuple[int, object]:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        f = compress_arrays(model, images, batch_size=batch_size, path=path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, f


@pytest.mark.parametrize("path", ["parallel", "stepper"])
def test_peak_memory_does_not_grow_with_image_count(path):
    torch.manual_seed(0)
    model = make_tiny("pixelcnn", (1, 8, 8), 256)
    rng = np.random.default_rng(0)
    few = rng.integers(0, 256, (8, 1, 8, 8)).astype(np.uint8)
    many = rng.integers(0, 256, (64, 1, 8, 8)).astype(np.uint8)  # 8x the images, same batch size
    batch = 4
    table_bytes = 64 * batch * 256 * 8  # one batch's tables: steps x B x levels float64 = 512 KiB
    _peak_bytes(model, few, path, batch)  # warm up (lazy imports, caches)
    peak_few, _ = _peak_bytes(model, few, path, batch)
    peak_many, f = _peak_bytes(model, many, path, batch)
    # 56 more images would add 56 / 4 = 14 batches of tables (7 MiB) if they were kept; allow
    # a quarter of one batch's tables for the growing output (a few hundred bytes an image here)
    assert peak_many - peak_few < table_bytes // 4, (peak_few, peak_many)
    assert peak_many < 3 * table_bytes, (peak_few, peak_many)  # bounded by about one batch
    out, _ = decompress_arrays(model, f.to_bytes())
    assert np.array_equal(out, many)
