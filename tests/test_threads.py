"""Thread defaults: idle cores only, shared among torchrun processes."""
from __future__ import annotations

import os

import pytest
import torch

from argen.device import choose_threads


@pytest.mark.parametrize("cores,load,world,expect", [(2, 0.1, 1, 2), (2, 1.2, 1, 1), (2, 5.0, 1, 1), (8, 0.0, 2, 4), (8, 3.4, 1, 5)])
def test_auto_uses_the_idle_cores(monkeypatch, cores, load, world, expect):
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(world))
    monkeypatch.setattr(torch, "get_num_threads", lambda: cores)
    assert choose_threads("auto") == expect


def test_explicit_counts_and_bad_values():
    assert choose_threads(3) == 3 and choose_threads("1") == 1
    for bad in (0, -1, "x", True):
        with pytest.raises(ValueError, match="--threads"):
            choose_threads(bad)
