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

Streaming: ANS is a stack (the last symbol encoded is the first decoded). The encoder pushes
each batch onto one ANS stream as soon as that batch's tables exist and then drops them, so its
memory is bounded by the batch size, not the image count. Within a batch the symbols are pushed
in reverse, so they pop in decode order; across batches the stack order stands, so the decoder
decodes the *last* batch first (batch boundaries follow from the image count and batch size).

A SHA-256 of the data shape, the image names and all pixels turns any residual mismatch (a
damaged stream, altered names, decoding on other hardware) into a clear error rather than wrong
pixels or wrong file names.

File layout (`.argz`, format version 2): magic b"ARGZ", format version (u8), header length
(u32 LE), the header as zlib-compressed compact JSON, then the ANS words (u32 LE) and nothing
else. Header keys: model name, weights fingerprint, data shape, levels, batch size, image count
`n`, per-image `names` (null: decoded as image_00000, ...), `sha256` (of shape, names and
pixels), coding `path`, and `words` (the stream's length in 32-bit words, so truncation and
trailing bytes are detected before decoding). Version 1 files (one stream with the first batch
decoded first, no name checks) are refused with a clear error.
"""
from __future__ import annotations

import hashlib
import json
import struct
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any, Iterable, Sequence

import constriction
import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from argen.checkpoint import weights_fingerprint
from argen.positions import at
from argen.sampling import NaiveStepper, autoregressive_fill, build_stepper

# constriction is a compiled module whose submodules are attributes, not importable paths
AnsCoder = constriction.stream.stack.AnsCoder
ConstrictionCategorical = constriction.stream.model.Categorical

MAGIC = b"ARGZ"
VERSION = 2
_PREFIX = struct.Struct("<4sBI")
PATHS = ("parallel", "stepper")
#: Archives hold 8-bit pixels (uint8 checksums and output); code grids of more levels are not coded yet.
MAX_CODED_LEVELS = 256

#: File formats that store 8-bit pixels exactly (each round-trips bit for bit through imageio or
#: numpy, grey and RGB): the only suffixes an image name in an archive may carry.
LOSSLESS_SUFFIXES = (".bmp", ".npy", ".pgm", ".png", ".ppm", ".tif", ".tiff")
#: What a name without a suffix is restored as.
DEFAULT_SUFFIX = ".png"


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


# ----- image names ---------------------------------------------------------------------------------
def restored_name(name: str) -> str:
    """The file name an archived image is restored under: `name`, or `name` + ".png" without a suffix."""
    return name if PurePosixPath(name).suffix else name + DEFAULT_SUFFIX


def check_names(names: Sequence[Any] | None, n: int) -> None:
    """Raise ValueError unless `names` is None or `n` distinct plain file names in lossless formats.

    A plain name has no directory part on any system (no '/', '\\', drive or '..'), so restoring
    cannot write outside the output directory; its suffix, if any, is one of LOSSLESS_SUFFIXES,
    so restoring never writes a lossy file; names must stay distinct once restored.
    """
    if names is None:
        return
    if not isinstance(names, (list, tuple)):
        raise ValueError(f"expected a list of image names, given {type(names).__name__}")
    if len(names) != n:
        raise ValueError(f"expected {n} image names (one per image), given {len(names)}")
    for name in names:
        if not isinstance(name, str):
            raise ValueError(f"expected image names as strings, given {name!r}")
        if (name in ("", ".", "..") or PurePosixPath(name).name != name or PureWindowsPath(name).name != name
                or any(ord(ch) < 32 for ch in name) or len(name.encode("utf-8", "surrogatepass")) > 255):
            raise ValueError(f"expected plain file names (no directories, '..' or control characters), given {name!r}")
        suffix = PurePosixPath(name).suffix
        if suffix and suffix.lower() not in LOSSLESS_SUFFIXES:
            raise ValueError(f"image name {name!r}: expected a lossless format ({', '.join(LOSSLESS_SUFFIXES)}), "
                             f"given {suffix!r}")
    dupes = sorted(r for r, k in Counter(restored_name(name) for name in names).items() if k > 1)
    if dupes:
        raise ValueError(f"expected distinct image names (images are restored by name), given duplicates {dupes}")


# ----- checksum ------------------------------------------------------------------------------------
def _checksum(shape: Sequence[int], names: Sequence[str] | None, pixel_chunks: Iterable[np.ndarray]) -> str:
    """SHA-256 (hex, 32 digits) of the data shape, the names and the pixels (uint8, image order)."""
    h = hashlib.sha256()
    h.update(json.dumps({"shape": list(shape), "names": None if names is None else list(names)},
                        separators=(",", ":"), sort_keys=True).encode())
    h.update(b"\0")
    for chunk in pixel_chunks:
        h.update(np.ascontiguousarray(chunk, dtype=np.uint8).tobytes())
    return h.hexdigest()[:32]


# ----- tables --------------------------------------------------------------------------------------
def _probs(table: Tensor) -> np.ndarray:
    """(N, L) log-probs -> float64 probabilities for constriction (it renormalizes/quantizes)."""
    return table.double().exp().cpu().numpy()


def _decode_stepper(model: Any, path: str) -> Any:
    return build_stepper(model, None) if path == "stepper" else NaiveStepper(model, None)


def _teacher_forced_probs(model: Any, x: Tensor, out: np.ndarray) -> None:
    """Fill `out` (steps, B, L) with the tables the decoder's loop computes when fed the true values."""
    step = 0

    def record(table: Tensor, pos: tuple[int, ...], c: int) -> Tensor:
        nonlocal step
        out[step] = _probs(table)
        step += 1
        return at(x, pos, channel=c)

    autoregressive_fill(model, torch.zeros_like(x), None, None, _decode_stepper(model, "stepper"), choose=record)
    if step != len(out):
        raise RuntimeError(f"the stepper took {step} steps, expected {len(out)}")


