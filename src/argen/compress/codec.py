"""Entropy coding with a trained model: x -> bits close to -log2 p(x), and back, exactly.

Encoding needs one forward pass per batch of images: `model.conditionals` gives every
sub-pixel's distribution given the true earlier sub-pixels at once. Decoding cannot see the
future, so it walks the model's generation order through the same loop that sampling uses
(`autoregressive_fill` with a `choose` that reads symbols from the stream instead of drawing).

Bit-exactness: both sides must quantize identical tables. Two coding paths guarantee it:

- "parallel": the encoder takes every table from one forward pass, handing the distribution the
  inputs the decoder will (the pixel's channels from `channel` on zeroed); the decoder reruns
  the full network per step (the naive stepper), so both sides run the same kernels on inputs
  that differ only where the causal network multiplies by exact zeros.
- "stepper": for models with a cached sampler, the encoder runs the decoder's own loop with the
  true values fed in (teacher forcing), so the tables come from the same code on the same
  inputs. Encoding then costs what decoding costs, and decoding is fast.

A SHA-256 of all pixels in the header turns any residual mismatch (e.g. decoding on other
hardware) into a clear error rather than wrong pixels.

File layout (`.argz`): magic b"ARGZ", format version (u8), header length (u32 LE), the header
as zlib-compressed compact JSON (model name, weights fingerprint, data shape, levels, batch size,
image count, per-image names when given, pixel hash, coding path), then the ANS words (u32 LE).
"""
from __future__ import annotations

import hashlib
import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import constriction
from torch import Tensor
from tqdm.auto import tqdm

from argen.checkpoint import weights_fingerprint
from argen.sampling.naive import NaiveStepper, autoregressive_fill

# constriction is a compiled module whose submodules are attributes, not importable paths
AnsCoder = constriction.stream.stack.AnsCoder
ConstrictionCategorical = constriction.stream.model.Categorical

MAGIC = b"ARGZ"
VERSION = 1
_PREFIX = struct.Struct("<4sBI")


class CorruptFileError(ValueError):
    """The compressed file is truncated, damaged or not an argen file."""


class ModelMismatchError(ValueError):
    """The file was written with a different model (weights or config) than the one given."""


@dataclass
class CompressedFile:
    header: dict[str, Any]
    words: np.ndarray = field(repr=False)

    def to_bytes(self) -> bytes:
        head = zlib.compress(json.dumps(self.header, separators=(",", ":"), sort_keys=True).encode(), 9)
        return _PREFIX.pack(MAGIC, VERSION, len(head)) + head + self.words.astype("<u4").tobytes()

    @property
    def num_bits(self) -> int:
        return 8 * len(self.to_bytes())


def _pixel_hash(x: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x, dtype=np.uint8).tobytes()).hexdigest()[:32]


def _probs(table: Tensor) -> np.ndarray:
    """(N, L) log-probs -> float64 probabilities for constriction (it renormalizes/quantizes)."""
    return table.double().exp().cpu().numpy()


def _decode_stepper(model: Any, path: str) -> Any:
    return model.stepper(None) if path == "stepper" else NaiveStepper(model, None)


def _teacher_forced_tables(model: Any, x: Tensor) -> list[Tensor]:
    """The tables the decoder's loop computes when it is fed the true values (stepper path)."""
    tables: list[Tensor] = []

    def record(table: Tensor, pos: tuple[int, ...], c: int) -> Tensor:
        tables.append(table.clone())
        return x[(slice(None), c, *pos)]

    autoregressive_fill(model, torch.zeros_like(x), None, None, _decode_stepper(model, "stepper"), choose=record)
    return tables


def _step_tables(model: Any, x: Tensor, cond: Tensor | None) -> list[Tensor]:
    """Per (position, channel) step, the (B, L) table the decoder will compute, in decode order."""
    params = model(x, cond)
    dist = model.distribution
    tables = []
    for pos in model.generation_order():
        p = params[(slice(None), slice(None), *pos)]
        pixel = x[(slice(None), slice(None), *pos)]
        for c in range(model.channels):
            seen = pixel.clone()
            seen[:, c:] = 0  # what the decoder has decoded so far at this pixel
            tables.append(dist.conditionals(p, seen)[:, c])
    return tables


