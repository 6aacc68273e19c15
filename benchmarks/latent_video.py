"""Latent video models on the CPU Moving MNIST protocol: a video tokenizer, then priors over its codes.

Protocol (the pixel-video one of `benchmarks/video.py`, BENCHMARKS.md "Video models on a CPU Moving
MNIST protocol"): `moving-mnist-32-10f-binary` (32x32, binary, 10 frames), 5 context frames -> 5
predicted. Steps:

1. train the tokenizer (`--tokenizer`, default vqvae3d; `--tokenizer-set key=value` hyperparameters)
   for `--tokenizer-budget` process-CPU seconds (1 thread, AdamW, batch `--batch-size`);
2. encode the train and test splits once (`argen.data.codes.code_dataset`, cached beside the
   tokenizer run; its CPU time is reported apart from the budgets);
3. for each `--prior NAME` (any registered video model; `--prior-set key=value`), train it over the
   code volumes for `--prior-budget` CPU seconds, its run directory holding a copy of the tokenizer,
   so `argen.load` gives the latent video model (`argen.models.latent.two_stage.LatentModel`);
4. measure on test clips: per-future-frame MSE and SSIM of predictions from the 5 true frames
   (`--n` clips, one draw, temperature 1), test bits/token of whole clips (the prior's exact
   likelihood of the codes, `--eval-clips` clips), the video Fréchet distance of predicted clips in
   argen's Moving MNIST feature space (`--fvd-n` clips; NOT comparable to I3D FVD) next to the
   baselines of `benchmarks/video.py` (`fvd_rows`, same clips), seconds per sampled clip (batch 1,
   the prior's own sampler), parameters, training CPU seconds; and the tokenizer's ceiling: its
   reconstruction MSE / PSNR / SSIM and the Fréchet distance of its reconstructions (FVD*).

    OMP_NUM_THREADS=1 python benchmarks/latent_video.py --prior videogpt --tokenizer-budget 300 \
        --prior-budget 400 --out runs/bench-latent-video --report /tmp/bench/latent_video.md
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

import argen
from argen.checkpoint import weights_fingerprint
from argen.data import load_dataset
from argen.data.codes import code_dataset
from argen.tokenizers import create_tokenizer, list_tokenizers
from argen.train import TrainConfig, Trainer, parse_overrides


def _pixel_video_benchmark() -> Any:
    """benchmarks/video.py as a module (its protocol constant and measurement functions)."""
    spec = importlib.util.spec_from_file_location("argen_bench_video", Path(__file__).with_name("video.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


VIDEO = _pixel_video_benchmark()
DATA = VIDEO.DATA


def settings(pairs: list[str]) -> dict[str, Any]:
    """`key=value` hyperparameters (values parsed as the CLI's --set does)."""
    return dict(parse_overrides([f"model.{p}" for p in pairs])["model"]) if pairs else {}


def train_config(args: argparse.Namespace, budget: float) -> TrainConfig:
    return TrainConfig(steps=10**7, batch_size=args.batch_size, lr=args.lr, warmup_steps=20, time_limit=budget,
                       time_clock="cpu", eval_examples=args.eval_clips, eval_batch_size=8, checkpoint_every=10**7,
                       tensorboard=False, ema_decay=None, progress=False, sample_every=None)


def fit(model: Any, train: Any, test: Any, cfg: TrainConfig, run: Path, extra: dict[str, Any] | None = None
        ) -> tuple[Any, dict[str, Any], int, float]:
    """Train under the CPU budget; (trained model, final metrics, steps, process CPU seconds used)."""
    t0 = time.process_time()
    trainer = Trainer(model, train, cfg, run_dir=run, eval_data=test, device="cpu", extra=extra)
    metrics = trainer.fit()
    return trainer.model, metrics, trainer.step, time.process_time() - t0


def params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def tokenizer_row(tok: Any, test: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The tokenizer's ceiling on `--fvd-n` test clips: reconstruction numbers and FVD* of reconstructions."""
    from argen.metrics.features import load_feature_extractor
    from argen.metrics.quality import batches_quality

    tok.eval()
    x = torch.stack([test[i][0] for i in range(args.fvd_n)])
    recon = torch.cat([tok.reconstruct(x[i:i + args.batch]) for i in range(0, len(x), args.batch)])
    totals: dict[str, Any] = {}
    for i in range(0, len(x), args.batch):
        for k, (s, c) in tok.eval_stats(x[i:i + args.batch]).items():
            a, b = totals.get(k, (0, 0))
            totals[k] = (a + s, b + c)
    row = {k: v for k, v in tok.summarize(totals).items()}
    q = batches_quality([recon], tok.levels, test, metrics=["fid"], features=load_feature_extractor("moving-mnist"),
                        batch_size=args.batch)
    row["fvd_star_moving_mnist"] = q["fvd_moving_mnist"]
    return row


@torch.no_grad()
def prior_row(model: Any, test: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Prediction MSE / SSIM per future frame, bits/token of whole test clips, seconds per sampled clip."""
    from argen.metrics.video import frame_metrics

    model.eval()
    k = args.context
    x = torch.stack([test[i][0] for i in range(args.n)])
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    pred = torch.cat([model.predict(x[i:i + args.batch, :k], generator=g) for i in range(0, args.n, args.batch)])
    row: dict[str, Any] = {"predict_s_per_clip": (time.perf_counter() - t0) / args.n}
    per = frame_metrics(pred[:, k:], x[:, k:], model.levels)
    row["mse_by_frame"] = [round(v, 5) for v in per["mse"]]
    row["ssim_by_frame"] = [round(v, 4) for v in per["ssim"]]
    clips = torch.stack([test[i][0] for i in range(args.eval_clips)])
    nats = torch.cat([model.log_prob(clips[i:i + args.batch]) for i in range(0, len(clips), args.batch)])
    row["test_bits_per_token"] = float(-nats.double().mean() / (model.num_dims * math.log(2)))
    t0 = time.perf_counter()
    model.sample(1, generator=torch.Generator().manual_seed(1))
    row["sample_s_per_clip"] = time.perf_counter() - t0
    return row


def markdown(report: dict[str, Any]) -> str:
    tok = report["tokenizer"]
    lines = ["# Latent video models, CPU Moving MNIST protocol\n", report["protocol"] + "\n",
             f"Load average: {report['load_at_start']:.2f} at the start, {report['load_at_end']:.2f} at the end "
             f"(2 cores shared with other sessions).\n",
             "## Tokenizer\n",
             "| tokenizer | params | steps | CPU-s | code volume (t, s, h, w) | codebook | frames / code frame | "
             "MSE | PSNR | SSIM | usage | FVD* (recon) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|",
             f"| {tok['name']} | {tok['params']:,} | {tok['steps']} | {tok['cpu_s']:.0f} | {tuple(tok['code_shape'])} | "
             f"{tok['codebook_size']} | {tok['frame_stride']} | {tok['mse']:.4f} | {tok['psnr']:.2f} | {tok['ssim']:.3f} | "
             f"{tok['usage']:.2f} | {tok['fvd_star_moving_mnist']:.2f} |",
             f"\nEncoding the train + test splits once: {report['encode_cpu_s']:.0f} CPU-s (not in the budgets).\n",
             "## Priors over the codes (5 true frames -> 5 predicted)\n",
             "| prior | params (prior) | steps | CPU-s | test bits/token | MSE t+1..t+5 | SSIM t+1..t+5 | "
             f"FVD (moving-mnist, {report['fvd_n']} clips) | sample s/clip | predict s/clip |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["priors"].items():
        mse = " ".join(f"{v:.3f}".lstrip("0") for v in r["mse_by_frame"])
        ssim = " ".join(f"{v:.2f}".lstrip("0") for v in r["ssim_by_frame"])
        lines.append(f"| {name} | {r['params']:,} | {r['steps']} | {r['cpu_s']:.0f} | {r['test_bits_per_token']:.3f} | "
                     f"{mse} | {ssim} | {r['fvd_moving_mnist']:.2f} | {r['sample_s_per_clip']:.1f} | "
                     f"{r['predict_s_per_clip']:.2f} |")
    base = report["baselines"]
    for name, r in base["frames"].items():
        mse = " ".join(f"{v:.3f}".lstrip("0") for v in r["mse_by_frame"])
        ssim = " ".join(f"{v:.2f}".lstrip("0") for v in r["ssim_by_frame"])
        lines.append(f"| *baseline: {name}* | | | | | {mse} | {ssim} | {base['fvd'][name]:.2f} | | |")
    lines.append(f"| *true clips (FVD floor at this size)* | | | | | | | {base['fvd']['true clips']:.2f} | | |")
    lines.append("\nFVD: Fréchet distance in argen's Moving MNIST feature space (not comparable to I3D FVD), "
                 "predicted clips (5 true + 5 predicted frames) against the whole test split; FVD* is the same for "
                 "the tokenizer's reconstructions of the true clips, all 10 frames decoded (the tokenizer's own "
                 "floor; predicted clips keep their 5 true context frames, so they can score below it).")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", default="vqvae3d", choices=list_tokenizers("video"))
    p.add_argument("--tokenizer-set", nargs="*", default=[], metavar="KEY=VALUE", help="tokenizer hyperparameters")
    p.add_argument("--prior", nargs="+", default=["video_transformer"], help="registered video models to train as priors")
    p.add_argument("--prior-set", nargs="*", default=[], metavar="KEY=VALUE", help="hyperparameters of every prior")
    p.add_argument("--tokenizer-budget", type=float, default=300.0, help="tokenizer training CPU-seconds")
    p.add_argument("--prior-budget", type=float, default=400.0, help="training CPU-seconds per prior")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--n", type=int, default=16, help="test clips for the per-frame prediction metrics")
    p.add_argument("--fvd-n", type=int, default=256, help="test clips for the Fréchet distances")
    p.add_argument("--eval-clips", type=int, default=64, help="test clips for bits/token (and training's eval)")
    p.add_argument("--batch", type=int, default=8, help="clips per prediction batch")
    p.add_argument("--context", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/bench-latent-video")
    p.add_argument("--report", default=None, help="also write the tables as markdown here")
    p.add_argument("--reuse", action="store_true", help="keep a tokenizer already trained in --out")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    train, test = load_dataset(DATA, "train"), load_dataset(DATA, "test")
    out = Path(args.out)
    load0 = os.getloadavg()[0]

    tok_dir = out / args.tokenizer
    trained = tok_dir / "bench-training.json"  # steps and CPU seconds of the tokenizer's training, for --reuse
    if args.reuse and trained.is_file():
        tok = argen.load(tok_dir)
        tok_steps, tok_cpu = (json.loads(trained.read_text())[k] for k in ("steps", "cpu_s"))
    else:
        torch.manual_seed(0)
        tok = create_tokenizer(args.tokenizer, video_shape=train.shape, levels=train.levels,
                               **settings(args.tokenizer_set))
        tok, _, tok_steps, tok_cpu = fit(tok, train, test, train_config(args, args.tokenizer_budget), tok_dir,
                                         extra={"data": DATA})
        trained.write_text(json.dumps({"steps": tok_steps, "cpu_s": tok_cpu}))
    tok.eval()
    report: dict[str, Any] = {
        "protocol": f"{DATA}: {train.shape} with {train.levels} levels, {args.context} context -> "
                    f"{train.shape[0] - args.context} predicted; tokenizer {args.tokenizer} "
                    f"{settings(args.tokenizer_set) or '(defaults)'} for {args.tokenizer_budget:g} CPU-s, each prior "
                    f"{settings(args.prior_set) or '(defaults)'} for {args.prior_budget:g} CPU-s; batch "
                    f"{args.batch_size}, AdamW lr {args.lr:g}, 20 warm-up steps, {args.threads} thread(s), "
                    "process CPU time (train.time_clock=cpu)",
        "load_at_start": load0, "fvd_n": args.fvd_n}
    t0 = time.process_time()
    codes = {s: code_dataset(tok, tok_dir, DATA, s, progress=False)[0] for s in ("train", "test")}
    report["encode_cpu_s"] = time.process_time() - t0
    report["tokenizer"] = {"name": args.tokenizer, "params": params(tok), "steps": tok_steps, "cpu_s": tok_cpu,
                           "code_shape": list(tok.code_shape), "codebook_size": tok.codebook_size,
                           "frame_stride": tok.frame_stride, **tokenizer_row(tok, test, args)}
    print(json.dumps({"tokenizer": report["tokenizer"]}), flush=True)

    record = {"dir": "tokenizer", "name": tok.model_name, "fingerprint": weights_fingerprint(tok), "source": str(tok_dir)}
    report["priors"] = {}
    for name in args.prior:
        run = out / name
        argen.save(tok, run / "tokenizer", data=DATA)  # the prior's run holds its tokenizer: argen.load composes
        torch.manual_seed(0)
        prior = argen.create_model(name, video_shape=tok.prior_shape, levels=tok.codebook_size,
                                   **settings(args.prior_set))
        prior, _, steps, cpu = fit(prior, codes["train"], codes["test"], train_config(args, args.prior_budget), run,
                                   extra={"data": DATA, "tokenizer": record})
        model = argen.load(run)
        row = {"params": params(prior), "steps": steps, "cpu_s": cpu, **prior_row(model, test, args)}
        report["priors"][name] = row
        print(json.dumps({name: row}), flush=True)
    fvd_args = argparse.Namespace(context=args.context, fvd_n=args.fvd_n, batch=args.batch, out=str(out))
    fvd = VIDEO.fvd_rows(list(args.prior), test, fvd_args)
    for name in args.prior:
        report["priors"][name]["fvd_moving_mnist"] = fvd.pop(name)
    report["baselines"] = {"fvd": fvd, "frames": VIDEO.baseline_rows(test, argparse.Namespace(context=args.context,
                                                                                              n=args.n))}
    report["load_at_end"] = os.getloadavg()[0]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"report-{args.tokenizer}-{'-'.join(args.prior)}.json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    print(text)
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(text)


if __name__ == "__main__":
    main()
