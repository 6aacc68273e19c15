"""Train the small MNIST classifier shipped as `src/argen/metrics/assets/mnist_classifier.safetensors`.

Its 128-d features give argen's "MNIST FID" (see argen.metrics.mnist_net): an offline, fast
sample-quality number for digit models, NOT comparable to Inception FID. The network is trained
on the embedded MNIST train split (9,000 digits) with small random shifts, so that it does not
rely on digits being perfectly centred, and tested on the embedded test split (1,000 digits).
Deterministic for a given seed and thread count; about a minute on one CPU thread.

Usage:
    python scripts/train_mnist_features.py                      # writes the shipped asset
    python scripts/train_mnist_features.py --out /tmp/m.safetensors --epochs 3
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from argen.checkpoint import save_weights
from argen.data import load_dataset
from argen.metrics.mnist_net import ASSET_PATH, MnistClassifier


def as_tensors(split: str) -> tuple[Tensor, Tensor]:
    ds = load_dataset("mnist", split)
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return torch.stack(xs).float() / (ds.levels - 1), torch.stack(ys)


def random_shift(x: Tensor, max_shift: int, g: torch.Generator) -> Tensor:
    """Translate each image by up to `max_shift` pixels (zero fill)."""
    if max_shift == 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy, dx = (torch.randint(0, 2 * max_shift + 1, (2, n), generator=g)).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


@torch.no_grad()
def accuracy(net: MnistClassifier, x: Tensor, y: Tensor, batch: int = 500) -> float:
    net.eval()
    correct = sum(int((net(x[i:i + batch])[1].argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return correct / len(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ASSET_PATH)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--shift", type=int, default=2, help="max random translation in pixels")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    x_train, y_train = as_tensors("train")
    x_test, y_test = as_tensors("test")
    net = MnistClassifier()
    params = sum(p.numel() for p in net.parameters())
    steps = args.epochs * math.ceil(len(x_train) / args.batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.15)
    print(f"training MnistClassifier ({params:,} parameters) on {len(x_train)} digits for {args.epochs} epochs")
    start = time.time()
    for epoch in range(args.epochs):
        net.train()
        perm = torch.randperm(len(x_train), generator=g)
        total = 0.0
        for i in range(0, len(perm), args.batch_size):
            idx = perm[i:i + args.batch_size]
            loss = F.cross_entropy(net(random_shift(x_train[idx], args.shift, g))[1], y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        print(f"epoch {epoch + 1}: train loss {total / len(x_train):.4f}, test accuracy "
              f"{accuracy(net, x_test, y_test):.4f} ({time.time() - start:.0f} s)")
    acc = accuracy(net, x_test, y_test)
    train_acc = accuracy(net, x_train, y_train)
    save_weights(net, args.out, {
        "test_accuracy": f"{acc:.4f}", "train_accuracy": f"{train_acc:.4f}", "epochs": str(args.epochs),
        "seed": str(args.seed), "data": "argen embedded mnist (train 9000 / test 1000)",
    })
    args.out.chmod(0o644)  # a package asset: readable by every user (the temp file was 0600)
    print(f"test accuracy {acc:.4f} ({int(round(acc * len(x_test)))}/{len(x_test)}), train accuracy {train_acc:.4f}; "
          f"{time.time() - start:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
