"""Training configuration as a dataclass, plus the plumbing that builds configs from data.

Configs come from JSON or TOML files and `--set section.key=value` overrides; they are parsed as
data (json / tomllib), never executed. Values are coerced to the dataclass field types so that
`--set train.lr=3e-4` and `--set train.grad_clip=none` mean what they say, and an unknown key is
an error rather than a silently ignored typo.
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OPTIMIZERS = ("adamw", "adam")
SCHEDULES = ("constant", "cosine", "exponential")


@dataclass
class TrainConfig:
    """Hyperparameters of a training run.

    The defaults make `argen train gated_pixelcnn --data mnist --steps 1500` a few-minute CPU demo.
    """

    steps: int = 1500
    batch_size: int = 32
    optimizer: str = "adamw"  # "adamw" or "adam"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0  # AdamW: applied to matrices/filters only (dim >= 2), never biases
    schedule: str = "constant"  # "constant", "cosine" or "exponential"
    warmup_steps: int = 50  # linear warmup from lr/warmup_steps to lr
    lr_decay: float = 0.999995  # exponential schedule: lr *= lr_decay every step after warmup
    min_lr_ratio: float = 0.0  # cosine schedule: final lr as a fraction of lr
    grad_clip: float | None = 1.0  # max global gradient norm; None disables clipping
    ema_decay: float | None = 0.999  # Polyak averaging; None disables
    ema_warmup: bool = True  # use min(decay, (1+n)/(10+n)) so early averages forget the init
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 10
    # sample grid PNG every N steps and at the end; None: never. Off by default because naive
    # sampling of a 28x28 image costs 784 forward passes (minutes on a CPU).
    sample_every: int | None = None
    num_samples: int = 16
    eval_every: int | None = None  # periodic test bits/dim; the end of training always evaluates
    eval_examples: int | None = 1000  # first N test examples used for eval; None: the whole split
    eval_batch_size: int = 100
    num_workers: int = 0
    tensorboard: bool = True
    progress: bool = True
    time_limit: float | None = None  # seconds of training; stops early at a step boundary (benchmarks)
    time_clock: str = "wall"  # "wall", or "cpu": this process's CPU seconds (fair budgets on a busy machine)
    find_unused_parameters: bool = False  # DDP: set for models that skip parameters in some steps

    def validate(self) -> None:
        """Raise ValueError naming expected and given values."""
        _check_types(self)
        for name in ("steps", "batch_size", "checkpoint_every", "log_every", "num_samples", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, given {getattr(self, name)}")
        for name in ("sample_every", "eval_every", "eval_examples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"train.{name} must be None or >= 1, given {value}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"train.optimizer must be one of {OPTIMIZERS}, given {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"train.schedule must be one of {SCHEDULES}, given {self.schedule!r}")
        if not self.lr > 0:
            raise ValueError(f"train.lr must be > 0, given {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"train.betas must be two numbers in [0, 1), given {self.betas}")
        if self.weight_decay < 0:
            raise ValueError(f"train.weight_decay must be >= 0, given {self.weight_decay}")
        if self.warmup_steps < 0 or self.num_workers < 0:
            raise ValueError(f"train.warmup_steps and train.num_workers must be >= 0, given {self.warmup_steps}, {self.num_workers}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"train.lr_decay must be in (0, 1], given {self.lr_decay}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"train.min_lr_ratio must be in [0, 1], given {self.min_lr_ratio}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"train.grad_clip must be None or > 0, given {self.grad_clip}")
        if self.time_clock not in ("wall", "cpu"):
            raise ValueError(f"train.time_clock must be 'wall' or 'cpu', given {self.time_clock!r}")
        if self.time_limit is not None and not self.time_limit > 0:
            raise ValueError(f"train.time_limit must be None or > 0 seconds, given {self.time_limit}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"train.ema_decay must be None or in (0, 1), given {self.ema_decay}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build from plain data (a config file's "train" table), coercing and validating."""
        cfg = cls(**coerce_fields(cls, values, section="train"))
        cfg.validate()
        return cfg


# ----- type coercion ---------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert plain data `value` to the annotated type `tp` (int, float, bool, str, tuples, Optional).

    Strings are accepted for numbers and booleans because `--set` values arrive as text.
    """
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0] if errors else f"{where}: expected {_type_name(tp)}, given {value!r}")
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, given {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], where) for v in value)
        if len(value) != len(args):
            raise ValueError(f"{where}: expected {len(args)} values, given {len(value)} ({value!r})")
        return tuple(coerce(v, a, where) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ValueError(f"{where}: expected true or false, given {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ValueError(f"{where}: expected an integer, given {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ValueError(f"{where}: expected an integer, given {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"{where}: expected a number, given {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ValueError(f"{where}: expected a number, given {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{where}: expected a string, given {value!r}")
    return value  # an annotation this helper does not know: pass through, the config validates it


def coerce_fields(cls: type, values: dict[str, Any], section: str) -> dict[str, Any]:
    """Coerce a dict of field values to dataclass `cls`'s field types; unknown keys are an error."""
    if not isinstance(values, dict):
        raise ValueError(f"expected a table of {section} settings, given {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {section} setting(s) {unknown}; expected some of {sorted(known)}")
    return {k: coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()}


def _check_types(cfg: Any) -> None:
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        setattr(cfg, f.name, coerce(getattr(cfg, f.name), hints[f.name], f"train.{f.name}"))


# ----- config files and --set -----------------------------------------------------------------
CONFIG_SECTIONS = ("model", "train")


def load_config_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read {"model": {...}, "train": {...}} from a .json or .toml file (data only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no config file at {str(path)!r}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(path.read_text())
        elif suffix == ".toml":
            data = tomllib.loads(path.read_text())
        else:
            raise ValueError(f"expected a config file ending in .json or .toml, given {str(path)!r}")
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot parse config file {str(path)!r}: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"expected a table with sections {CONFIG_SECTIONS} in {str(path)!r}, given {type(data).__name__}")
    unknown = sorted(set(data) - set(CONFIG_SECTIONS))
    if unknown:
        raise ValueError(f"unknown section(s) {unknown} in {str(path)!r}; expected some of {list(CONFIG_SECTIONS)}")
    out: dict[str, dict[str, Any]] = {s: {} for s in CONFIG_SECTIONS}
    for section, table in data.items():
        if not isinstance(table, dict):
            raise ValueError(f"expected section {section!r} of {str(path)!r} to be a table, given {type(table).__name__}")
        out[section].update(table)
    return out


def parse_value(text: str) -> Any:
    """A --set value: a JSON literal when it parses (numbers, true/false/null, lists), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {"None": None, "none": None, "True": True, "False": False}.get(text, text)


def parse_overrides(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """Parse ["model.hidden=64", "train.lr=1e-3"] into {"model": {"hidden": 64}, "train": {"lr": 0.001}}."""
    out: dict[str, dict[str, Any]] = {s: {} for s in CONFIG_SECTIONS}
    for item in items or []:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name or section not in CONFIG_SECTIONS:
            raise ValueError(f"expected --set SECTION.KEY=VALUE with SECTION in {list(CONFIG_SECTIONS)}, given {item!r}")
        out[section][name] = parse_value(value.strip())
    return out


def merge_configs(*configs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Later configs win, key by key within each section."""
    out: dict[str, dict[str, Any]] = {s: {} for s in CONFIG_SECTIONS}
    for cfg in configs:
        for section, table in cfg.items():
            out.setdefault(section, {}).update(table)
    return out