def _parallel_probs(model: Any, x: Tensor, cond: Tensor | None, out: np.ndarray) -> None:
    """Fill `out` (steps, B, L): per (position, channel) step the table the decoder will compute."""
    params = model(x, cond)
    dist = model.distribution
    step = 0
    for pos in model.generation_order():
        p = at(params, pos)
        pixel = at(x, pos)
        for c in range(model.channels):
            seen = pixel.clone()
            seen[:, c:] = 0  # what the decoder has decoded so far at this pixel
            out[step] = _probs(dist.conditionals(p, seen)[:, c])
            step += 1


def _check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"expected batch_size an integer >= 1, given {batch_size!r}")
    return int(batch_size)


def _batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    return [(start, min(batch_size, n - start)) for start in range(0, n, batch_size)]


@torch.no_grad()
def compress_arrays(model: Any, images: np.ndarray, names: list[str] | None = None, batch_size: int = 32,
                    progress: bool = False, path: str | None = None) -> CompressedFile:
    """Compress integer images (N, C, H, W) in [0, levels) with `model`.

    `path` is "parallel" (one forward pass per batch to encode; decoding reruns the network per
    step) or "stepper" (encode and decode through the model's cached sampler); by default
    "stepper" when the model has one. Each batch is entropy-coded as soon as its tables exist,
    so memory grows with `batch_size`, not with the number of images. `names` (plain file names,
    distinct, lossless suffixes or none) are stored and covered by the checksum.
    """
    kind = getattr(type(model), "kind", "model")
    if kind != "model":
        raise ValueError(f"lossless compression needs a likelihood of the pixels: expected an AR model over pixels, "
                         f"given a {kind} model ({model.model_name!r}; a two-stage model's likelihood is of its "
                         "tokenizer's codes, which do not determine the pixels)")
    path = path or ("stepper" if model.own_stepper else "parallel")
    if path not in PATHS:
        raise ValueError(f"expected path 'parallel' or 'stepper', given {path!r}")
    batch_size = _check_batch_size(batch_size)
    if model.levels > MAX_CODED_LEVELS:
        raise ValueError(f"compression takes models of at most {MAX_CODED_LEVELS} levels (8-bit files), "
                         f"given a {model.levels}-level model")
    images = np.asarray(images)
    shape = tuple(model.data_shape)
    if images.ndim != len(shape) + 1 or tuple(images.shape[1:]) != shape:
        raise ValueError(f"expected images of shape (N, {', '.join(map(str, shape))}), given {images.shape}")
    if images.size and (images.min() < 0 or images.max() >= model.levels):
        raise ValueError(f"expected pixel values in [0, {model.levels - 1}], given range [{images.min()}, {images.max()}]")
    names = list(names) if names is not None else None
    check_names(names, len(images))
    was_training = model.training
    model.eval()
    device = model.device
    order = model.generation_order()
    steps = len(order) * model.channels
    coder = AnsCoder()
    family = ConstrictionCategorical(perfect=False)
    try:
        for start, b in tqdm(_batches(len(images), batch_size), desc="encode", disable=not progress, leave=False):
            x = torch.as_tensor(images[start:start + b], dtype=torch.long, device=device)
            probs = np.empty((steps, b, model.levels), dtype=np.float64)
            if path == "parallel":
                _parallel_probs(model, x, None, probs)
            else:
                _teacher_forced_probs(model, x, probs)
            symbols = np.stack([at(x, pos, channel=c).cpu().numpy()
                                for pos in order for c in range(model.channels)])  # (steps, B)
            # push this batch now (reversed within, so it pops in decode order) and drop its tables
            coder.encode_reverse(symbols.reshape(-1).astype(np.int32), family, probs.reshape(-1, model.levels))
            del probs, symbols, x
    finally:
        model.train(was_training)
    words = coder.get_compressed()
    header = {
        "model": model.model_name,
        "fingerprint": weights_fingerprint(model)[:32],
        "shape": list(shape),
        "levels": model.levels,
        "batch_size": batch_size,
        "n": len(images),
        "names": names,  # None: decoded as image_00000, ...
        "sha256": _checksum(shape, names, (images[s:s + b] for s, b in _batches(len(images), batch_size))),
        "path": path,
        "words": int(len(words)),
    }
    return CompressedFile(header, words)


