"""Generation orders over an (H, W) grid: raster, s-curve and a generalized Hilbert curve.

An order is a LongTensor (H*W, 2) of (row, col) positions, each pixel exactly once. Every base
order comes in 8 variants, the symmetries of the square (LMConv, Jain et al. 2020, trains and
evaluates over such variants):

    variant bit 0: mirror columns (c -> W-1-c)
    variant bit 1: mirror rows    (r -> H-1-r)
    variant bit 2: transpose      (the base order is generated on the (W, H) grid and its
                                   coordinates swapped, so non-square images work too)

The transpose is applied first, then the mirrors. Variant 0 is the base order.

The Hilbert order is the generalized ("gilbert") Hilbert curve of Jakub Cervený, which fills
any rectangle by recursion, each piece running from one corner to the adjacent corner along its
major axis. Taken along the longer side, as gilbert does, an odd longer side with an even shorter
side (e.g. 4 x 5) forces one diagonal step: the two end corners then have the same colour on a
chessboard with an even number of squares, which no path of 4-neighbour steps can join. Running
the major axis along the even side in that case removes it, so here consecutive pixels are
4-neighbours for every size (tests/test_orders.py checks many sizes). The curve is symmetric
under swapping the axes and its major axis is fixed by the shape, so on non-square images a
transposed Hilbert variant equals a mirrored one (4 distinct variants; 8 on squares).

Orders are pure functions of (name, H, W, variant) and cached.

`subscale_order(shape, factors)` is separate from the named orders (it takes factors, and any
number of axes): the N-d subscale order of the Video Transformer, a list of position tuples.
"""
from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator, Sequence
from typing import Union

import torch
from torch import Tensor

ORDER_NAMES: tuple[str, ...] = ("raster", "s_curve", "hilbert")
NUM_VARIANTS = 8

#: Anything that names or spells out an order: a name ("hilbert", "hilbert:3"), a (name, variant)
#: pair, a LongTensor (H*W, 2) [or (B, H*W, 2), one order per example] or a list of (row, col).
OrderSpec = Union[str, tuple[str, int], Tensor, Sequence[Sequence[int]]]


def list_orders() -> list[str]:
    """Names of the base orders; each has variants 0..7."""
    return list(ORDER_NAMES)


def _canonical_name(name: str) -> str:
    key = str(name).strip().lower().replace("-", "_")
    if key not in ORDER_NAMES:
        raise ValueError(f"unknown order {name!r}; expected one of {list(ORDER_NAMES)}")
    return key


# ----- base orders (lists of (row, col)) ---------------------------------------------------------
def _raster(h: int, w: int) -> list[tuple[int, int]]:
    return [(r, c) for r in range(h) for c in range(w)]


def _s_curve(h: int, w: int) -> list[tuple[int, int]]:
    """Boustrophedon: even rows left to right, odd rows right to left (every step adjacent)."""
    return [(r, c if r % 2 == 0 else w - 1 - c) for r in range(h) for c in range(w)]


def _sign(v: int) -> int:
    return (v > 0) - (v < 0)


def _gilbert(x: int, y: int, ax: int, ay: int, bx: int, by: int) -> Iterator[tuple[int, int]]:
    """Fill the rectangle at (x, y) spanned by the major vector a and the minor vector b.

    Yields (x, y) = (col, row). The curve starts at (x, y) and ends at the far end of `a`
    (the corner adjacent along the major axis), which lets the pieces chain together.
    """
    w, h = abs(ax + ay), abs(bx + by)
    dax, day = _sign(ax), _sign(ay)  # unit step along the major axis
    dbx, dby = _sign(bx), _sign(by)  # unit step along the minor axis
    if h == 1:  # a single row
        for i in range(w):
            yield x + i * dax, y + i * day
        return
    if w == 1:  # a single column
        for i in range(h):
            yield x + i * dbx, y + i * dby
        return
    # halve with truncation toward zero: the vectors may point in negative directions
    ax2, ay2 = int(ax / 2), int(ay / 2)
    bx2, by2 = int(bx / 2), int(by / 2)
    w2, h2 = abs(ax2 + ay2), abs(bx2 + by2)
    if 2 * w > 3 * h:
        # long and thin: split along the major axis into two halves, each walked the same way;
        # an even first half keeps the parity that lets the second half start next to its end
        if w2 % 2 and w > 2:
            ax2, ay2 = ax2 + dax, ay2 + day
        yield from _gilbert(x, y, ax2, ay2, bx, by)
        yield from _gilbert(x + ax2, y + ay2, ax - ax2, ay - ay2, bx, by)
    else:
        # the Hilbert pattern: up the minor axis, across the whole major axis, back down
        if h2 % 2 and h > 2:
            bx2, by2 = bx2 + dbx, by2 + dby
        yield from _gilbert(x, y, bx2, by2, ax2, ay2)
        yield from _gilbert(x + bx2, y + by2, ax, ay, bx - bx2, by - by2)
        yield from _gilbert(
            x + (ax - dax) + (bx2 - dbx), y + (ay - day) + (by2 - dby), -bx2, -by2, -(ax - ax2), -(ay - ay2)
        )


