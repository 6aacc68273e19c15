"""Small helpers every model needs, and what planners (cached sampling) need to know about layers."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from torch import Tensor, nn


def scale_input(x: Tensor, levels: int) -> Tensor:
    """Integer pixels in [0, levels) to floats in [-1, 1] (the scaling PixelCNN++ uses)."""
    return x.float() * (2.0 / (levels - 1)) - 1.0


class ClassEmbedding(nn.Module):
    """Learned per-class vector added as a bias (conditional PixelCNN); a no-op without classes."""

    def __init__(self, num_classes: int | None, dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes, dim) if num_classes else None
        if self.embed is not None:
            nn.init.zeros_(self.embed.weight)

    def forward(self, cond: Tensor | None) -> Tensor | None:
        """(B, dim, 1, 1) bias, or None when the model is unconditional."""
        if self.embed is None or cond is None:
            return None
        return self.embed(cond)[:, :, None, None]


# ----- what planners need to know about layers (cached sampling) ------------------------------
#
# A planner (argen.sampling.conv_plan) traces a model's forward with torch.fx. Leaf modules and
# leaf functions are kept as single nodes instead of being traced through; they are registered
# here, next to the layers, so no model file has to know about tracing. A leaf module that is a
# convolution describes itself with a `CausalSpec`: which input positions each output position
# reads, with which weights. (Whether the result is causal is the planner's to check, from these
# reads alone: a plain convolution has a spec too, and a plan that reads the future is refused.)

FX_LEAF_MODULES: list[type[nn.Module]] = [
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
]
FX_LEAF_FUNCTIONS: list[Callable[..., Any]] = []
_TORCH_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TORCH_CONVS_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)

T = TypeVar("T")


def fx_leaf(obj: T) -> T:
    """Register a module class or a function as an fx leaf (one node when traced); a decorator.

    A function is kept whole where a module's forward calls it by a global name (e.g. after
    `from argen.nn.attention import map_attention`), not as `module.function(...)`."""
    if isinstance(obj, type) and issubclass(obj, nn.Module):
        if obj not in FX_LEAF_MODULES:
            FX_LEAF_MODULES.append(obj)
    elif callable(obj):
        if obj not in FX_LEAF_FUNCTIONS:
            FX_LEAF_FUNCTIONS.append(obj)
    else:
        raise TypeError(f"expected an nn.Module class or a function, given {obj!r}")
    return obj


@dataclass(frozen=True)
class CausalSpec:
    """What a convolution layer's forward computes, in terms a planner can index.

    For a convolution, output position o (one index per spatial dim) reads input position
    o * stride - padding + tap * dilation for each kept `tap` (zero outside the input). For a
    transposed one (`transposed=True`), output o is position o + offset of the full transposed
    output, which tap `k` takes from input (o + offset + padding - k * dilation) / stride where
    that divides exactly. `weights()` returns the kernel the forward really uses (masked where the
    layer masks it; (C_out, C_in, *kernel) for a convolution, (C_in, C_out, *kernel) transposed)
    and the bias, read at call time so one plan serves weights that keep training.
    """

    weights: Callable[[], tuple[Tensor, Tensor | None]]
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: tuple[int, ...]  # convolution: zeros before the input, per dim; transposed: its `padding`
    offset: tuple[int, ...] | None = None  # transposed: first kept index of the full output (default 0s)
    transposed: bool = False
    taps: tuple[tuple[int, ...], ...] | None = None  # kernel taps a fixed mask keeps (for some channel pair); None: all
    location_mask: Tensor | None = None  # (prod(kernel_size), Q_out) 0/1: taps kept per output position
    groups: int = 1
    padding_mode: str = "zeros"

    @property
    def ndim(self) -> int:
        return len(self.kernel_size)


class CausalLayer:
    """Mixin of argen's convolution layers: `causal_spec()` says what the forward computes."""

    def causal_spec(self) -> CausalSpec:
        raise NotImplementedError


def _tuple(v: Any, n: int) -> tuple[int, ...]:
    return (int(v),) * n if isinstance(v, int) else tuple(int(e) for e in v)


def conv_spec(conv: nn.Module, *, weights: Callable[[], tuple[Tensor, Tensor | None]] | None = None,
              mask: Tensor | None = None, extra_padding: tuple[int, ...] | None = None,
              offset: tuple[int, ...] | None = None, location_mask: Tensor | None = None) -> CausalSpec:
    """The spec of a torch convolution (or transposed one) `conv`, as its own forward computes it,
    with what a subclass changes: `weights` (default: weight and bias), a fixed `mask` of the
    weight's shape (its all-zero taps are dropped), `extra_padding` (zeros added before the input
    per dim, e.g. by a one-sided F.pad), the transposed `offset` (crop) and a `location_mask`."""
    if not isinstance(conv, (*_TORCH_CONVS, *_TORCH_CONVS_T)):
        raise TypeError(f"expected a torch convolution module, given {type(conv).__name__}")
    transposed = isinstance(conv, _TORCH_CONVS_T)
    kernel = tuple(int(k) for k in conv.kernel_size)
    n = len(kernel)
    dilation = _tuple(conv.dilation, n)
    if isinstance(conv.padding, str):  # "valid" or "same" (stride 1): torch pads total // 2 before
        padding = tuple(0 if conv.padding == "valid" else d * (k - 1) // 2 for k, d in zip(kernel, dilation))
    else:
        padding = _tuple(conv.padding, n)
    if extra_padding is not None:
        padding = tuple(p + e for p, e in zip(padding, extra_padding))
    taps = None
    if mask is not None:
        live = mask.detach().reshape(-1, *kernel).ne(0).any(0).cpu()
        taps = tuple(tuple(int(i) for i in t) for t in itertools.product(*(range(k) for k in kernel)) if live[t])
    weight_fn = weights if weights is not None else (lambda: (conv.weight, conv.bias))
    return CausalSpec(weight_fn, int(conv.in_channels), int(conv.out_channels), kernel, _tuple(conv.stride, n),
                      dilation, padding, offset, transposed, taps, location_mask, int(conv.groups), str(conv.padding_mode))


def causal_spec(module: nn.Module) -> CausalSpec:
    """The spec of a convolution leaf: its own `causal_spec()` (argen's layers), or that of an
    unmodified torch convolution; `ValueError` for a convolution subclass that does not say."""
    if isinstance(module, CausalLayer):
        return module.causal_spec()
    for base in (*_TORCH_CONVS, *_TORCH_CONVS_T):
        if isinstance(module, base) and type(module).forward is base.forward:
            return conv_spec(module)
    raise ValueError(f"{type(module).__name__} changes its convolution's forward without a causal_spec()")
