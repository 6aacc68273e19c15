"""Code grids of a dataset under a trained tokenizer, computed once and cached beside it.

`argen tokenize RUN --data mnist` encodes every split it is asked for and writes
`RUN/codes/<data>-<split>-<key>.npz` (codes uint16 (N, 1, h, w), or (N, t, s, h, w) code volumes of a
video tokenizer: `tokenizer.prior_shape`; labels, the tokenizer's weights
fingerprint, and what was encoded: dataset name, split, data root, seed, and for a dataset named by
a relative path the folder it was relative to; `<key>` hashes those); training a prior with
`--tokenizer RUN` reads them (and writes them first when they are missing). A cache made by other
weights, or of other data, is never used: it is recomputed. Items come out as an ordinary
`ArgenDataset` of (codes (1, h, w) long, label), so a prior is trained exactly like a pixel model.
Views that draw at random per epoch (dynamic binarization) are encoded as drawn for epoch 0.

Conditions travel with the codes: class labels and caption tokens unchanged (y of the code dataset,
with the image dataset's `cond_spec` and vocabulary); a condition image (an edge map) is encoded by
the tokenizer when it declares one (`tokenizer.condition_spec`: IQ-VAE), so the prior is conditioned
on the condition's tokens (`CondSpec.tokens(condition_vocab, condition_len)`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from argen.conditioning import CondSpec
from argen.data.dataset import ArgenDataset, ArraySource
from argen.fileio import atomic_write

CODES_DIR = "codes"
CODES_FORMAT = "argen-codes"


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name).strip("_") or "data"


def source_record(data: str, split: str, root: str | None = None, seed: int = 0) -> dict[str, Any]:
    """What a cache file holds the codes of: two records are equal only for the same items."""
    _, sep, path = data.partition(":")
    relative = bool(sep) and not Path(path.split("-")[0]).expanduser().is_absolute()
    return {"data": data, "split": split, "seed": int(seed),
            "root": str(Path(root).expanduser().resolve()) if root else None,
            "cwd": os.getcwd() if relative else None}


def codes_path(tokenizer_dir: str | Path, data: str, split: str, root: str | None = None, seed: int = 0) -> Path:
    """Where the code grids of `data`'s `split` under the tokenizer in `tokenizer_dir` are cached."""
    key = hashlib.sha256(json.dumps(source_record(data, split, root, seed), sort_keys=True).encode()).hexdigest()[:12]
    return Path(tokenizer_dir) / CODES_DIR / f"{_slug(data)}-{split}-{key}.npz"


@torch.no_grad()
def encode_dataset(tokenizer: Any, ds: ArgenDataset, batch_size: int = 256, progress: bool = True) -> np.ndarray:
    """(N, *tokenizer.prior_shape) uint16 codes of every item of `ds`: (N, 1, h, w) for images, (N, t, s, h, w)
    for clips (eval mode, on the tokenizer's device)."""
    if tuple(ds.shape) != tuple(tokenizer.data_shape) or ds.levels != tokenizer.levels:
        raise ValueError(f"dataset {ds.name!r} has shape {tuple(ds.shape)} with {ds.levels} levels, expected the "
                         f"tokenizer's {tuple(tokenizer.data_shape)} with {tokenizer.levels} levels")
    if tokenizer.codebook_size > 65536:
        raise ValueError(f"expected a codebook of at most 65,536 codes (uint16), given {tokenizer.codebook_size}")
    tokenizer.eval()
    device = next(tokenizer.parameters()).device
    shape = tuple(tokenizer.prior_shape)
    out = np.empty((len(ds), *shape), dtype=np.uint16)
    bar = tqdm(total=len(ds), desc=f"tokenize {ds.name} {ds.split}", unit="img", disable=not progress,
               dynamic_ncols=True)
    for start in range(0, len(ds), batch_size):
        stop = min(len(ds), start + batch_size)
        x = torch.stack([ds[i][0] for i in range(start, stop)]).to(device)
        out[start:stop] = tokenizer.encode(x).reshape(stop - start, *shape).cpu().numpy().astype(np.uint16)
        bar.update(stop - start)
    bar.close()
    return out


