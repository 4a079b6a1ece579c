"""Masks -> valid MultiPolygons in grid coordinates, and back."""

from __future__ import annotations

import warnings
from unittest import mock

import cv2
import numpy as np
import pytest
import shapely
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from rasterio import features
from shapely.geometry import MultiPolygon, Polygon, box, shape

import spectraseg.vectorize as vectorize
from spectraseg.data.dstl import format_wkt, open_dataset
from spectraseg.data.geometry import pixel_scale, rasterize, rasterize_classes
from spectraseg.errors import SpectrasegWarning
from spectraseg.vectorize import (
    DEFAULT_TOLERANCE,
    StripTracer,
    bound_components,
    count_borders,
    finalize,
    mask_to_multipolygon,
    masks_to_polygons,
    open_regions,
    ragged_to_map,
    round_coords,
    sieve,
    split_loops,
    trace_mask,
)

XMAX, YMIN = 0.00918, -0.00904


def reread(geom: MultiPolygon, decimals: int = 8) -> MultiPolygon:
    """What a reader of the written WKT gets back."""
    return shapely.from_wkt(format_wkt(geom, decimals))


def roundtrip(mask: np.ndarray, **kw) -> np.ndarray:
    h, w = mask.shape
    return rasterize(mask_to_multipolygon(mask, XMAX, YMIN, **kw), w, h, XMAX, YMIN)


def test_empty_mask_gives_empty_multipolygon() -> None:
    got = mask_to_multipolygon(np.zeros((20, 30), bool), XMAX, YMIN)
    assert got.is_empty and isinstance(got, MultiPolygon)
    assert format_wkt(got) == "MULTIPOLYGON EMPTY"
    out = masks_to_polygons(np.zeros((10, 5, 5), np.uint8), XMAX, YMIN)
    assert sorted(out) == list(range(1, 11)) and all(g.is_empty for g in out.values())


def test_single_pixel_is_its_square_in_grid_coordinates() -> None:
    mask = np.zeros((10, 20), np.uint8)
    mask[3, 7] = 1
    got = mask_to_multipolygon(mask, XMAX, YMIN, tolerance=0)
    sx, sy = pixel_scale(20, 10, XMAX, YMIN)
    want = box(7 / sx, 4 / sy, 8 / sx, 3 / sy)
    assert len(got.geoms) == 1
    assert got.symmetric_difference(want).area < 1e-12 * want.area + 1e-16
    assert got.area == pytest.approx(want.area, rel=1e-5)


def test_holes_and_islands_are_kept() -> None:
    mask = np.zeros((12, 12), np.uint8)
    mask[1:11, 1:11] = 1
    mask[3:9, 3:9] = 0  # a hole ...
    mask[5:7, 5:7] = 1  # ... with an island in it
    got = mask_to_multipolygon(mask, XMAX, YMIN, tolerance=0)
    assert got.is_valid and len(got.geoms) == 2
    ring = max(got.geoms, key=lambda p: p.area)
    assert len(ring.interiors) == 1
    np.testing.assert_array_equal(roundtrip(mask, tolerance=0), mask)


def test_diagonal_neighbours_stay_valid() -> None:
    # 4-connectivity: pixels touching at a corner are two parts meeting at one point.
    mask = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]], np.uint8)
    got = mask_to_multipolygon(mask, XMAX, YMIN)
    assert got.is_valid and len(got.geoms) == 5
    assert reread(got).is_valid
    np.testing.assert_array_equal(roundtrip(mask), mask)


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.uint8, st.tuples(st.integers(1, 24), st.integers(1, 24)), elements=st.integers(0, 1))
)
def test_random_masks_round_trip_exactly_without_simplification(mask: np.ndarray) -> None:
    got = mask_to_multipolygon(mask, XMAX, YMIN, tolerance=0)
    assert got.is_valid and reread(got).is_valid
    h, w = mask.shape
    np.testing.assert_array_equal(rasterize(reread(got), w, h, XMAX, YMIN), mask)


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.uint8, st.tuples(st.integers(2, 32), st.integers(2, 32)), elements=st.integers(0, 1)),
    st.sampled_from([0.5, 1.0, 2.0]),
    st.sampled_from([3, 5, 8]),
)
def test_simplified_and_rounded_output_is_always_valid(
    mask: np.ndarray, tolerance: float, decimals: int
) -> None:
    # Coarse decimals (3: ~1/30 of the grid) force rounding to collapse and cross parts.
    got = mask_to_multipolygon(mask, XMAX, YMIN, tolerance=tolerance, decimals=decimals)
    assert isinstance(got, MultiPolygon)
    assert got.is_valid
    back = reread(got, decimals)
    assert back.is_valid
    assert shapely.equals_exact(back, got, tolerance=0) or back.is_empty == got.is_empty


