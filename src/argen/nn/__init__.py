"""Shared building blocks. A block used by two model families lives here, once."""
from argen.nn.masked import MaskedConv2d, channel_group_mask
from argen.nn.util import ClassEmbedding, scale_input

__all__ = ["MaskedConv2d", "channel_group_mask", "ClassEmbedding", "scale_input"]
