"""Seconds per sampled image, naive vs cached, next to the cost of one forward pass.

Not a test. Models in their default configuration with random weights (sampling cost does not
depend on training); for each model, image shape and batch size, in one process:

- forward: one forward pass over the whole batch;
- cached: a full `model.sample(batch)` with the model's own (cached) stepper;
- naive: the reference sampler (a full forward pass per step, per channel), timed on the first
  `--naive-steps` positions and extrapolated per step to the whole image (every naive step costs
  the same);
- setup: building the stepper and its first step (caches, the transformer's window table).

A model is `name` or `name:key=value,...` for hyperparameters other than the defaults:

    python benchmarks/sampling.py                                  # every cached model, 28x28 grey, batch 1/16/64
    python benchmarks/sampling.py --models pixelcnn_pp --shapes 1x28x28 3x32x32 --batch-sizes 1 16
    python benchmarks/sampling.py --models image_transformer:attention=full --batch-sizes 1 16
"""
from __future__ import annotations

import argparse
import ast
import math
import platform
import time
from typing import Any, Callable

import torch

import argen
from argen.sampling.naive import NaiveStepper, autoregressive_fill

DEFAULT_MODELS = [
    "pixelcnn",
    "gated_pixelcnn",
    "pixelcnn_pp",
    "image_transformer:attention=local1d",
    "image_transformer:attention=local2d",
    "image_transformer:attention=full",
    "pixelrnn_row",
    "pixelrnn_diag",
    "pixelsnail",
    "lmconv",
]


def _time(fn: Callable[[], Any], repeat: int = 1) -> float:
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def parse_model(spec: str) -> tuple[str, dict[str, Any]]:
    """'name:key=value,key=value' -> (name, hyperparameters); values are Python literals or strings."""
    name, _, rest = spec.partition(":")
    kwargs: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"expected key=value in {spec!r}, given {item!r}")
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value
    return name, kwargs


def bench(spec: str, shape: tuple[int, int, int], batch: int, levels: int, naive_steps: int) -> dict:
    name, kwargs = parse_model(spec)
    torch.manual_seed(0)
    model = argen.create_model(name, image_shape=shape, levels=levels, **kwargs).eval()
    c, h, w = shape
    x = torch.randint(0, levels, (batch, *shape))
    row: dict = {"model": spec, "shape": f"{c}x{h}x{w}", "batch": batch}
    with torch.no_grad():
        model(x)  # warm-up
        row["forward"] = _time(lambda: model(x), repeat=2)
        first = model.generation_order()[0]
        row["plan"] = _time(lambda: model.stepper(None).params_at(torch.zeros_like(x), first, 0))
        row["cached"] = _time(lambda: model.sample(batch, generator=torch.Generator().manual_seed(0))) / batch
        order = model.generation_order()[:naive_steps]
        z = torch.zeros((batch, *shape), dtype=torch.long)
        per_step = _time(lambda: autoregressive_fill(model, z.clone(), None, None, NaiveStepper(model, None),
                                                    generator=torch.Generator().manual_seed(0), order=order))
        row["naive"] = per_step / len(order) * h * w / batch
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    ap.add_argument("--shapes", nargs="+", default=["1x28x28"], help="CxHxW")
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 16, 64])
    ap.add_argument("--levels", type=int, default=256)
    ap.add_argument("--naive-steps", type=int, default=3, help="positions timed for the naive sampler")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    for shape_s in args.shapes:
        shape = tuple(int(v) for v in shape_s.split("x"))
        for spec in args.models:
            for batch in args.batch_sizes:
                r = bench(spec, shape, batch, args.levels, args.naive_steps)  # type: ignore[arg-type]
                rows.append(r)
                print(f"# {r['model']} {r['shape']} batch {batch}: forward {r['forward']:.3f}s/batch, "
                      f"naive {r['naive']:.3f}s/img, cached {r['cached']:.4f}s/img", flush=True)

    print(f"\nCPU, {args.threads} thread(s), torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"levels {args.levels}; default model configs, random weights. Naive: timed on the first "
          f"{args.naive_steps} positions and extrapolated per step to the whole image.\n")
    print("| model | shape | batch | forward (s/batch) | naive (s/img, extrapolated) | cached (s/img) "
          "| naive / cached | cached batch / forward | setup (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['shape']} | {r['batch']} | {r['forward']:.3f} | {r['naive']:.2f} | "
              f"{r['cached']:.4f} | {r['naive'] / r['cached']:.0f}x | {r['cached'] * r['batch'] / r['forward']:.1f}x "
              f"| {r['plan']:.3f} |")


if __name__ == "__main__":
    main()