def test_rounding_that_would_merge_parts_is_repaired() -> None:
    # 0.02 apart: with one decimal both edges round to x = 1.1 and the parts share an edge.
    parts = MultiPolygon([box(0, 0, 1.08, 1), box(1.12, 0, 2, 1)])
    assert parts.is_valid and not round_coords(parts, 1).is_valid
    got = finalize(parts, decimals=1)
    assert got.is_valid and reread(got, 1).is_valid
    assert got.area == pytest.approx(2.0)


def test_rounding_that_would_put_a_hole_on_its_shell_is_repaired() -> None:
    # The hole's edge at x = 0.93 and the shell's at x = 0.94 both round to 0.9: the hole
    # would run along the shell.
    shell = [(0, 0), (0.94, 0), (0.94, 1), (0, 1)]
    hole = [(0.2, 0.2), (0.93, 0.3), (0.93, 0.7), (0.2, 0.8)]
    poly = Polygon(shell, [hole])
    assert poly.is_valid and not round_coords(poly, 1).is_valid
    got = finalize(poly, decimals=1)
    assert got.is_valid and reread(got, 1).is_valid
    assert got.area == pytest.approx(round_coords(poly, 1).area)


def test_rounding_into_a_bow_tie_keeps_both_lobes() -> None:
    poly = Polygon([(6.5, 26.7), (9.8, 23.6), (5.5, 24.1), (13.5, 20.3)])
    rounded = round_coords(poly, 0)
    assert poly.is_valid and not rounded.is_valid  # (6 27, 10 24, 6 24, 14 20): crossed
    got = finalize(poly, decimals=0)
    assert got.is_valid and reread(got, 0).is_valid
    # Both lobes survive as parts; buffer(0) keeps only one of them.
    assert len(got.geoms) == 2
    assert len(shapely.get_parts(rounded.buffer(0))) == 1
    assert got.area > rounded.buffer(0).area


def test_min_area_is_per_class_in_pixels() -> None:
    masks = np.zeros((2, 20, 20), np.uint8)
    masks[:, 1, 1] = 1  # one pixel
    masks[:, 5:8, 5:8] = 1  # nine pixels
    out = masks_to_polygons(masks, XMAX, YMIN, tolerance=0, min_area={1: 4})
    assert len(out[1].geoms) == 1 and len(out[2].geoms) == 2
    out = masks_to_polygons(masks, XMAX, YMIN, tolerance=0, min_area=10)
    assert out[1].is_empty and out[2].is_empty


@settings(max_examples=200, deadline=None)
@given(
    arrays(np.uint8, st.tuples(st.integers(1, 16), st.integers(1, 16)), elements=st.integers(0, 1))
)
def test_tracing_gives_gdal_4_connected_polygons(mask: np.ndarray) -> None:
    """OpenCV chains turned into pixel-edge rings give exactly GDAL polygonize's regions:
    same parts (pinches split), same areas, valid, no difference in area."""
    got = trace_mask(mask).polygons()
    ref = np.array(
        [shape(g) for g, _ in features.shapes(mask, mask=mask, connectivity=4)], dtype=object
    )
    assert len(got) == len(ref)
    assert shapely.is_valid(got).all()
    np.testing.assert_array_equal(np.sort(shapely.area(got)), np.sort(shapely.area(ref)))
    assert shapely.get_num_interior_rings(got).sum() == shapely.get_num_interior_rings(ref).sum()
    if len(got):
        diff = shapely.symmetric_difference(shapely.multipolygons(got), shapely.multipolygons(ref))
        assert diff.area == 0
    assert shapely.area(got).sum() == mask.sum()


