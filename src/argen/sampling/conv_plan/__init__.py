"""Exact cached sampling for convolutional AR networks: a small compiler.

`CachedStepper` replaces `NaiveStepper` in `autoregressive_fill`: instead of rerunning the network
for every position, it keeps every layer's activations and computes, per step, only the outputs
the next distribution parameters need (Fast PixelCNN++, Ramachandran et al. 2017).

The pipeline, one module each:

- `trace`: the network's own `forward` traced once with torch.fx; leaf modules and functions are
  those registered in `argen.nn` (`fx_leaf`): convolutions, `map_attention`.
- `graph` + `ops`: the traced graph lowered to typed operations, one map of the network each:
    - `InputOp`: the input,
    - `ConvOp`: a convolution (masked, shifted, strided, transposed, 1x1, locally masked; over any
      number of spatial dims), from the layer's `causal_spec()`: index table + one matmul,
    - `GatherOp`: a shift (F.pad, spatial slicing): index table,
    - `ChannelSliceOp`: x[:, a:b], x.chunk(..)[k]: a view,
    - `PointwiseOp`: activations, gates, sums, channel cat, class biases, run as traced on
      (B, n, C) rows holding n positions of a map,
    - `AttentionOp`: attention between positions (`argen.nn.attention.map_attention`, PixelSNAIL):
      the queries computed now attend to a growing buffer of keys/values, each projected once.
  Anything else (recurrences) is refused with `UnsupportedLayer` when the stepper is created (such
  a model keeps `NaiveStepper`).
- `tables`: index tables over N-d positions ((H, W) images, (T, H, W) video): output position q
  reads input positions table[q] (raster indices, -1: zero).
- `schedule`: from the tables alone, per step which range of each map to compute and which maps
  to keep; any generation order by re-indexing every map by rank.
- `runtime`: the buffers and per-op runners of one sampling run; per step and layer one gather +
  one matmul for the whole batch.
- `stepper`: `build_plan` / `plan_network` (trace, lower, check every convolution and the whole
  plan against the forward pass, schedule) and `CachedStepper`.

For categorical heads over several channels the network sees earlier channels of the current
pixel, so the outputs that depend on that pixel are recomputed for each channel (as the naive
sampler reruns the whole network), and only outputs that depend on finished pixels are kept.

The parameters equal the naive ones up to float round-off (a matmul sums in a different order than
a convolution), not bitwise; samples drawn from the same uniforms are identical unless a uniform
falls within round-off of a bin edge.
"""
from argen.sampling.conv_plan.ops import AttentionOp, ChannelSliceOp, ConvOp, GatherOp, InputOp, Op, PointwiseOp
from argen.sampling.conv_plan.runtime import CacheState
from argen.sampling.conv_plan.schedule import CachePlan
from argen.sampling.conv_plan.stepper import CachedStepper, build_plan, cache_plan, plan_network
from argen.sampling.conv_plan.support import UnsupportedLayer

__all__ = [
    "CachedStepper", "CachePlan", "CacheState", "UnsupportedLayer", "build_plan", "cache_plan", "plan_network",
    "Op", "InputOp", "ConvOp", "GatherOp", "ChannelSliceOp", "PointwiseOp", "AttentionOp",
]
