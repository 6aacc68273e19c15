"""Samplers, separate from models: the generic loop, steppers, and logit processing."""
from argen.sampling.logits import draw, process_logits, temperature_scale, top_k_filter, top_p_filter
from argen.sampling.naive import NaiveStepper, autoregressive_fill

__all__ = [
    "draw", "process_logits", "temperature_scale", "top_k_filter", "top_p_filter",
    "NaiveStepper", "autoregressive_fill",
]
