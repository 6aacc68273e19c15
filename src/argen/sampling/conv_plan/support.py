"""What the planner supports besides convolutions: the per-position (pointwise) operations a
cached graph may contain, and the error for everything else.

Pointwise operations act on each position on its own (channels may mix: cat, chunk, channel
slicing), so they run unchanged on (B, n, C) rows holding n positions of a map, once their
channel-dim arguments are re-aimed at the last dim.
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn


class UnsupportedLayer(NotImplementedError):
    """A layer or operation that has no cached version (the model keeps the naive sampler)."""


POINTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ELU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Identity, nn.Dropout,
)
POINTWISE_FUNCTIONS: set[object] = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.pos,
    torch.add, torch.sub, torch.mul, torch.div, torch.neg, torch.tanh, torch.sigmoid, torch.exp,
    torch.log, torch.sqrt, torch.rsqrt, torch.abs, torch.relu, torch.clamp, torch.maximum, torch.minimum,
    torch.ones_like, torch.zeros_like, torch.full_like, torch.square,
    F.relu, F.elu, F.leaky_relu, F.gelu, F.silu, F.softplus, F.dropout, F.sigmoid, F.tanh,
}
POINTWISE_METHODS = {
    "float", "double", "half", "contiguous", "add", "sub", "mul", "div", "neg", "tanh", "sigmoid", "exp",
    "log", "sqrt", "rsqrt", "abs", "relu", "clamp", "square", "__add__", "__sub__", "__mul__", "__truediv__",
    "__radd__", "__rmul__", "__rsub__", "__neg__",
}
# functions / methods that split or join along a dimension: pointwise only along channels (dim 1)
# value: position of the `dim` argument in the traced call's args (a method's args start with self)
CHANNEL_FUNCTIONS = {torch.cat: 1, torch.concat: 1, torch.chunk: 2, torch.split: 2}
CHANNEL_METHODS = {"chunk": 2, "split": 2}

__all__ = [
    "UnsupportedLayer", "POINTWISE_MODULES", "POINTWISE_FUNCTIONS", "POINTWISE_METHODS", "CHANNEL_FUNCTIONS",
    "CHANNEL_METHODS",
]
