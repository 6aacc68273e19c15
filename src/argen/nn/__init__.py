"""Shared building blocks. A block used by two model families lives here, once."""
from argen.nn.attention import map_attention
from argen.nn.masked import MaskedConv2d, MaskedConv3d, causal_kernel_mask, channel_group_mask, masked_output_head
from argen.nn.util import CausalLayer, CausalSpec, ClassEmbedding, causal_spec, fx_leaf, scale_input

# attention between the positions of a map: one node when traced (the conv planner has a cached
# version of it), wherever a module's forward calls it by this name
fx_leaf(map_attention)

__all__ = [
    "MaskedConv2d", "MaskedConv3d", "causal_kernel_mask", "channel_group_mask", "masked_output_head",
    "ClassEmbedding", "scale_input", "CausalLayer", "CausalSpec", "causal_spec", "fx_leaf",
]
