"""Sample-quality scores on feature sets: Inception Score, KID, k-NN precision and recall.

Each takes plain (N, D) feature (or logit) matrices, so it works with any feature extractor:
the Inception network, the small MNIST classifier argen ships, I3D for video, or your own.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

ArrayLike = Tensor | np.ndarray


def _matrix(name: str, a: ArrayLike, dtype: torch.dtype = torch.float64) -> Tensor:
    t = a if isinstance(a, Tensor) else torch.as_tensor(a)
    if t.dim() != 2 or t.shape[0] == 0:
        raise ValueError(f"expected {name} as a non-empty (N, D) matrix, given shape {tuple(t.shape)}")
    return t.detach().to(dtype)


def inception_score(logits: ArrayLike, splits: int = 10, *, probabilities: bool = False,
                    shuffle_seed: int | None = 0) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))), mean and standard deviation over `splits` parts.

    `logits` are class logits (N, K) of a classifier (the Inception network's 1008 ImageNet
    outputs for the standard score); pass `probabilities=True` for softmax outputs. The score
    ranges from 1 (every prediction identical) to K (confident and evenly spread over classes).
    Rows are shuffled (fixed seed) before splitting: samples stored class by class would
    otherwise put one class in each part and score about 1. `shuffle_seed=None` keeps the order.
    """
    x = _matrix("logits", logits)
    if not 1 <= splits <= x.shape[0]:
        raise ValueError(f"expected 1 <= splits <= N = {x.shape[0]}, given {splits}")
    if probabilities:
        if (x < 0).any() or not torch.allclose(x.sum(1), torch.ones_like(x[:, 0]), atol=1e-4):
            raise ValueError("expected rows of probabilities (non-negative, summing to 1)")
        p = x / x.sum(1, keepdim=True)
    else:
        p = torch.softmax(x, dim=1)
    if shuffle_seed is not None:
        p = p[torch.randperm(p.shape[0], generator=torch.Generator().manual_seed(shuffle_seed))]
    scores = []
    for part in torch.tensor_split(p, splits):
        py = part.mean(0, keepdim=True)
        kl = (torch.special.xlogy(part, part) - torch.special.xlogy(part, py)).sum(1).mean()
        scores.append(math.exp(float(kl)))
    return float(np.mean(scores)), float(np.std(scores))


def classifier_confidence(logits: ArrayLike, threshold: float = 0.9) -> dict[str, Any]:
    """How sure a classifier is of its label for each sample: a direct "does it look like a digit" check.

    Returns the mean top-class probability, the share of samples above `threshold`, and the share
    of samples given to each class (a collapsed sampler puts most samples in one class).
    """
    x = _matrix("logits", logits)
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"expected threshold in (0, 1), given {threshold}")
    p = torch.softmax(x, dim=1)
    top, label = p.max(1)
    counts = torch.bincount(label, minlength=x.shape[1]).double() / x.shape[0]
    return {"mean": float(top.mean()), "share_confident": float((top > threshold).double().mean()),
            "threshold": threshold, "class_shares": [round(float(c), 4) for c in counts]}


def polynomial_kernel(x: Tensor, y: Tensor, degree: int = 3, coef0: float = 1.0) -> Tensor:
    """k(x, y) = (x.y / D + coef0)^degree, the kernel KID is defined with."""
    return (x @ y.T / x.shape[1] + coef0) ** degree


def kernel_inception_distance(real: ArrayLike, fake: ArrayLike, *, subsets: int = 100, subset_size: int = 1000,
                              degree: int = 3, coef0: float = 1.0, seed: int = 0,
                              device: torch.device | str | None = None) -> tuple[float, float]:
    """KID: unbiased MMD^2 with a cubic polynomial kernel, mean and std over random subsets.

    Unlike FID it has an unbiased estimator, so it is meaningful for a few hundred samples.
    Subsets hold min(subset_size, len(real), len(fake)) vectors drawn without replacement;
    the kernels are computed in float64 on `device` (CPU by default).
    """
    x = _matrix("real features", real).to(device or "cpu")
    y = _matrix("fake features", fake).to(device or "cpu")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"expected real and fake features of equal dimension, given {x.shape[1]} and {y.shape[1]}")
    m = min(subset_size, x.shape[0], y.shape[0])
    if m < 2:
        raise ValueError(f"expected at least 2 real and 2 fake feature vectors, given {x.shape[0]} and {y.shape[0]}")
    if subsets < 1:
        raise ValueError(f"expected subsets >= 1, given {subsets}")
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        xs = x[torch.randperm(x.shape[0], generator=g)[:m].to(x.device)]
        ys = y[torch.randperm(y.shape[0], generator=g)[:m].to(y.device)]
        kxx = polynomial_kernel(xs, xs, degree, coef0)
        kyy = polynomial_kernel(ys, ys, degree, coef0)
        kxy = polynomial_kernel(xs, ys, degree, coef0)
        off = m * (m - 1)
        mmd = (kxx.sum() - kxx.diagonal().sum()) / off + (kyy.sum() - kyy.diagonal().sum()) / off - 2 * kxy.mean()
        values.append(float(mmd))
    return float(np.mean(values)), float(np.std(values))


def _pairwise_dist(a: Tensor, b: Tensor) -> Tensor:
    # Matrix-product form (fast for thousands of 2048-d vectors); clamp the round-off below 0.
    return torch.cdist(a, b).clamp_(min=0)


def knn_radii(feats: Tensor, k: int, batch_size: int = 1024) -> Tensor:
    """Distance from each vector to its k-th nearest other vector in the same set."""
    n = feats.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"expected 1 <= k < N = {n}, given k = {k}")
    out = []
    for i in range(0, n, batch_size):
        d = _pairwise_dist(feats[i:i + batch_size], feats)
        # k + 1: each vector is its own nearest neighbour at distance 0.
        out.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(out)


def _coverage(points: Tensor, centres: Tensor, radii: Tensor, batch_size: int) -> float:
    """Fraction of `points` inside at least one ball (centre_j, radius_j)."""
    inside = []
    for i in range(0, points.shape[0], batch_size):
        d = _pairwise_dist(points[i:i + batch_size], centres)
        inside.append((d <= radii[None, :]).any(dim=1))
    return float(torch.cat(inside).double().mean())


def precision_recall(real: ArrayLike, fake: ArrayLike, *, k: int = 3, batch_size: int = 1024,
                     device: torch.device | str | None = None) -> dict[str, float]:
    """Improved precision and recall (Kynkäänniemi et al., 2019) with k-NN balls.

    Each set's manifold is the union of balls around its vectors with radius the distance to the
    k-th nearest neighbour. Precision: fraction of fake vectors inside the real manifold (are
    samples realistic?); recall: fraction of real vectors inside the fake manifold (is the data
    covered?).
    """
    x = _matrix("real features", real, torch.float32).to(device or "cpu")
    y = _matrix("fake features", fake, torch.float32).to(device or "cpu")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"expected real and fake features of equal dimension, given {x.shape[1]} and {y.shape[1]}")
    real_r, fake_r = knn_radii(x, k, batch_size), knn_radii(y, k, batch_size)
    return {"precision": _coverage(y, x, real_r, batch_size), "recall": _coverage(x, y, fake_r, batch_size)}
