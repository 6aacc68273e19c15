"""Masked linear layers and MADE connectivity, shared by the fully visible models (FVSBN, MADE).

Layout. An image (C, H, W) is D = C*H*W sub-pixels, flattened pixel-major with the channels of a
pixel next to each other (index d = p*C + c, p the raster index of the pixel): the same
"R before G before B within a pixel" rule as the convolutional models. A generation order over
pixels gives every sub-pixel a *degree* in 1..D: (rank of its pixel) * C + c + 1. Output d may read
input e only when degree(e) < degree(d); `connectivity` builds such masks and `made_degrees` the
hidden degrees of a MADE (Germain et al., 2015): a hidden unit of degree m reads units of degree
<= m below it, and output d reads hidden units of degree < degree(d), so every path from input e
to output d climbs strictly: the network is autoregressive along the order whatever its depth.

Inputs are the scaled values (`scale_input`, one float per sub-pixel in [-1, 1]), not one-hot
codes: a one-hot input multiplies the first layer by L (256x for 8-bit data, 65,536x for code
grids), and an ordinal value is what the classic binary models read anyway (x in {0, 1}, here
{-1, 1}, the same model up to the bias). A masked-out input contributes exactly nothing (its
weight is zero), so "not seen yet" needs no separate encoding.

Outputs are L-way logits per sub-pixel through `SubpixelHead`: each sub-pixel d has `rank`
features (from the masked layers) and its own (L, rank) matrix and L biases. A full softmax
regression per sub-pixel on H features would need D*L*H weights (100M for 8-bit MNIST with 500
units); the factorisation costs D*L*rank and keeps every sub-pixel's logits a function of its own
features only, so it cannot break the masks. With two levels and rank 1 it is exactly the classic
logistic (sigmoid) output.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.nn import functional as F


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a 0/1 mask (out, in).

    The mask is a non-persistent buffer: it follows from the config and the order, so checkpoints
    hold the weights only. A mask given to `forward` is used instead (an order-agnostic MADE changes
    it per minibatch).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias)
        self.register_buffer("mask", torch.ones(out_features, in_features), persistent=False)

    def set_mask(self, mask: Tensor) -> None:
        """Replace the mask (out, in) of 0/1 (or bool) values."""
        if tuple(mask.shape) != tuple(self.mask.shape):
            raise ValueError(f"expected a mask of shape {tuple(self.mask.shape)}, given {tuple(mask.shape)}")
        self.mask.copy_(mask.to(self.mask.dtype))

    def masked_weight(self) -> Tensor:
        return self.weight * self.mask

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """`mask` (out, in) replaces the layer's own for this call (a MADE passes the mask of the
        order it runs under, so no mask state is shared with copies such as an EMA model)."""
        weight = self.masked_weight() if mask is None else self.weight * mask
        return F.linear(x, weight, self.bias)


def subpixel_degrees(position_ranks: Tensor, channels: int) -> Tensor:
    """(D,) long degrees in 1..D of the sub-pixels (pixel-major layout) from the (P,) ranks of the
    pixels (in raster index order) in the generation order: rank * C + c + 1."""
    ranks = position_ranks.long().flatten()
    if sorted(ranks.tolist()) != list(range(len(ranks))):
        raise ValueError(f"expected pixel ranks that are a permutation of 0..{len(ranks) - 1}, given {ranks.tolist()[:8]}...")
    return (ranks[:, None] * channels + torch.arange(channels) + 1).flatten()


def order_to_ranks(order: Sequence[Sequence[int]] | Tensor, position_shape: Sequence[int]) -> Tensor:
    """(P,) rank of every pixel (raster index order) from an order: a list of positions or (P, ndim)."""
    pos = torch.as_tensor(order, dtype=torch.long).reshape(-1, len(position_shape))
    strides = torch.tensor([int(torch.tensor(position_shape[i + 1:]).prod()) for i in range(len(position_shape))])
    flat = (pos * strides).sum(1)
    n = int(torch.tensor(position_shape).prod())
    if flat.numel() != n or sorted(flat.tolist()) != list(range(n)):
        raise ValueError(f"expected an order visiting each of the {n} positions once, given {flat.numel()} positions")
    ranks = torch.empty(n, dtype=torch.long)
    ranks[flat] = torch.arange(n)
    return ranks


def connectivity(out_degrees: Tensor, in_degrees: Tensor, strict: bool) -> Tensor:
    """(out, in) float mask: 1 where out_degree > in_degree (strict) or >= (not strict)."""
    o, i = out_degrees[:, None], in_degrees[None, :]
    return (o > i if strict else o >= i).float()


def made_degrees(dims: int, hidden: Sequence[int], generator: torch.Generator | None = None) -> list[Tensor]:
    """Degrees of each hidden layer's units: uniform integers in [lowest degree below, D - 1]
    (the MADE paper's rule, so no unit is dead for lack of inputs). `generator` None draws from
    the global torch RNG (an order-agnostic MADE's fresh mask per minibatch, reproducible from the seed)."""
    degrees, low, high = [], 1, max(dims - 1, 1)
    for size in hidden:
        m = torch.randint(low, high + 1, (size,), generator=generator)
        degrees.append(m)
        low = min(int(m.min()), high)
    return degrees


def made_masks(in_degrees: Tensor, hidden_degrees: Sequence[Tensor], features: int) -> list[Tensor]:
    """Masks of a MADE: input -> hidden_1 -> ... -> hidden_n -> `features` outputs per sub-pixel
    (each output of sub-pixel d has d's degree). Hidden layers use >=, the output layer >."""
    masks, below = [], in_degrees
    for m in hidden_degrees:
        masks.append(connectivity(m, below, strict=False))
        below = m
    masks.append(connectivity(in_degrees.repeat_interleave(features), below, strict=True))
    return masks


class SubpixelHead(nn.Module):
    """Per-sub-pixel logits: logits[d] = bias[d] + U[d] @ features[d], U[d] of shape (L, rank)."""

    def __init__(self, dims: int, rank: int, levels: int) -> None:
        super().__init__()
        self.dims, self.rank, self.levels = dims, rank, levels
        self.weight = nn.Parameter(torch.randn(dims, levels, rank) / rank**0.5)
        self.bias = nn.Parameter(torch.zeros(dims, levels))

    def forward(self, features: Tensor, index: Tensor | slice | None = None) -> Tensor:
        """(B, n, rank) features of sub-pixels `index` (all D when None) -> (B, n, L) logits."""
        w, b = (self.weight, self.bias) if index is None else (self.weight[index], self.bias[index])
        return torch.einsum("bnk,nlk->bnl", features, w) + b


def flatten_subpixels(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, D) in the pixel-major sub-pixel layout."""
    return rearrange(x, "b c h w -> b (h w c)")


def subpixel_params(logits: Tensor, channels: int, height: int, width: int) -> Tensor:
    """(B, D, L) logits in the sub-pixel layout -> (B, C*L, H, W), the Categorical params layout."""
    return rearrange(logits, "b (h w c) l -> b (c l) h w", h=height, w=width, c=channels)


__all__ = ["MaskedLinear", "SubpixelHead", "connectivity", "made_degrees", "made_masks", "subpixel_degrees",
           "order_to_ranks", "flatten_subpixels", "subpixel_params"]
