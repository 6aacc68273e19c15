"""Training configuration as a dataclass, plus the plumbing that builds configs from data.

Configs come from JSON or TOML files and `--set section.key=value` overrides; they are parsed as
data (json / tomllib), never executed. Values are coerced to the dataclass field types (with
`argen.fields.coerce_fields`) so that `--set train.lr=3e-4` and `--set train.grad_clip=none` mean
what they say, and an unknown key is an error rather than a silently ignored typo.
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argen.fields import coerce, coerce_fields, spec, validate_fields

__all__ = ["TrainConfig", "coerce", "coerce_fields", "load_config_file", "parse_value", "parse_overrides",
           "merge_configs", "OPTIMIZERS", "SCHEDULES", "TIME_CLOCKS", "PRECISIONS", "CONFIG_SECTIONS"]

OPTIMIZERS = ("adamw", "adam")
SCHEDULES = ("constant", "cosine", "exponential")
TIME_CLOCKS = ("wall", "cpu")
PRECISIONS = ("fp32", "bf16", "fp16")
MAX_SEED = 2**32 - 1  # numpy's seed range; torch takes it too


@dataclass
class TrainConfig:
    """Hyperparameters of a training run.

    Every field declares its type and range with `spec`; `validate` checks them all with
    `argen.fields.validate_fields` (no NaN or infinite numbers). The defaults make
    `argen train gated_pixelcnn --data mnist --steps 1500` a few-minute CPU demo.
    """

    steps: int = spec(1500, ge=1)  # optimizer steps
    # examples per micro-batch per process; one optimizer step takes grad_accum micro-batches on
    # every process, so the effective batch is batch_size * grad_accum * world size
    batch_size: int = spec(32, ge=1)
    grad_accum: int = spec(1, ge=1)  # micro-batches per optimizer step (gradient accumulation)
    # autocast dtype of the training forward/loss: "fp32" (none), "bf16", or "fp16" (with a gradient
    # scaler). Weights, optimizer moments, EMA and evaluation (exact bits/dim) always stay fp32.
    precision: str = spec("fp32", choices=PRECISIONS)
    # torch.compile the training loss (the saved weights are the plain module's; a run resumes
    # with or without it)
    compile: bool = spec(False)
    optimizer: str = spec("adamw", choices=OPTIMIZERS)
    lr: float = spec(1e-3, gt=0)
    betas: tuple[float, float] = spec((0.9, 0.999), ge=0, lt=1)
    weight_decay: float = spec(0.0, ge=0)  # AdamW: applied to matrices/filters only (dim >= 2), never biases
    schedule: str = spec("constant", choices=SCHEDULES)
    warmup_steps: int = spec(50, ge=0)  # linear warmup from lr/warmup_steps to lr
    lr_decay: float = spec(0.999995, gt=0, le=1)  # exponential schedule: lr *= lr_decay every step after warmup
    min_lr_ratio: float = spec(0.0, ge=0, le=1)  # cosine schedule: final lr as a fraction of lr
    grad_clip: float | None = spec(1.0, gt=0)  # max global gradient norm; None disables clipping
    ema_decay: float | None = spec(0.999, gt=0, lt=1)  # Polyak averaging; None disables
    ema_warmup: bool = spec(True)  # use min(decay, (1+n)/(10+n)) so early averages forget the init
    seed: int = spec(0, ge=0, le=MAX_SEED)
    checkpoint_every: int = spec(500, ge=1)
    log_every: int = spec(10, ge=1)
    # sample grid PNG every N steps and at the end; None: never. Off by default because naive
    # sampling of a 28x28 image costs 784 forward passes (minutes on a CPU).
    sample_every: int | None = spec(None, ge=1)
    num_samples: int = spec(16, ge=1)
    eval_every: int | None = spec(None, ge=1)  # periodic test bits/dim; the end of training always evaluates
    eval_examples: int | None = spec(1000, ge=1)  # first N test examples used for eval; None: the whole split
    eval_batch_size: int = spec(100, ge=1)
    num_workers: int = spec(0, ge=0)
    tensorboard: bool = spec(True)
    progress: bool = spec(True)
    time_limit: float | None = spec(None, gt=0)  # seconds of training; stops early at a step boundary (benchmarks)
    # "wall", or "cpu": this process's CPU seconds (fair budgets on a busy machine)
    time_clock: str = spec("wall", choices=TIME_CLOCKS)
    find_unused_parameters: bool = spec(False)  # DDP: set for models that skip parameters in some steps

    def validate(self) -> None:
        """Raise ValueError naming the field, the expected and the given value.

        Every field is checked by `validate_fields` (type and declared range); the fields are
        independent, so there are no cross-field rules to add here.
        """
        validate_fields(self, "train")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build from plain data (a config file's "train" table), coercing and validating."""
        cfg = cls(**coerce_fields(cls, values, section="train"))
        cfg.validate()
        return cfg


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
