"""`SamplingConfig`: the options every sampler and command takes, in one validated record.

`model.sample(n, cond, config=SamplingConfig(temperature=0.9))` and the keyword form
`model.sample(n, temperature=0.9)` are the same call: `split_options` builds the config from the
keywords (over a given config), and whatever is left are the options a model family declares of
its own (`Capabilities.sample_options`, e.g. ARDM's `steps` and `order`).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from argen.fields import spec, validate_fields
from argen.sampling.logits import check_sampling_options


@dataclass(frozen=True)
class SamplingConfig:
    """How to draw: logit processing, randomness, guidance and which sampler.

    temperature: divide logits by it (> 0); top_k / top_p: keep the k most likely values / the most
    likely mass p (None: all); generator: the draws' random source (None: torch's global one);
    progress: show a progress bar; naive: use the reference sampler (a full forward pass per step;
    ARDM: one network call per sub-pixel in one order) instead of the model's own, drawing the same
    samples from the same generator; cfg_scale: classifier-free guidance scale (1: none), only for
    models that declare a null condition (`Capabilities.guidance`).

    Every config is checked when built (ValueError naming the option, expected and given).
    """

    temperature: float = spec(1.0, gt=0.0)
    top_k: int | None = spec(None, ge=1)
    top_p: float | None = spec(None, gt=0.0, le=1.0)
    generator: torch.Generator | None = None
    progress: bool = spec(False)
    naive: bool = spec(False)
    cfg_scale: float = spec(1.0, ge=0.0)

    def __post_init__(self) -> None:
        # the messages every sampler has always given, first; then the declared fields
        check_sampling_options(self.temperature, self.top_k, self.top_p, self.generator)
        for name in ("progress", "naive"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False, given {value!r}")
        scale = self.cfg_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
            raise ValueError(f"cfg_scale must be a finite number >= 0, given {scale!r}")
        for name in ("temperature", "top_p", "cfg_scale"):  # JSON / CLI ints are floats here
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, name, float(value))
        validate_fields(self, "sampling")

    def replace(self, **changes: Any) -> SamplingConfig:
        return dataclasses.replace(self, **changes)


FIELDS = tuple(f.name for f in dataclasses.fields(SamplingConfig))


def config_over_defaults(defaults: dict[str, Any] | None, **given: Any) -> SamplingConfig:
    """A SamplingConfig of the model's declared `sampling_defaults` with the options a user gave on
    top; an option given as None was not given (a command line's unset flag), so the model's default
    (HARP's top-k, LVT's temperature) or the library's stays."""
    base = dict(defaults or {})
    base.update({k: v for k, v in given.items() if v is not None})
    stray = sorted(set(base) - set(FIELDS))
    if stray:
        raise ValueError(f"sampling options must be SamplingConfig fields {list(FIELDS)}, given {stray}")
    return SamplingConfig(**base)


def split_options(config: SamplingConfig | None, options: dict[str, Any],
                  defaults: dict[str, Any] | None = None) -> tuple[SamplingConfig, dict[str, Any]]:
    """(config, the rest): the `SamplingConfig` fields among keyword `options` applied over `config`
    (default: SamplingConfig(**defaults), the model's declared `sampling_defaults`), and the options
    that are not sampling-config fields. An explicit config is taken as is: it says everything."""
    if config is not None and not isinstance(config, SamplingConfig):
        raise ValueError(f"config must be None or a SamplingConfig, given {type(config).__name__}")
    stray = sorted(set(defaults or {}) - set(FIELDS))
    if stray:
        raise ValueError(f"sampling defaults must be SamplingConfig fields {list(FIELDS)}, given {stray}")
    mine = {k: v for k, v in options.items() if k in FIELDS}
    rest = {k: v for k, v in options.items() if k not in FIELDS}
    base = SamplingConfig(**(defaults or {})) if config is None else config
    return (base.replace(**mine) if mine else base), rest


__all__ = ["SamplingConfig", "split_options", "FIELDS"]
