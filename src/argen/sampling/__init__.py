"""Samplers, separate from models: the generic loop, the stepper-kind registry, logit processing.

`generate(model, x, known, cond, config)` is the one entry point models use (`ARModel.sample` /
`complete`); `SamplingConfig` holds the options of every sampler and command; `build_stepper`
gives a model's own stepper (from the kind it declares) for the generic loop `autoregressive_fill`.
"""
from argen.sampling import (
    frame_cache,  # noqa: F401  (registers the "frame_cache" stepper kind)
    group_sampler,  # noqa: F401  (registers the "group" stepper kind)
    scale_sampler,  # noqa: F401  (registers the "scales" stepper kind)
    subpixel_cache,  # noqa: F401  (registers the "subpixel_state" stepper kind)
)
from argen.sampling.config import SamplingConfig, split_options
from argen.sampling.generate import generate
from argen.sampling.logits import draw, process_logits, temperature_scale, top_k_filter, top_p_filter
from argen.sampling.naive import NaiveStepper, autoregressive_fill
from argen.sampling.steppers import build_stepper, register_stepper_kind, stepper_kinds

__all__ = [
    "SamplingConfig", "split_options", "generate", "build_stepper", "register_stepper_kind", "stepper_kinds",
    "draw", "process_logits", "temperature_scale", "top_k_filter", "top_p_filter",
    "NaiveStepper", "autoregressive_fill",
]
