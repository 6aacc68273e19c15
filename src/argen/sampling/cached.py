"""Exact cached sampling for convolutional AR models: the planner lives in
`argen.sampling.conv_plan`; this module keeps the names models and tests import."""
from argen.sampling.conv_plan import CachedStepper, CachePlan, CacheState, UnsupportedLayer, build_plan, cache_plan

__all__ = ["CachedStepper", "CachePlan", "CacheState", "UnsupportedLayer", "build_plan", "cache_plan"]
