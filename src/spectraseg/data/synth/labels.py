"""Labels of a scene: per class, the visible footprint of its objects in grid coordinates.

A class loses what the classes above it in z-order cover, except that vehicles hide nothing
(a car on a road leaves the road labelled). Labels are clipped to the grid extent
``[0, Xmax] x [Ymin, 0]``, which on the RGB grid ends at ``W' = W^2 / (W + 1)``: as in the
real data the last pixel row and column are unlabelled. Coordinates are snapped to the 1e-8
lattice the WKT is written with, and stay valid.
"""

from __future__ import annotations

import numpy as np
import shapely
import shapely.errors
from shapely.geometry import MultiPolygon
from shapely.geometry.base import BaseGeometry

from spectraseg import NUM_CLASSES
from spectraseg.data.dstl import format_wkt
from spectraseg.data.geometry import EMPTY, geom_pixel_to_grid, rasterize, repair, to_multipolygon
from spectraseg.data.synth.materials import CLASS_Z, VEHICLES, Entity
from spectraseg.data.synth.shapes import to_pixels


def scene_labels(
    ents: list[tuple[int, Entity]], width: int, height: int, gsd: float, xmax: float, ymin: float
) -> dict[int, MultiPolygon]:
    """Per-class visible footprints in grid coordinates, as valid MultiPolygons.

    ``ents`` are ``(class, entity)`` pairs in z-order with geometries in metres (class 0:
    unlabelled ground); the RGB grid is ``height x width`` pixels of ``gsd`` metres and the
    DSTL grid extent ``[0, xmax] x [ymin, 0]``. Returns classes 1..10, empty where absent.
    A class loses what the classes drawn above it cover, except that vehicles cover nothing
    (a car on a road leaves the road labelled), matching the z-ordered rendering.
    """
    geoms: dict[int, list[BaseGeometry]] = {c: [] for c in range(1, NUM_CLASSES + 1)}
    for cls, e in ents:
        if cls:
            geoms[cls].append(e.geom)
    # The grid extent [0, Xmax] x [Ymin, 0] maps to pixels [0, W'] x [0, H'] with
    # W' = W^2 / (W + 1): as in the real labels, the last pixel row and column stay unlabelled.
    frame = shapely.box(0, 0, width**2 / (width + 1) * gsd, height**2 / (height + 1) * gsd)
    above: BaseGeometry = EMPTY
    labels: dict[int, MultiPolygon] = {}
    for cls in reversed(CLASS_Z):
        g = shapely.union_all(geoms[cls]) if geoms[cls] else EMPTY
        visible = g
        if cls not in VEHICLES and not g.is_empty:
            if not above.is_empty:
                visible = g.difference(above)
            above = shapely.union(above, g)
        visible = visible.intersection(frame)
        grid = geom_pixel_to_grid(to_pixels(visible, gsd), width, height, xmax, ymin)
        labels[cls] = _snap(grid)
    return {c: labels[c] for c in range(1, NUM_CLASSES + 1)}


def _snap(geom: BaseGeometry, decimals: int = 8) -> MultiPolygon:
    """A valid MultiPolygon on the ``10**-decimals`` lattice the WKT is written with, whose
    WKT (``spectraseg.data.dstl.format_wkt``) reads back valid."""
    try:
        geom = shapely.set_precision(geom, 10.0**-decimals)
    except shapely.errors.GEOSException:
        # GEOS snap-rounding can fail on rare configurations; round and repair instead.
        geom = repair(shapely.transform(geom, lambda c: np.round(c, decimals)))
    out = repair(geom)
    for _ in range(3):
        back = shapely.from_wkt(format_wkt(out, decimals))
        if back.is_valid:
            return to_multipolygon(back)
        out = repair(back)
    return to_multipolygon(out)


def has_pixels(geom: MultiPolygon, width: int, height: int, xmax: float, ymin: float) -> bool:
    """Whether ``geom`` (grid coordinates) covers at least one pixel centre of the RGB grid."""
    return not geom.is_empty and bool(rasterize(geom, width, height, xmax, ymin).any())
