"""Masks -> valid MultiPolygons (with holes) in DSTL grid coordinates.

A class mask ``(H, W)`` on a scene's grid becomes one MultiPolygon in the normalised grid
(x in [0, Xmax], y in [Ymin, 0]; see :mod:`spectraseg.geometry`):

1. ``rasterio.features.shapes`` (GDAL polygonize) traces every 4-connected region along
   pixel edges, holes included, in pixel coordinates (vertices on integer pixel corners).
   4-connectivity matters: 8-connected regions touching at a corner would give
   self-touching rings. Rasterising the result again (pixel centres) gives back the mask
   exactly, because every edge lies half a pixel away from the nearest centre.
2. The vertices go through the affine map of :func:`spectraseg.geometry.pixel_transform`
   (numpy), and every ring is simplified on its own (Douglas-Peucker with a tolerance in
   pixels times the pixel's length, one vectorised shapely call over all rings of a class);
   a shell that collapses is dropped with its holes, a collapsed hole is dropped.
   (Simplifying the integer pixel coordinates instead gives 7% more vertices: exact ties
   between staircase corners send Douglas-Peucker to the first one.) Simplifying rings
   rather than polygons skips the validity check (and ``buffer(0)`` where invalid) that
   GEOS runs on every simplified polygon, 4-14x the cost of the simplification itself:
   validity is checked once, in step 4, and repaired without ``buffer(0)``'s loss of
   bow-tie lobes.
3. The vertices are rounded to the decimals written to WKT (numpy); one
   ``from_ragged_array`` call builds every polygon of the class. Parts smaller than a
   minimum area are dropped.
4. The class's MultiPolygon is validated in those final coordinates, repaired
   (``make_valid(method="structure")``) and normalised to a MultiPolygon, repeating until
   the rounded geometry is valid (:func:`finalize`). Rounding is exactly what
   :func:`spectraseg.io.format_wkt` writes (``round(x * 10**d) / 10**d`` is the double that
   parsing the written decimal gives back), so the file reads back valid.

Where the time goes (full 3348 x 3392 scene, 10 classes; ``benchmarks/bench_predict.py``):
GDAL dominates. Its polygonize scans every pixel it is given (about 7.5 ns per pixel, 0.085 s
for a full scene, whatever the mask holds), costs 140 us per call, and each polygon and
vertex it returns is turned into Python objects by rasterio (it does not release the GIL, so
threads do not help). Hence:

- Classes that never overlap are traced together in one raster (values 1..10; regions of
  different values are traced separately, so the result is the same as one call per class;
  the fewest such groups come from an exact colouring of the overlap graph).
- Each group is traced only inside boxes holding its pixels: empty bands of rows or columns
  that save more scanning than a call costs are cut out, recursively (no 4-connected region
  crosses an empty row or column, so the result is the same).
- Python's cyclic garbage collector is paused while rasterio builds the GeoJSON-like rings:
  with millions of live tuples each collection rescanned them all (2.8 s of 10.6 s on the
  benchmark's prediction-like masks).

Even so, tracing is most of the time (80% on real labels, 70% on prediction-like masks):
OpenCV's ``findContours`` traces the same masks 14-20x faster, through pixel centres
(which loses thin and small objects: see the benchmark's round-trip IoU).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from itertools import chain

import numpy as np
import shapely
from affine import Affine
from rasterio import features
from shapely.geometry import MultiPolygon
from shapely.geometry.base import BaseGeometry

from spectraseg.geometry import EMPTY, pixel_scale, to_multipolygon

DEFAULT_TOLERANCE = 0.5
"""Default simplification tolerance in pixels (Douglas-Peucker distance).

