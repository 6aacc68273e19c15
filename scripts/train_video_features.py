"""Train the Moving MNIST video feature network shipped as
`src/argen/metrics/assets/moving_mnist_video.safetensors` (argen.metrics.video.MovingMnistVideoNet).

Its 64-d features give argen's video Fréchet distance (`argen fvd RUN --features moving-mnist`):
"moving-mnist features, not comparable to I3D FVD". Clips are generated like argen's Moving MNIST
(2 embedded train digits bouncing on a 64x64 canvas, 0.1 of the free range per frame), area-
downscaled to 32x32 (the network's input), with 10 or 20 frames, and shown as 8-bit, binarized
(v >= 128) or 4-level intensities, as argen's models generate them. Targets (multi-label, binary
cross-entropy): which digits are in the clip (10) and the direction bins (8 sectors of 45 degrees)
the digits start moving in. Tested on clips of the embedded test digits. Deterministic for a seed
and thread count; a few minutes on one CPU thread.

Usage:
    python scripts/train_video_features.py                   # writes the shipped asset
    python scripts/train_video_features.py --out /tmp/v.safetensors --clips 512 --epochs 1
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from argen.checkpoint import save_weights
from argen.data.embedded import embedded_mnist
from argen.data.video import area_downscale, render_clip, trajectories
from argen.metrics.video import ASSET_PATH, MovingMnistVideoNet

DIRECTIONS = 8


def make_clips(split: str, n: int, frames: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n clips uint8 (n, T, 1, 32, 32) and targets (n, 18) float32."""
    digits, labels = embedded_mnist(split)
    rng = np.random.default_rng([seed, 0 if split == "train" else 1, frames])
    clips = np.empty((n, frames, 1, 32, 32), dtype=np.uint8)
    targets = np.zeros((n, 10 + DIRECTIONS), dtype=np.float32)
    for i in range(n):
        which = rng.integers(0, len(digits), size=2)
        pos = trajectories(rng, frames + 1, 2, 0.1)
        clips[i] = area_downscale(render_clip(digits[which], pos[1:], 64), 2)
        step = pos[1] - pos[0]  # (2 digits, (dy, dx)): the first step's direction
        angle = np.arctan2(step[:, 0], step[:, 1]) % (2 * np.pi)
        targets[i, labels[which]] = 1.0
        targets[i, 10 + (angle / (2 * np.pi) * DIRECTIONS).astype(np.int64) % DIRECTIONS] = 1.0
    return clips, targets


def as_input(clips: np.ndarray, mode: np.ndarray) -> Tensor:
    """uint8 clips -> (n, 1, T, 32, 32) in [0, 1]; mode 0 = 8-bit, 1 = binarized, 2 = 4 levels."""
    x = torch.from_numpy(clips).float()
    m = torch.from_numpy(mode).view(-1, 1, 1, 1, 1)
    binary = (x >= 128).float()
    four = torch.floor(x * 4 / 256) / 3
    x = torch.where(m == 0, x / 255, torch.where(m == 1, binary, four))
    return x.transpose(1, 2).contiguous()


@torch.no_grad()
def evaluate(net: MovingMnistVideoNet, x: Tensor, y: Tensor) -> tuple[float, float]:
    """(accuracy of the two most likely digits, of the two most likely direction bins) as sets."""
    net.eval()
    logits = torch.cat([net(x[i:i + 200])[1] for i in range(0, len(x), 200)])

    def top2(scores: Tensor, target: Tensor) -> float:
        pick = torch.zeros_like(target).scatter_(1, scores.topk(2, 1).indices, 1.0)
        hit = (pick * target).sum(1) / target.sum(1).clamp(max=2)
        return float(hit.mean())

    return top2(logits[:, :10], y[:, :10]), top2(logits[:, 10:], y[:, 10:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ASSET_PATH)
    ap.add_argument("--clips", type=int, default=6000, help="training clips per epoch (fresh ones each epoch)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--test-clips", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    modes_rng = np.random.default_rng(args.seed)
    test_clips, test_y = make_clips("test", args.test_clips, 10, args.seed)
    x_test = as_input(test_clips, np.zeros(len(test_clips), dtype=np.int64))
    x_test_bin = as_input(test_clips, np.ones(len(test_clips), dtype=np.int64))
    y_test = torch.from_numpy(test_y)
    net = MovingMnistVideoNet()
    params = sum(p.numel() for p in net.parameters())
    steps = args.epochs * math.ceil(args.clips / args.batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.15)
    print(f"training MovingMnistVideoNet ({params:,} parameters) on {args.clips} clips x {args.epochs} epochs")
    start = time.time()
    for epoch in range(args.epochs):
        net.train()
        half = args.clips // 2  # 10-frame and 20-frame clips, half each
        parts = [make_clips("train", half, 10, args.seed + 100 * epoch + 1),
                 make_clips("train", args.clips - half, 20, args.seed + 100 * epoch + 2)]
        total, count = 0.0, 0
        for clips, targets in parts:
            perm = torch.randperm(len(clips), generator=g).numpy()
            for i in range(0, len(perm), args.batch_size):
                idx = perm[i:i + args.batch_size]
                x = as_input(clips[idx], modes_rng.integers(0, 3, size=len(idx)))
                loss = F.binary_cross_entropy_with_logits(net(x)[1], torch.from_numpy(targets[idx]))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
                count += len(idx)
        digits, dirs = evaluate(net, x_test, y_test)
        print(f"epoch {epoch + 1}: train loss {total / count:.4f}, test digits {digits:.3f}, directions {dirs:.3f} "
              f"({time.time() - start:.0f} s)")
    digits, dirs = evaluate(net, x_test, y_test)
    digits_bin, dirs_bin = evaluate(net, x_test_bin, y_test)
    save_weights(net, args.out, {
        "test_digit_accuracy": f"{digits:.4f}", "test_direction_accuracy": f"{dirs:.4f}",
        "test_digit_accuracy_binary": f"{digits_bin:.4f}", "test_direction_accuracy_binary": f"{dirs_bin:.4f}",
        "clips": str(args.clips), "epochs": str(args.epochs), "seed": str(args.seed),
        "data": "Moving MNIST of argen's embedded digits (train digits; test digits for the accuracies), 32x32",
        "label": "moving-mnist features, not comparable to I3D FVD",
    })
    args.out.chmod(0o644)
    print(f"test (8-bit): digits {digits:.4f}, directions {dirs:.4f}; test (binarized): digits {digits_bin:.4f}, "
          f"directions {dirs_bin:.4f}; {time.time() - start:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
