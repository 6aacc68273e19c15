"""Cached versions of convolution layers (index tables + weight matrices) and the pointwise
operations a cached graph may contain: now `argen.sampling.conv_plan.tables` and
`argen.sampling.conv_plan.support`; this module keeps the old names."""
from argen.sampling.conv_plan.support import (
    CHANNEL_FUNCTIONS,
    CHANNEL_METHODS,
    POINTWISE_FUNCTIONS,
    POINTWISE_METHODS,
    POINTWISE_MODULES,
    UnsupportedLayer,
)
from argen.sampling.conv_plan.tables import CachedConv, cached_conv, conv_table, conv_transpose_table, shift_table

__all__ = [
    "UnsupportedLayer", "CachedConv", "cached_conv", "conv_table", "conv_transpose_table", "shift_table",
    "POINTWISE_MODULES", "POINTWISE_FUNCTIONS", "POINTWISE_METHODS", "CHANNEL_FUNCTIONS", "CHANNEL_METHODS",
]
