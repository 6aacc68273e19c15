"""Generation orders: permutations, adjacency of consecutive pixels, variants, completion orders."""
from __future__ import annotations

import itertools

import pytest
import torch

from argen.orders import (
    NUM_VARIANTS,
    _gilbert,
    get_order,
    list_orders,
    order_for_known,
    order_ranks,
    order_visiting_first,
    parse_order_name,
    resolve_order,
)

SIZES = [(1, 1), (1, 7), (7, 1), (2, 2), (2, 3), (3, 2), (4, 5), (5, 4), (5, 6), (6, 7), (7, 7), (8, 8), (3, 10), (9, 4)]


def _steps(order: torch.Tensor) -> torch.Tensor:
    """Manhattan length of each step between consecutive pixels."""
    return (order[1:] - order[:-1]).abs().sum(1)


def _is_permutation(order: torch.Tensor, h: int, w: int) -> bool:
    flat = order[:, 0] * w + order[:, 1]
    return order.shape == (h * w, 2) and torch.equal(flat.sort().values, torch.arange(h * w))


def test_list_orders():
    assert list_orders() == ["raster", "s_curve", "hilbert"]


@pytest.mark.parametrize("name", ["raster", "s_curve", "hilbert"])
def test_every_variant_is_a_permutation(name):
    for (h, w), v in itertools.product(SIZES, range(NUM_VARIANTS)):
        order = get_order(name, h, w, v)
        assert order.dtype == torch.long
        assert _is_permutation(order, h, w), (name, h, w, v)


def test_hilbert_adjacent_for_all_sizes():
    """Every pixel once and every step to a 4-neighbour, square or not, odd or even."""
    sizes = [(h, w) for h in range(1, 25) for w in range(1, 25)] + [(32, 48), (33, 64), (40, 37), (4, 45), (64, 64)]
    for h, w in sizes:
        order = get_order("hilbert", h, w)
        assert _is_permutation(order, h, w), (h, w)
        assert bool((_steps(order) == 1).all()), f"non-adjacent step in the {h}x{w} Hilbert order"


def test_gilbert_along_the_odd_long_side_needs_a_diagonal():
    """Why the major axis runs along the even side for odd x even sizes: along the odd (longer)
    side, both ends are same-coloured corners of an even chessboard and one diagonal step appears."""
    for h, w in [(4, 5), (6, 7), (4, 9)]:
        pts = torch.tensor(list(_gilbert(0, 0, w, 0, 0, h)))
        steps = (pts[1:] - pts[:-1]).abs()
        assert int((steps.sum(1) != 1).sum()) == 1 and int(steps.max()) == 1  # one diagonal step
        assert bool((_steps(get_order("hilbert", h, w)) == 1).all())


def test_hilbert_variants_stay_adjacent_and_differ():
    """8 distinct variants on squares; on other rectangles the curve's major axis is fixed by the
    shape, so a transpose equals a mirror and 4 variants remain."""
    for (h, w), distinct in [((8, 8), 8), ((7, 7), 8), ((5, 6), 4), ((6, 5), 4), ((7, 4), 4)]:
        orders = [get_order("hilbert", h, w, v) for v in range(NUM_VARIANTS)]
        for v, order in enumerate(orders):
            assert bool((_steps(order) == 1).all()), (h, w, v)
        assert len({tuple(o.flatten().tolist()) for o in orders}) == distinct, (h, w)
    for name in ("raster", "s_curve"):
        assert len({tuple(get_order(name, 5, 6, v).flatten().tolist()) for v in range(NUM_VARIANTS)}) == 8


