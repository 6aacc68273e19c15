"""What the benchmarks that drive the `argen` command share: running it with a thread count, and
training a run for a CPU-time budget (or keeping a finished one with --reuse).

Imported as a sibling module (`python benchmarks/NAME.py` puts this folder first on sys.path).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def argen_cli(*args: str, threads: int) -> None:
    """Run `argen ARGS` from this interpreter's environment with `threads` BLAS/OpenMP threads."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [str(Path(sys.executable).with_name("argen")), *args]
    print("$ argen " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True, env=env)


def train_budgeted(name: str, out: Path, budget: float, *extra: str, lr: float, threads: int, reuse: bool = False,
                   batch_size: int = 32, eval_examples: int = 1000, sets: tuple[str, ...] = ()) -> dict:
    """Train `name` into `out` until `budget` process CPU-seconds (train.time_clock=cpu), or with `reuse`
    keep a run there that finished with test metrics; returns its config.json."""
    done = out / "config.json"
    desc = json.loads(done.read_text()) if done.is_file() else {}
    if not (reuse and desc.get("metrics") and desc.get("finished", True)):
        argen_cli("train", name, "--out", str(out), "--overwrite", "--steps", "1000000", "--batch-size",
                  str(batch_size), "--lr", str(lr), *extra, "--set", f"train.time_limit={budget}",
                  "train.time_clock=cpu", f"train.eval_examples={eval_examples}", "train.checkpoint_every=1000000",
                  "train.tensorboard=false", *sets, threads=threads)
    return json.loads(done.read_text())
