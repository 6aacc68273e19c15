"""Train every model for the same CPU budget on the embedded data and compare them.

Reports test bits/dim (exact, or the bound for models whose likelihood is a bound), training
images/s, and seconds per sampled image with the naive sampler and with the model's own sampler.
Not a test: it takes `--budget` seconds per model plus evaluation and sampling.

    python benchmarks/bpd.py --budget 180                   # all models, 8-bit grey 28x28 MNIST
    python benchmarks/bpd.py --models pixelcnn gated_pixelcnn --budget 60
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

import argen
from argen.data import load_dataset
from argen.train import TrainConfig, Trainer


def time_sampling(model, n: int = 1, seed: int = 0, **kw) -> float:
    """Seconds per image to sample a batch of n with the model's own sampler."""
    t0 = time.perf_counter()
    model.sample(n, generator=torch.Generator().manual_seed(seed), **kw)
    return (time.perf_counter() - t0) / n


def naive_steps(model) -> int:
    """Network calls the naive sampler makes per image: one per position, or per sub-pixel when
    the network must see the channels drawn so far (categorical heads), or one per dim (ARDM)."""
    if not model.exact_likelihood:
        return model.num_dims
    per_pos = model.channels if model.distribution.output_depends_on_current_pixel else 1
    return len(model.generation_order()) * per_pos


def time_naive(model, repeats: int = 5) -> float:
    """Estimated naive seconds per image at batch 1: calls x the time of one forward pass."""
    x = torch.zeros((1, *model.data_shape), dtype=torch.long)
    model(x)  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        model(x)
    return naive_steps(model) * (time.perf_counter() - t0) / repeats


def run_one(name: str, args: argparse.Namespace, train, test) -> dict:
    out_dir = Path(args.out) / name
    done = out_dir / "config.json"
    if args.reuse and done.is_file() and "test_bpd" in (json.loads(done.read_text()).get("metrics") or {}):
        desc = json.loads(done.read_text())  # trained and evaluated by an earlier run of this script
        model = argen.load(out_dir).eval()
        return timing_row(model, args, {"step": desc["step"], "test_bpd": desc["metrics"]["test_bpd"]})
    torch.manual_seed(0)
    model = argen.create_model(name, image_shape=train.shape, levels=train.levels)
    cfg = TrainConfig(steps=10**9, time_limit=args.budget, time_clock="cpu", batch_size=args.batch_size, lr=args.lr,
                      warmup_steps=50, ema_decay=0.999, grad_clip=1.0, eval_examples=args.eval_examples,
                      sample_every=None, tensorboard=False, progress=False, checkpoint_every=10**9, seed=0)
    trainer = Trainer(model, train, cfg, run_dir=out_dir, eval_data=test, device="cpu")
    metrics = trainer.fit()
    model = argen.load(out_dir).eval()  # EMA weights, as `argen eval` uses
    return timing_row(model, args, metrics)


def timing_row(model, args: argparse.Namespace, metrics: dict) -> dict:
    """The table row of a trained model: its training figures and sampling times."""
    steps = metrics["step"]
    row = {
        "model": model.model_name,
        "params": sum(p.numel() for p in model.parameters()),
        "steps": steps,
        "train_img_per_cpu_s": steps * args.batch_size / args.budget,
        "test_bpd": metrics.get("test_bpd"),
        "exact": bool(model.exact_likelihood),
    }
    with torch.no_grad():
        row["naive_s_per_img"] = time_naive(model)
        if model.capabilities.parallel_steps:
            row["sample_s_per_img"] = time_sampling(model, steps=args.ardm_steps)  # ARDM's parallel budget
            row["sample_note"] = f"{args.ardm_steps} calls"
        elif model.own_stepper:
            row["sample_s_per_img"] = time_sampling(model)  # the cached sampler, measured
        else:
            row["sample_s_per_img"] = None  # samples with the naive sampler
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="*", default=None, help="default: every registered model")
    p.add_argument("--data", default="mnist", help="dataset (default: mnist, 8-bit grey 28x28)")
    p.add_argument("--budget", type=float, default=360.0,
                   help="training CPU seconds per model, all threads summed (default: 360, i.e. ~3 min on 2 cores)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-examples", type=int, default=1000, help="test images evaluated (default: all 1000)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ardm-steps", type=int, default=50, help="network-call budget for ARDM's sampler timing")
    p.add_argument("--out", default="runs/bench-bpd")
    p.add_argument("--reuse", action="store_true", help="keep models already trained and evaluated in --out")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    train, test = load_dataset(args.data, "train"), load_dataset(args.data, "test")
    names = args.models or argen.list_models()
    rows = []
    for name in names:
        print(f"== {name}", flush=True)
        rows.append(run_one(name, args, train, test))
        print(json.dumps(rows[-1]), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"results-{'-'.join(names)}.json").write_text(json.dumps(rows, indent=2))
    print(f"\n{args.data}, {args.budget:.0f} CPU-seconds of training per model, batch {args.batch_size}, AdamW lr {args.lr}, "
          f"EMA 0.999; {torch.get_num_threads()} CPU threads on {platform.processor() or platform.machine()} "
          f"({os.cpu_count()} cores)\n")
    print("| model | params | steps | train img per CPU-s | test bits/dim | naive sampling s/img (estimated) | own sampler s/img |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        bpd = f"{r['test_bpd']:.3f}" + ("" if r["exact"] else " (bound)")
        own = "naive" if r["sample_s_per_img"] is None else f"{r['sample_s_per_img']:.2f}"
        if r.get("sample_note"):
            own += f" ({r['sample_note']})"
        print(f"| {r['model']} | {r['params']:,} | {r['steps']} | {r['train_img_per_cpu_s']:.1f} | {bpd} | "
              f"{r['naive_s_per_img']:.1f} | {own} |")


if __name__ == "__main__":
    main()