@torch.no_grad()
def encode_conditions(tokenizer: Any, conditions: np.ndarray, spec: CondSpec, batch_size: int = 256,
                      progress: bool = True) -> np.ndarray:
    """(N, condition_len) int64 tokens of condition images (N, C, H, W) under the tokenizer's condition encoder."""
    want = tokenizer.condition_spec
    if spec != want:
        raise ValueError(f"the dataset's conditions are {spec.expected('N')}; the tokenizer encodes {want.expected('N')}")
    device = next(tokenizer.parameters()).device
    out = np.empty((len(conditions), tokenizer.condition_len), dtype=np.int64)
    for start in tqdm(range(0, len(conditions), batch_size), desc="tokenize conditions", disable=not progress,
                      dynamic_ncols=True):
        c = torch.from_numpy(np.asarray(conditions[start:start + batch_size], dtype=np.int64)).to(device)
        out[start:start + len(c)] = tokenizer.encode_condition(c).cpu().numpy()
    return out


def _spec_record(spec: CondSpec) -> dict[str, Any]:
    return dataclasses.asdict(spec)


def write_codes(path: Path, codes: np.ndarray, labels: np.ndarray, *, fingerprint: str, source: dict[str, Any],
                codebook_size: int, num_classes: int | None, cond_spec: CondSpec | None = None,
                vocabulary: dict[str, Any] | None = None) -> Path:
    """Write one cache file atomically (a kill leaves the old file or none)."""
    meta = {"format": CODES_FORMAT, "fingerprint": fingerprint, "source": source,
            "codebook_size": codebook_size, "num_classes": num_classes,
            "cond_spec": None if cond_spec is None else _spec_record(cond_spec), "vocabulary": vocabulary}
    buffer = io.BytesIO()
    np.savez(buffer, codes=codes, labels=labels, meta=np.array(json.dumps(meta)))
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, buffer.getvalue())


def read_codes(path: Path, fingerprint: str, source: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
    """The cached (codes, labels, meta), or None when absent, unreadable, made by other weights or
    (given `source`, a `source_record`) of other items."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            codes, labels = f["codes"], f["labels"]
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != CODES_FORMAT or meta.get("fingerprint") != fingerprint:
        return None
    if source is not None and meta.get("source") != source:
        return None
    return codes, labels, meta


def code_dataset(tokenizer: Any, tokenizer_dir: str | Path, data: str, split: str, *, root: str | None = None,
                 seed: int = 0, batch_size: int = 256, progress: bool = True,
                 refresh: bool = False) -> tuple[ArgenDataset, bool]:
    """The code grids of `data`'s `split` as a dataset, and whether they were computed now.

    Read from the cache when it holds this tokenizer's codes, else encoded (progress bar) and cached
    (`refresh=True` always encodes anew).
    """
    from argen.checkpoint import weights_fingerprint
    from argen.data import load_dataset

    fingerprint = weights_fingerprint(tokenizer)
    source = source_record(data, split, root, seed)
    path = codes_path(tokenizer_dir, data, split, root, seed)
    cached = None if refresh else read_codes(path, fingerprint, source)
    images = None
    if cached is None:
        images = load_dataset(data, split, root=root, seed=seed)
        codes = encode_dataset(tokenizer, images, batch_size=batch_size, progress=progress)
        labels = np.array([images.raw(i)[1] for i in range(len(images))], dtype=np.int64)
        num_classes = images.num_classes
        spec: CondSpec | None = images.cond_spec if images.cond_spec.kind not in ("class", "none") else None
        vocab = images.vocabulary.to_dict() if images.vocabulary is not None else None
        if spec is not None and spec.kind == "image" and tokenizer.condition_spec is not None:
            labels = encode_conditions(tokenizer, labels, spec, batch_size, progress)
            spec = CondSpec.tokens(tokenizer.condition_vocab, tokenizer.condition_len)
        write_codes(path, codes, labels, fingerprint=fingerprint, source=source,
                    codebook_size=tokenizer.codebook_size, num_classes=num_classes, cond_spec=spec, vocabulary=vocab)
    else:
        codes, labels, meta = cached
        num_classes = meta.get("num_classes")
        spec = CondSpec(**meta["cond_spec"]) if meta.get("cond_spec") else None
        vocab = meta.get("vocabulary")
    if spec is not None:
        from argen.text import Vocabulary

        source = ArraySource(codes, labels, levels=tokenizer.codebook_size, cond_spec=spec,
                             vocabulary=None if vocab is None else Vocabulary.from_dict(vocab))
    else:
        has_labels = bool(len(labels)) and int(labels.min()) >= 0
        source = ArraySource(codes, labels if has_labels else None, levels=tokenizer.codebook_size,
                             num_classes=num_classes if has_labels else None)
    return ArgenDataset(f"codes:{data}", source, seed=seed, split=split), cached is None
