"""Exact cached sampling for the Image Transformer: prefill what is known, then decode one slot
(sub-pixel) at a time from static KV caches.

The model is a decoder over slots: slot s carries the value of sub-pixel s-1 (of the generation
order, channels innermost) and predicts sub-pixel s. Slot s's keys and values therefore depend
only on sub-pixels < s, which are final when sub-pixel s is asked for, so each slot is computed
exactly once and written to every layer's `KVCache` for good.

`TransformerStepper.params_at(x, pos, c)` needs slot s = rank(pos) * C + c. It runs the model's
own blocks (`trunk(h, caches, start, pattern)`) on the slots not computed yet, [next, s]: one
slot when sampling (decode), a long chunk after a known region during completion (prefill; `skip`
costs nothing, the next call catches up in one batched pass).

Every attention pattern works unchanged: the caches hold all N slots and each query attends under
its pattern's mask row (slots not written yet lie after the query and are masked); the
block-by-block order of 2D local attention is just the model's `generation_order()`. Reading the
whole cache would make a decode step cost O(N) per layer even for local attention (and it is the
dominant cost: a one-query attention is memory-bound), so the call attends only to slots
[lo, s], lo = the first slot any of its queries may see: `CacheWindow` hands the blocks that
slice of each cache and the matching columns of the mask rows.

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

from argen.nn.attention import AttentionPattern, KVCache


class CacheWindow(AttentionPattern):
    """A pattern's view for one cached call over slots [start, end): keys [lo, end) only (for
    decoding from caches; it has no full-sequence forward).

    `focus(start, end)` picks the window; the blocks then get mask rows restricted to it (`rows`)
    and, through `WindowedCache`, the same slice of every cache. `first[q]` is the first key slot
    query q may attend to (computed once from the pattern's own definition).
    """

    def __init__(self, pattern: AttentionPattern, chunk: int = 512) -> None:
        super().__init__(pattern.length)
        self.pattern = pattern
        n, device = pattern.length, pattern.anchor.device
        first = []
        for a in range(0, n, chunk):  # (chunk, N) mask rows at a time
            q = torch.arange(a, min(a + chunk, n), device=device)
            rows = pattern.rows(q)
            first.append(torch.where(rows.any(1), rows.int().argmax(1), q).cpu())
        # on the CPU: window bounds are Python ints for slicing, so reading them must not sync a GPU
        self.first = torch.cat(first)
        self.lo, self.end = 0, 0
        self.mask: Tensor | None = None

    def allowed(self, qi: Tensor, ki: Tensor) -> Tensor:
        return self.pattern.allowed(qi, ki)

    def focus(self, start: int, end: int) -> None:
        """Next call computes slots [start, end): window [lo, end) and its mask rows (once for all layers)."""
        self.lo, self.end = int(self.first[start:end].min()), end
        q = torch.arange(start, end, device=self.pattern.anchor.device)
        self.mask = self.pattern.rows(q)[:, self.lo : end]

    def rows(self, qi: Tensor) -> Tensor:
        if self.mask is None or self.mask.shape[0] != qi.shape[0]:
            raise ValueError(f"expected the {0 if self.mask is None else self.mask.shape[0]} queries of the focused "
                             f"window, given {qi.shape[0]}")
        return self.mask


class WindowedCache(KVCache):
    """A layer's `KVCache` (same buffers) that writes as usual but hands attention only the
    focused window's keys/values."""

    def __init__(self, cache: KVCache, window: CacheWindow) -> None:
        self.max_len, self.k, self.v = cache.max_len, cache.k, cache.v
        self.window = window

    def update(self, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        k_all, v_all = super().update(start, k, v)
        lo, end = self.window.lo, self.window.end
        return k_all[:, :, lo:end], v_all[:, :, lo:end]


class TransformerStepper:
    """Stepper for `autoregressive_fill` that keeps each layer's keys/values of finished slots."""

    def __init__(self, model: Any, cond: Tensor | None) -> None:
        self.model, self.cond = model, cond
        self.channels, self.levels = model.channels, model.levels
        self.rank = {tuple(int(v) for v in p): r for r, p in enumerate(model.generation_order())}
        self.caches: list[KVCache] | None = None
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
        if self.caches is None or self.window is None:
            self.batch = x.shape[0]
            self.window = window = CacheWindow(self.model.pattern)
            self.caches = [WindowedCache(c, window) for c in self.model.new_caches(self.batch)]
        elif x.shape[0] != self.batch:
            raise ValueError(f"expected a batch of {self.batch} (the caches' size), given {x.shape[0]}")
        h = self.model.embed(x, self.cond, self.next, s + 1)
        self.window.focus(self.next, s + 1)
        logits = self.model.trunk(h, self.caches, self.next, self.window)[:, -1]  # slot s: (B, L)
        self.next = s + 1
        key = tuple(int(v) for v in pos)
        if key != self.pixel or self.params is None:
            self.pixel = key
            self.params = logits.new_zeros(self.batch, self.channels, self.levels)
        self.params[:, channel] = logits
        return self.params.flatten(1).clone()

    def skip(self, x: Tensor, pos: tuple[int, ...]) -> None:
        """`pos` is known: nothing to do now (the next call prefills its slots with the rest)."""


__all__ = ["CacheWindow", "TransformerStepper", "WindowedCache"]
