"""Multi-head attention with explicit masks, local (block) patterns and a static KV cache.

The decoder trunk built from these (blocks, cross-attention, prefill / decode) is
`argen.nn.transformer`.

Everything is built from one function, `attend(q, k, v, mask)`: queries attend to keys/values
where a boolean mask is True. Which keys a query may see is an `AttentionPattern`, defined once by
`allowed(query_index, key_index)` over positions of the model's sequence (its generation order).
From that definition a pattern derives

- a dense (N, N) mask (tests; short sequences),
- mask rows for given query positions, and the `window(start, end)` of a cached call (decoding
  from a `KVCache`: the cache holds all N positions; a call over queries [start, end) reads only
  keys [lo, end), lo = the first key any of them may see, under the matching mask, so a decode
  step of a local pattern costs O(window), not O(N)),
- for local patterns, query blocks with gathered key windows (training / full forward
  passes), so that local attention costs O(N * window) time and memory instead of O(N^2);
  tests check that this equals attention under the dense mask.

A new pattern (e.g. block-local 3-D attention over (T, H, W) video positions in block-raster
order) subclasses `AttentionPattern` with `allowed`, calls `_set_blocks` with its query blocks and
key windows, and may override `first_key_of` with a closed form (the default derives it from
`allowed` once); nothing else, including `argen.nn.transformer`, needs to change.

Patterns:

- `CausalPattern`: key <= query (`strict=True`: key < query; the first query then sees nothing
  and gets a zero output, as PixelSNAIL wants).
- `FullPattern`: every key (a bidirectional encoder).
- `Local1DPattern` (Image Transformer, 1D local): the sequence is cut into query blocks of
  `block` positions; a query sees the earlier positions of its own block and the `memory`
  positions before the block: key in [block_start - memory, query].
- `Local2DPattern` (Image Transformer, 2D local): the image is cut into query blocks of
  (bh, bw) pixels, generated block by block (blocks in raster order, pixels in raster order
  inside a block, channels innermost; `block_raster_order`). A query sees every earlier position
  (in that order) whose pixel lies in its block's memory region: rows [r0 - mh, r0 + bh) and
  columns [c0 - mw, c0 + bw + mw), where (r0, c0) is the block's top-left pixel. That is the
  block itself causally, mh rows above it (reaching mw columns to either side) and mw columns
  to its left; the region's part right of the block in the block's own rows is later in the
  order and masked.
- `Block3DPattern` (Video Transformer): a (T, H, W) volume cut into blocks of (bt, bh, bw)
  pixels, positions in any generation order (e.g. subscale slices); a query sees its own block,
  causally in a masked layer, everything of it in an unmasked one. Its cached calls gather the
  allowed keys (`DecodeWindow.keys`) instead of reading a slice.
- `LayerPatterns`: one pattern per layer of a trunk (block shapes alternating between layers).

Positions inside attention: `Rotary` (RoPE over N-d positions, e.g. 2-D for a code grid)
rotates queries and keys of a self-attention layer (`MultiHeadAttention(..., rotary=)`); it is
optional and changes nothing for layers called without it.

A model that shifts its input right by one (slot s holds token s-1 and predicts token s) uses
these patterns on slots; see `models/image/image_transformer.py` for what that means for the
receptive field.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, dropout_p: float = 0.0) -> Tensor:
    """Softmax attention of q (..., Tq, d) to k, v (..., Tk, d) where `mask` (bool, True = may
    attend, broadcastable to (..., Tq, Tk)) allows it.

    A query with no allowed key gets a zero output (not NaN): it attends to key 0 internally and
    the result is replaced by zeros, so no NaN reaches the gradients either.
    """
    if mask.dtype != torch.bool:
        raise ValueError(f"expected a torch.bool mask, given {mask.dtype}")
    empty = ~mask.any(-1, keepdim=True)
    first = torch.zeros(mask.shape[-1], dtype=torch.bool, device=mask.device)
    first[0] = True
    safe = mask | (empty & first)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=safe, dropout_p=dropout_p)
    return out.masked_fill(empty, 0.0)


class KVCache(nn.Module):
    """Static key/value buffers (B, heads, max_len, d) for one attention layer.

    `update(start, k, v)` writes positions [start, start + T) and returns the whole buffers;
    the pattern's mask hides the positions not written yet (they lie after the query).
    Preallocated so that decoding never reallocates (the gpt-fast habit). The buffers are
    non-persistent: they follow `.to(dtype / device)` of whatever module holds the cache and never
    land in a state dict (checkpoints stay weights only).
    """

    k: Tensor
    v: Tensor

    def __init__(self, batch: int, heads: int, max_len: int, qk_dim: int, v_dim: int | None = None,
                 *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.max_len = max_len
        self.register_buffer("k", torch.zeros(batch, heads, max_len, qk_dim, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(batch, heads, max_len, v_dim or qk_dim, device=device, dtype=dtype),
                             persistent=False)

    @property
    def batch(self) -> int:
        return self.k.shape[0]

    def update(self, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        end = start + k.shape[-2]
        if start < 0 or end > self.max_len:
            raise ValueError(f"cache positions must lie in [0, {self.max_len}), given [{start}, {end})")
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k, self.v

    def reset(self) -> None:
        self.k.zero_()
        self.v.zero_()

    def extra_repr(self) -> str:
        return f"batch={self.k.shape[0]}, heads={self.k.shape[1]}, max_len={self.max_len}"


@dataclass
class DecodeWindow:
    """What a cached call over queries [start, end) attends to: keys [lo, end) under `mask`
    (end - start, end - lo). Keys at or after `end` are never allowed (causality), keys before
    `lo` are allowed to none of the queries, so reading only this slice of a cache gives the
    same attention as reading all of it, at O(window) instead of O(N) cost per query."""

    start: int
    end: int
    lo: int
    mask: Tensor
    #: optional (K,) long cache slots to read instead of the slice [lo, end) (ascending, all < end;
    #: `mask` is then (end - start, K)): a pattern whose allowed keys are scattered over the
    #: sequence (block-local 3-D attention in subscale order) gathers just those.
    keys: Tensor | None = None


# ----- patterns -----------------------------------------------------------------------------------
class AttentionPattern(nn.Module):
    """Which keys each query may see, over a sequence of `length` positions (see module doc).

    Subclasses define `allowed` and call `_set_blocks(q_index, k_index)` with each query block's
    positions and its key window (-1 = padding); the block masks are derived from `allowed`, so
    the blocked computation cannot disagree with the definition.
    """

    q_index: Tensor
    k_index: Tensor
    block_mask: Tensor
    unblock: Tensor

    def __init__(self, length: int) -> None:
        super().__init__()
        if length < 1:
            raise ValueError(f"sequence length must be >= 1, given {length}")
        self.length = length
        self.register_buffer("anchor", torch.zeros(0), persistent=False)  # follows .to(device)
        self._first: Tensor | None = None

    def allowed(self, qi: Tensor, ki: Tensor) -> Tensor:
        """Bool tensor (broadcast of qi, ki): may the query at position qi attend to key ki?"""
        raise NotImplementedError

    def dense(self) -> Tensor:
        """(N, N) bool mask, rows = queries."""
        idx = torch.arange(self.length, device=self.anchor.device)
        return self.allowed(idx[:, None], idx[None, :])

    def rows(self, qi: Tensor) -> Tensor:
        """(len(qi), N) mask rows for the queries at positions `qi` (KV-cache decoding)."""
        idx = torch.arange(self.length, device=qi.device)
        return self.allowed(qi[:, None], idx[None, :])

    def first_keys(self) -> Tensor:
        """(N,) long, on the CPU: the first key each query may attend to (the query itself when it
        may attend to none). Derived once from `allowed` and kept; subclasses with a closed form
        override `first_key_of` instead. On the CPU because window bounds are Python ints for
        slicing: reading them must not synchronize a GPU."""
        if self._first is None:
            n, first = self.length, []
            idx = torch.arange(n)
            for a in range(0, n, 512):  # (512, N) mask rows at a time
                q = idx[a : a + 512]
                rows = self.allowed(q[:, None], idx[None, :])
                first.append(torch.where(rows.any(1), rows.int().argmax(1), q))
            self._first = torch.cat(first)
        return self._first

    def first_key_of(self, start: int, end: int) -> int:
        """The first key any query in [start, end) may attend to."""
        return int(self.first_keys()[start:end].min())

    def window(self, start: int, end: int) -> DecodeWindow:
        """Keys and mask for a cached call over queries [start, end) (see `DecodeWindow`)."""
        if not 0 <= start < end <= self.length:
            raise ValueError(f"expected query positions 0 <= start < end <= {self.length}, given [{start}, {end})")
        lo = self.first_key_of(start, end)
        device = self.anchor.device
        q = torch.arange(start, end, device=device)
        mask = self.allowed(q[:, None], torch.arange(lo, end, device=device)[None, :])
        return DecodeWindow(start, end, lo, mask)

    def _set_blocks(self, q_index: Tensor, k_index: Tensor) -> None:
        qv, kv = q_index >= 0, k_index >= 0
        mask = self.allowed(q_index.clamp(min=0)[:, :, None], k_index.clamp(min=0)[:, None, :])
        mask = mask & qv[:, :, None] & kv[:, None, :]
        flat = q_index.flatten()
        if not torch.equal(flat[flat >= 0].sort().values, torch.arange(self.length)):
            raise AssertionError("query blocks must cover every position exactly once")
        # unblock[p] = where position p sits in the flattened (blocks x block length) layout
        unblock = torch.empty(self.length, dtype=torch.long)
        unblock[flat[flat >= 0]] = torch.nonzero(flat >= 0).squeeze(1)
        self.register_buffer("q_index", q_index.clamp(min=0), persistent=False)
        self.register_buffer("k_index", k_index.clamp(min=0), persistent=False)
        self.register_buffer("block_mask", mask, persistent=False)
        self.register_buffer("unblock", unblock, persistent=False)

    def check_length(self, q: Tensor, k: Tensor) -> None:
        if q.shape[-2] != self.length or k.shape[-2] != self.length:
            raise ValueError(f"expected sequences of length {self.length}, given {q.shape[-2]} and {k.shape[-2]}")

    def forward(self, q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0) -> Tensor:
        """Attention over the whole sequence: q, k, v (B, heads, N, d) -> (B, heads, N, d_v)."""
        self.check_length(q, k)
        b, h = q.shape[:2]
        fold = "b h n l d -> (b h) n l d"
        qb = rearrange(q[:, :, self.q_index], fold)  # (B*h, blocks, Lq, d)
        kb = rearrange(k[:, :, self.k_index], fold)  # (B*h, blocks, Lk, d)
        vb = rearrange(v[:, :, self.k_index], fold)
        out = attend(qb, kb, vb, self.block_mask, dropout_p)
        out = rearrange(out, "(b h) n l d -> b h (n l) d", b=b, h=h)
        return out[:, :, self.unblock]


class CausalPattern(AttentionPattern):
    """Plain causal attention: key <= query, or key < query with `strict=True`.

    One block holding everything; the non-strict case uses SDPA's built-in causal masking
    (flash kernels on GPU), the strict one a dense mask.
    """

    def __init__(self, length: int, strict: bool = False) -> None:
        super().__init__(length)
        self.strict = strict

    def allowed(self, qi: Tensor, ki: Tensor) -> Tensor:
        return ki < qi if self.strict else ki <= qi

    def first_key_of(self, start: int, end: int) -> int:
        return 0

    def forward(self, q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0) -> Tensor:
        self.check_length(q, k)
        if self.strict:
            return attend(q, k, v, self.dense(), dropout_p)
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)

    def extra_repr(self) -> str:
        return f"length={self.length}, strict={self.strict}"


class FullPattern(AttentionPattern):
    """Every query sees every key: the bidirectional pattern of an encoder (VideoGPT's context-frame
    encoder), one block, SDPA without a mask."""

    def allowed(self, qi: Tensor, ki: Tensor) -> Tensor:
        return torch.ones(torch.broadcast_shapes(qi.shape, ki.shape), dtype=torch.bool, device=qi.device)

    def first_key_of(self, start: int, end: int) -> int:
        return 0

    def forward(self, q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0) -> Tensor:
        self.check_length(q, k)
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)


class Local1DPattern(AttentionPattern):
    """Query blocks of `block` positions; each sees itself causally and the `memory` positions before it."""

    def __init__(self, length: int, block: int, memory: int) -> None:
        super().__init__(length)
        if block < 1 or memory < 0:
            raise ValueError(f"local1d needs block >= 1 and memory >= 0, given block={block}, memory={memory}")
        self.block, self.memory = block, memory
        n_blocks = -(-length // block)
        starts = torch.arange(n_blocks)[:, None] * block
        q_index = starts + torch.arange(block)[None]
        k_index = starts - memory + torch.arange(memory + block)[None]
        q_index[q_index >= length] = -1
        k_index[(k_index < 0) | (k_index >= length)] = -1
        self._set_blocks(q_index, k_index)

    def allowed(self, qi: Tensor, ki: Tensor) -> Tensor:
        return (ki <= qi) & (ki >= qi // self.block * self.block - self.memory)

    def first_key_of(self, start: int, end: int) -> int:
        return max(start // self.block * self.block - self.memory, 0)

    def extra_repr(self) -> str:
        return f"length={self.length}, block={self.block}, memory={self.memory}"


def block_raster_order(height: int, width: int, block_h: int, block_w: int) -> list[tuple[int, int]]:
    """Pixels block by block: blocks of (block_h, block_w) in raster order, raster inside each
    block. Edge blocks are clipped when the sizes do not divide the image."""
    order = []
    for r0 in range(0, height, block_h):
        for c0 in range(0, width, block_w):
            order.extend((i, j) for i in range(r0, min(r0 + block_h, height)) for j in range(c0, min(c0 + block_w, width)))
    return order


class Local2DPattern(AttentionPattern):
    """2D local attention over (H, W) pixels with `channels` positions per pixel.

    Positions follow `block_raster_order` with channels innermost: position = rank * C + c.
    See the module doc for the memory region.
    """

    row: Tensor
    col: Tensor

    def __init__(self, height: int, width: int, channels: int, block: tuple[int, int], memory: tuple[int, int]) -> None:
        super().__init__(height * width * channels)
        (bh, bw), (mh, mw) = block, memory
        if bh < 1 or bw < 1 or mh < 0 or mw < 0:
            raise ValueError(f"local2d needs block sizes >= 1 and memory sizes >= 0, given block={block}, memory={memory}")
        self.height, self.width, self.channels = height, width, channels
        self.block, self.memory = (bh, bw), (mh, mw)
        self.order = block_raster_order(height, width, bh, bw)
        rank = torch.empty(height, width, dtype=torch.long)
        for r, (i, j) in enumerate(self.order):
            rank[i, j] = r
        pix = torch.tensor(self.order).repeat_interleave(channels, 0)  # (N, 2)
        self.register_buffer("row", pix[:, 0].contiguous(), persistent=False)
        self.register_buffer("col", pix[:, 1].contiguous(), persistent=False)
        ch = torch.arange(channels)
        # pixel ranks with a border of -1 wide enough for every window, so windows are plain slices
        padded = torch.full((mh + height + bh, mw + width + bw + mw), -1, dtype=torch.long)
        padded[mh : mh + height, mw : mw + width] = rank

        def positions(top: int, left: int, n_rows: int, n_cols: int) -> Tensor:
            """Positions of the window's pixels (all channels), -1 outside the image."""
            r = padded[mh + top : mh + top + n_rows, mw + left : mw + left + n_cols, None]
            return torch.where(r >= 0, r * channels + ch, -1).flatten()

        q_blocks, k_blocks = [], []
        for r0 in range(0, height, bh):
            for c0 in range(0, width, bw):
                q_blocks.append(positions(r0, c0, bh, bw))
                k_blocks.append(positions(r0 - mh, c0 - mw, mh + bh, mw + bw + mw))
        self._set_blocks(torch.stack(q_blocks), torch.stack(k_blocks))

    def allowed(self, qi: Tensor, ki: Tensor) -> Tensor:
        (bh, bw), (mh, mw) = self.block, self.memory
        row, col = self.row.to(qi.device), self.col.to(qi.device)
        r0, c0 = row[qi] // bh * bh, col[qi] // bw * bw
        rk, ck = row[ki], col[ki]
        return (ki <= qi) & (rk >= r0 - mh) & (rk < r0 + bh) & (ck >= c0 - mw) & (ck < c0 + bw + mw)

    def extra_repr(self) -> str:
        return f"image=({self.height}, {self.width}), channels={self.channels}, block={self.block}, memory={self.memory}"