# ----- reading -------------------------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_header(header: Any) -> None:
    """Raise ValueError (any reason) unless `header` is a well-formed version-2 header."""
    if not isinstance(header, dict):
        raise ValueError(f"expected a JSON object, given {type(header).__name__}")
    missing = [k for k in ("model", "fingerprint", "shape", "levels", "batch_size", "n", "names", "sha256", "path",
                           "words") if k not in header]
    if missing:
        raise ValueError(f"missing {missing}")
    if not isinstance(header["model"], str) or not isinstance(header["fingerprint"], str):
        raise ValueError("model and fingerprint must be strings")
    shape = header["shape"]
    if not isinstance(shape, list) or not shape or not all(_is_int(s) and s >= 1 for s in shape):
        raise ValueError(f"bad shape {shape!r}")
    if not _is_int(header["levels"]) or not 2 <= header["levels"] <= 256:
        raise ValueError(f"bad levels {header['levels']!r}")
    for key, low in (("batch_size", 1), ("n", 0), ("words", 0)):
        if not _is_int(header[key]) or header[key] < low:
            raise ValueError(f"bad {key} {header[key]!r}")
    if header["path"] not in PATHS:
        raise ValueError(f"unknown coding path {header['path']!r}")
    if not isinstance(header["sha256"], str):
        raise ValueError("bad checksum")
    check_names(header["names"], header["n"])


