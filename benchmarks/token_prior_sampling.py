"""Cached vs naive sampling of token_gpt, the prior over a tokenizer's code grid.

Not a test. token_gpt in its default configuration (4 layers, width 128, 4 heads: the MNIST prior
of a 7x7 tokenizer) with random weights (sampling cost does not depend on training), over a
(1, 7, 7) grid of `--levels` codes, at each batch size:

- cached: `model.sample(batch)` with the kv_cache stepper (prefill the start slot, decode one
  code per step from static KV caches);
- naive: the same call with `naive=True` (a full forward pass over all 49 slots per code);
  with `--naive-steps k` only the first k codes are timed and the time is extrapolated per step
  to the whole grid (every naive step costs the same); the default times the whole grid.

Repeats are interleaved (cached, naive, next batch, ...; then again) so that a change in machine
load hits both alike; the table gives the median over repeats (and the best). `--classes C
--cfg-scale s` samples a class-conditional prior under classifier-free guidance (two steppers).

    python benchmarks/token_prior_sampling.py                        # levels 128 and 1024, batch 1/16/64
    python benchmarks/token_prior_sampling.py --levels 1024 --batch-sizes 64 --naive-steps 8
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Any, Callable

import torch

import argen
from argen.sampling.naive import NaiveStepper, autoregressive_fill


def _seconds(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def make(levels: int, classes: int | None, shape: tuple[int, int, int]) -> argen.models.ARModel:
    torch.manual_seed(0)
    model = argen.create_model("token_gpt", image_shape=shape, levels=levels, num_classes=classes).eval()
    with torch.no_grad():  # a zero head samples uniformly: give the logits some shape
        model.head.weight.normal_(std=0.02)
    return model


def cached_call(model: Any, batch: int, cond: torch.Tensor | None, cfg: float) -> Callable[[], Any]:
    return lambda: model.sample(batch, cond, generator=torch.Generator().manual_seed(0), cfg_scale=cfg)


def naive_call(model: Any, batch: int, cond: torch.Tensor | None, cfg: float, steps: int) -> tuple[Callable[[], Any], float]:
    """The naive sampler over the whole grid, or over its first `steps` codes; and the factor to the whole grid."""
    n = len(model.generation_order())
    if not steps or steps >= n:
        return (lambda: model.sample(batch, cond, generator=torch.Generator().manual_seed(0), cfg_scale=cfg,
                                     naive=True)), 1.0
    order = model.generation_order()[:steps]
    z = torch.zeros((batch, *model.data_shape), dtype=torch.long)
    if cfg != 1.0:
        raise ValueError(f"--naive-steps extrapolation is for unguided sampling: expected --cfg-scale 1, given {cfg}")

    def run() -> None:
        with torch.no_grad():
            autoregressive_fill(model, z.clone(), None, cond, NaiveStepper(model, cond),
                                generator=torch.Generator().manual_seed(0), order=order)

    return run, n / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", nargs="+", type=int, default=[128, 1024], help="codebook sizes")
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 16, 64])
    ap.add_argument("--shape", default="1x7x7", help="code grid 1xHxW")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--naive-steps", type=int, default=0, help="codes timed for the naive sampler (0: all)")
    ap.add_argument("--classes", type=int, default=None, help="class-conditional prior with this many classes")
    ap.add_argument("--cfg-scale", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shape = tuple(int(v) for v in args.shape.split("x"))
    if len(shape) != 3 or shape[0] != 1:
        raise SystemExit(f"--shape must be 1xHxW, given {args.shape}")

    cases = []
    for levels in args.levels:
        model = make(levels, args.classes, shape)  # type: ignore[arg-type]
        for batch in args.batch_sizes:
            cond = None if args.classes is None else torch.arange(batch) % args.classes
            cached = cached_call(model, batch, cond, args.cfg_scale)
            naive, factor = naive_call(model, batch, cond, args.cfg_scale, args.naive_steps)
            cached()  # warm-up (first allocations)
            cases.append(dict(levels=levels, batch=batch, cached=cached, naive=naive, factor=factor, tc=[], tn=[]))
    t_start = time.perf_counter()
    for r in range(args.repeats):
        for case in cases:
            case["tc"].append(_seconds(case["cached"]))
            case["tn"].append(_seconds(case["naive"]) * case["factor"])
        print(f"# repeat {r + 1}/{args.repeats} done, {time.perf_counter() - t_start:.0f}s", flush=True)

    guided = f", {args.classes} classes, cfg_scale {args.cfg_scale}" if args.classes else ", unconditional"
    print(f"\nCPU, {args.threads} thread(s), torch {torch.__version__}, {platform.processor() or platform.machine()}; "
          f"token_gpt default config, random weights, grid {args.shape}{guided}; median (best) of {args.repeats} "
          f"interleaved repeats." + (f" Naive: first {args.naive_steps} codes, extrapolated per step." if args.naive_steps else ""))
    print("\n| levels | batch | cached (s/batch) | cached (s/img) | naive (s/batch) | naive (s/img) | naive / cached |")
    print("|---|---|---|---|---|---|---|")
    for c in cases:
        mc, mn = statistics.median(c["tc"]), statistics.median(c["tn"])
        b = c["batch"]
        print(f"| {c['levels']} | {b} | {mc:.3f} ({min(c['tc']):.3f}) | {mc / b:.4f} | {mn:.3f} ({min(c['tn']):.3f}) "
              f"| {mn / b:.4f} | {mn / mc:.1f}x |")


if __name__ == "__main__":
    main()
