"""Self-describing checkpoints: `config.json` (model name, config, step, metrics) + safetensors.

A run directory holds `config.json` and `model.safetensors`; a trainer with Polyak averaging also
writes `ema.safetensors`, which `load` prefers because those are the weights to evaluate and
sample with.

Integrity: every file is written to a temporary file, flushed, and renamed into place, so a
killed process never leaves a half-written file under a real name (a SIGKILL can leave the
temporary `.NAME.XXXXXXXX.tmp`; `remove_stale_temporaries` clears those on the next save). The
weights files are written first and `config.json` last: it is the commit record and names the
SHA-256 and size of every file of the set (`"files"`). `load` refuses a weights file whose
checksum differs from that record, and weights that are not finite, with a `CorruptCheckpointError`
("corrupt checkpoint: ..."). Runs written before checksums existed (no `"files"` in config.json)
load without the checksum check; the finiteness check still applies.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from argen.fileio import atomic_write

FORMAT = "argen-checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
#: Key of config.json naming {file name: {"sha256": hex digest, "size": bytes}} of the set.
FILES_KEY = "files"


class CorruptCheckpointError(ValueError):
    """A checkpoint file exists but is damaged, malformed or does not belong to its description.

    Messages name the file and (except for a format version newer than this argen reads) start
    with "corrupt checkpoint:". A ValueError, so callers that catch bad input keep working; the
    CLI reports it with exit code 3.
    """


# ----- writing files ------------------------------------------------------------------------------
def _replace(src: str, dst: Path) -> None:
    """Rename a finished temporary file into place (the one commit point of every write)."""
    os.replace(src, dst)


def file_record(data: bytes) -> dict[str, Any]:
    """What config.json records of a file: its SHA-256 and size."""
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def atomic_write_bytes(path: Path, data: bytes) -> dict[str, Any]:
    """Write `data` to `path` so that readers see either the old file or the whole new one.

    Returns `file_record`. The rename goes through `_replace` (tests replace it to kill a save midway).
    """
    atomic_write(path, data, replace=lambda src, dst: _replace(src, dst))
    return file_record(data)


def atomic_write_json(path: Path, obj: Any) -> dict[str, Any]:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp$")


def remove_stale_temporaries(run_dir: str | os.PathLike[str], names: Iterable[str]) -> list[Path]:
    """Delete temporaries `.NAME.XXXXXXXX.tmp` that a killed write of one of `names` left behind.

    Call it only where no other process writes those files at the same time (the trainer's main
    process, at a save or a resume). Returns the removed paths.
    """
    run_dir, names = Path(run_dir), set(names)
    removed = []
    if not run_dir.is_dir():
        return removed
    for p in run_dir.iterdir():
        m = _TEMPORARY.match(p.name)
        if m and m.group("name") in names and p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _state_of(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def nonfinite_tensor(state: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding NaN or infinity, or None."""
    for name, t in state.items():
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            return name
    return None


def check_finite(module: nn.Module, what: str = "model") -> None:
    """Raise FloatingPointError when `module` has a NaN or infinite weight (never saved)."""
    bad = nonfinite_tensor(module.state_dict())
    if bad is not None:
        raise FloatingPointError(f"refusing to save {what}: weight {bad!r} is not finite (NaN or infinity)")


def save_weights(module: nn.Module, path: Path, metadata: dict[str, str] | None = None,
                 check: bool = True) -> dict[str, Any]:
    """Save a module's state dict as safetensors, atomically; returns the file's record.

    Non-finite weights are refused (FloatingPointError) unless `check=False` (already checked).
    """
    if check:
        check_finite(module, str(path))
    return atomic_write_bytes(Path(path), save_safetensors(_state_of(module), metadata=metadata))


#: What a run directory can hold, from the saved module's declared `kind`: an AR model (built by
#: `argen.create_model`) or a tokenizer (`argen.tokenizers.create_tokenizer`).
KINDS = ("model", "tokenizer")


def kind_of(module: Any) -> str:
    """The declared `kind` of a saved module ("model" unless it says otherwise)."""
    kind = getattr(type(module), "kind", "model")
    if kind not in KINDS:
        raise ValueError(f"expected a module of kind {' or '.join(KINDS)}, given {kind!r}")
    return kind


def describe(model: Any, step: int | None = None, **extra: Any) -> dict[str, Any]:
    """The JSON description of a model: enough to rebuild it with `create_model` (or, for a
    tokenizer, `argen.tokenizers.create_tokenizer`)."""
    desc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model.model_name,
        "config": model.config.to_dict(),
        "step": step,
        **extra,
    }
    if kind_of(model) != "model":  # descriptions of AR models stay as they were before tokenizers
        desc["kind"] = kind_of(model)
    return desc


