"""ARDM: bits/dim as a function of the budget of network calls.

Measures L_t (nats per dim when t dims are known) of a trained ARDM run on held-out test images at
evenly spaced t (a fresh random order per image), interpolates between them, and lets the dynamic
programme choose the best k calls for each budget (`sampling/ardm_schedule.py`).

    python benchmarks/ardm_budget.py runs/bench-bpd/ardm --images 200 --points 64
"""
from __future__ import annotations

import argparse

import torch

import argen
from argen.data import load_dataset
from argen.sampling.ardm_sampler import bpd_by_budget


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("--data", default="mnist")
    p.add_argument("--images", type=int, default=200, help="test images, spread over the split")
    p.add_argument("--points", type=int, default=64, help="t values measured per stage")
    p.add_argument("--budgets", type=int, nargs="+", default=[100, 50, 20, 10])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = argen.load(args.run).eval()
    test = load_dataset(args.data, "test")
    step = max(1, len(test) // args.images)
    x = torch.stack([test[i][0] for i in range(0, len(test), step)][: args.images])
    curve = model.measure_step_losses(x, points=args.points, generator=torch.Generator().manual_seed(0), max_batch=100)
    table = bpd_by_budget(model, (None, *args.budgets), curve=curve)
    print(f"{model.model_name}: L_t measured on {len(x)} test images at {args.points} t values per stage\n")
    print("| network calls | bits/dim |")
    print("|---|---|")
    for k, bpd in sorted(table.items(), reverse=True):
        print(f"| {k}{' (= D, every step)' if k == model.num_dims * model.num_stages else ''} | {bpd:.4f} |")


if __name__ == "__main__":
    main()