def test_hilbert_on_powers_of_two_is_the_hilbert_curve():
    """On a 2^k square every aligned 2^j x 2^j block is visited in one contiguous run (and the
    curve starts and ends at two adjacent corners), the locality that defines the Hilbert curve."""
    n = 16
    order = get_order("hilbert", n, n)
    assert order[0].tolist() == [0, 0] and order[-1].tolist() in ([0, n - 1], [n - 1, 0])
    for block in (2, 4, 8):
        ids = (order[:, 0] // block) * (n // block) + order[:, 1] // block
        runs = int((ids[1:] != ids[:-1]).sum()) + 1
        assert runs == (n // block) ** 2, f"{block}x{block} blocks are not visited contiguously"


def test_s_curve_adjacent_and_raster_row_major():
    for h, w in SIZES:
        s = get_order("s_curve", h, w)
        assert bool((_steps(s) == 1).all()), (h, w)
        for v in range(NUM_VARIANTS):
            assert bool((_steps(get_order("s_curve", h, w, v)) == 1).all())
        assert get_order("raster", h, w).tolist() == [[r, c] for r in range(h) for c in range(w)]
    assert get_order("s_curve", 2, 3).tolist() == [[0, 0], [0, 1], [0, 2], [1, 2], [1, 1], [1, 0]]


def test_variant_semantics_on_non_square():
    """bit 0 mirrors columns, bit 1 mirrors rows, bit 2 transposes (generated on the (W, H) grid)."""
    h, w = 2, 3
    assert get_order("raster", h, w, 1).tolist() == [[0, 2], [0, 1], [0, 0], [1, 2], [1, 1], [1, 0]]
    assert get_order("raster", h, w, 2).tolist() == [[1, 0], [1, 1], [1, 2], [0, 0], [0, 1], [0, 2]]
    assert get_order("raster", h, w, 4).tolist() == [[0, 0], [1, 0], [0, 1], [1, 1], [0, 2], [1, 2]]  # column-major
    assert get_order("raster", h, w, 7).tolist() == [[1, 2], [0, 2], [1, 1], [0, 1], [1, 0], [0, 0]]
    # the 8 variants start at each corner twice, once along rows and once along columns
    starts = [tuple(get_order("s_curve", 4, 5, v)[0].tolist()) for v in range(NUM_VARIANTS)]
    assert sorted(set(starts)) == [(0, 0), (0, 4), (3, 0), (3, 4)]


def test_get_order_is_a_cached_pure_function_returning_copies():
    a = get_order("hilbert", 6, 7, 3)
    a[0] = torch.tensor([5, 5])
    b = get_order("hilbert", 6, 7, 3)
    assert not torch.equal(a, b) and torch.equal(b, get_order("hilbert", 6, 7, 3))


def test_names_and_bad_arguments():
    assert torch.equal(get_order("s-curve", 3, 4), get_order("s_curve", 3, 4))
    assert parse_order_name("hilbert:3") == ("hilbert", 3) and parse_order_name("raster") == ("raster", 0)
    with pytest.raises(ValueError, match="unknown order"):
        get_order("zigzag", 3, 3)
    with pytest.raises(ValueError, match="variant"):
        get_order("raster", 3, 3, 8)
    with pytest.raises(ValueError, match="height and width"):
        get_order("raster", 0, 3)
    with pytest.raises(ValueError, match="variant"):
        parse_order_name("hilbert:9")


def test_resolve_order_accepts_names_pairs_lists_and_checks_permutations():
    h, w = 3, 4
    ref = get_order("hilbert", h, w, 3)
    assert torch.equal(resolve_order("hilbert:3", h, w), ref)
    assert torch.equal(resolve_order(("hilbert", 3), h, w), ref)
    assert torch.equal(resolve_order([tuple(p) for p in ref.tolist()], h, w), ref)
    batch = torch.stack([ref, get_order("raster", h, w)])
    assert torch.equal(resolve_order(batch, h, w), batch)
    dup = ref.clone()
    dup[1] = dup[0]
    with pytest.raises(ValueError, match="exactly once"):
        resolve_order(dup, h, w)
    with pytest.raises(ValueError, match="shape"):
        resolve_order(ref[:-1], h, w)
    with pytest.raises(ValueError, match="lie in"):
        resolve_order(ref + 10, h, w)


def test_order_ranks_inverts_the_order():
    order = get_order("hilbert", 5, 7, 5)
    ranks = order_ranks(order, 5, 7)
    assert torch.equal(ranks[order[:, 0], order[:, 1]], torch.arange(35))
    both = order_ranks(torch.stack([order, get_order("raster", 5, 7)]), 5, 7)
    assert both.shape == (2, 5, 7) and torch.equal(both[1].flatten(), torch.arange(35))


def test_order_visiting_first():
    h, w = 4, 5
    base = get_order("s_curve", h, w)
    known = torch.zeros(h, w, dtype=torch.bool)
    known[3, 4] = known[0, 2] = known[2, 1] = True
    out = order_visiting_first(known, base)
    pos = [tuple(p) for p in base.tolist()]
    first = [p for p in pos if known[p]]
    rest = [p for p in pos if not known[p]]
    assert [tuple(p) for p in out.tolist()] == first + rest  # known first, both parts stable
    assert first == [(0, 2), (2, 1), (3, 4)]
    assert torch.equal(order_visiting_first(torch.zeros(h, w, dtype=torch.bool), base), base)
    assert torch.equal(order_visiting_first(torch.ones(h, w, dtype=torch.bool), base), base)
    with pytest.raises(ValueError, match="bool"):
        order_visiting_first(known.long(), base)
    with pytest.raises(ValueError, match="shape"):
        order_visiting_first(known[:3], base)


def test_order_for_known_sweeps_towards_the_unknown_region():
    h, w = 6, 5
    bottom = torch.zeros(h, w, dtype=torch.bool)
    bottom[3:] = True  # top half missing
    order = order_for_known(bottom, "s_curve")
    rows = order[:, 0].tolist()
    assert rows == sorted(rows, reverse=True)  # bottom row first, row by row upwards
    left = torch.zeros(h, w, dtype=torch.bool)
    left[:, :2] = True  # right part missing
    cols = order_for_known(left, "s_curve")[:, 1].tolist()
    assert cols == sorted(cols)  # column by column from the left
    rand = torch.rand(h, w, generator=torch.Generator().manual_seed(0)) < 0.4
    out = order_for_known(rand, "hilbert")
    n = int(rand.sum())
    assert bool(rand[out[:n, 0], out[:n, 1]].all()) and not bool(rand[out[n:, 0], out[n:, 1]].any())
    assert torch.equal(order_for_known(rand, "hilbert", [3]), order_visiting_first(rand, get_order("hilbert", h, w, 3)))
