"""Exact cached sampling for the Image Transformer: prefill what is known, then decode one slot
(sub-pixel) at a time from static KV caches.

The model is a decoder over slots: slot s carries the value of sub-pixel s-1 (of the generation
order, channels innermost) and predicts sub-pixel s. Slot s's keys and values therefore depend
only on sub-pixels < s, which are final when sub-pixel s is asked for, so each slot is computed
exactly once and written to every layer's `KVCache` for good.

`TransformerStepper.params_at(x, pos, c)` needs slot s = rank(pos) * C + c. It runs the model's
trunk (`trunk(h, cache, start, window)`, i.e. `argen.nn.transformer.Transformer.prefill`) on the
slots not computed yet, [next, s]: one slot when sampling (decode), a long chunk after a known
region during completion (prefill; `skip` costs nothing, the next call catches up in one batched
pass). The stepper owns its `TransformerCache` (made by `model.new_cache`, in the model's dtype
and device), so two steppers over one model do not share state.

Every attention pattern works unchanged: the caches hold all N slots and each query attends under
its pattern's mask row (slots not written yet lie after the query and are masked); the
block-by-block order of 2D local attention is just the model's `generation_order()`. Reading the
whole cache would make a decode step cost O(N) per layer even for local attention (and it is the
dominant cost: a one-query attention is memory-bound), so the call attends only to slots
[lo, s], lo = the first slot any of its queries may see: the pattern's `window(start, end)`
(`DecodeWindow`) gives lo and the matching mask, computed once per call for all layers, and each
layer reads that slice of its cache. A model whose trunk has one pattern per layer
(`argen.nn.attention.LayerPatterns`, the Video Transformer's alternating blocks) exposes that as
`pattern`: its `window` gives one `DecodeWindow` per layer, handed to `trunk` the same way; a
window may gather scattered key slots instead of a slice (`DecodeWindow.keys`, block-local 3-D
attention in subscale order).

Cross-attention (a decoder with `context_dim`): the model's `slot_context(x, cond, start, end)`
gives the context a call must bring, once per sample (the trunk projects its K/V into the cache's
`ContextCache` and every later call reuses them); None for models without one, and for calls
before the decoder's `cross_from` (VideoGPT encodes its context frames once they are known).

Cost per sampled image: N decode steps of O(n_layers * (d^2 + window * d)) instead of N full
forward passes (the naive sampler also reruns per channel): about N-fold less (N = C*H*W).

Exactness: the parameters equal the naive ones up to float round-off (one-row attention over the
cache sums in another order than the full pass), not bitwise; samples from the same uniforms are
identical unless a uniform falls within round-off of a bin edge (tests check both).

The returned (B, C*L) parameters hold the logits of channels <= c at `pos`; later channels are
zero (they depend on values not drawn yet, and the sampling loop reads channel c only).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from argen.nn.attention import AttentionPattern, DecodeWindow, LayerPatterns
from argen.nn.transformer import TransformerCache


class CacheWindow:
    """The slice of the caches each cached call reads: `first[q]` is the first key slot query q
    may attend to (the pattern's `first_keys()`, computed once from its own definition), and
    `focus(start, end)` gives the `DecodeWindow` (keys [lo, end) and their mask rows) of a call
    over slots [start, end), computed once for all layers."""

    def __init__(self, pattern: AttentionPattern | LayerPatterns) -> None:
        self.pattern = pattern
        self.first = pattern.first_keys()

    def focus(self, start: int, end: int) -> DecodeWindow | list[DecodeWindow]:
        return self.pattern.window(start, end)


class TransformerStepper:
    """Stepper for `autoregressive_fill` that keeps each layer's keys/values of finished slots."""

    def __init__(self, model: Any, cond: Tensor | None) -> None:
        self.model, self.cond = model, cond
        self.channels, self.levels = model.channels, model.levels
        self.rank = {tuple(int(v) for v in p): r for r, p in enumerate(model.generation_order())}
        self.cache: TransformerCache | None = None
        self.window: CacheWindow | None = None
        self.batch = 0
        self.next = 0  # slots [0, next) are in the caches
        self.pixel: tuple[int, ...] | None = None
        self.params: Tensor | None = None  # (B, C, L) logits of the current pixel's channels so far

    def _slot(self, pos: tuple[int, ...], channel: int) -> int:
        key = tuple(int(v) for v in pos)
        if key not in self.rank:
            raise ValueError(f"expected a position of the model's generation order, given {key}")
        if not 0 <= channel < self.channels:
            raise ValueError(f"expected a channel in [0, {self.channels}), given {channel}")
        return self.rank[key] * self.channels + channel

    @torch.no_grad()
    def params_at(self, x: Tensor, pos: tuple[int, ...], channel: int) -> Tensor:
        s = self._slot(pos, channel)
        if s < self.next:
            raise ValueError(f"cached sampling follows the generation order: expected a sub-pixel at or after "
                             f"slot {self.next}, given {tuple(pos)} channel {channel} (slot {s})")
        if self.cache is None or self.window is None:
            self.batch = x.shape[0]
            self.window = CacheWindow(self.model.pattern)
            self.cache = self.model.new_cache(self.batch)
        elif x.shape[0] != self.batch:
            raise ValueError(f"expected a batch of {self.batch} (the caches' size), given {x.shape[0]}")
        h = self.model.embed(x, self.cond, self.next, s + 1)
        window = self.window.focus(self.next, s + 1)
        # a cross-attention context, once per sample at the call that first needs it (none for most models)
        context = self.model.slot_context(x, self.cond, self.next, s + 1)
        extra = {} if context is None else {"context": context}
        logits = self.model.trunk(h, self.cache, self.next, window, **extra)[:, -1]  # slot s: (B, L)
        self.next = s + 1
        key = tuple(int(v) for v in pos)
        if key != self.pixel or self.params is None:
            self.pixel = key
            self.params = logits.new_zeros(self.batch, self.channels, self.levels)
        self.params[:, channel] = logits
        return self.params.flatten(1).clone()

    def skip(self, x: Tensor, pos: tuple[int, ...]) -> None:
        """`pos` is known: nothing to do now (the next call prefills its slots with the rest)."""


__all__ = ["CacheWindow", "TransformerStepper"]
