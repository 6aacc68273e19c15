"""Video models on the CPU Moving MNIST protocol, each trained for the same CPU budget.

Protocol (printed in the report): `moving-mnist-32-10f-binary` (the embedded Moving MNIST
generator, 2x2-area-downscaled to 32x32, the first 10 of its 20 frames, binarized at 128), 5
context frames -> 5 predicted. For every model, one process-CPU budget of training (batch
`--batch-size`, AdamW, 1 thread), then on `--n` test clips:

- likelihood models: exact nats per predicted frame and bits/dim of the 5 true future frames
  given the 5 true context frames (VPN's protocol), and test bits/dim of whole clips;
- every model: predictions from the 5 context frames (the model's own cached sampler;
  frame_gan deterministically), per-future-frame MSE and SSIM against the truth, and the video
  Fréchet distance of the predicted clips to the true ones in argen's Moving MNIST feature space
  (`fvd_moving_mnist`: NOT comparable to I3D FVD; with few clips it is a noisy, biased estimate);
- seconds per sampled clip with the own sampler (measured) and naive (network calls x one batch-1
  forward pass, estimated), and network calls per frame.

    python benchmarks/video.py --threads 1 --budget 600 --out runs/bench-video
    python benchmarks/video.py --models vpn multiscale_video --budget 600   # a subset (e.g. one process per core)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch

import argen
from argen.data import load_dataset
from argen.train import TrainConfig, Trainer

DATA = "moving-mnist-32-10f-binary"
MODELS = ["vpn", "multiscale_video", "video_transformer", "frame_gan"]


def calls_per_frame(model) -> int:
    """Network calls to generate one frame: a group per call (multiscale), one per frame (frame_gan),
    else one decoder call per sub-pixel (the cached samplers step positions one by one)."""
    if hasattr(model, "calls_per_frame"):
        return int(model.calls_per_frame)
    if getattr(type(model), "objective", "likelihood") != "likelihood":
        return 1
    _, c, h, w = model.data_shape
    return c * h * w


def naive_seconds(model, repeats: int = 2) -> float | None:
    """Estimated naive seconds per clip: (positions x channels) full forward passes at batch 1."""
    if getattr(type(model), "objective", "likelihood") != "likelihood":
        return None
    x = torch.zeros((1, *model.data_shape), dtype=torch.long)
    model(x)
    t0 = time.perf_counter()
    for _ in range(repeats):
        model(x)
    return math.prod(model.data_shape) * (time.perf_counter() - t0) / repeats


@torch.no_grad()
def evaluate(model, test, args: argparse.Namespace) -> dict:
    from argen.metrics.features import load_feature_extractor
    from argen.metrics.quality import batches_quality
    from argen.metrics.video import frame_metrics, prediction_nats

    model.eval()
    x = torch.stack([test[i][0] for i in range(args.n)])
    k = args.context
    row: dict = {}
    likelihood = getattr(type(model), "objective", "likelihood") == "likelihood"
    if likelihood:
        nats = prediction_nats(model, x, k)
        row.update(nats_per_frame=nats["nats_per_frame"], future_bpd=nats["bits_per_dim"])
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    contexts = [x[i:i + args.batch, :k] for i in range(0, args.n, args.batch)]
    preds = [model.predict(c, generator=g) if likelihood else model.predict(c) for c in contexts]
    row["predict_s_per_clip"] = (time.perf_counter() - t0) / args.n
    pred = torch.cat(preds)
    per = frame_metrics(pred[:, k:], x[:, k:], model.levels)
    row["mse_by_frame"] = [round(v, 5) for v in per["mse"]]
    row["ssim_by_frame"] = [round(v, 4) for v in per["ssim"]]
    features = load_feature_extractor("moving-mnist")
    q = batches_quality([pred], model.levels, test, metrics=["fid"], features=features, reference_n=args.n,
                        batch_size=args.batch)
    row["fvd_moving_mnist"] = q.get("fvd_moving_mnist")
    if likelihood:
        t0 = time.perf_counter()
        model.sample(1, generator=torch.Generator().manual_seed(1))
        row["sample_s_per_clip"] = time.perf_counter() - t0
        row["naive_s_per_clip_estimated"] = naive_seconds(model)
    row["calls_per_frame"] = calls_per_frame(model)
    return row


@torch.no_grad()
def fvd_rows(names: list[str], test, args: argparse.Namespace) -> dict:
    """Video Frechet distance (argen's Moving MNIST features) of `--fvd-n` predicted clips against the
    whole test split, next to baselines of the same size: the true clips themselves (the estimator's
    small-sample floor), the last context frame repeated, and blank future frames."""
    from argen.metrics.features import load_feature_extractor
    from argen.metrics.quality import batches_quality

    features = load_feature_extractor("moving-mnist")
    k, n = args.context, args.fvd_n
    x = torch.stack([test[i][0] for i in range(n)])

    def fvd(clips: torch.Tensor) -> float:
        return batches_quality([clips], test.levels, test, metrics=["fid"], features=features,
                               batch_size=args.batch)["fvd_moving_mnist"]

    copy, blank = x.clone(), x.clone()
    copy[:, k:] = x[:, k - 1:k]
    blank[:, k:] = 0
    rows = {"true clips": fvd(x), "last context frame repeated": fvd(copy), "blank future frames": fvd(blank)}
    g = torch.Generator().manual_seed(0)
    for name in names:
        model = argen.load(Path(args.out) / name).eval()
        likelihood = getattr(type(model), "objective", "likelihood") == "likelihood"
        preds = [model.predict(x[i:i + args.batch, :k], generator=g) if likelihood else model.predict(x[i:i + args.batch, :k])
                 for i in range(0, n, args.batch)]
        rows[name] = fvd(torch.cat(preds))
        print(json.dumps({name: rows[name]}), flush=True)
    return rows


def baseline_rows(test, args: argparse.Namespace) -> dict:
    """Per-future-frame MSE and SSIM of two trivial predictors on the same `--n` test clips as the
    models: the last context frame repeated, and blank (all-zero) future frames."""
    from argen.metrics.video import frame_metrics

    k = args.context
    x = torch.stack([test[i][0] for i in range(args.n)])
    copy, blank = x.clone(), x.clone()
    copy[:, k:] = x[:, k - 1:k]
    blank[:, k:] = 0
    rows = {}
    for name, pred in (("last context frame repeated", copy), ("blank future frames", blank)):
        m = frame_metrics(pred[:, k:], x[:, k:], test.levels)
        rows[name] = {"mse_by_frame": [round(v, 5) for v in m["mse"]], "ssim_by_frame": [round(v, 4) for v in m["ssim"]]}
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--budget", type=float, default=600.0, help="training CPU-seconds per model")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--n", type=int, default=16, help="test clips for the prediction metrics")
    p.add_argument("--batch", type=int, default=8, help="clips per prediction batch")
    p.add_argument("--context", type=int, default=5)
    p.add_argument("--eval-clips", type=int, default=64, help="test clips for whole-clip bits/dim")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/bench-video")
    p.add_argument("--reuse", action="store_true", help="keep models already trained in --out")
    p.add_argument("--fvd-only", action="store_true",
                   help="only the video Frechet distances of --fvd-n predictions of trained runs in --out, with baselines")
    p.add_argument("--fvd-n", type=int, default=256)
    p.add_argument("--baselines-only", action="store_true",
                   help="only the per-frame MSE/SSIM of the trivial predictors (last frame repeated, blank) on --n clips")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    train, test = load_dataset(DATA, "train"), load_dataset(DATA, "test")
    out = Path(args.out)
    if args.baselines_only:
        print(json.dumps(baseline_rows(test, args), indent=2))
        return
    if args.fvd_only:
        rows = fvd_rows(args.models, test, args)
        rows["load_at_end"] = os.getloadavg()[0]
        (out / f"fvd-{'-'.join(args.models)}-n{args.fvd_n}.json").write_text(json.dumps(rows, indent=2))
        print(json.dumps(rows, indent=2))
        return
    report = {"protocol": f"{DATA}: {train.shape} with {train.levels} levels, {args.context} context -> "
                          f"{train.shape[0] - args.context} predicted; {args.budget:g} CPU-s of training per model, "
                          f"batch {args.batch_size}, {args.threads} thread(s)",
              "load_at_start": os.getloadavg()[0], "models": {}}
    for name in args.models:
        run = out / name
        if args.reuse and (run / "config.json").is_file() and json.loads((run / "config.json").read_text()).get("metrics"):
            model = argen.load(run)
            desc = json.loads((run / "config.json").read_text())
            metrics, steps = desc["metrics"], desc["step"]
        else:
            torch.manual_seed(0)
            model = argen.create_model(name, video_shape=train.shape, levels=train.levels)
            cfg = TrainConfig(steps=10**7, batch_size=args.batch_size, lr=args.lr, warmup_steps=20,
                              time_limit=args.budget, time_clock="cpu", eval_examples=args.eval_clips,
                              eval_batch_size=8, checkpoint_every=10**7, tensorboard=False, ema_decay=None)
            trainer = Trainer(model, train, cfg, run_dir=run, eval_data=test, device="cpu")
            metrics = trainer.fit()
            steps = trainer.step
            model = trainer.model
        row = {"params": sum(p.numel() for p in model.parameters()), "steps": steps,
               **{k: v for k, v in metrics.items() if k.startswith("test_") and not isinstance(v, list)}}
        row.update(evaluate(model, test, args))
        report["models"][name] = row
        print(json.dumps({name: row}), flush=True)
    report["load_at_end"] = os.getloadavg()[0]
    out.mkdir(parents=True, exist_ok=True)
    tag = "-".join(args.models)
    (out / f"report-{tag}.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