def test_pinched_regions_are_split_where_they_touch() -> None:
    # One 8-connected region (a ring closed through a corner, and a diagonal chain).
    mask = np.zeros((8, 8), np.uint8)
    mask[1, 1:4] = mask[1:4, 1] = mask[3, 1:3] = mask[2:4, 3] = 1
    mask[4, 4] = mask[5, 5] = mask[6, 6] = 1
    mask[3, 3] = 0
    got = trace_mask(mask).polygons()
    assert shapely.is_valid(got).all()
    assert sorted(shapely.area(got)) == [1, 1, 1, 7]


def test_real_labels_round_trip_at_default_tolerance(dstl_lite) -> None:
    """mask -> polygons -> mask keeps IoU >= 0.98 per class on the 20 real scenes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = open_dataset(dstl_lite)
        ids = ds.labelled_ids
    inter = np.zeros(10)
    union = np.zeros(10)
    for image_id in ids:
        ref = ds.scene(image_id).reference
        xmax, ymin = ds.grid_sizes[image_id]
        masks = rasterize_classes(ds.scene_labels(image_id), ref.width, ref.height, xmax, ymin)
        polys = masks_to_polygons(masks, xmax, ymin, tolerance=DEFAULT_TOLERANCE)
        assert all(g.is_valid for g in polys.values())
        back = rasterize_classes(polys, ref.width, ref.height, xmax, ymin).astype(bool)
        m = masks.astype(bool)
        inter += (back & m).reshape(10, -1).sum(1)
        union += (back | m).reshape(10, -1).sum(1)
    present = union > 0
    assert present.sum() >= 8
    iou = inter[present] / union[present]
    assert iou.min() >= 0.98, iou


def test_split_loops_cuts_a_ring_at_its_repeated_vertices() -> None:
    # A figure eight through (1, 1), then a third loop hanging off (2, 2).
    ring = np.array(
        [
            [0, 0],
            [1, 0],
            [1, 1],
            [2, 1],
            [2, 2],
            [3, 2],
            [3, 3],
            [2, 3],
            [2, 2],
            [1, 2],
            [1, 1],
            [0, 1],
            [0, 0],
        ],
        dtype=float,
    )
    loops = split_loops(ring)
    assert [len(loop) for loop in loops] == [5, 5, 5]
    assert all(np.array_equal(loop[0], loop[-1]) for loop in loops)
    assert sorted(abs(Polygon(loop).area) for loop in loops) == [1, 1, 1]
    simple = np.array([[0, 0], [2, 0], [2, 2], [0, 2], [0, 0]], dtype=float)
    assert len(split_loops(simple)) == 1 and split_loops(simple)[0] is simple


def components(mask: np.ndarray) -> np.ndarray:
    """Areas of the 4-connected regions and of the holes (8-connected background components
    not connected to the outside), by scipy, independently of the OpenCV code under test."""
    from scipy import ndimage

    m = mask.astype(bool)
    regions, n = ndimage.label(m)
    areas = list(np.bincount(regions.ravel())[1:]) if n else []
    framed = np.pad(~m, 1, constant_values=True)
    bg, _ = ndimage.label(framed, structure=np.ones((3, 3)))
    counts = np.bincount(bg.ravel())
    counts[[0, bg[0, 0]]] = 0
    return np.array(areas + [c for c in counts if c], dtype=np.int64)


@settings(max_examples=80, deadline=None)
@given(
    arrays(np.uint8, st.tuples(st.integers(1, 40), st.integers(1, 40)), elements=st.integers(0, 1)),
    st.integers(0, 12),
)
def test_sieve_leaves_no_small_component_and_keeps_large_ones(mask: np.ndarray, n: int) -> None:
    got = sieve(mask, n)
    assert got.dtype == bool and got.shape == mask.shape
    if n <= 1:
        np.testing.assert_array_equal(got, mask.astype(bool))
        return
    assert (components(got) >= n).all()
    np.testing.assert_array_equal(sieve(got, n), got)  # idempotent
    # Every pixel of a region of at least n pixels (4-connected) is kept.
    from scipy import ndimage

    regions, _ = ndimage.label(mask)
    big = np.bincount(regions.ravel()) >= n
    big[0] = False
    assert got[big[regions]].all()


def test_sieve_fills_small_holes_and_keeps_the_outside() -> None:
    mask = np.zeros((9, 9), np.uint8)
    mask[1:8, 1:8] = 1
    mask[3, 3] = 0  # a one-pixel hole
    mask[5:7, 5:7] = 0  # a four-pixel hole
    got = sieve(mask, 4)
    assert got[3, 3] and not got[5:7, 5:7].any() and not got[0].any()
    assert sieve(mask, 5)[1:8, 1:8].all()


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.uint8, st.tuples(st.integers(1, 40), st.integers(1, 40)), elements=st.integers(0, 1)),
    st.integers(0, 30),
)
def test_bound_components_leaves_at_most_that_many(mask: np.ndarray, most: int) -> None:
    got, pixels = bound_components(mask, most)
    before, after = components(mask), components(got)
    if len(before) <= most:
        assert pixels == 0
        np.testing.assert_array_equal(got, mask.astype(bool))
    else:
        assert len(after) <= most and (after >= pixels).all()
        assert pixels == np.sort(before)[::-1][most] + 1  # the smallest size that does it


@settings(max_examples=80, deadline=None)
@given(
    arrays(np.uint8, st.tuples(st.integers(1, 40), st.integers(1, 40)), elements=st.integers(0, 1)),
    st.booleans(),
)
def test_count_borders_is_the_number_of_regions_and_holes(mask: np.ndarray, dense: bool) -> None:
    """Either way of counting (listed borders, or labelling for dense masks) is exact."""
    if not mask.any():
        return
    x0, y0, bw, bh = cv2.boundingRect(mask)
    box = np.ascontiguousarray(mask[y0 : y0 + bh, x0 : x0 + bw])
    inverted = cv2.copyMakeBorder(1 - box, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=1)
    with mock.patch.object(vectorize, "DENSE_RUNS", -1 if dense else 10**9):
        assert count_borders(box, inverted) == len(components(mask))


def test_a_noisy_class_is_sieved_with_a_warning_and_stays_valid(monkeypatch) -> None:
    rng = np.random.default_rng(3)
    mask = (rng.random((2, 120, 150)) < 0.45).astype(np.uint8)
    mask[1] = 0
    mask[1, 10:60, 20:90] = 1  # clean
    monkeypatch.setattr(vectorize, "MAX_COMPONENTS", 1000)
    with pytest.warns(SpectrasegWarning, match=r"class 1 mask has \d+ regions and holes"):
        got = masks_to_polygons(mask, XMAX, YMIN)
    assert got[1].is_valid and got[2].is_valid and len(got[2].geoms) == 1
    n = len(components(mask[0]))
    assert n > 1000
    back = rasterize(got[1], 150, 120, XMAX, YMIN)
    assert len(components(back)) <= 1000
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # under the bound: no warning, nothing removed
        monkeypatch.setattr(vectorize, "MAX_COMPONENTS", 10**6)
        exact = masks_to_polygons(mask, XMAX, YMIN, tolerance=0)
    np.testing.assert_array_equal(rasterize(exact[1], 150, 120, XMAX, YMIN), mask[0])


def test_a_class_over_the_vertex_budget_is_written_exactly_and_valid(monkeypatch) -> None:
    rng = np.random.default_rng(5)
    mask = (rng.random((1, 64, 80)) < 0.5).astype(np.uint8)
    monkeypatch.setattr(vectorize, "SIMPLIFY_MAX_VERTICES", 10)
    got = masks_to_polygons(mask, XMAX, YMIN)[1]
    assert got.is_valid and reread(got).is_valid
    np.testing.assert_array_equal(rasterize(reread(got), 80, 64, XMAX, YMIN), mask[0])


def shapes_across_seams(seed: int, h: int, w: int) -> np.ndarray:
    """A mask of shapes that cross rows anywhere: rectangles, rings with islands in their
    holes, U shapes whose arms meet only further down, pixels touching at corners, noise."""
    rng = np.random.default_rng(seed)
    m = np.zeros((h, w), dtype=bool)
    for _ in range(6):
        y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
        m[y : y + rng.integers(2, h // 2), x : x + rng.integers(2, w // 3)] = True
    cy, cx, r = h // 2, w // 2, min(h, w) // 3
    yy, xx = np.ogrid[:h, :w]
    d = np.hypot(yy - cy, xx - cx)
    m |= (d < r) & (d > r / 2)  # a ring ...
    m |= d < r / 5  # ... with an island in its hole
    u = rng.integers(0, w - 12)
    m[5 : h - 5, u : u + 3] = True  # a U: two arms joined only by its bottom bar
    m[5 : h - 5, u + 9 : u + 12] = True
    m[h - 7 : h - 5, u : u + 12] = True
    m[0, ::2] = True  # a row of pixels touching nothing, then corners touching
    m[1, 1::2] = True
    m |= rng.random((h, w)) < 0.03
    return m


@settings(max_examples=80, deadline=None)
@given(
    arrays(np.uint8, st.tuples(st.integers(1, 30), st.integers(1, 30)), elements=st.integers(0, 1))
)
def test_open_regions_are_the_regions_touching_the_last_row(mask: np.ndarray) -> None:
    """Its definition: label the 4-connected regions, keep those with a pixel in the last
    row; the first row is the topmost row of a kept pixel (the height when none is)."""
    from scipy import ndimage

    labels, _ = ndimage.label(mask)  # 4-connected by default
    want = np.isin(labels, labels[-1][labels[-1] > 0])
    keep, first = open_regions(np.ascontiguousarray(mask, dtype=bool))
    np.testing.assert_array_equal(keep, want)
    rows = np.flatnonzero(want.any(1))
    assert first == (rows[0] if len(rows) else mask.shape[0])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), rows=st.lists(st.integers(1, 40), min_size=1, max_size=30))
def test_strip_tracing_gives_the_whole_masks_polygons(seed: int, rows: list[int]) -> None:
    """Traced strip by strip (heights varied, regions carried across seams), every region
    comes out once, with exactly the rings (vertices, order, start) of tracing the whole
    mask, so simplification and areas are identical too."""
    h, w = 90, 70
    mask = shapes_across_seams(seed, h, w)
    whole = trace_mask(mask)
    tracer, parts, top = StripTracer(w), [], 0
    for n in rows:
        if top >= h:
            break
        n = min(n, h - top)
        parts.append(tracer.add(mask[top : top + n], last=top + n == h))
        top += n
    if top < h:
        parts.append(tracer.add(mask[top:], last=True))
    assert len(tracer.carry) == 0
    got = np.concatenate([r.polygons() for r in parts])
    assert len(got) == len(whole)
    assert sorted(shapely.to_wkb(got)) == sorted(shapely.to_wkb(whole.polygons()))
    t = Affine(0.5, 0, 300000, 0, -0.5, 5000000)
    for tol in (0, 0.5):
        simplified = [ragged_to_map(r, t, tol, 2, 8) for r in parts]
        got_parts = np.concatenate([shapely.get_parts(g) for g in simplified])
        want = shapely.get_parts(ragged_to_map(whole, t, tol, 2, 8))
        assert sorted(shapely.to_wkb(got_parts)) == sorted(shapely.to_wkb(want))


# The ring-by-ring form of the cuts (as before all rings were cut at once), the reference.
def split_loops_one_by_one(ring: np.ndarray) -> list[np.ndarray]:
    """:func:`split_loops` as it was before :func:`vectorize._loops` (one ring, one sort)."""
    pts = ring[:-1]
    keys = vectorize._point_keys(pts)
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    repeated = np.flatnonzero(counts[inverse] > 1)
    if len(repeated) == 0:
        return [ring]
    visits = repeated[np.lexsort((repeated, inverse[repeated]))]
    same = inverse[visits[1:]] == inverse[visits[:-1]]
    starts, stops = visits[:-1][same], visits[1:][same]
    label = vectorize._innermost(starts, stops, len(pts))
    by_loop = np.argsort(label, kind="stable")
    cuts = np.cumsum(np.bincount(label, minlength=len(starts) + 1))[:-1]
    return [np.concatenate([loop, loop[:1]]) for loop in np.split(pts[by_loop], cuts)]


def shoelace(ring: np.ndarray) -> float:
    """Signed area of a closed ring ``(n + 1, 2)``."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def reference_split_touching(rag: vectorize.Ragged, suspect: np.ndarray) -> vectorize.Ragged:
    """Cut the rings that touch themselves at a pinch into simple rings meeting at points.

    ``suspect``: ``(R,)`` bool, rings through a pinch. Rings that pass a pinch twice are
    cut there (:func:`split_loops`). A shell can only close round background that way (a
    "C" whose tips meet): its largest loop, which encloses the others, stays the shell and
    the others become holes. A hole can only be background lobes meeting at corners: each
    loop becomes a hole.
    """
    offsets = rag.ring_offsets
    # Rings with a repeated vertex: one sort of (ring, point) keys over all suspects.
    cand = np.flatnonzero(suspect)
    lengths = np.diff(offsets)[cand] - 1  # without the closing vertex
    sel = np.repeat(offsets[cand] - vectorize._offsets(lengths)[:-1], lengths) + np.arange(
        lengths.sum()
    )
    point = vectorize._point_keys(rag.coords[sel])
    span = int(point.max()) + 1
    keys = np.sort(np.repeat(np.arange(len(cand)), lengths) * span + point)
    affected = cand[np.unique(keys[1:][keys[1:] == keys[:-1]] // span)]
    if len(affected) == 0:
        return rag
    split = set(affected.tolist())
    poly_of_ring = np.repeat(np.arange(len(rag)), np.diff(rag.poly_offsets))
    touched = np.unique(poly_of_ring[affected])
    new_rings: list[np.ndarray] = []
    new_per_poly: list[int] = []
    for p in touched.tolist():
        rings = []
        first = int(rag.poly_offsets[p])
        for r in range(first, int(rag.poly_offsets[p + 1])):
            ring = rag.coords[offsets[r] : offsets[r + 1]]
            loops = split_loops_one_by_one(ring) if r in split else [ring]
            if r == first and len(loops) > 1:
                outer = int(np.argmax([abs(shoelace(loop)) for loop in loops]))
                loops.insert(0, loops.pop(outer))
            rings.extend(loops)
        new_rings.extend(rings)
        new_per_poly.append(len(rings))
    keep_poly = np.ones(len(rag), dtype=bool)
    keep_poly[touched] = False
    keep_ring = keep_poly[poly_of_ring]
    ring_len = np.diff(offsets)
    coords = np.concatenate([rag.coords[np.repeat(keep_ring, ring_len)], *new_rings])
    lengths = np.concatenate([ring_len[keep_ring], [len(x) for x in new_rings]])
    per_poly = np.concatenate([np.diff(rag.poly_offsets)[keep_poly], new_per_poly])
    return vectorize.Ragged(
        coords,
        vectorize._offsets(lengths.astype(np.int64)),
        vectorize._offsets(per_poly.astype(np.int64)),
    )


@settings(max_examples=80, deadline=None)
@given(
    arrays(np.uint8, st.tuples(st.integers(2, 30), st.integers(2, 30)), elements=st.integers(0, 1))
)
def test_rings_cut_at_once_equal_rings_cut_one_by_one(mask: np.ndarray) -> None:
    """All pinched rings of a mask cut in one pass give exactly the arrays (vertices, ring
    and polygon offsets, order) of cutting them one ring at a time."""
    calls: list[tuple[vectorize.Ragged, vectorize.Ragged]] = []
    fast = vectorize._split_touching

    def both(rag: vectorize.Ragged, suspect: np.ndarray) -> vectorize.Ragged:
        got = fast(rag, suspect)
        calls.append((got, reference_split_touching(rag, suspect)))
        return got

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vectorize, "_split_touching", both)
        trace_mask(mask)
    for got, want in calls:
        np.testing.assert_array_equal(got.coords, want.coords)
        np.testing.assert_array_equal(got.ring_offsets, want.ring_offsets)
        np.testing.assert_array_equal(got.poly_offsets, want.poly_offsets)


def test_a_noisy_mask_cuts_its_rings_as_one_by_one() -> None:
    """Salt and pepper (thousands of pinched rings, rings through one pinch many times)."""
    mask = (np.random.default_rng(3).random((120, 160)) < 0.45).astype(np.uint8)
    rag = trace_mask(mask)
    assert shapely.is_valid(rag.polygons()).all()
    test_rings_cut_at_once_equal_rings_cut_one_by_one.hypothesis.inner_test(mask)
