"""Locally masked convolution (LMConv, Jain, Abbeel & Pathak 2020).

A masked convolution (PixelCNN) applies one mask everywhere, which fixes the raster order. LMConv
gives every output location its own mask over the k*k taps, so any generation order works: the
input's k*k taps are gathered (shifted views of the padded input, i.e. im2col), each location's
taps are multiplied by that location's mask, and the result is contracted with the weights. A tap
is kept when its pixel comes earlier in the order than the output location; the first layer
excludes the centre tap (the pixel being predicted), later layers include it (their centre
features depend only on earlier pixels already).

Masks are built from the order's ranks (the step at which each pixel is visited). Ranks may
differ per batch element, (B, H, W), so completion can use one order per example; masks then
have shape (B, k*k, H*W), otherwise (1, k*k, H*W) and broadcast over the batch.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from argen.nn.util import CausalLayer, CausalSpec, conv_spec


def local_masks(ranks: Tensor, kernel_size: int, dilation: int = 1, include_centre: bool = False) -> Tensor:
    """(B, k*k, H*W) float 0/1: tap t of location l is kept when its pixel precedes l.

    `ranks` is (H, W) or (B, H, W) long, the step at which each pixel is generated. Taps that
    fall outside the image (the zero padding) are dropped too.
    """
    if ranks.dim() == 2:
        ranks = ranks.unsqueeze(0)
    if ranks.dim() != 3:
        raise ValueError(f"expected ranks of shape (H, W) or (B, H, W), given {tuple(ranks.shape)}")
    if kernel_size % 2 == 0 or kernel_size < 1:
        raise ValueError(f"kernel_size must be odd and positive, given {kernel_size}")
    if dilation < 1:
        raise ValueError(f"dilation must be >= 1, given {dilation}")
    # shift ranks by one so the zero padding of unfold marks "outside the image"; float32 keeps
    # ranks exact up to 2**24 pixels (and works on every device)
    shifted = (ranks.to(torch.float32) + 1).unsqueeze(1)
    taps = F.unfold(shifted, kernel_size, dilation=dilation, padding=dilation * (kernel_size // 2))  # (B, k*k, HW)
    own = shifted.flatten(2)  # (B, 1, HW)
    keep = (taps > 0) & (taps < own)
    if include_centre:
        keep[:, (kernel_size * kernel_size) // 2] = True
    return keep.to(torch.get_default_dtype())


class OrderMasks:
    """The current order of a network, shared by all its locally masked layers.

    The model calls `set_order(ranks)` at the start of each forward pass; every layer then asks
    for its mask by (kernel, dilation, centre), so blocks built for ordinary convolutions (such
    as nn.shifted.GatedResidualBlock, which calls `conv(x)`) work unchanged. Masks are cached per
    (order, kernel, dilation, centre) in a small LRU: all layers share one order, and training
    draws from a handful of orders.
    """

    def __init__(self, maxsize: int = 64) -> None:
        self.maxsize = maxsize
        self._cache: OrderedDict[tuple, Tensor] = OrderedDict()
        self._ranks: Tensor | None = None
        self._device = torch.device("cpu")
        self._key: tuple = ()

    def set_order(self, ranks: Tensor, device: torch.device | str | None = None) -> None:
        """Use `ranks` (H, W) or (B, H, W) long, the step at which each pixel is generated.

        Masks are built where `ranks` lives and moved to `device` (default: the same); keeping
        ranks on the CPU avoids a device sync per forward pass for the cache key.
        """
        self._ranks = ranks
        self._device = torch.device(device) if device is not None else ranks.device
        self._key = (tuple(ranks.shape), str(self._device), ranks.detach().cpu().numpy().tobytes())

    def __call__(self, kernel_size: int, dilation: int, include_centre: bool) -> Tensor:
        if self._ranks is None:
            raise RuntimeError("no order set: call set_order(ranks) before running locally masked layers")
        key = (*self._key, kernel_size, dilation, include_centre)
        mask = self._cache.get(key)
        if mask is None:
            mask = local_masks(self._ranks, kernel_size, dilation, include_centre).to(self._device)
            self._cache[key] = mask
            if len(self._cache) > self.maxsize:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return mask

    def __deepcopy__(self, memo: dict) -> "OrderMasks":
        # a copied model (EMA) gets its own, empty state rather than sharing this one's
        return OrderMasks(self.maxsize)


def locally_masked_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, mask: Tensor, dilation: int = 1) -> Tensor:
    """Same-size convolution of x (B, Cin, H, W) with weight (Cout, Cin, k, k), each output
    location seeing only the taps its mask (B or 1, k*k, H*W) keeps."""
    b, cin, h, w = x.shape
    cout, cin_w, kh, kw = weight.shape
    if cin_w != cin or kh != kw or kh % 2 == 0:
        raise ValueError(f"expected a square odd kernel with {cin} input channels, given weight {tuple(weight.shape)}")
    if mask.dim() != 3 or mask.shape[1:] != (kh * kw, h * w) or mask.shape[0] not in (1, b):
        raise ValueError(f"expected mask of shape (1 or {b}, {kh * kw}, {h * w}), given {tuple(mask.shape)}")
    # Gather the k*k taps as shifted views of the zero-padded input (cheaper than F.unfold's
    # im2col on CPU), mask each tap per location, and contract taps and channels in one matmul.
    pad = dilation * (kh // 2)
    xp = F.pad(x, (pad, pad, pad, pad))
    m = mask.to(x.dtype).view(mask.shape[0], kh * kw, 1, h, w)
    taps = torch.stack([xp[:, :, i * dilation:i * dilation + h, j * dilation:j * dilation + w]
                        for i in range(kh) for j in range(kw)], dim=1) * m  # (B, k*k, Cin, H, W)
    wmat = rearrange(weight, "o c i j -> o (i j c)")
    out = torch.einsum("bkl,ok->bol", taps.view(b, kh * kw * cin, h * w), wmat)
    if bias is not None:
        out = out + bias.view(1, -1, 1)
    return out.view(b, cout, h, w)


class LocallyMaskedConv2d(nn.Conv2d, CausalLayer):
    """A same-size, odd-kernel convolution whose taps are masked per output location.

    Parameters and initialisation are those of nn.Conv2d. `forward(x, mask)` uses the given mask
    (from `local_masks` with this layer's kernel size and dilation); without one, the layer asks
    its `masks` (an OrderMasks shared across the network) for the current order's mask.
    `include_centre=False` is the first layer's rule (the pixel being predicted is hidden).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, dilation: int = 1, include_centre: bool = True,
                 masks: OrderMasks | None = None, bias: bool = True) -> None:
        if kernel_size % 2 == 0 or kernel_size < 1:
            raise ValueError(f"locally masked convolution needs an odd kernel size, given {kernel_size}")
        super().__init__(in_ch, out_ch, kernel_size, padding=dilation * (kernel_size // 2), dilation=dilation, bias=bias)
        self.include_centre = include_centre
        self.masks = masks

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        if mask is None:
            if self.masks is None:
                raise ValueError("expected a mask: this layer was built without an OrderMasks to ask")
            mask = self.masks(self.kernel_size[0], self.dilation[0], self.include_centre)
        return locally_masked_conv2d(x, self.weight, self.bias, mask, self.dilation[0])

    def location_mask(self) -> Tensor:
        """(k*k, H*W) 0/1: the taps each output location keeps under the current order of `masks`
        (one order for the whole batch); what a cached sampler builds its index table from."""
        if self.masks is None:
            raise ValueError("this layer was built without an OrderMasks: it has no current order")
        mask = self.masks(self.kernel_size[0], self.dilation[0], self.include_centre)
        if mask.shape[0] != 1:
            raise ValueError(f"expected one order for the whole batch, given {mask.shape[0]}")
        return mask[0]

    def causal_spec(self) -> CausalSpec:
        """A plain convolution's taps, each masked per output location (current order)."""
        return conv_spec(self, location_mask=self.location_mask())

    def extra_repr(self) -> str:
        return super().extra_repr() + f", include_centre={self.include_centre}"
