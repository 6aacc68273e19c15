"""Old revision vs this working tree, side by side: training images/s and cached sampling seconds.

Not a test. Each measurement runs in a fresh subprocess with PYTHONPATH pointing at one tree's
`src/` (the old one unpacked by `git archive`), one thread, and the two trees alternate within
every round, so a change in machine load hits both alike. Reported: per model, the best of the
rounds for each tree and the ratio new/old (> 1: the new tree is slower).

    python benchmarks/compare_revisions.py --old e8a4046 --rounds 3
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TRAIN = r"""
import json, sys, time, torch, argen
torch.set_num_threads(1)
name, steps, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
m = argen.create_model(name, image_shape=(1, 28, 28), levels=256).train()
opt = torch.optim.Adam(m.parameters(), lr=1e-4)
x = torch.randint(0, 256, (batch, 1, 28, 28), generator=torch.Generator().manual_seed(0))
def step():
    opt.zero_grad(set_to_none=True)
    m.loss(x).backward()
    opt.step()
step()  # warm-up
t = time.perf_counter()
for _ in range(steps):
    step()
print(json.dumps({"images_per_s": steps * batch / (time.perf_counter() - t)}))
"""

SAMPLE = r"""
import json, sys, time, torch, argen
torch.set_num_threads(1)
spec, batch = sys.argv[1], int(sys.argv[2])
name, _, extra = spec.partition(":")
kw = dict(kv.split("=") for kv in extra.split(",")) if extra else {}
torch.manual_seed(0)
m = argen.create_model(name, image_shape=(1, 28, 28), levels=256, **kw).eval()
m.sample(batch, generator=torch.Generator().manual_seed(0))  # builds plans / caches
t = time.perf_counter()
m.sample(batch, generator=torch.Generator().manual_seed(1))
print(json.dumps({"seconds": time.perf_counter() - t}))
"""


def run(tree: Path, code: str, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", default="e8a4046", help="git revision to compare with (default: e8a4046, argen 0.1.0)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--train-models", nargs="+", default=["pixelcnn", "gated_pixelcnn"])
    ap.add_argument("--train-steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--sample-models", nargs="+",
                    default=["pixelcnn", "gated_pixelcnn", "pixelcnn_pp", "pixelsnail", "lmconv", "pixelrnn_row",
                             "image_transformer"])
    ap.add_argument("--sample-batch", type=int, default=16)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="argen-old-") as tmp:
        old = Path(tmp)
        archive = subprocess.run(["git", "archive", args.old, "src"], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        trees = {"old": old, "new": ROOT}
        best: dict[tuple[str, str, str], float] = {}
        for r in range(args.rounds):
            order = ["old", "new"] if r % 2 == 0 else ["new", "old"]
            for name in args.train_models:
                for which in order:
                    v = run(trees[which], TRAIN, name, str(args.train_steps), str(args.batch_size))["images_per_s"]
                    key = ("train", name, which)
                    best[key] = max(best.get(key, 0.0), v)
            for spec in args.sample_models:
                for which in order:
                    v = run(trees[which], SAMPLE, spec, str(args.sample_batch))["seconds"]
                    key = ("sample", spec, which)
                    best[key] = min(best.get(key, float("inf")), v)
            print(f"round {r + 1}/{args.rounds} done; load average {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
    print(f"| measure | model | {args.old} | this tree | new/old |")
    print("|---|---|---|---|---|")
    for name in args.train_models:
        o, n = best[("train", name, "old")], best[("train", name, "new")]
        print(f"| training images/s (batch {args.batch_size}, 1x28x28, 256 levels) | {name} | {o:.1f} | {n:.1f} | {o / n:.3f} |")
    for spec in args.sample_models:
        o, n = best[("sample", spec, "old")], best[("sample", spec, "new")]
        print(f"| cached sampling s (batch {args.sample_batch}) | {spec} | {o:.2f} | {n:.2f} | {n / o:.3f} |")
    print(f"\n(best of {args.rounds} interleaved rounds, 1 thread; new/old > 1 means the new tree is slower; "
          f"training ratio is old images/s / new images/s)")


if __name__ == "__main__":
    main()