@torch.no_grad()
def compress_arrays(model: Any, images: np.ndarray, names: list[str] | None = None, batch_size: int = 32,
                    progress: bool = False, path: str | None = None) -> CompressedFile:
    """Compress integer images (N, C, H, W) in [0, levels) with `model`.

    `path` is "parallel" (one forward pass per batch to encode; decoding reruns the network per
    step) or "stepper" (encode and decode through the model's cached sampler); by default
    "stepper" when the model has one.
    """
    path = path or ("stepper" if model.has_own_stepper() else "parallel")
    if path not in ("parallel", "stepper"):
        raise ValueError(f"expected path 'parallel' or 'stepper', given {path!r}")
    images = np.asarray(images)
    shape = tuple(model.data_shape)
    if images.ndim != len(shape) + 1 or tuple(images.shape[1:]) != shape:
        raise ValueError(f"expected images of shape (N, {', '.join(map(str, shape))}), given {images.shape}")
    if images.size and (images.min() < 0 or images.max() >= model.levels):
        raise ValueError(f"expected pixel values in [0, {model.levels - 1}], given range [{images.min()}, {images.max()}]")
    if names is not None and len(names) != len(images):
        raise ValueError(f"expected {len(images)} names, given {len(names)}")
    was_training = model.training
    model.eval()
    device = model.device
    chunks: list[tuple[np.ndarray, np.ndarray]] = []
    try:
        for start in tqdm(range(0, len(images), batch_size), desc="encode", disable=not progress, leave=False):
            x = torch.as_tensor(images[start:start + batch_size], dtype=torch.long, device=device)
            tables = _step_tables(model, x, None) if path == "parallel" else _teacher_forced_tables(model, x)
            symbols = np.stack([x[(slice(None), c, *pos)].cpu().numpy()
                                for pos in model.generation_order() for c in range(model.channels)])  # (steps, B)
            probs = np.stack([_probs(t) for t in tables])  # (steps, B, L)
            chunks.append((symbols.reshape(-1).astype(np.int32), probs.reshape(-1, model.levels)))
    finally:
        model.train(was_training)
    coder = AnsCoder()
    family = ConstrictionCategorical(perfect=False)
    for symbols, probs in reversed(chunks):  # a stack: encode last chunk first, decode first chunk first
        coder.encode_reverse(symbols, family, probs)
    header = {
        "model": model.model_name,
        "fingerprint": weights_fingerprint(model)[:32],
        "shape": list(shape),
        "levels": model.levels,
        "batch_size": batch_size,
        "n": len(images),
        "names": list(names) if names is not None else None,  # None: decoded as image_00000, ...
        "pixels_sha256": _pixel_hash(images),
        "path": path,
    }
    return CompressedFile(header, coder.get_compressed())


def read_container(data: bytes) -> CompressedFile:
    """Parse and validate an `.argz` byte string (clear errors when truncated or corrupt)."""
    if len(data) < _PREFIX.size:
        raise CorruptFileError(f"file too short for an argen header: {len(data)} bytes, expected at least {_PREFIX.size}")
    magic, version, head_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise CorruptFileError(f"not an argen compressed file: magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise CorruptFileError(f"unsupported format version {version}, expected {VERSION}")
    end = _PREFIX.size + head_len
    if len(data) < end:
        raise CorruptFileError(f"truncated header: file has {len(data)} bytes, header needs {end}")
    try:
        header = json.loads(zlib.decompress(data[_PREFIX.size:end]))
        for key in ("model", "fingerprint", "shape", "levels", "batch_size", "n", "names", "pixels_sha256", "path"):
            header[key]
        if header["path"] not in ("parallel", "stepper"):
            raise KeyError(f"unknown coding path {header['path']!r}")
    except (zlib.error, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise CorruptFileError(f"corrupt header ({e})") from None
    body = data[end:]
    if len(body) % 4:
        raise CorruptFileError(f"truncated stream: {len(body)} bytes is not a whole number of 32-bit words")
    return CompressedFile(header, np.frombuffer(body, dtype="<u4").astype(np.uint32))


@torch.no_grad()
def decompress_arrays(model: Any, file: CompressedFile | bytes, progress: bool = False) -> tuple[np.ndarray, list[str]]:
    """Decode every image of `file` with `model` (the same model that encoded it)."""
    if isinstance(file, (bytes, bytearray)):
        file = read_container(bytes(file))
    h = file.header
    if h["model"] != model.model_name or h["fingerprint"] != weights_fingerprint(model)[:32]:
        raise ModelMismatchError(
            f"file was compressed with model {h['model']!r} (weights {h['fingerprint'][:12]}...), "
            f"given {model.model_name!r} (weights {weights_fingerprint(model)[:12]}...): use the same checkpoint"
        )
    n = int(h["n"])
    names = h["names"] if h["names"] is not None else [f"image_{i:05d}" for i in range(n)]
    coder = AnsCoder(file.words)
    family = ConstrictionCategorical(perfect=False)
    out = np.zeros((n, *h["shape"]), dtype=np.uint8)
    was_training = model.training
    model.eval()

    def choose(table: Tensor, pos: tuple[int, ...], c: int) -> Tensor:
        try:
            values = coder.decode(family, _probs(table))
        except Exception as e:  # constriction raises on exhausted/invalid streams
            raise CorruptFileError(f"compressed stream is damaged or truncated ({e})") from None
        return torch.as_tensor(values.astype(np.int64), device=table.device)

    try:
        for start in tqdm(range(0, n, h["batch_size"]), desc="decode", disable=not progress, leave=False):
            b = min(h["batch_size"], n - start)
            x = torch.zeros((b, *h["shape"]), dtype=torch.long, device=model.device)
            autoregressive_fill(model, x, None, None, _decode_stepper(model, h.get("path", "parallel")), choose=choose)
            out[start:start + b] = x.cpu().numpy().astype(np.uint8)
    finally:
        model.train(was_training)
    if _pixel_hash(out) != h["pixels_sha256"]:
        raise CorruptFileError("decoded pixels do not match the stored checksum: the file is damaged "
                               "or the model computes differently here than where it was compressed")
    return out, list(names)