def read_container(data: bytes) -> CompressedFile:
    """Parse and validate an `.argz` byte string (clear errors when truncated, padded or corrupt)."""
    if len(data) < _PREFIX.size:
        raise CorruptFileError(f"file too short for an argen header: {len(data)} bytes, expected at least {_PREFIX.size}")
    magic, version, head_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise CorruptFileError(f"not an argen compressed file: magic {magic!r}, expected {MAGIC!r}")
    if version < VERSION:
        raise CorruptFileError(f"archive format version {version} was written by an older argen; this argen reads "
                               f"version {VERSION} only: decompress it with the argen release that wrote it")
    if version > VERSION:
        raise CorruptFileError(f"archive format version {version} is newer than this argen reads (version "
                               f"{VERSION}): upgrade argen to decompress it")
    end = _PREFIX.size + head_len
    if len(data) < end:
        raise CorruptFileError(f"truncated header: file has {len(data)} bytes, header needs {end}")
    try:
        header = json.loads(zlib.decompress(data[_PREFIX.size:end]))
        _check_header(header)
    except (zlib.error, ValueError, UnicodeDecodeError, KeyError, TypeError) as e:  # JSONDecodeError is a ValueError
        raise CorruptFileError(f"corrupt header ({e})") from None
    body = len(data) - end
    expected = 4 * header["words"]
    if body < expected:
        raise CorruptFileError(f"truncated stream: {body} bytes of compressed data, the header says {expected}")
    if body > expected:
        raise CorruptFileError(f"{body - expected} bytes of trailing data after the end of the compressed stream")
    return CompressedFile(header, np.frombuffer(data, dtype="<u4", count=header["words"], offset=end).astype(np.uint32))


@torch.no_grad()
def decompress_arrays(model: Any, file: CompressedFile | bytes, progress: bool = False) -> tuple[np.ndarray, list[str]]:
    """Decode every image of `file` with `model` (the same model that encoded it).

    Returns the images (N, C, H, W) uint8 and their names as stored (image_00000, ... when the
    archive has none); `restored_name` gives the file name to write each under.
    """
    if isinstance(file, (bytes, bytearray, memoryview)):
        file = read_container(bytes(file))
    h = file.header
    if h["model"] != model.model_name or h["fingerprint"] != weights_fingerprint(model)[:32]:
        raise ModelMismatchError(
            f"file was compressed with model {h['model']!r} (weights {h['fingerprint'][:12]}...), "
            f"given {model.model_name!r} (weights {weights_fingerprint(model)[:12]}...): use the same checkpoint"
        )
    if list(h["shape"]) != list(model.data_shape) or h["levels"] != model.levels:
        raise ModelMismatchError(f"file holds {h['levels']}-level images of shape {tuple(h['shape'])}, the model codes "
                                 f"{model.levels}-level {tuple(model.data_shape)}: use the same checkpoint")
    n = int(h["n"])
    names = h["names"] if h["names"] is not None else [f"image_{i:05d}" for i in range(n)]
    try:
        coder = AnsCoder(np.ascontiguousarray(file.words, dtype=np.uint32))
    except Exception as e:  # constriction refuses e.g. a stream that ends in a zero word
        raise CorruptFileError(f"compressed stream is damaged ({e})") from None
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
        # the stream is a stack of batches: the last batch encoded is the first to decode
        for start, b in tqdm(_batches(n, h["batch_size"])[::-1], desc="decode", disable=not progress, leave=False):
            x = torch.zeros((b, *h["shape"]), dtype=torch.long, device=model.device)
            autoregressive_fill(model, x, None, None, _decode_stepper(model, h["path"]), choose=choose)
            out[start:start + b] = x.cpu().numpy().astype(np.uint8)
    finally:
        model.train(was_training)
    if not coder.is_empty():
        raise CorruptFileError("the compressed stream holds more data than its images: the file is damaged")
    if _checksum(h["shape"], h["names"], [out]) != h["sha256"]:
        raise CorruptFileError("decoded pixels or names do not match the stored checksum: the file is damaged "
                               "or the model computes differently here than where it was compressed")
    return out, list(names)