Half a pixel removes the corners of shallow staircases (about 20% fewer vertices) without
moving an outline across a pixel centre in practice: mask -> polygons -> mask gave IoU 1.0000
for every class on the 20 real label sets of dstl-lite (the test requires >= 0.98). One pixel
removes 4-5x more vertices, but cuts the diagonal of every staircase through the pixel
centres and loses up to 40% IoU on small objects (structures, vehicles) at that resolution."""

DEFAULT_DECIMALS = 8
"""Decimals of grid coordinates written to WKT (1e-8 grid units ~ 1/270 of an RGB pixel)."""

CALL_PIXELS = 20_000
"""One GDAL polygonize call costs about as much as scanning this many pixels (140 us at
7.5 ns per pixel): an empty band is cut out of a traced box only when it is larger."""


class Ragged:
    """Polygons with holes as flat arrays (the layout of ``shapely.from_ragged_array``).

    Attributes:
        coords: ``(N, 2)`` float64 vertices, ring after ring, each ring closed.
        ring_offsets: ``(R + 1,)`` int64; ring ``r`` is the coordinates
            ``ring_offsets[r]`` to ``ring_offsets[r + 1]`` (exclusive).
        poly_offsets: ``(P + 1,)`` int64; polygon ``p`` is rings ``poly_offsets[p]`` (its
            shell) to ``poly_offsets[p + 1]`` (exclusive; the others are its holes).
    """

    __slots__ = ("coords", "poly_offsets", "ring_offsets")

    def __init__(self, coords: np.ndarray, ring_offsets: np.ndarray, poly_offsets: np.ndarray):
        self.coords = coords
        self.ring_offsets = ring_offsets
        self.poly_offsets = poly_offsets

    def __len__(self) -> int:
        return len(self.poly_offsets) - 1

    def polygons(self) -> np.ndarray:
        """Object array ``(P,)`` of shapely Polygons, built in one call."""
        if len(self) == 0:
            return np.empty(0, dtype=object)
        return shapely.from_ragged_array(
            shapely.GeometryType.POLYGON, self.coords, (self.ring_offsets, self.poly_offsets)
        )


def _ragged(geoms: list[dict]) -> Ragged:
    """GeoJSON-like polygon dicts (as ``rasterio.features.shapes`` yields them) -> Ragged.

    All coordinates go into one array through one ``numpy.fromiter`` over the chained
    tuples: no Python loop per vertex beyond the iteration itself.
    """
    rings = [ring for g in geoms for ring in g["coordinates"]]
    ring_len = np.fromiter((len(r) for r in rings), dtype=np.int64, count=len(rings))
    per_poly = np.fromiter((len(g["coordinates"]) for g in geoms), np.int64, count=len(geoms))
    coords = np.fromiter(
        chain.from_iterable(chain.from_iterable(rings)), dtype=np.float64, count=2 * ring_len.sum()
    ).reshape(-1, 2)
    return Ragged(coords, _offsets(ring_len), _offsets(per_poly))


def _offsets(counts: np.ndarray) -> np.ndarray:
    out = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=out[1:])
    return out


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector (it rescans every live tuple at each collection)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _overlaps(masks: np.ndarray, classes: list[int]) -> set[tuple[int, int]]:
    """Pairs ``(i, j)``, ``i < j``, of channels whose masks share a pixel."""
    packed = {k: np.packbits(masks[k], axis=None) for k in classes}
    return {
        (i, j)
        for n, i in enumerate(classes)
        for j in classes[n + 1 :]
        if np.bitwise_and(packed[i], packed[j]).any()
    }


def disjoint_groups(classes: list[int], overlaps: set[tuple[int, int]]) -> list[list[int]]:
    """Fewest groups of ``classes`` with no overlapping pair inside a group.

    Exact graph colouring by backtracking: at most 10 classes, so this is instantaneous, and
    every group saved is one scan of the raster saved.
    """
    if not classes:
        return []
    adjacent = {k: set() for k in classes}
    for i, j in overlaps:
        adjacent[i].add(j)
        adjacent[j].add(i)
    order = sorted(classes, key=lambda k: -len(adjacent[k]))

    def colour(n_colours: int) -> list[int] | None:
        assign: dict[int, int] = {}

        def place(pos: int) -> bool:
            if pos == len(order):
                return True
            k = order[pos]
            used = {assign[j] for j in adjacent[k] if j in assign}
            # Colours beyond the first unused one are symmetric: try up to one new colour.
            for col in range(min(n_colours, max(assign.values(), default=-1) + 2)):
                if col not in used:
                    assign[k] = col
                    if place(pos + 1):
                        return True
                    del assign[k]
            return False

        return [assign[k] for k in classes] if place(0) else None

    for n_colours in range(1, len(classes) + 1):
        cols = colour(n_colours)
        if cols is not None:
            return [
                [k for k, c in zip(classes, cols, strict=True) if c == g] for g in range(n_colours)
            ]
    raise AssertionError("unreachable: one colour per class always works")


def _runs(occupied: np.ndarray, min_gap: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of the runs of True in a 1-D bool array, bridging gaps (runs of
    False) shorter than ``min_gap``."""
    idx = np.flatnonzero(occupied)
    if idx.size == 0:
        return []
    cut = np.flatnonzero(np.diff(idx) > min_gap)  # a gap of g False values: diff = g + 1
    starts = [int(idx[0]), *(idx[cut + 1] + 0).tolist()]
    stops = [*(idx[cut] + 1).tolist(), int(idx[-1]) + 1]
    return list(zip(starts, stops, strict=True))


