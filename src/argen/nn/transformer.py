"""One decoder trunk for every transformer in argen: pre-norm blocks over an attention pattern,
optional cross-attention to a context, and a static KV cache with `prefill` + `decode_one`.

    trunk = Transformer(dim, n_layers, heads, ff_dim, pattern, dropout=0.0, context_dim=None,
                        rotary=None)
    trunk(x, context=None, context_mask=None)          # training: (B, N, dim) -> (B, N, dim)
    cache = trunk.new_cache(batch)                     # or trunk.setup_cache(batch) (gpt-fast)
    trunk.prefill(x[:, :t], cache, context=ctx)        # positions [0, t), context K/V projected once
    trunk.decode_one(x[:, t : t + 1], t, cache)        # position t from the cache

The trunk works on embeddings, not tokens: the model around it owns its inputs (values,
positions, classes) and its head (levels, vocabulary), so the Image Transformer, a GPT prior over
tokenizer codes, Parti's decoder and a video transformer differ only there and in the pattern.

Block layout (GPT-2 / nanoGPT, pre-norm):

    x = x + attn(LN(x))                    self-attention under `pattern` (nn/attention.py)
    x = x + cross(LN(x), context)          only with context_dim: every query sees the whole context
    x = x + MLP(LN(x))
    trunk output = LN(x)

Positions: the model adds absolute ones to its inputs; `rotary=` (an `argen.nn.attention.Rotary`
over the N positions) adds RoPE to every self-attention layer instead or as well (token GPT's
2-D RoPE). Without it the trunk computes exactly what it did before the option existed.

`SlotDecoder` is what a decoder-only model over a shifted slot sequence shares (the Image
Transformer, token GPT): `trunk` (slot inputs -> per-slot logits, full or cached), `new_cache`,
`slot_range`, and `init_gpt_weights` / `init_gpt` (with zeroed heads) for its layers;
`GridSlots` the learned row + column positions of a code grid (token GPT, IQ-VAE, ImageBART).

Patterns: anything `argen.nn.attention.AttentionPattern` defines (causal / full, local 1-D,
local 2-D). A pattern is one definition `allowed(query, key)` over the N positions of the
sequence (the model's generation order); the trunk uses its blocked full-sequence `forward` for
training and its `window(start, end)` (keys [lo, end) and their mask) for cached calls. A new
pattern (block-local 3-D for video: blocks of (t, h, w) positions in block-raster order) needs
only `allowed`, `_set_blocks` with its query blocks and key windows, and optionally a closed form
`first_key_of`; the trunk and the cache need no change.

Per-layer patterns (optional): `pattern` may be a list of patterns, one per layer (or an
`argen.nn.attention.LayerPatterns`), e.g. the Video Transformer's block shapes alternating between
layers. `trunk.pattern` is then a `LayerPatterns`, whose `window(start, end)` gives one window
per layer, and `prefill` takes such a list as `window=`. With one pattern nothing changes.

Cache: `TransformerCache` is an nn.Module holding one `KVCache` per layer (self-attention keys /
values of every position written so far) and, with cross-attention, one `ContextCache` per layer
(the context's projected keys / values, computed once per sample at prefill and reused by every
decode step). All its buffers are non-persistent: `.to(torch.bfloat16)` / `.to(device)` of the
trunk moves an attached cache (`setup_cache`), and no cache lands in a state dict. `new_cache`
builds a free-standing one in the trunk's dtype and device (a sampler that owns its cache).

Exactness: a cached call computes, for its positions, what the full pass computes (the keys and
values of earlier positions are the same numbers, read back from the cache); results agree up to
float round-off (attention over a cache slice sums in another order than the blocked pass).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from argen.nn.attention import AttentionPattern, DecodeWindow, KVCache, LayerPatterns, MultiHeadAttention, Rotary


class ContextCache(nn.Module):
    """One layer's cross-attention keys/values (B, heads, M, d) of the context, and its mask
    (B, M) bool (True = a real context position) or none. Filled by `store` at prefill."""

    k: Tensor
    v: Tensor
    mask: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("k", torch.zeros(0), persistent=False)
        self.register_buffer("v", torch.zeros(0), persistent=False)
        self.register_buffer("mask", torch.zeros(0, dtype=torch.bool), persistent=False)
        self.filled = False

    def store(self, k: Tensor, v: Tensor, mask: Tensor | None) -> None:
        self.k, self.v = k, v
        self.mask = torch.zeros(0, dtype=torch.bool, device=k.device) if mask is None else mask
        self.filled = True

    def attention_mask(self) -> Tensor | None:
        """The mask in (B, 1, 1, M) attention layout, or None (every context position is real)."""
        return self.mask[:, None, None, :] if self.mask.numel() else None


class TransformerCache(nn.Module):
    """Everything a trunk keeps between `prefill` and `decode_one`: per layer a `KVCache`
    (`self_attn[i]`) and, with cross-attention, a `ContextCache` (`context[i]`)."""

    def __init__(self, layers: list[KVCache], context: list[ContextCache] | None = None) -> None:
        super().__init__()
        self.self_attn = nn.ModuleList(layers)
        self.context = None if context is None else nn.ModuleList(context)

    @property
    def batch(self) -> int:
        return self.self_attn[0].batch

    @property
    def max_len(self) -> int:
        return self.self_attn[0].max_len

    def reset(self) -> None:
        for c in self.self_attn:
            c.reset()
        for cc in self.context or []:
            cc.filled = False  # the next prefill must bring a context again


class TransformerBlock(nn.Module):
    """Pre-norm decoder block: x + attn(LN(x)); [x + cross(LN(x), context)]; x + MLP(LN(x)).

    Parameter names (norm1, attn, norm2, mlp) are the Image Transformer's since its first
    checkpoints; the cross-attention adds norm_cross and cross (context_dim set) only.
    """

    def __init__(self, dim: int, heads: int, ff_dim: int, dropout: float = 0.0, context_dim: int | None = None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, ff_dim), nn.GELU(), nn.Linear(ff_dim, dim))
        self.drop = nn.Dropout(dropout)
        self.norm_cross: nn.LayerNorm | None = None
        self.cross: MultiHeadAttention | None = None
        if context_dim is not None:
            self.norm_cross = nn.LayerNorm(dim)
            self.cross = MultiHeadAttention(dim, heads, kv_dim=context_dim, dropout=dropout)

    def forward(self, x: Tensor, pattern: AttentionPattern, cache: KVCache | None = None, start: int = 0,
                window: DecodeWindow | None = None, context: tuple[Tensor, Tensor] | None = None,
                context_mask: Tensor | None = None, rotary: Rotary | None = None, cross_start: int = 0,
                key_mask: Tensor | None = None) -> Tensor:
        """x (B, T, dim) -> (B, T, dim). `context` = the cross-attention's projected (keys, values)
        (`self.cross.keys_values(ctx)`), `context_mask` in attention layout (B, 1, 1, M) or None;
        `rotary` rotates the self-attention's queries and keys by position; only the queries
        x[:, cross_start:] cross-attend (the others skip it, and need no context when none do);
        `key_mask` (B, 1, 1, T) bool, full-sequence calls only: self-attention keys where it is
        False (padding) are hidden from every query, on top of `pattern`."""
        if key_mask is None:
            x = x + self.drop(self.attn(self.norm1(x), pattern, cache=cache, start=start, window=window, rotary=rotary))
        else:
            h = self.norm1(x)
            k, v = self.attn.keys_values(h)
            x = x + self.drop(self.attn.attend_to(h, k, v, pattern.dense() & key_mask))
        if self.cross is not None and self.norm_cross is not None and cross_start < x.shape[1]:
            if context is None:
                raise ValueError("expected a context for the cross-attention, given None")
            k, v = context
            if cross_start <= 0:
                x = x + self.drop(self.cross.attend_to(self.norm_cross(x), k, v, context_mask))
            else:
                late = x[:, cross_start:]
                late = late + self.drop(self.cross.attend_to(self.norm_cross(late), k, v, context_mask))
                x = torch.cat([x[:, :cross_start], late], 1)
        return x + self.drop(self.mlp(self.norm2(x)))


class Transformer(nn.Module):
    """Decoder trunk: `n_layers` pre-norm blocks under `pattern` and a final LayerNorm (module doc).

    `pattern` is one pattern for every layer, or one per layer (a list of `n_layers` patterns or a
    `LayerPatterns`); `context_dim` (None = no cross-attention) is the width of the context every
    block attends to; `cross_from` (default 0: all) is the first position that cross-attends:
    earlier positions skip the cross-attention, so a model can keep them independent of a context
    computed from later-known data (VideoGPT: the frames the context is encoded from), and cached
    calls over positions before it need no context yet; `rotary` (None = none) gives every
    self-attention layer RoPE over the N positions.
    """

    pattern: AttentionPattern | LayerPatterns

    def __init__(self, dim: int, n_layers: int, heads: int, ff_dim: int,
                 pattern: AttentionPattern | LayerPatterns | Sequence[AttentionPattern], *,
                 dropout: float = 0.0, context_dim: int | None = None, rotary: Rotary | None = None,
                 cross_from: int = 0) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"expected n_layers >= 1, given {n_layers}")
        if cross_from and context_dim is None:
            raise ValueError(f"cross_from is for a trunk with cross-attention: expected cross_from=0 with "
                             f"context_dim=None, given {cross_from}")
        self.dim, self.context_dim, self.cross_from = dim, context_dim, cross_from
        if not isinstance(pattern, (AttentionPattern, LayerPatterns)):
            pattern = LayerPatterns(pattern)
        if isinstance(pattern, LayerPatterns) and len(pattern) != n_layers:
            raise ValueError(f"expected one attention pattern per layer ({n_layers}), given {len(pattern)}")
        self.pattern = pattern
        if not 0 <= cross_from < pattern.length:
            raise ValueError(f"expected 0 <= cross_from < {pattern.length} (the sequence length), given {cross_from}")
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, ff_dim, dropout, context_dim) for _ in range(n_layers))
        self.norm = nn.LayerNorm(dim)
        if rotary is not None and (rotary.length != pattern.length or rotary.head_dim * heads != dim):
            raise ValueError(f"expected rotary positions for {pattern.length} positions and head width {dim // heads}, "
                             f"given {rotary.length} positions and head width {rotary.head_dim}")
        self.rotary = rotary
        self.cache: TransformerCache | None = None  # set by setup_cache

    @property
    def length(self) -> int:
        return self.pattern.length

    def layer_pattern(self, layer: int) -> AttentionPattern:
        """The attention pattern of block `layer` (the one pattern, or its entry of the per-layer list)."""
        return self.pattern[layer] if isinstance(self.pattern, LayerPatterns) else self.pattern

    def _windows(self, start: int, end: int, window: DecodeWindow | Sequence[DecodeWindow] | None) -> list[DecodeWindow]:
        """One decode window per layer for a cached call over [start, end), computed once per pattern."""
        window = self.pattern.window(start, end) if window is None else window
        if isinstance(window, DecodeWindow):
            return [window] * len(self.blocks)
        window = list(window)
        if len(window) != len(self.blocks):
            raise ValueError(f"expected one decode window per layer ({len(self.blocks)}), given {len(window)}")
        return window

    # ----- checks ------------------------------------------------------------------------------
    def _check_input(self, x: Tensor, what: str = "input") -> None:
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"expected an {what} of shape (B, T, {self.dim}), given {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"expected a floating-point {what}, given {x.dtype}")

    def _context_kv(self, context: Tensor | None, context_mask: Tensor | None,
                    batch: int) -> tuple[list[tuple[Tensor, Tensor] | None], Tensor | None]:
        """Each block's projected context keys/values and the mask in attention layout."""
        if self.context_dim is None:
            if context is not None or context_mask is not None:
                raise ValueError("this trunk has no cross-attention (context_dim=None): expected context=None, "
                                 f"given a tensor of shape {tuple((context if context is not None else context_mask).shape)}")
            return [None] * len(self.blocks), None
        if context is None:
            raise ValueError(f"expected a context (B, M, {self.context_dim}) for the cross-attention, given None")
        if context.ndim != 3 or context.shape[0] != batch or context.shape[-1] != self.context_dim or not context.shape[1]:
            raise ValueError(f"expected a context of shape ({batch}, M >= 1, {self.context_dim}), given {tuple(context.shape)}")
        mask = None
        if context_mask is not None:
            if context_mask.dtype != torch.bool or tuple(context_mask.shape) != tuple(context.shape[:2]):
                raise ValueError(f"expected a torch.bool context_mask of shape {tuple(context.shape[:2])}, "
                                 f"given {context_mask.dtype} {tuple(context_mask.shape)}")
            mask = context_mask[:, None, None, :]
        kvs = [b.cross.keys_values(context) for b in self.blocks if b.cross is not None]
        return list(kvs), mask

    # ----- full sequence -------------------------------------------------------------------------
    def forward(self, x: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None,
                key_mask: Tensor | None = None) -> Tensor:
        """The whole sequence: x (B, N, dim) -> (B, N, dim); context (B, M, context_dim) and
        context_mask (B, M) bool (True = real position) for cross-attention; key_mask (B, N) bool
        (True = real position): padding keys hidden from the self-attention (a text encoder over
        padded captions; no rotary with it)."""
        self._check_input(x)
        if x.shape[1] != self.length:
            raise ValueError(f"expected a sequence of length {self.length}, given {x.shape[1]}")
        kvs, mask = self._context_kv(context, context_mask, x.shape[0])
        keys = None
        if key_mask is not None:
            if key_mask.dtype != torch.bool or tuple(key_mask.shape) != tuple(x.shape[:2]):
                raise ValueError(f"expected a torch.bool key_mask of shape {tuple(x.shape[:2])}, "
                                 f"given {key_mask.dtype} {tuple(key_mask.shape)}")
            if self.rotary is not None:
                raise ValueError("key_mask is for a trunk without rotary positions: expected rotary=None, given one")
            keys = key_mask[:, None, None, :]
        for i, (block, kv) in enumerate(zip(self.blocks, kvs)):
            x = block(x, self.layer_pattern(i), context=kv, context_mask=mask, rotary=self.rotary,
                      cross_start=self.cross_from, key_mask=keys)
        return self.norm(x)

    # ----- cached decoding -----------------------------------------------------------------------
    def new_cache(self, batch: int, *, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> TransformerCache:
        """A free-standing cache for `batch` sequences, in the trunk's dtype and device by default."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"expected a batch size >= 1, given {batch!r}")
        ref = self.norm.weight
        device = ref.device if device is None else device
        dtype = ref.dtype if dtype is None else dtype
        layers = [b.attn.new_cache(batch, self.length, device, dtype) for b in self.blocks]
        context = None if self.context_dim is None else [ContextCache() for _ in self.blocks]
        return TransformerCache(layers, context)

    def setup_cache(self, batch: int) -> TransformerCache:
        """Attach a cache as `self.cache` (gpt-fast's setup_caches): a submodule, so `.to()` of
        the model moves it; `prefill` / `decode_one` use it when given no other."""
        self.cache = self.new_cache(batch)
        return self.cache

    def _cache(self, cache: TransformerCache | None, batch: int) -> TransformerCache:
        cache = self.cache if cache is None else cache
        if cache is None:
            raise ValueError("expected a cache (new_cache / setup_cache), given None")
        if cache.batch != batch:
            raise ValueError(f"expected a batch of {cache.batch} (the cache's size), given {batch}")
        return cache

    def prefill(self, x: Tensor, cache: TransformerCache | None = None, *, start: int = 0,
                context: Tensor | None = None, context_mask: Tensor | None = None,
                window: DecodeWindow | Sequence[DecodeWindow] | None = None) -> Tensor:
        """Positions [start, start + T) of x (B, T, dim) -> (B, T, dim), given that the cache holds
        positions [0, start); their keys/values are written to it.

        With cross-attention, a `context` (at the first call of a sample that reaches `cross_from`)
        is projected once per layer into the cache; calls without one (later chunks, decode steps)
        reuse it, and calls wholly before `cross_from` need none.
        `window` (default `pattern.window(start, start + T)`) lets a caller that already has it
        skip recomputing it (with per-layer patterns: one window per layer, as `pattern.window` gives).
        """
        self._check_input(x)
        cache = self._cache(cache, x.shape[0])
        end = start + x.shape[1]
        if not 0 <= start < end <= self.length:
            raise ValueError(f"expected positions 0 <= start < end <= {self.length}, given [{start}, {end})")
        contexts: list = [None] * len(self.blocks)
        mask = None
        if self.context_dim is not None and cache.context is not None:
            if context is not None:
                kvs, mask = self._context_kv(context, context_mask, x.shape[0])
                for cc, (k, v) in zip(cache.context, kvs):
                    cc.store(k, v, context_mask)
            elif context_mask is not None:
                raise ValueError("a context_mask comes with its context: expected None without a context, given one")
            elif not cache.context[0].filled and end > self.cross_from:
                raise ValueError("expected a context at the first prefill of a trunk with cross-attention, given None")
            if cache.context[0].filled:
                contexts = [(cc.k, cc.v) for cc in cache.context]
                mask = cache.context[0].attention_mask()
        else:
            self._context_kv(context, context_mask, x.shape[0])  # raises for a context without cross-attention
        windows = self._windows(start, end, window)
        for i, (block, layer, kv) in enumerate(zip(self.blocks, cache.self_attn, contexts)):
            x = block(x, self.layer_pattern(i), layer, start, windows[i], kv, mask, rotary=self.rotary,
                      cross_start=self.cross_from - start)
        return self.norm(x)

    def decode_one(self, x: Tensor, pos: int, cache: TransformerCache | None = None) -> Tensor:
        """One position: x (B, 1, dim) at position `pos` -> (B, 1, dim), from the cache (which
        holds positions [0, pos) and, with cross-attention, the context's keys/values)."""
        if x.ndim != 3 or x.shape[1] != 1:
            raise ValueError(f"expected one position (B, 1, {self.dim}), given {tuple(x.shape)}")
        return self.prefill(x, cache, start=pos)


def init_gpt_weights(module: nn.Module) -> None:
    """GPT-2 initialisation for `model.apply`: Linear and Embedding weights N(0, 0.02), Linear biases 0."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)


def init_gpt(module: nn.Module, heads: Sequence[nn.Linear] = (), zero_head: bool = False) -> None:
    """`init_gpt_weights` over every layer of `module`, then with `zero_head` each of `heads`
    zeroed, so a fresh model predicts uniformly (LlamaGen, VideoGPT)."""
    module.apply(init_gpt_weights)
    if zero_head:
        for head in heads:
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)


class GridSlots:
    """Mixin for an nn.Module whose slot s predicts code s of an (h, w) grid in raster order (token
    GPT, IQ-VAE's prior, ImageBART's scale networks): `slot_row` / `slot_col` (non-persistent
    buffers, `register_grid`) give each slot's grid position, and the learned per-axis tables
    `row_embed` (h, d) / `col_embed` (w, d) (`learn_grid_positions`) its position vector, added."""

    slot_row: Tensor
    slot_col: Tensor
    row_embed: nn.Parameter | None
    col_embed: nn.Parameter | None
    register_buffer: Any

    def register_grid(self, h: int, w: int) -> None:
        """The buffers `slot_row`, `slot_col` (N = h * w,) of the grid position each slot predicts."""
        slots = torch.arange(h * w)
        self.register_buffer("slot_row", slots // w, persistent=False)
        self.register_buffer("slot_col", slots % w, persistent=False)

    def learn_grid_positions(self, h: int, w: int, d: int) -> None:
        """Learned row and column tables N(0, 0.02), (h, d) and (w, d)."""
        self.row_embed = nn.Parameter(torch.randn(h, d) * 0.02)
        self.col_embed = nn.Parameter(torch.randn(w, d) * 0.02)

    def add_grid_positions(self, h: Tensor, start: int = 0, end: int | None = None) -> Tensor:
        """h (B, T, d) of the slots [start, end) plus each slot's row vector, then its column vector
        (in that order: token GPT's checkpoints and outputs, bit for bit)."""
        if self.row_embed is None or self.col_embed is None:
            raise ValueError("expected learned grid positions (learn_grid_positions), given none")
        return h + self.row_embed[self.slot_row[start:end]] + self.col_embed[self.slot_col[start:end]]


class SlotDecoder:
    """Mixin for a decoder-only model over a slot sequence: slot s carries token s-1 (slot 0 a
    start input) and predicts token s, so attention that never looks past its own slot is causal.

    The model holds `decoder` (a `Transformer`) and `head` (slot features -> logits); this gives
    the surface the kv_cache stepper (`argen.sampling.transformer_cache`) calls besides the
    model's own `embed(x, cond, start, end)` and `pattern`: `trunk`, `new_cache` and
    `slot_context` (the cross-attention context a cached call must bring; none by default).
    """

    decoder: Transformer
    head: nn.Module

    @property
    def num_slots(self) -> int:
        """N, the slots (one per token): the decoder's length unless it also runs over a prefix."""
        return self.decoder.length

    def slot_range(self, start: int, end: int | None) -> tuple[int, int, slice]:
        """Checked slots [start, end) (end None: all N) and the slice of tokens they carry,
        [start - 1, end - 1) (slot 0 carries the start input instead)."""
        n = self.num_slots
        end = n if end is None else end
        if not 0 <= start < end <= n:
            raise ValueError(f"expected slots 0 <= start < end <= {n}, given [{start}, {end})")
        return start, end, slice(max(start - 1, 0), end - 1)

    def trunk(self, h: Tensor, cache: TransformerCache | None = None, start: int = 0,
              window: DecodeWindow | Sequence[DecodeWindow] | None = None,
              context: Tensor | tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Slot inputs (B, T, d) -> per-slot logits (B, T, L). Without a cache, T = N (training,
        log_prob). With one, h holds slots [start, start + T) and earlier slots come from the
        cache (`Transformer.prefill`; one slot = decode); `window` is the pattern's
        `window(start, start + T)` when the caller has it already (per-layer patterns: a list).
        `context` (B, M, context_dim): the cross-attention's input, for a decoder that has one
        (cached: only at the call that first needs it, `slot_context`), or (context, mask (B, M)
        bool, True = real position) when some context positions are padding (parti's captions)."""
        context, mask = context if isinstance(context, tuple) else (context, None)
        if cache is None:
            return self.head(self.decoder(h) if context is None else self.decoder(h, context, mask))
        return self.head(self.decoder.prefill(h, cache, start=start, window=window, context=context,
                                              context_mask=mask))

    def slot_context(self, x: Tensor, cond: Tensor | None, start: int,
                     end: int) -> Tensor | tuple[Tensor, Tensor] | None:
        """The cross-attention context (B, M, context_dim) a cached call over slots [start, end) of
        `x` must bring (or (context, mask), as `trunk` takes it; [0, N) is what a full pass
        brings): None when the decoder has no cross-attention (this default), when the call
        lies wholly before the decoder's `cross_from`, or when an earlier call brought it (its K/V
        are in the cache). A model with a context overrides this; it runs at most once per sample."""
        return None

    def new_cache(self, batch: int) -> TransformerCache:
        """A static KV cache over all N slots for `batch` sequences, in the model's dtype and device."""
        return self.decoder.new_cache(batch)


class ClassStartSlot:
    """Mixin for a slot decoder whose slot 0 carries the class (token GPT, VideoGPT): a start table
    of num_classes + 1 rows, the last the null class classifier-free guidance runs on, or one start
    token without classes. Needs `config.num_classes`, `config.label_dropout`, `device`, `model_name`."""

    config: Any
    device: torch.device
    model_name: str
    training: bool

    def null_cond(self, batch: int) -> Tensor:
        """(batch,) null-class labels: the unconditional input of classifier-free guidance."""
        n = self.config.num_classes
        if not n:
            raise ValueError(f"classifier-free guidance needs a class-conditional {self.model_name}: this one was "
                             "built without num_classes, so it has no null class (expected cfg_scale=1)")
        return torch.full((batch,), n, dtype=torch.long, device=self.device)

    def start_rows(self, cond: Tensor | None, batch: int) -> Tensor:
        """(batch,) rows of the start table for slot 0: the labels (None: the null class), each
        replaced by the null class with probability `label_dropout` in training mode (from torch's
        RNG); 0 (the start token) for an unconditional model."""
        n = self.config.num_classes
        if not n:
            return torch.zeros(batch, dtype=torch.long, device=self.device)
        labels = self.null_cond(batch) if cond is None else cond
        p = self.config.label_dropout
        if self.training and p > 0:
            labels = torch.where(torch.rand(batch, device=labels.device) < p, n, labels)
        return labels


__all__ = ["ClassStartSlot", "ContextCache", "GridSlots", "SlotDecoder", "Transformer", "TransformerBlock", "TransformerCache",
           "init_gpt", "init_gpt_weights"]
