"""Run directories and what every command module shares: exit codes, errors, loading a run.

`cli.py`, `compress/commands.py` and `metrics/commands.py` all import these from here, so no
command module imports another (and none imports `cli`).
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_FILE, EXIT_INTERRUPT = 0, 1, 2, 3, 130

class CheckpointError(Exception):
    """A run directory, checkpoint or data file exists but cannot be used (corrupt or inconsistent)."""


class Interrupted(KeyboardInterrupt):
    """KeyboardInterrupt with a message for the user (e.g. where the checkpoint went)."""


# ----- shared helpers -----------------------------------------------------------------------------
def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def say(*parts: Any) -> None:
    """Print on the main process only (torchrun starts one CLI per GPU)."""
    if is_main_process():
        print(*parts, flush=True)


def load_run(run: str | os.PathLike[str], device: Any = None) -> Any:
    """Load a trained model; a missing run raises FileNotFoundError, a broken one CheckpointError."""
    import argen
    from argen.checkpoint import read_description

    try:
        read_description(run)
        return argen.load(run, device=device)
    except FileNotFoundError:
        raise
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(str(e)) from None


def run_description(run: str | os.PathLike[str]) -> dict[str, Any]:
    from argen.checkpoint import read_description

    try:
        return read_description(run)
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def run_dataset(desc: dict[str, Any], data: str | None, root: str | None, split: str, model: Any) -> Any:
    """The dataset a run was trained on (or `data`), checked against the model's shape and levels."""
    from argen.data import load_dataset

    name = data or desc.get("data")
    if not name:
        raise ValueError("this run does not record its dataset; pass --data NAME")
    seed = int((desc.get("train") or {}).get("seed", 0))
    ds = load_dataset(name, split, root=root or desc.get("data_root"), seed=seed)
    if tuple(ds.shape) != tuple(model.data_shape) or ds.levels != model.levels:
        raise ValueError(
            f"dataset {name!r} has shape {tuple(ds.shape)} with {ds.levels} levels, "
            f"expected the model's {tuple(model.data_shape)} with {model.levels} levels"
        )
    return ds


def device_arg(spec: str) -> Any:
    from argen.device import resolve_device

    return resolve_device(spec)


def add_device_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N (default: auto)")


#: Seeds torch generators accept (`torch.Generator.manual_seed` takes unsigned 64-bit values).
SEED_MAX = 2**64 - 1


def seed_arg() -> Callable[[str], int]:
    """argparse `type=` for a random seed: an integer in [0, 2**64 - 1]."""
    from argen.fields import int_arg

    return int_arg(ge=0, le=SEED_MAX)
