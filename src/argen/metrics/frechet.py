"""Fréchet distance between Gaussians fitted to features (the core of FID and FVD).

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})

S1 S2 is not symmetric, and the usual `scipy.linalg.sqrtm(S1 @ S2)` returns complex noise when the
covariances are near singular (fewer samples than feature dimensions). We use instead that
S1 S2 is similar to A S2 A with A = S1^{1/2}: both have the same eigenvalues, and A S2 A is
symmetric positive semi-definite, so tr((S1 S2)^{1/2}) = sum sqrt(eig(A S2 A)), computed with two
symmetric eigendecompositions in float64 and tiny negative eigenvalues (round-off) clipped to 0.

Means and covariances are accumulated in float64 over streaming batches with the pairwise
(Chan et al.) update, so features with a large common offset lose no precision.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from argen.fileio import atomic_write

ArrayLike = Tensor | np.ndarray


def _as_f64(a: ArrayLike) -> Tensor:
    t = torch.as_tensor(a) if not isinstance(a, Tensor) else a
    return t.detach().to(device="cpu", dtype=torch.float64)


def _check_square(name: str, m: Tensor) -> None:
    if m.dim() != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"expected {name} as a square (D, D) matrix, given shape {tuple(m.shape)}")


def sqrtm_psd(mat: ArrayLike) -> Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix (float64).

    Eigenvalues below zero (round-off on singular covariances) are treated as zero, so the
    result is real and symmetric where a general `sqrtm` would return complex noise.
    """
    m = _as_f64(mat)
    _check_square("mat", m)
    m = 0.5 * (m + m.T)
    w, v = torch.linalg.eigh(m)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def trace_sqrt_product(sigma1: ArrayLike, sigma2: ArrayLike) -> float:
    """tr((S1 S2)^{1/2}) for PSD S1, S2, via the symmetric form A S2 A with A = S1^{1/2}."""
    s1, s2 = _as_f64(sigma1), _as_f64(sigma2)
    _check_square("sigma1", s1)
    _check_square("sigma2", s2)
    if s1.shape != s2.shape:
        raise ValueError(f"expected covariances of equal shape, given {tuple(s1.shape)} and {tuple(s2.shape)}")
    a = sqrtm_psd(s1)
    m = a @ (0.5 * (s2 + s2.T)) @ a
    ev = torch.linalg.eigvalsh(0.5 * (m + m.T))
    return float(ev.clamp(min=0).sqrt().sum())


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    m1, m2 = _as_f64(mu1).flatten(), _as_f64(mu2).flatten()
    s1, s2 = _as_f64(sigma1), _as_f64(sigma2)
    if m1.shape != m2.shape:
        raise ValueError(f"expected means of equal length, given {m1.numel()} and {m2.numel()}")
    if s1.shape != (m1.numel(), m1.numel()) or s2.shape != s1.shape:
        raise ValueError(f"expected covariances of shape ({m1.numel()}, {m1.numel()}), given {tuple(s1.shape)} and {tuple(s2.shape)}")
    diff = m1 - m2
    value = float(diff @ diff) + float(torch.trace(s1) + torch.trace(s2)) - 2.0 * trace_sqrt_product(s1, s2)
    # The exact value is >= 0; round-off on identical inputs may give -1e-12.
    return max(value, 0.0)


@dataclass
class GaussianStats:
    """Mean and (unbiased, ddof=1) covariance of n feature vectors, in float64.

    `features` optionally keeps the raw (n, D) float32 features, which KID and precision/recall
    need; the Fréchet distance uses only `mean` and `cov`.
    """

    mean: Tensor
    cov: Tensor
    n: int
    features: Tensor | None = None

    @property
    def dim(self) -> int:
        return int(self.mean.numel())

    def frechet_distance(self, other: "GaussianStats") -> float:
        return frechet_distance(self.mean, self.cov, other.mean, other.cov)

    def save(self, path: str | os.PathLike[str], metadata: dict[str, str] | None = None) -> Path:
        """Write to a safetensors file (atomically) so reference statistics are computed once."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {"mean": self.mean.contiguous(), "cov": self.cov.contiguous(), "n": torch.tensor([self.n])}
        if self.features is not None:
            tensors["features"] = self.features.float().contiguous()
        meta = {k: str(v) for k, v in (metadata or {}).items()}
        return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta), suffix=".partial")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "GaussianStats":
        """Read statistics written by `save`; ValueError when the file is not such a file."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            t = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise ValueError(f"cannot read feature statistics from {str(path)!r}: {e}") from None
        missing = {"mean", "cov", "n"} - set(t)
        if missing:
            raise ValueError(f"{str(path)!r} is not a feature-statistics file: missing {sorted(missing)}")
        return cls(t["mean"].double(), t["cov"].double(), int(t["n"][0]), t.get("features"))

    @staticmethod
    def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})


class StatsAccumulator:
    """Streaming mean and covariance of feature batches, exact in float64.

    Each batch is centred on its own mean before its scatter matrix is formed, and batches are
    merged with the pairwise update M2 = M2_a + M2_b + d d^T n_a n_b / n, so a large common offset
    in the features costs no precision (a naive sum of x x^T would).
    """

    def __init__(self, keep_features: bool = False) -> None:
        self.n = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None
        self.keep_features = keep_features
        self._features: list[Tensor] = []

    def update(self, feats: ArrayLike) -> None:
        x = _as_f64(feats)
        if x.dim() != 2:
            raise ValueError(f"expected features of shape (N, D), given {tuple(x.shape)}")
        if self.mean is not None and x.shape[1] != self.mean.numel():
            raise ValueError(f"expected features of dimension {self.mean.numel()}, given {x.shape[1]}")
        nb = x.shape[0]
        if nb == 0:
            return
        if self.keep_features:
            self._features.append(x.float())
        mb = x.mean(0)
        xc = x - mb
        m2b = xc.T @ xc
        if self.mean is None:
            self.n, self.mean, self.m2 = nb, mb, m2b
            return
        n = self.n + nb
        d = mb - self.mean
        self.mean = self.mean + d * (nb / n)
        self.m2 = self.m2 + m2b + torch.outer(d, d) * (self.n * nb / n)
        self.n = n

    def compute(self) -> GaussianStats:
        if self.mean is None or self.n < 2:
            raise ValueError(f"expected at least 2 feature vectors for a covariance, given {self.n}")
        feats = torch.cat(self._features) if self.keep_features else None
        return GaussianStats(self.mean.clone(), self.m2 / (self.n - 1), self.n, feats)


def gaussian_stats(features: ArrayLike, keep_features: bool = False) -> GaussianStats:
    """Mean and covariance of an (N, D) feature matrix in one call."""
    acc = StatsAccumulator(keep_features)
    acc.update(features)
    return acc.compute()


def as_stats(x: Any) -> GaussianStats:
    """Accept GaussianStats, an (N, D) feature matrix, or a path to a saved statistics file."""
    if isinstance(x, GaussianStats):
        return x
    if isinstance(x, (str, os.PathLike)):
        return GaussianStats.load(x)
    return gaussian_stats(x, keep_features=True)
