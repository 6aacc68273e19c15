"""Sample quality of a model against a data set: FID, KID, precision/recall, IS and FVD in one place.

The pieces: `feature_statistics` streams integer batches through a feature network into float64
mean/covariance (keeping raw features when KID or precision/recall need them);
`reference_statistics` does so for a data set split once and caches the result in a file keyed by
data set, split, size and the exact network, so later calls only sample the model;
`sample_quality` puts it together for a trained model.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from argen.conditioning import CondSpec, sample_conditions
from argen.metrics.features import FeatureExtractor
from argen.metrics.frechet import GaussianStats, StatsAccumulator
from argen.metrics.scores import classifier_confidence, inception_score, kernel_inception_distance, precision_recall

# "is": Inception Score, "conf": the classifier's confidence in its label (both need class logits)
METRICS = ("fid", "kid", "pr", "is", "conf")
#: Names of the Fréchet distance for video feature networks (any other network: fid_<name>).
FRECHET_NAMES = {"i3d": "fvd", "moving_mnist": "fvd_moving_mnist"}
_LOGIT_METRICS = ("is", "conf")
CACHE_ENV = "ARGEN_CACHE_DIR"


def default_cache_dir() -> Path:
    """Where reference statistics are cached: $ARGEN_CACHE_DIR, else ~/.cache/argen/stats."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "argen" / "stats"


def feature_statistics(extractor: FeatureExtractor, batches: Iterable[Tensor], levels: int, *,
                       keep_features: bool = False, total: int | None = None, progress: bool = False,
                       desc: str = "features") -> GaussianStats:
    """Run integer batches through `extractor` into float64 mean and covariance."""
    acc = StatsAccumulator(keep_features)
    with tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for x in batches:
            acc.update(extractor(x, levels).features)
            bar.update(x.shape[0])
    return acc.compute()


def spread_indices(length: int, n: int | None) -> list[int]:
    """`n` indices spread evenly over [0, length) (all when None or n >= length).

    Not the first n: data sets stored class by class (the embedded MNIST is) would give one class.
    """
    if n is None or n >= length:
        return list(range(length))
    if n < 1:
        raise ValueError(f"expected a reference size >= 1, given {n}")
    return [int(i * length // n) for i in range(n)]


def dataset_batches(ds: Any, batch_size: int, n: int | None = None) -> Iterator[Tensor]:
    """`n` examples of a Dataset spread over it (all when None), as stacked integer batches."""
    idx = spread_indices(len(ds), n)
    for start in range(0, len(idx), batch_size):
        yield torch.stack([torch.as_tensor(ds[i][0]) for i in idx[start:start + batch_size]])


def sample_batches(model: Any, n: int, batch_size: int, *, seed: int = 0, temperature: float | None = None,
                   top_k: int | None = None, top_p: float | None = None, cfg_scale: float = 1.0) -> Iterator[Tensor]:
    """`n` samples of `model` in batches; class-conditional models get balanced labels, the classes
    0..C-1 cycling over the `n` samples (`argen.conditioning.sample_conditions`, as `argen sample`).
    `cfg_scale` != 1 guides models that declare a null condition (classifier-free guidance). Options
    left None keep the model's declared sampling defaults (HARP's top-k, LVT's temperature)."""
    if n < 1 or batch_size < 1:
        raise ValueError(f"expected n >= 1 and batch_size >= 1, given n={n}, batch_size={batch_size}")
    device = model.device
    gen = torch.Generator(device=device).manual_seed(seed)
    labels = sample_conditions(getattr(model, "cond_spec", None) or CondSpec(), n)
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        cond = labels[start:start + b].to(device) if labels is not None else None
        given = {k: v for k, v in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p)) if v is not None}
        if cfg_scale != 1.0:
            given["cfg_scale"] = cfg_scale
        yield model.sample(b, cond, generator=gen, **given).cpu()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_")[:60] or "data"


def resolve_dataset(data: str | Any, split: str) -> Any:
    """A Dataset object: `data` itself, or `argen.data.load_dataset(data, split)` for a name."""
    if isinstance(data, str):
        from argen.data import load_dataset

        return load_dataset(data, split)
    return data