def save(model: Any, run_dir: str | os.PathLike[str], step: int | None = None, ema: nn.Module | None = None,
         files: dict[str, dict[str, Any]] | None = None, **extra: Any) -> Path:
    """Write `model` (and optionally its EMA copy) to `run_dir`; returns the directory.

    Order: the weights files, then `config.json`, which records their checksums (plus those of
    `files`, records of other files of the set the caller wrote first, e.g. the trainer's state).
    A stale `ema.safetensors` that the new description does not list is removed after the commit.
    """
    run_dir = Path(run_dir)
    check_finite(model, "model")
    if ema is not None:
        check_finite(ema, "EMA model")
    remove_stale_temporaries(run_dir, (CONFIG_FILE, WEIGHTS_FILE, EMA_FILE))
    meta = {"argen_model": model.model_name, "argen_config": json.dumps(model.config.to_dict())}
    records = dict(files or {})
    records[WEIGHTS_FILE] = save_weights(model, run_dir / WEIGHTS_FILE, meta, check=False)
    if ema is not None:
        records[EMA_FILE] = save_weights(ema, run_dir / EMA_FILE, meta, check=False)
    atomic_write_json(run_dir / CONFIG_FILE, describe(model, step, **extra, **{FILES_KEY: records}))
    if ema is None:
        (run_dir / EMA_FILE).unlink(missing_ok=True)
    return run_dir