def _hilbert(h: int, w: int) -> list[tuple[int, int]]:
    """Generalized Hilbert curve on an h x w grid starting at (0, 0).

    The major axis (the curve ends at its far corner) is the longer side, except when that side
    is odd and the other even: a path between two same-colour corners of an even chessboard
    would need a diagonal step, so the curve runs along the even side instead.
    """
    along_width = w % 2 == 0 if (max(h, w) % 2 == 1 and min(h, w) % 2 == 0) else w >= h
    pts = _gilbert(0, 0, w, 0, 0, h) if along_width else _gilbert(0, 0, 0, h, w, 0)
    return [(r, c) for c, r in pts]


_BASE = {"raster": _raster, "s_curve": _s_curve, "hilbert": _hilbert}


@functools.lru_cache(maxsize=256)
def _cached_order(name: str, height: int, width: int, variant: int) -> Tensor:
    transpose, flip_rows, flip_cols = bool(variant & 4), bool(variant & 2), bool(variant & 1)
    if transpose:
        order = torch.tensor(_BASE[name](width, height), dtype=torch.long).flip(1)  # swap (r, c)
    else:
        order = torch.tensor(_BASE[name](height, width), dtype=torch.long)
    order = order.view(height * width, 2)
    if flip_rows:
        order[:, 0] = height - 1 - order[:, 0]
    if flip_cols:
        order[:, 1] = width - 1 - order[:, 1]
    return order


def get_order(name: str, height: int, width: int, variant: int = 0) -> Tensor:
    """LongTensor (H*W, 2) of (row, col): the order `name` (see list_orders) in `variant` 0..7."""
    key = _canonical_name(name)
    if not (isinstance(height, int) and isinstance(width, int)) or height < 1 or width < 1:
        raise ValueError(f"expected positive integer height and width, given {height!r}, {width!r}")
    if not isinstance(variant, int) or not 0 <= variant < NUM_VARIANTS:
        raise ValueError(f"variant must be an integer in [0, {NUM_VARIANTS - 1}], given {variant!r}")
    return _cached_order(key, height, width, variant).clone()  # callers may modify their copy


def parse_order_name(spec: str) -> tuple[str, int]:
    """"hilbert" -> ("hilbert", 0); "hilbert:3" -> ("hilbert", 3)."""
    name, _, var = str(spec).partition(":")
    try:
        variant = int(var) if var else 0
    except ValueError:
        raise ValueError(f"expected an order name like 'hilbert' or 'hilbert:3', given {spec!r}") from None
    if not 0 <= variant < NUM_VARIANTS:
        raise ValueError(f"variant must be in [0, {NUM_VARIANTS - 1}], given {variant} in {spec!r}")
    return _canonical_name(name), variant


def check_order(order: Tensor, height: int, width: int) -> Tensor:
    """Validate an order (H*W, 2) or (B, H*W, 2): in range and each pixel exactly once."""
    if not isinstance(order, Tensor) or order.dtype != torch.long:
        raise ValueError(f"expected an order as a torch.long tensor, given {getattr(order, 'dtype', type(order).__name__)}")
    n = height * width
    if order.dim() not in (2, 3) or tuple(order.shape[-2:]) != (n, 2):
        raise ValueError(f"expected an order of shape ({n}, 2) or (B, {n}, 2), given {tuple(order.shape)}")
    rows, cols = order[..., 0], order[..., 1]
    if order.numel() and (int(rows.min()) < 0 or int(rows.max()) >= height or int(cols.min()) < 0 or int(cols.max()) >= width):
        raise ValueError(f"order positions must lie in [0, {height}) x [0, {width}), given rows "
                         f"[{int(rows.min())}, {int(rows.max())}], cols [{int(cols.min())}, {int(cols.max())}]")
    flat = (rows * width + cols).view(-1, n).sort(-1).values
    if not torch.equal(flat, torch.arange(n, device=order.device).expand_as(flat)):
        raise ValueError("order must visit every pixel exactly once")
    return order


def resolve_order(spec: OrderSpec, height: int, width: int) -> Tensor:
    """Any OrderSpec as a checked LongTensor (H*W, 2) (or (B, H*W, 2) when given per example)."""
    if isinstance(spec, str):
        name, variant = parse_order_name(spec)
        return get_order(name, height, width, variant)
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str):
        return get_order(spec[0], height, width, int(spec[1]))
    if not isinstance(spec, Tensor):
        try:
            spec = torch.as_tensor([tuple(int(v) for v in p) for p in spec], dtype=torch.long)
        except (TypeError, ValueError):
            raise ValueError(f"expected an order name, (name, variant) or (row, col) positions, given {type(spec).__name__}") from None
    return check_order(spec, height, width)


