"""Shared building blocks. A block used by two model families lives here, once."""
from argen.nn.masked import MaskedConv2d, channel_group_mask, masked_output_head
from argen.nn.util import ClassEmbedding, scale_input

__all__ = ["MaskedConv2d", "channel_group_mask", "masked_output_head", "ClassEmbedding", "scale_input"]