# ----- reading ------------------------------------------------------------------------------------
def _corrupt(path: Path, what: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"corrupt checkpoint: {path} {what}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def check_description(desc: Any, path: Path) -> dict[str, Any]:
    """Raise CorruptCheckpointError naming `path` unless `desc` is a well-formed description."""
    if not isinstance(desc, dict):
        raise _corrupt(path, f"holds a JSON {type(desc).__name__}, expected an object")
    if desc.get("format") != FORMAT:
        raise _corrupt(path, f"has format {desc.get('format')!r}, expected {FORMAT!r}")
    version = desc.get("format_version")
    if not _is_int(version) or version < 1:
        raise _corrupt(path, f"has format_version {version!r}, expected an integer >= 1")
    if version > FORMAT_VERSION:
        raise CorruptCheckpointError(f"checkpoint format version {version} of {path} is newer than this argen "
                                     f"reads ({FORMAT_VERSION}); upgrade argen")
    for key, ok, expected in (
        ("model", lambda v: isinstance(v, str) and v, "a model name"),
        ("config", lambda v: isinstance(v, dict), "an object of model settings"),
    ):
        if key not in desc:
            raise _corrupt(path, f"lacks the key {key!r} ({expected})")
        if not ok(desc[key]):
            raise _corrupt(path, f"has {key} = {desc[key]!r}, expected {expected}")
    optional = (
        ("step", lambda v: v is None or (_is_int(v) and v >= 0), "null or an integer >= 0"),
        ("train", lambda v: isinstance(v, dict), "an object of train settings"),
        ("metrics", lambda v: isinstance(v, dict), "an object"),
        ("data", lambda v: v is None or isinstance(v, str), "null or a dataset name"),
        ("data_root", lambda v: v is None or isinstance(v, str), "null or a folder"),
        (FILES_KEY, lambda v: isinstance(v, dict), "an object of file checksums"),
        ("kind", lambda v: v in KINDS, f"one of {list(KINDS)}"),
        ("tokenizer", lambda v: isinstance(v, dict) and isinstance(v.get("dir"), str) and v["dir"],
         'an object {"dir": the tokenizer\'s folder in the run, ...}'),
    )
    for key, ok, expected in optional:
        if key in desc and not ok(desc[key]):
            raise _corrupt(path, f"has {key} = {desc[key]!r}, expected {expected}")
    for name, rec in desc.get(FILES_KEY, {}).items():
        if not (isinstance(rec, dict) and isinstance(rec.get("sha256"), str) and _HEX64.match(rec["sha256"])
                and _is_int(rec.get("size")) and rec["size"] >= 0):
            raise _corrupt(path, f"has a malformed checksum record for {name!r}: {rec!r}, "
                                 'expected {"sha256": 64 hex digits, "size": bytes}')
    return desc


def read_description(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse and check `config.json` of a run directory (clear errors when missing or corrupt)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run directory at {str(run_dir)!r}")
    cfg_path = run_dir / CONFIG_FILE
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} is not an argen checkpoint: {CONFIG_FILE} is missing")
    try:
        desc = json.loads(cfg_path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _corrupt(cfg_path, f"is not valid JSON ({e})") from None
    return check_description(desc, cfg_path)


def has_checksums(desc: dict[str, Any]) -> bool:
    """True for descriptions that record file checksums (False: a run from before they existed)."""
    return FILES_KEY in desc


def read_verified(run_dir: str | os.PathLike[str], name: str, desc: dict[str, Any]) -> bytes:
    """The bytes of file `name` of a run, checked against the checksum its description records.

    Descriptions without checksums (older runs) are read unchecked. A file the description does
    not list, or one whose size or SHA-256 differs, raises CorruptCheckpointError.
    """
    path = Path(run_dir) / name
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(run_dir)!r} has no file {name}")
    data = path.read_bytes()
    if not has_checksums(desc):
        return data
    rec = desc[FILES_KEY].get(name)
    cfg = Path(run_dir) / CONFIG_FILE
    if rec is None:
        raise _corrupt(path, f"is not part of the checkpoint: {cfg} records no checksum for it")
    found = file_record(data)
    if found != {"sha256": rec["sha256"], "size": rec["size"]}:
        hint = " (if a save was interrupted, `argen train --resume` completes it)" \
            if (Path(run_dir) / "train_state.pt").is_file() else ""
        raise _corrupt(path, f"does not match the checksum in {cfg}: expected SHA-256 {rec['sha256'][:16]}... "
                             f"({rec['size']} bytes), found {found['sha256'][:16]}... ({found['size']} bytes){hint}")
    return data


def weights_file(run_dir: str | os.PathLike[str], desc: dict[str, Any], prefer_ema: bool = True) -> str:
    """Which weights file `load` reads: the EMA one when preferred and part of the checkpoint."""
    if has_checksums(desc):
        return EMA_FILE if prefer_ema and EMA_FILE in desc[FILES_KEY] else WEIGHTS_FILE
    return EMA_FILE if prefer_ema and (Path(run_dir) / EMA_FILE).is_file() else WEIGHTS_FILE


def load(run_dir: str | os.PathLike[str], device: str | torch.device | None = None, prefer_ema: bool = True,
         compose: bool = True) -> Any:
    """Rebuild a model (or a tokenizer) from a run directory written by `save` (EMA weights if present).

    A prior trained over a tokenizer's codes (its description names a `"tokenizer"` folder of the
    run) loads as the two-stage `argen.models.latent.LatentModel` over images, unless
    `compose=False` asks for the prior alone.

    Raises FileNotFoundError for a missing run or file and CorruptCheckpointError (a ValueError,
    message "corrupt checkpoint: ...") for a malformed description, a weights file that does not
    match its recorded checksum, unreadable weights, or weights that are NaN or infinite.
    """
    run_dir = Path(run_dir)
    desc = read_description(run_dir)
    cfg_path = run_dir / CONFIG_FILE
    if desc.get("kind", "model") == "tokenizer":
        from argen.tokenizers import create_tokenizer as create
        from argen.tokenizers import get_tokenizer_entry as get_entry
    else:
        from argen.registry import create_model as create
        from argen.registry import get_entry
    what = "tokenizer" if desc.get("kind") == "tokenizer" else "model"
    try:
        get_entry(desc["model"])
    except ValueError as e:
        raise _corrupt(cfg_path, f"names an unknown {what}: {e}") from None
    try:
        model = create(desc["model"], **desc["config"])
    except (ValueError, TypeError) as e:
        raise _corrupt(cfg_path, f"describes a {what} that cannot be built: {' '.join(str(e).split())}") from None
    name = weights_file(run_dir, desc, prefer_ema)
    weights = run_dir / name
    data = read_verified(run_dir, name, desc)
    try:
        state = load_safetensors(data)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise _corrupt(weights, f"cannot be read ({e})") from None
    bad = nonfinite_tensor(state)
    if bad is not None:
        raise _corrupt(weights, f"holds non-finite values (NaN or infinity) in {bad!r}")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise _corrupt(weights, f"does not fit model {desc['model']!r}: {' '.join(str(e).split())}") from None
    model.checkpoint_step = desc.get("step")
    model = model.to(device) if device is not None else model
    if compose and "tokenizer" in desc:
        from argen.models.latent import LatentModel

        tokenizer = load(run_dir / desc["tokenizer"]["dir"], device=device, prefer_ema=prefer_ema)
        if kind_of(tokenizer) != "tokenizer":
            raise _corrupt(cfg_path, f"names {desc['tokenizer']['dir']!r} as its tokenizer, which holds a model")
        return LatentModel(tokenizer, model)
    return model


def weights_fingerprint(model: Any) -> str:
    """SHA-256 over the model's name, config and every weight: identifies a model exactly."""
    h = hashlib.sha256()
    h.update(json.dumps({"model": model.model_name, "config": model.config.to_dict()}, sort_keys=True).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