def trace_boxes(
    values: np.ndarray, call_pixels: int = CALL_PIXELS
) -> list[tuple[int, int, int, int]]:
    """Boxes ``(row0, row1, col0, col1)`` that hold every nonzero pixel of ``values``.

    Recursive XY cut: a box is trimmed to its nonzero rows and split at every band of empty
    rows whose area (rows x box width) exceeds ``call_pixels``, then the same along columns,
    alternating until neither axis changes. The boxes are disjoint, and no 4-connected
    region of nonzero pixels crosses a cut, so tracing each box gives the same polygons as
    tracing the whole raster. ``values``: ``(H, W)`` with at least one nonzero pixel.
    """
    h, w = values.shape
    out: list[tuple[int, int, int, int]] = []
    # (box, axis to cut next, whether the other axis changed nothing last time)
    todo: list[tuple[int, int, int, int, int, bool]] = [(0, h, 0, w, 0, False)]
    while todo:
        r0, r1, c0, c1, axis, stalled = todo.pop()
        win = values[r0:r1, c0:c1]
        extent = (c1 - c0) if axis == 0 else (r1 - r0)
        runs = _runs(win.any(axis=1 - axis), -(-call_pixels // extent))
        unchanged = len(runs) == 1 and runs[0] == (0, (r1 - r0) if axis == 0 else (c1 - c0))
        if unchanged and stalled:
            out.append((r0, r1, c0, c1))
            continue
        for a, b in runs:
            box = (r0 + a, r0 + b, c0, c1) if axis == 0 else (r0, r1, c0 + a, c0 + b)
            todo.append((*box, 1 - axis, unchanged))
    return out


def trace_pixels(
    masks: np.ndarray, group: bool = True, call_pixels: int = CALL_PIXELS
) -> dict[int, Ragged]:
    """Trace masks into raw polygons in pixel coordinates (pixel-edge outlines).

    Args:
        masks: ``(K, H, W)`` bool or {0, 1} integers; channel ``k`` is class ``k + 1``.
        group: trace non-overlapping classes in one GDAL pass (same result, faster).
        call_pixels: see :func:`trace_boxes` (same result whatever the value).

    Returns:
        ``{class (1-based): Ragged}`` for every class with at least one pixel; vertices are
        ``(col, row)`` pixel corners (integers as float64), the raster's top-left corner is
        ``(0, 0)``.
    """
    if masks.ndim != 3:
        raise ValueError(f"masks must be (K, H, W), got shape {masks.shape}")
    k_, h, w = masks.shape
    masks = masks.astype(bool, copy=False)
    present = [k for k in range(k_) if masks[k].any()]
    if group:
        groups = disjoint_groups(present, _overlaps(masks, present))
    else:
        groups = [[k] for k in present]
    found: dict[int, list[dict]] = {k + 1: [] for k in present}
    with _gc_paused():
        for grp in groups:
            if len(grp) == 1:
                values = masks[grp[0]].view(np.uint8)  # {0, 1}: value 1 is the class
            else:
                values = np.zeros((h, w), dtype=np.uint8)
                for k in grp:
                    # Disjoint masks: each pixel gets its class value (or stays 0).
                    values[masks[k]] = k + 1
            for r0, r1, c0, c1 in trace_boxes(values, call_pixels):
                window = values[r0:r1, c0:c1]
                shapes = features.shapes(
                    window, mask=window, connectivity=4, transform=Affine.translation(c0, r0)
                )
                if len(grp) == 1:
                    found[grp[0] + 1].extend(geom for geom, _ in shapes)
                else:
                    for geom, value in shapes:
                        found[int(value)].append(geom)  # the value is the class
        out = {c: _ragged(g) for c, g in found.items()}
        # Free the tuples before the collector resumes, or its first pass scans them all.
        del found
    return out


def _to_grid(coords: np.ndarray, width: int, height: int, xmax: float, ymin: float) -> np.ndarray:
    """Pixel ``(col, row)`` -> grid ``(x, y)``, the arithmetic of ``pixel_transform``."""
    sx, sy = pixel_scale(width, height, xmax, ymin)
    return coords * np.array([1.0 / sx, 1.0 / sy])


def trace(masks: np.ndarray, xmax: float, ymin: float, group: bool = True) -> dict[int, np.ndarray]:
    """Trace masks into raw polygons in grid coordinates (pixel-edge outlines).

    Args:
        masks: ``(K, H, W)`` bool or {0, 1} integers; channel ``k`` is class ``k + 1``.
        xmax, ymin: the scene's grid extent (``grid_sizes.csv``).
        group: trace non-overlapping classes in one GDAL pass (same result, faster).

    Returns:
        ``{class (1-based): object array of Polygons in grid coordinates}`` for every class
        with at least one pixel.
    """
    _, h, w = masks.shape
    out = {}
    for c, rag in trace_pixels(masks, group).items():
        rag.coords = _to_grid(rag.coords, w, h, xmax, ymin)
        out[c] = rag.polygons()
    return out


def simplify_rings(rag: Ragged, tolerance: float) -> Ragged:
    """Douglas-Peucker on every ring of ``rag`` (same units as its coordinates).

    One vectorised shapely call over all rings as LinearRings (no per-polygon validation).
    A ring left with fewer than 4 coordinates has collapsed: a collapsed hole is dropped, a
    collapsed shell takes its holes with it. The result may be invalid (a simplified hole
    crossing its shell, parts overlapping): :func:`finalize` repairs it.
    """
    if len(rag) == 0 or tolerance <= 0:
        return rag
    n_rings = len(rag.ring_offsets) - 1
    ring_of_coord = np.repeat(np.arange(n_rings), np.diff(rag.ring_offsets))
    rings = shapely.linearrings(rag.coords, indices=ring_of_coord)
    rings = shapely.simplify(rings, tolerance, preserve_topology=False)
    coords, ring_of_coord = shapely.get_coordinates(rings, return_index=True)
    counts = np.bincount(ring_of_coord, minlength=n_rings)
    ok = (counts >= 4) & (shapely.get_type_id(rings) == shapely.GeometryType.LINEARRING)
    rings_per_poly = np.diff(rag.poly_offsets)
    shell_ok = ok[rag.poly_offsets[:-1]]
    keep = ok & np.repeat(shell_ok, rings_per_poly)
    if keep.all():
        return Ragged(coords, _offsets(counts), rag.poly_offsets)
    poly_of_ring = np.repeat(np.arange(len(rag)), rings_per_poly)
    kept_per_poly = np.bincount(poly_of_ring[keep], minlength=len(rag))[shell_ok]
    return Ragged(coords[np.repeat(keep, counts)], _offsets(counts[keep]), _offsets(kept_per_poly))


def round_coords(geom, decimals: int):
    """Geometry (or array of them) with every coordinate rounded to ``decimals``.

    ``rint(x * 10**d) / 10**d`` is the double nearest to the decimal that WKT output with
    ``d`` decimals writes, so the file reads back exactly these coordinates.
    """
    return shapely.transform(geom, lambda c: _round(c, decimals))


def _round(coords: np.ndarray, decimals: int) -> np.ndarray:
    scale = 10.0**decimals
    return np.rint(coords * scale) / scale


def finalize(geom: BaseGeometry | np.ndarray, decimals: int = DEFAULT_DECIMALS) -> MultiPolygon:
    """A MultiPolygon valid in its final coordinates, rounded to ``decimals``.

    ``geom`` is a geometry or an array of Polygons (the parts). Round, then validate; where
    the rounded geometry is invalid (parts collapsing onto each other, spikes crossing, a
    simplified hole crossing its shell), repair with ``make_valid(method="structure")``
    (which keeps both lobes of a bow-tie and merges overlapping parts), normalise to a
    MultiPolygon and round again, until valid. Empty input gives ``MULTIPOLYGON EMPTY``.
    """
    if isinstance(geom, np.ndarray):
        parts = shapely.get_parts(round_coords(geom, decimals))
        # Keep non-empty polygons only (simplification can leave empties).
        parts = parts[(shapely.get_type_id(parts) == 3) & ~shapely.is_empty(parts)]
        if len(parts) == 0:
            return EMPTY
        mp = shapely.multipolygons(parts)
    else:
        mp = round_coords(to_multipolygon(geom), decimals)
    return _validated(mp, decimals)


def _validated(mp: MultiPolygon, decimals: int) -> MultiPolygon:
    """``mp`` (already rounded to ``decimals``) if valid, else repaired and rounded again."""
    for _ in range(8):
        if mp.is_empty:
            return EMPTY
        if mp.is_valid:
            return mp
        fixed = shapely.make_valid(mp, method="structure", keep_collapsed=False)
        mp = round_coords(to_multipolygon(fixed), decimals)
    # Rounding kept re-creating a defect: snap to the precision grid, which GEOS keeps valid.
    return to_multipolygon(shapely.set_precision(mp, 10.0**-decimals))


def _pixel_size(width: int, height: int, xmax: float, ymin: float) -> tuple[float, float]:
    """(length, area) of one pixel in grid units (geometric mean of the two axes)."""
    sx, sy = pixel_scale(width, height, xmax, ymin)
    area = 1.0 / abs(sx * sy)
    return float(np.sqrt(area)), float(area)


def masks_to_polygons(
    masks: np.ndarray,
    xmax: float,
    ymin: float,
    tolerance: float = DEFAULT_TOLERANCE,
    min_area: float | Mapping[int, float] = 0.0,
    decimals: int = DEFAULT_DECIMALS,
) -> dict[int, MultiPolygon]:
    """Class masks of one scene -> valid MultiPolygons in grid coordinates.

    Args:
        masks: ``(K, H, W)`` bool or {0, 1} integers on the scene's grid (any product's grid:
            the transform uses ``W``, ``H`` of the mask); channel ``k`` is class ``k + 1``.
        xmax, ymin: the scene's grid extent.
        tolerance: Douglas-Peucker tolerance in pixels (0: only the exact pixel outlines).
        min_area: parts (after simplification) smaller than this many square pixels are
            dropped; one value for all classes or ``{class: pixels}`` (missing: 0).
        decimals: decimals kept in grid coordinates (see :func:`finalize`).

    Returns:
        ``{class: MultiPolygon}`` for classes ``1..K`` (``MULTIPOLYGON EMPTY`` where nothing
        is left), valid after rounding to ``decimals``.
    """
    if masks.ndim != 3:
        raise ValueError(f"masks must be (K, H, W), got shape {masks.shape}")
    k_, h, w = masks.shape
    pix, pix_area = _pixel_size(w, h, xmax, ymin)
    traced = trace_pixels(masks)
    out: dict[int, MultiPolygon] = {}
    for c in range(1, k_ + 1):
        rag = traced.get(c)
        if rag is None or len(rag) == 0:
            out[c] = EMPTY
            continue
        rag.coords = _to_grid(rag.coords, w, h, xmax, ymin)
        rag = simplify_rings(rag, tolerance * pix)
        rag.coords = _round(rag.coords, decimals)
        polys = rag.polygons()
        area_px = min_area.get(c, 0.0) if isinstance(min_area, Mapping) else min_area
        if area_px > 0:
            polys = polys[shapely.area(polys) >= area_px * pix_area]
        out[c] = _validated(shapely.multipolygons(polys), decimals) if len(polys) else EMPTY
    return out


def mask_to_multipolygon(
    mask: np.ndarray,
    xmax: float,
    ymin: float,
    tolerance: float = DEFAULT_TOLERANCE,
    min_area: float = 0.0,
    decimals: int = DEFAULT_DECIMALS,
) -> MultiPolygon:
    """One ``(H, W)`` mask -> a valid MultiPolygon in grid coordinates (see
    :func:`masks_to_polygons`)."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    return masks_to_polygons(mask[None], xmax, ymin, tolerance, min_area, decimals)[1]
