"""Self-describing checkpoints: `config.json` (model name, config, step, metrics) + safetensors.

A run directory holds `config.json` and `model.safetensors`; a trainer with Polyak averaging also
writes `ema.safetensors`, which `load` prefers because those are the weights to evaluate and
sample with. Writes go to a temporary file first and are renamed into place, so a killed process
never leaves a half-written checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

FORMAT = "argen-checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def save_weights(module: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Save a module's state dict as safetensors, atomically."""
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def describe(model: Any, step: int | None = None, **extra: Any) -> dict[str, Any]:
    """The JSON description of a model: enough to rebuild it with `create_model`."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model.model_name,
        "config": model.config.to_dict(),
        "step": step,
        **extra,
    }


def save(model: Any, run_dir: str | os.PathLike[str], step: int | None = None, ema: nn.Module | None = None,
         **extra: Any) -> Path:
    """Write `model` (and optionally its EMA copy) to `run_dir`; returns the directory."""
    run_dir = Path(run_dir)
    meta = {"argen_model": model.model_name, "argen_config": json.dumps(model.config.to_dict())}
    save_weights(model, run_dir / WEIGHTS_FILE, meta)
    if ema is not None:
        save_weights(ema, run_dir / EMA_FILE, meta)
    atomic_write_json(run_dir / CONFIG_FILE, describe(model, step, **extra))
    return run_dir


def read_description(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse and check `config.json` of a run directory (clear errors when missing or corrupt)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run directory at {str(run_dir)!r}")
    cfg_path = run_dir / CONFIG_FILE
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} is not an argen checkpoint: {CONFIG_FILE} is missing")
    try:
        desc = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"corrupt checkpoint: {cfg_path} is not valid JSON ({e})") from None
    if not isinstance(desc, dict) or desc.get("format") != FORMAT:
        raise ValueError(f"corrupt checkpoint: {cfg_path} has format {desc.get('format') if isinstance(desc, dict) else None!r}, expected {FORMAT!r}")
    if desc.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"checkpoint format version {desc['format_version']} is newer than this argen reads ({FORMAT_VERSION})")
    return desc


def load(run_dir: str | os.PathLike[str], device: str | torch.device | None = None, prefer_ema: bool = True) -> Any:
    """Rebuild a model from a run directory written by `save` (EMA weights if present)."""
    from argen.registry import create_model

    run_dir = Path(run_dir)
    desc = read_description(run_dir)
    model = create_model(desc["model"], **desc["config"])
    weights = run_dir / EMA_FILE if prefer_ema and (run_dir / EMA_FILE).is_file() else run_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"checkpoint {str(run_dir)!r} has no weights file {weights.name}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"corrupt checkpoint: cannot read {weights} ({e})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"checkpoint weights {weights} do not fit model {desc['model']!r}: {e}") from None
    model.checkpoint_step = desc.get("step")
    return model.to(device) if device is not None else model


def weights_fingerprint(model: Any) -> str:
    """SHA-256 over the model's name, config and every weight: identifies a model exactly."""
    h = hashlib.sha256()
    h.update(json.dumps({"model": model.model_name, "config": model.config.to_dict()}, sort_keys=True).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