def _members(ids: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """(n, most members) positions of each id 0..n-1 in ascending order, padded with -1 at the end
    (ids < 0 belong to none), and the (n,) member counts."""
    pos = torch.nonzero(ids >= 0).squeeze(1)
    pos = pos[torch.argsort(ids[pos], stable=True)]  # grouped by id, ascending inside each group
    gid = ids[pos]
    counts = torch.bincount(gid, minlength=n)
    out = torch.full((n, max(int(counts.max()) if counts.numel() else 0, 1)), -1, dtype=torch.long)
    out[gid, torch.arange(len(pos)) - (counts.cumsum(0) - counts)[gid]] = pos
    return out, counts


class Block3DPattern(AttentionPattern):
    """Block-local attention over a (T, H, W) volume with `channels` positions per pixel.

    The volume is cut into blocks of `block` = (bt, bh, bw) pixels (edge blocks clipped); a query
    sees the keys whose pixel lies in its own block, and with `causal` (a masked layer) only those
    at or before it in the sequence; `causal=False` is an unmasked layer (an encoder's). The
    sequence is the generation `order` of (t, h, w) pixels (default raster), channels innermost:
    position = rank * C + c. A block need not be contiguous in the sequence: in a subscale order
    (`argen.orders.subscale_order`) a block is visited once per slice, so a query of a later slice
    sees its block's pixels of every earlier slice and the earlier ones of its own.

    `key_shift` = s places key position j at the pixel of sequence position j - s (positions
    j < s belong to no block and are seen by none). A decoder over a shifted slot sequence (slot j
    carries value j-1 and predicts value j) uses s = 1 in its first layer: slot q then reads
    exactly the values before q whose pixel lies in q's block, the block's own pixels included,
    instead of the predecessors of its block's pixels. Later layers use s = 0 (slot features
    belong to the pixel they predict).

    Cached calls read only the allowed keys: `window` gathers them (`DecodeWindow.keys`, at most a
    block's worth per query) instead of a slice that, in subscale order, would span almost all of
    the sequence.
    """

    q_block: Tensor
    k_block: Tensor

    def __init__(self, volume: tuple[int, int, int], block: tuple[int, int, int],
                 order: Sequence[Sequence[int]] | None = None, channels: int = 1, *, causal: bool = True,
                 key_shift: int = 0) -> None:
        volume, block = tuple(volume), tuple(block)
        if len(volume) != 3 or len(block) != 3 or min(volume) < 1 or min(block) < 1 or channels < 1 or key_shift < 0:
            raise ValueError(f"block3d needs a volume (T, H, W) and block (bt, bh, bw) of sizes >= 1, channels >= 1 and "
                             f"key_shift >= 0, given volume={volume}, block={block}, channels={channels}, key_shift={key_shift}")
        t, h, w = volume
        super().__init__(t * h * w * channels)
        self.volume, self.block, self.channels, self.causal, self.key_shift = volume, block, channels, causal, key_shift
        pix = torch.tensor([tuple(int(v) for v in p) for p in order], dtype=torch.long) if order is not None else \
            torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"), -1).view(-1, 3)
        shaped = pix.ndim == 2 and tuple(pix.shape) == (t * h * w, 3)
        in_range = shaped and bool((pix >= 0).all()) and bool((pix < torch.tensor(volume)).all())
        flat = pix[:, 0] * h * w + pix[:, 1] * w + pix[:, 2] if in_range else None
        if flat is None or not torch.equal(flat.sort().values, torch.arange(t * h * w)):
            raise ValueError(f"expected an order visiting each of the {t}x{h}x{w} pixels (t, h, w) exactly once, given "
                             f"{tuple(pix.shape)} positions")
        nb = [-(-n // b) for n, b in zip(volume, block)]
        pix_block = (pix[:, 0] // block[0] * nb[1] + pix[:, 1] // block[1]) * nb[2] + pix[:, 2] // block[2]
        q_block = pix_block.repeat_interleave(channels)
        k_block = torch.full_like(q_block, -1)
        k_block[key_shift:] = q_block[: self.length - key_shift]
        n_blocks = nb[0] * nb[1] * nb[2]
        self._q_block, self._k_block = q_block, k_block  # CPU copies for window bounds (no GPU sync)
        self.register_buffer("q_block", q_block.clone(), persistent=False)
        self.register_buffer("k_block", k_block.clone(), persistent=False)
        q_index, _ = _members(q_block, n_blocks)
        self._keys, self._key_count = _members(k_block, n_blocks)  # per block: its key positions, ascending
        self._set_blocks(q_index, self._keys)

    def allowed(self, qi: Tensor, ki: Tensor) -> Tensor:
        qb, kb = self.q_block.to(qi.device), self.k_block.to(qi.device)
        same = qb[qi] == kb[ki]  # a key of no block (-1) matches none
        return same & (ki <= qi) if self.causal else same

    def first_keys(self) -> Tensor:
        if self._first is None:
            first = self._keys[:, 0][self._q_block]  # each query's block's first key (-1: none)
            idx = torch.arange(self.length)
            ok = (first >= 0) & (first <= idx) if self.causal else first >= 0
            self._first = torch.where(ok, first, idx)
        return self._first

    def window(self, start: int, end: int) -> DecodeWindow:
        """The allowed keys of queries [start, end), gathered (`DecodeWindow.keys`), and their mask."""
        if not self.causal:
            raise ValueError("an unmasked block3d pattern (causal=False) lets queries see later keys: expected a causal "
                             "pattern for cached decoding, given causal=False")
        if not 0 <= start < end <= self.length:
            raise ValueError(f"expected query positions 0 <= start < end <= {self.length}, given [{start}, {end})")
        if end - start == 1:
            b = int(self._q_block[start])
            row = self._keys[b, : int(self._key_count[b])]
            keys = row[: int(torch.searchsorted(row, end))]
        else:
            rows = self._keys[self._q_block[start:end].unique()].flatten()
            keys = rows[(rows >= 0) & (rows < end)].unique()
        if not keys.numel():  # no query sees a key: one masked-off key keeps the shapes valid
            keys = torch.tensor([start])
        device = self.anchor.device
        keys_d = keys.to(device)
        mask = self.allowed(torch.arange(start, end, device=device)[:, None], keys_d[None, :])
        return DecodeWindow(start, end, int(keys[0]), mask, keys=keys_d)

    def extra_repr(self) -> str:
        return (f"volume={self.volume}, block={self.block}, channels={self.channels}, causal={self.causal}, "
                f"key_shift={self.key_shift}")


class LayerPatterns(nn.Module):
    """One attention pattern per layer of a trunk (`argen.nn.transformer.Transformer` takes a list
    of patterns), e.g. block shapes alternating between layers as in the Video Transformer.

    Patterns repeated between layers are kept once (`distinct`), and a cached call computes each
    distinct pattern's `window` once: `window(start, end)` returns one `DecodeWindow` per layer.
    `first_keys` is the earliest over the layers (the cache slots any layer may read).
    """

    def __init__(self, patterns: Sequence[AttentionPattern]) -> None:
        super().__init__()
        patterns = list(patterns)
        if not patterns or not all(isinstance(p, AttentionPattern) for p in patterns):
            raise ValueError(f"expected one or more attention patterns, given {[type(p).__name__ for p in patterns]}")
        lengths = sorted({p.length for p in patterns})
        if len(lengths) != 1:
            raise ValueError(f"expected the layers' patterns over one sequence length, given lengths {lengths}")
        distinct: list[AttentionPattern] = []
        index = []
        for p in patterns:
            same = [i for i, d in enumerate(distinct) if d is p]
            index.append(same[0] if same else len(distinct))
            if not same:
                distinct.append(p)
        self.distinct = nn.ModuleList(distinct)
        self.layer_index = tuple(index)
        self.length = lengths[0]

    def __len__(self) -> int:
        return len(self.layer_index)

    def __getitem__(self, layer: int) -> AttentionPattern:
        return self.distinct[self.layer_index[layer]]  # type: ignore[return-value]

    def first_keys(self) -> Tensor:
        return torch.stack([p.first_keys() for p in self.distinct]).min(0).values  # type: ignore[union-attr]

    def first_key_of(self, start: int, end: int) -> int:
        return min(p.first_key_of(start, end) for p in self.distinct)  # type: ignore[operator]

    def window(self, start: int, end: int) -> list[DecodeWindow]:
        windows = [p.window(start, end) for p in self.distinct]  # type: ignore[operator]
        return [windows[i] for i in self.layer_index]

    def extra_repr(self) -> str:
        return f"length={self.length}, layers={list(self.layer_index)}"


# ----- positions ----------------------------------------------------------------------------------
class Rotary(nn.Module):
    """Rotary position embedding (RoFormer) over N-d positions, e.g. 2-D RoPE for a code grid.

    Each head's d dims are read as d/2 pairs (dim i with dim i + d/2); pair i turns by angle
    pos[axis] * base^(-j/f), where the pairs are dealt to the axes in equal sections of f = d/(2A)
    (A axes: for a grid half the head's dims rotate by row, half by column, as in LlamaGen). A
    query-key product then depends only on the per-axis offset between their positions.
    `positions` (N, A) are the sequence positions' coordinates; tables are computed in float64
    once and kept as non-persistent float32 buffers (no state-dict entry).
    """

    cos: Tensor
    sin: Tensor

    def __init__(self, head_dim: int, positions: Tensor, base: float = 10000.0) -> None:
        super().__init__()
        if positions.ndim != 2 or positions.shape[0] < 1:
            raise ValueError(f"expected positions of shape (N >= 1, axes), given {tuple(positions.shape)}")
        axes = positions.shape[1]
        if head_dim < 2 * axes or head_dim % (2 * axes):
            raise ValueError(f"rotary positions over {axes} axes need a head width divisible by {2 * axes}, given {head_dim}")
        f = head_dim // (2 * axes)
        inv_freq = base ** (-torch.arange(f, dtype=torch.float64) / f)
        angles = (positions.to(torch.float64)[:, :, None] * inv_freq).flatten(1)  # (N, d/2), axis-major
        self.length, self.head_dim = positions.shape[0], head_dim
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, t: Tensor, start: int = 0) -> Tensor:
        """t (B, heads, T, d) holding positions [start, start + T) -> t rotated (same shape)."""
        end = start + t.shape[-2]
        if t.shape[-1] != self.head_dim or not 0 <= start < end <= self.length:
            raise ValueError(f"expected (B, heads, T, {self.head_dim}) at positions within [0, {self.length}), "
                             f"given {tuple(t.shape)} from position {start}")
        cos, sin = self.cos[start:end].to(t.dtype), self.sin[start:end].to(t.dtype)
        a, b = t.chunk(2, -1)
        return torch.cat([a * cos - b * sin, a * sin + b * cos], -1)

    def extra_repr(self) -> str:
        return f"length={self.length}, head_dim={self.head_dim}"


# ----- layers -------------------------------------------------------------------------------------
class MultiHeadAttention(nn.Module):
    """Projections around `attend`: queries from `x`, keys/values from `kv` (default `x`).

    Separate input widths and q/k and value widths let PixelSNAIL draw queries from the residual
    stream and keys/values from the input; a transformer uses it as plain self-attention.
    `out_bias=False` keeps the output of a query that sees no key exactly zero.
    """

    def __init__(self, dim: int, heads: int, *, kv_dim: int | None = None, qk_dim: int | None = None,
                 v_dim: int | None = None, out_dim: int | None = None, dropout: float = 0.0,
                 out_bias: bool = True) -> None:
        super().__init__()
        qk_dim, v_dim = qk_dim or dim, v_dim or dim
        if qk_dim % heads or v_dim % heads:
            raise ValueError(f"attention widths must be divisible by heads={heads}, given qk_dim={qk_dim}, v_dim={v_dim}")
        self.heads, self.qk_dim, self.v_dim, self.dropout = heads, qk_dim, v_dim, dropout
        self.q = nn.Linear(dim, qk_dim)
        self.kv = nn.Linear(kv_dim or dim, qk_dim + v_dim)
        self.out = nn.Linear(v_dim, out_dim or dim, bias=out_bias)

    def new_cache(self, batch: int, max_len: int, device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32) -> KVCache:
        return KVCache(batch, self.heads, max_len, self.qk_dim // self.heads, self.v_dim // self.heads,
                       device=device, dtype=dtype)

    def keys_values(self, kv: Tensor) -> tuple[Tensor, Tensor]:
        """Projected keys and values (B, heads, T, d) of `kv` (B, T, kv_dim): what a cache keeps
        (cross-attention projects its context once with this and reuses the result)."""
        k, v = self.kv(kv).split([self.qk_dim, self.v_dim], dim=-1)
        split = "b t (h d) -> b h t d"
        return rearrange(k, split, h=self.heads), rearrange(v, split, h=self.heads)

    def attend_to(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
        """Queries from x (B, T, dim) attend to given keys/values (B, heads, M, d) where `mask`
        (broadcastable to (B, heads, T, M), True = may attend; None = everywhere) allows it."""
        return self._attend_queries(rearrange(self.q(x), "b t (h d) -> b h t d", h=self.heads), k, v, mask)

    def _attend_queries(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """`attend_to` from projected queries q (B, heads, T, d) (rotated ones, with `Rotary`)."""
        p = self.dropout if self.training else 0.0
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        else:
            out = attend(q, k, v, mask, p)
        return self.out(rearrange(out, "b h t d -> b t (h d)"))

    def forward(self, x: Tensor, pattern: AttentionPattern, kv: Tensor | None = None,
                cache: KVCache | None = None, start: int = 0, window: DecodeWindow | None = None,
                rotary: Rotary | None = None) -> Tensor:
        """x (B, T, dim) -> (B, T, out_dim).

        Without a cache, T is the whole sequence and `pattern` decides who sees whom. With a
        cache, x holds positions [start, start + T): their keys/values are written to the cache
        and they attend to its slice `window` (default `pattern.window(start, start + T)`; a
        stack of layers computes it once and passes it to each) under the pattern's mask
        (prefill: a chunk; decode: T=1).

        `rotary` (self-attention only) rotates queries and keys by their positions before they
        meet; keys are cached rotated, so a decode step rotates only its own query and key.
        """
        if rotary is not None and kv is not None:
            raise ValueError("rotary positions are for self-attention: expected kv=None with rotary, given a kv tensor")
        k, v = self.keys_values(x if kv is None else kv)
        if cache is None:
            q = rearrange(self.q(x), "b t (h d) -> b h t d", h=self.heads)
            if rotary is not None:
                q, k = rotary(q), rotary(k)
            out = pattern(q, k, v, self.dropout if self.training else 0.0)
            return self.out(rearrange(out, "b h t d -> b t (h d)"))
        end = start + x.shape[-2]
        window = pattern.window(start, end) if window is None else window
        if (window.start, window.end) != (start, end):
            raise ValueError(f"expected a window over queries [{start}, {end}), given [{window.start}, {window.end})")
        if rotary is not None:
            k = rotary(k, start)
        k, v = cache.update(start, k, v)
        if window.keys is None:
            k, v = k[:, :, window.lo : end], v[:, :, window.lo : end]
        else:
            k, v = k[:, :, window.keys], v[:, :, window.keys]
        if rotary is None:
            return self.attend_to(x, k, v, window.mask)
        q = rotary(rearrange(self.q(x), "b t (h d) -> b h t d", h=self.heads), start)
        return self._attend_queries(q, k, v, window.mask)


def map_attention(attn: MultiHeadAttention, pattern: AttentionPattern, x: Tensor, kv: Tensor | None = None) -> Tensor:
    """`attn` between the pixels of (B, C, H, W) feature maps (raster positions): x (B, dim, H, W),
    kv (B, kv_dim, H, W) or None (= x) -> (B, out_dim, H, W).

    Registered as an fx leaf in `argen.nn`, so the conv planner (`argen.sampling.conv_plan`) traces
    it as one layer whose query at pixel p reads the key/value map only where `pattern.allowed(p, .)`
    holds; a model just calls it.
    """
    seq = "b c h w -> b (h w) c"
    out = attn(rearrange(x, seq), pattern, kv=None if kv is None else rearrange(kv, seq))
    return rearrange(out, "b (h w) c -> b c h w", h=x.shape[2])