def dataset_fingerprint(ds: Any, n: int | None) -> str:
    """Sizes plus a hash of three examples used: catches a regenerated data set."""
    idx = spread_indices(len(ds), n)
    if not idx:
        raise ValueError("expected a non-empty data set for reference statistics, given 0 examples")
    h = hashlib.sha256(f"{len(ds)}/{len(idx)}".encode())
    for i in sorted({idx[0], idx[len(idx) // 2], idx[-1]}):
        h.update(torch.as_tensor(ds[i][0]).to(torch.int64).numpy().tobytes())
    return h.hexdigest()[:16]


def reference_statistics(data: str | Any, extractor: FeatureExtractor, *, split: str = "test", n: int | None = None,
                         batch_size: int = 100, keep_features: bool = False, cache_dir: str | os.PathLike[str] | None = None,
                         use_cache: bool = True, progress: bool = False) -> GaussianStats:
    """Feature statistics of a data set split, read from the cache when computed before.

    `data` is a data set name for `argen.data.load_dataset` or a Dataset object (which needs
    attributes `name` and `levels` to be cached); `n` examples spread over the split are used
    (all when None). The cache key covers the data set (name, split, size, a content hash), the
    network weights and the preprocessing.
    """
    ds = resolve_dataset(data, split)
    levels = int(ds.levels)
    name = getattr(ds, "name", None)
    path = None
    if use_cache and name is not None:
        key = json.dumps([name, split, n, dataset_fingerprint(ds, n), extractor.identity])
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        path = Path(cache_dir or default_cache_dir()) / f"{_slug(name)}-{split}-{n or 'all'}-{extractor.name}-{digest}.safetensors"
        if path.is_file():
            try:
                stats = GaussianStats.load(path)
            except ValueError:
                stats = None  # unreadable cache: recompute and overwrite
            if stats is not None and (stats.features is not None or not keep_features):
                return stats
    total = len(ds) if n is None else min(n, len(ds))
    stats = feature_statistics(extractor, dataset_batches(ds, batch_size, n), levels, keep_features=keep_features,
                               total=total, progress=progress, desc=f"{name or 'data'} {split} features")
    if path is not None:
        stats.save(path, {"data": name, "split": split, "n": str(total), "features": extractor.label,
                          "identity": extractor.identity})
    return stats


def compare(real: GaussianStats, fake: GaussianStats, metrics: Sequence[str], prefix: str, *,
            kid_subset_size: int = 1000, pr_k: int = 3, device: torch.device | str | None = None) -> dict[str, float]:
    """Metric values named `<metric>_<prefix>` (the FID of video features is named by `FRECHET_NAMES`:
    `fvd` for I3D, `fvd_moving_mnist` for argen's Moving MNIST network).

    `real` and `fake` must keep their raw features for kid and pr.
    """
    unknown = sorted(set(metrics) - {"fid", "kid", "pr"})
    if unknown:
        raise ValueError(f"expected metrics among ('fid', 'kid', 'pr'), given {unknown}")
    out: dict[str, float] = {}
    if "fid" in metrics:
        out[FRECHET_NAMES.get(prefix, f"fid_{prefix}")] = real.frechet_distance(fake)
    if ("kid" in metrics or "pr" in metrics) and (real.features is None or fake.features is None):
        raise ValueError("KID and precision/recall need the raw features: compute statistics with keep_features=True")
    if "kid" in metrics:
        mean, std = kernel_inception_distance(real.features, fake.features, subset_size=kid_subset_size, device=device)
        out[f"kid_{prefix}"], out[f"kid_{prefix}_std"] = mean, std
    if "pr" in metrics:
        pr = precision_recall(real.features, fake.features, k=pr_k, device=device)
        out[f"precision_{prefix}"], out[f"recall_{prefix}"] = pr["precision"], pr["recall"]
    return out


def batches_quality(batches: Iterable[Tensor], levels: int, data: str | Any, *, metrics: Sequence[str] = ("fid",),
                    features: FeatureExtractor, is_network: FeatureExtractor | None = None, split: str = "test",
                    reference_n: int | None = None, batch_size: int = 100, total: int | None = None,
                    cache_dir: str | os.PathLike[str] | None = None, use_cache: bool = True,
                    progress: bool = False, requested: Tensor | None = None,
                    requested_classes: int | None = None) -> dict[str, Any]:
    """Compare generated integer batches with the data set `data` (split `split`).

    `requested`: the class label each sample was drawn for (class-conditional models); with "conf"
    and a classifier over the same number of classes (`requested_classes`), `class_accuracy_<net>` is the share of
    samples the classifier assigns to the requested class.

    Returns metric values (fid_inception, kid_mnist, precision_mnist, fvd, is_inception, ...) plus
    `features`, a sentence saying what the numbers are comparable with. Each batch passes through
    the networks once; only features (and logits for IS) are kept.
    """
    metrics = list(dict.fromkeys(metrics))
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown or not metrics:
        raise ValueError(f"expected one or more metrics among {METRICS}, given {unknown or metrics}")
    need_feats = any(m in metrics for m in ("kid", "pr"))
    logits_net = None
    if any(m in _LOGIT_METRICS for m in metrics):
        logits_net = is_network or features
        logits_net.require_logits()
    real = None
    if any(m not in _LOGIT_METRICS for m in metrics):
        data = resolve_dataset(data, split)
        batches = _check_shape(batches, tuple(getattr(data, "shape", ()) or ()))
        real = reference_statistics(data, features, split=split, n=reference_n, batch_size=batch_size,
                                    keep_features=need_feats, cache_dir=cache_dir, use_cache=use_cache, progress=progress)
    feats_acc = StatsAccumulator(need_feats)
    logits: list[Tensor] = []
    count = 0
    with tqdm(total=total, desc="samples", unit="img", disable=not progress, leave=False) as bar:
        for x in batches:
            if real is not None or logits_net is features:
                out = features(x, levels)
                if real is not None:
                    feats_acc.update(out.features)
                if logits_net is features:
                    logits.append(_need_logits(out.logits, features))
            if logits_net is not None and logits_net is not features:
                logits.append(_need_logits(logits_net(x, levels).logits, logits_net))
            count += x.shape[0]
            bar.update(x.shape[0])
    result: dict[str, Any] = {"n": count, "features": features.label}
    if real is not None:
        result["reference_n"] = real.n
        result.update(compare(real, feats_acc.compute(), [m for m in metrics if m not in _LOGIT_METRICS], features.name,
                              device=features.device))
    if logits_net is not None:
        all_logits = torch.cat(logits)
        if "is" in metrics:
            result[f"is_{logits_net.name}"], result[f"is_{logits_net.name}_std"] = inception_score(
                all_logits, splits=min(10, all_logits.shape[0]))
        if "conf" in metrics:
            conf = classifier_confidence(all_logits)
            result[f"confidence_{logits_net.name}"] = conf["mean"]
            result[f"confident_share_{logits_net.name}"] = conf["share_confident"]
            result[f"class_shares_{logits_net.name}"] = conf["class_shares"]
            if requested is not None and len(requested) >= len(all_logits) and all_logits.shape[1] == requested_classes:
                hit = all_logits.argmax(1) == requested[: len(all_logits)].cpu()
                result[f"class_accuracy_{logits_net.name}"] = float(hit.double().mean())
        result["is_network"] = logits_net.label
    return result


def sample_quality(model: Any, data: str | Any, *, n: int = 10000, batch_size: int = 100, seed: int = 0,
                   temperature: float = 1.0, cfg_scale: float = 1.0, **kwargs: Any) -> dict[str, Any]:
    """Sample `n` examples from `model` and compare them with `data` (see `batches_quality`)."""
    batches = sample_batches(model, n, batch_size, seed=seed, temperature=temperature, cfg_scale=cfg_scale)
    spec = getattr(model, "cond_spec", None) or CondSpec()
    requested = sample_conditions(spec, n)  # the labels sample_batches draws for
    return batches_quality(batches, int(model.levels), data, batch_size=batch_size, total=n, requested=requested,
                           requested_classes=spec.num_classes, **kwargs)


def _check_shape(batches: Iterable[Tensor], shape: tuple[int, ...]) -> Iterator[Tensor]:
    """Refuse to compare samples with reference data of another shape (e.g. 8x8 vs 28x28)."""
    for x in batches:
        if shape and tuple(x.shape[1:]) != shape:
            raise ValueError(f"expected samples of the reference data's shape {shape}, given {tuple(x.shape[1:])}")
        yield x


def _need_logits(logits: Tensor | None, net: FeatureExtractor) -> Tensor:
    if logits is None:
        net.has_logits = False
        net.require_logits()
    return logits.cpu()  # type: ignore[union-attr]