def order_ranks(order: Tensor, height: int, width: int) -> Tensor:
    """(H, W) [or (B, H, W)] long: the step at which each pixel is visited (0 = first)."""
    n = height * width
    flat = order[..., 0] * width + order[..., 1]  # (..., n)
    steps = torch.arange(n, device=order.device).expand_as(flat)
    ranks = torch.empty_like(flat).scatter_(-1, flat, steps)
    return ranks.view(*order.shape[:-2], height, width)


def order_visiting_first(known: Tensor, base_order: Tensor) -> Tensor:
    """The order that visits the `known` (H, W) pixels first, then the rest, each in base order.

    Completion samples the unknown pixels in this order, so each of them conditions on every
    known pixel (within the network's receptive field), not only those earlier in raster order.
    """
    if not isinstance(known, Tensor) or known.dtype != torch.bool or known.dim() != 2:
        raise ValueError(f"expected known as a 2-d torch.bool tensor (H, W), given "
                         f"{getattr(known, 'dtype', type(known).__name__)} {tuple(getattr(known, 'shape', ()))}")
    height, width = known.shape
    base_order = check_order(base_order, height, width)
    if base_order.dim() != 2:
        raise ValueError(f"expected one base order (H*W, 2), given shape {tuple(base_order.shape)}")
    seen = known.to(base_order.device)[base_order[:, 0], base_order[:, 1]]
    return base_order[torch.argsort((~seen).to(torch.uint8), stable=True)]


def order_for_known(known: Tensor, name: str, variants: Sequence[int] = tuple(range(NUM_VARIANTS))) -> Tensor:
    """A completion order for the `known` (H, W) pixels: the variant of order `name` that visits
    them earliest (smallest mean rank; ties go to the earlier entry of `variants`), rearranged by
    order_visiting_first.

    The choice matters beyond putting known pixels first: a pixel's features depend only on
    pixels before it, so information from a known pixel reaches the unknown region only through
    pixels visited after it. A variant that sweeps from the far side of the known region towards
    the unknown one (for a missing top half: start at the bottom, as in the LMConv paper) lets
    every known pixel inform the completion.
    """
    if not isinstance(known, Tensor) or known.dtype != torch.bool or known.dim() != 2:
        raise ValueError(f"expected known as a 2-d torch.bool tensor (H, W), given "
                         f"{getattr(known, 'dtype', type(known).__name__)} {tuple(getattr(known, 'shape', ()))}")
    if not variants:
        raise ValueError("expected at least one variant, given none")
    height, width = known.shape
    known = known.cpu()
    best, best_cost = None, None
    for v in variants:
        order = get_order(name, height, width, v)
        cost = int(order_ranks(order, height, width)[known].sum())
        if best_cost is None or cost < best_cost:
            best, best_cost = order, cost
    return order_visiting_first(known, best)


# ----- subscale orders (N-d: images (H, W), video (T, H, W)) -------------------------------------
def _check_subscale(shape: Sequence[int], factors: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    shape, factors = tuple(shape), tuple(factors)
    if not shape or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in shape):
        raise ValueError(f"expected a shape of positive integers, given {shape!r}")
    if len(factors) != len(shape) or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in factors):
        raise ValueError(f"expected {len(shape)} subscale factors >= 1 (one per axis of {shape}), given {factors!r}")
    return shape, factors


def subscale_slice(pos: Sequence[int], factors: Sequence[int]) -> int:
    """The slice a position belongs to: the lexicographic rank of its offsets (p_i mod s_i)."""
    index = 0
    for p, s in zip(pos, factors):
        index = index * s + p % s
    return index


@functools.lru_cache(maxsize=64)
def _cached_subscale(shape: tuple[int, ...], factors: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    out: list[tuple[int, ...]] = []
    for offsets in itertools.product(*(range(s) for s in factors)):
        out.extend(itertools.product(*(range(o, n, s) for o, n, s in zip(offsets, shape, factors))))
    return tuple(out)


def subscale_order(shape: Sequence[int], factors: Sequence[int]) -> list[tuple[int, ...]]:
    """Subscale order over an N-d grid (Menick & Kalchbrenner; 3-D in Weissenborn et al.'s Video
    Transformer): the grid is cut into prod(factors) slices, slice (o_1, ..., o_n) holding the
    positions p with p_i mod s_i = o_i (every s_i-th position along each axis). Slices are visited
    in lexicographic order of their offsets, positions inside a slice in raster order.

    `shape` (H, W) for images or (T, H, W) for video; factors need not divide the shape (edge slices
    are then smaller; a factor above its axis leaves some slices empty). Factors of all 1 give raster.
    """
    shape, factors = _check_subscale(shape, factors)
    return list(_cached_subscale(shape, factors))
