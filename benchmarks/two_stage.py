"""Two-stage (tokenizer + prior) against a pixel model at an equal CPU budget, on embedded MNIST.

Every stage runs through the `argen` CLI in its own process, limited by process CPU time
(`train.time_limit`, `train.time_clock=cpu`), so other load on the machine does not shrink a
budget:

1. each tokenizer (vqvae, fsq, vqgan by default) trains for `--tokenizer-budget` CPU-seconds;
   held-out reconstruction PSNR, codebook usage and perplexity of all 1,000 test digits;
2. a class-conditional `token_gpt` trains for `--prior-budget` CPU-seconds over the codes of the
   tokenizer with the best PSNR (`argen tokenize` first);
3. the pixel model (`--pixel`, default pixelcnn, the best of the bits/dim table) trains
   class-conditionally for the two-stage total (tokenizer + prior budgets);
4. `--n` samples of each (classes 0..9 cycling) are compared with the test digits in the shipped
   MNIST classifier's feature space (FID) and by that classifier's accuracy on the requested
   class; seconds per image at batch `--sample-batch`; then the CFG sweep of the prior.

    python benchmarks/two_stage.py --threads 1 --out runs/bench-two-stage
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from cli_runs import argen_cli, train_budgeted


@torch.no_grad()
def quality(run: Path, args: argparse.Namespace, cfg_scale: float = 1.0) -> dict:
    """MNIST-feature FID, classifier accuracy on the requested class, and sampling seconds per image."""
    import argen
    from argen.metrics.features import load_feature_extractor
    from argen.metrics.quality import sample_quality

    torch.set_num_threads(args.threads)
    model = argen.load(run).eval()
    features = load_feature_extractor("mnist")
    t0 = time.perf_counter()
    result = sample_quality(model, "mnist", n=args.n, batch_size=args.sample_batch, metrics=["fid", "conf"],
                            features=features, cfg_scale=cfg_scale, progress=True)
    seconds = time.perf_counter() - t0  # sampling plus feature extraction (the latter is ~1% here)
    return {"fid": result["fid_mnist"], "class_accuracy": result["class_accuracy_mnist"],
            "confidence": result["confidence_mnist"], "s_per_image": seconds / args.n, "n": args.n,
            "cfg_scale": cfg_scale}


def train(name: str, out: Path, budget: float, args: argparse.Namespace, *extra: str) -> dict:
    """Train (or reuse) a run limited to `budget` CPU-seconds; its config.json."""
    return train_budgeted(name, out, budget, *extra, lr=args.lr, threads=args.threads, reuse=args.reuse)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizers", nargs="+", default=["vqvae", "fsq", "vqgan"])
    p.add_argument("--pixel", default="pixelcnn")
    p.add_argument("--tokenizer-budget", type=float, default=300.0, help="CPU-seconds per tokenizer")
    p.add_argument("--prior-budget", type=float, default=300.0, help="CPU-seconds for the prior")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--n", type=int, default=500, help="samples per FID figure")
    p.add_argument("--sample-batch", type=int, default=100)
    p.add_argument("--cfg", type=float, nargs="+", default=[1.0, 2.0, 3.0, 5.0], help="CFG scales of the sweep")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/bench-two-stage")
    p.add_argument("--reuse", action="store_true", help="keep runs already trained in --out")
    p.add_argument("--data", default="mnist", help="dataset of the tokenizer table (mnist-color: 3 channels)")
    p.add_argument("--tokenizers-only", action="store_true", help="stop after the tokenizer table")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                    "load_at_start": os.getloadavg()[0], "settings": vars(args), "tokenizers": {}}

    for name in args.tokenizers:
        desc = train(name, out / name, args.tokenizer_budget, args, "--data", args.data)
        import argen

        params = sum(p.numel() for p in argen.load(out / name).parameters())
        m = desc["metrics"]
        report["tokenizers"][name] = {"steps": desc["step"], "params": params, "psnr": m["test_psnr"],
                                      "mse": m["test_mse"], "usage": m["test_usage"],
                                      "perplexity": m["test_perplexity"], "codebook": argen.load(out / name).codebook_size}
        print(json.dumps({name: report["tokenizers"][name]}), flush=True)
    if args.tokenizers_only:
        (out / "report.json").write_text(json.dumps(report, indent=2))
        print(json.dumps(report, indent=2))
        return
    if args.data != "mnist":
        raise SystemExit("the two-stage comparison uses the MNIST classifier's features: --data mnist")
    best = max(report["tokenizers"], key=lambda k: report["tokenizers"][k]["psnr"])
    report["best_tokenizer"] = best
    argen_cli("tokenize", str(out / best), threads=args.threads)
    prior = train("token_gpt", out / "token_gpt", args.prior_budget, args, "--tokenizer", str(out / best),
                  "--class-conditional")
    pixel = train(args.pixel, out / args.pixel, args.tokenizer_budget + args.prior_budget, args, "--data", "mnist",
                  "--class-conditional")
    report["prior"] = {"steps": prior["step"], "test_bits_per_token": prior["metrics"]["test_bpd"]}
    report["pixel"] = {"name": args.pixel, "steps": pixel["step"], "test_bpd": pixel["metrics"]["test_bpd"]}
    report["two_stage_quality"] = quality(out / "token_gpt", args)
    report["pixel_quality"] = quality(out / args.pixel, args)
    report["cfg_sweep"] = [report["two_stage_quality"]] + [quality(out / "token_gpt", args, s) for s in args.cfg if s != 1.0]
    report["load_at_end"] = os.getloadavg()[0]
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
