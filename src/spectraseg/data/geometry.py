"""DSTL grid <-> pixel coordinate transforms and polygon rasterisation.

Labels live in a normalised grid: x in [0, Xmax], y in [Ymin, 0] (Ymin < 0). For a raster
of W columns and H rows the competition defines::

    W' = W * W / (W + 1)        H' = H * H / (H + 1)
    x_px = x * W' / Xmax        y_px = y * H' / Ymin

Pixel coordinates are continuous with the GDAL/rasterio convention: pixel (col, row)
covers [col, col + 1) x [row, row + 1), so its centre is at (col + 0.5, row + 0.5).
The same polygon rasterises onto any product's grid: pass that grid's W and H.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import shapely
from affine import Affine
from rasterio import features
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from spectraseg import NUM_CLASSES

EMPTY = MultiPolygon()


def pixel_scale(width: int, height: int, xmax: float, ymin: float) -> tuple[float, float]:
    """Pixels per grid unit along x and y for a ``width x height`` raster.

    Returns ``(sx, sy)`` with ``x_px = x * sx`` and ``y_px = y * sy``; ``sy`` is negative
    because grid y runs from 0 down to ``ymin < 0`` while rows run downwards.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"raster size must be positive, got {width} x {height}")
    if xmax <= 0 or ymin >= 0:
        raise ValueError(f"grid extent must have Xmax > 0 and Ymin < 0, got {xmax}, {ymin}")
    w_ = width * width / (width + 1)
    h_ = height * height / (height + 1)
    return w_ / xmax, h_ / ymin


def grid_to_pixel(xy: np.ndarray, width: int, height: int, xmax: float, ymin: float) -> np.ndarray:
    """Grid coordinates (..., 2) float64 -> pixel coordinates (..., 2) float64 (col, row)."""
    sx, sy = pixel_scale(width, height, xmax, ymin)
    return np.asarray(xy, dtype=np.float64) * np.array([sx, sy])


def pixel_to_grid(xy: np.ndarray, width: int, height: int, xmax: float, ymin: float) -> np.ndarray:
    """Pixel coordinates (..., 2) float64 (col, row) -> grid coordinates (..., 2) float64."""
    sx, sy = pixel_scale(width, height, xmax, ymin)
    return np.asarray(xy, dtype=np.float64) / np.array([sx, sy])


def pixel_transform(width: int, height: int, xmax: float, ymin: float) -> Affine:
    """The affine map from pixel (col, row) to grid (x, y) for a ``width x height`` raster.

    Suitable as the ``transform`` of :func:`rasterio.features.rasterize` and
    :func:`rasterio.features.shapes`, so geometries never need to be rescaled by hand.
    """
    sx, sy = pixel_scale(width, height, xmax, ymin)
    return Affine(1.0 / sx, 0.0, 0.0, 0.0, 1.0 / sy, 0.0)


def geom_grid_to_pixel(
    geom: BaseGeometry, width: int, height: int, xmax: float, ymin: float
) -> BaseGeometry:
    """A shapely geometry in grid coordinates -> the same geometry in pixel coordinates."""
    sx, sy = pixel_scale(width, height, xmax, ymin)
    return shapely.transform(geom, lambda c: c * np.array([sx, sy]))


def geom_pixel_to_grid(
    geom: BaseGeometry, width: int, height: int, xmax: float, ymin: float
) -> BaseGeometry:
    """A shapely geometry in pixel coordinates -> the same geometry in grid coordinates."""
    sx, sy = pixel_scale(width, height, xmax, ymin)
    return shapely.transform(geom, lambda c: c / np.array([sx, sy]))


def to_multipolygon(geom: BaseGeometry | None) -> MultiPolygon:
    """Normalise any geometry to a MultiPolygon, keeping only its areal parts.

    Polygons are wrapped, GeometryCollections (as produced by ``make_valid``) are reduced to
    their polygons, and points/lines (zero area) are dropped. ``None`` gives an empty one.
    """
    if geom is None or geom.is_empty:
        return EMPTY
    if isinstance(geom, MultiPolygon):
        return geom
    if isinstance(geom, Polygon):
        return MultiPolygon([geom])
    parts = shapely.get_parts(geom)
    polys: list[Polygon] = []
    for part in parts:
        if isinstance(part, Polygon):
            if not part.is_empty:
                polys.append(part)
        elif isinstance(part, MultiPolygon):
            polys.extend(p for p in part.geoms if not p.is_empty)
        elif part.geom_type == "GeometryCollection":
            polys.extend(to_multipolygon(part).geoms)
    return MultiPolygon(polys) if polys else EMPTY


def repair(geom: BaseGeometry) -> MultiPolygon:
    """Make a geometry valid without losing area, as a MultiPolygon.

    Uses ``shapely.make_valid(method="structure")`` (rings are combined by their role as
    shell or hole, which keeps both halves of a bow-tie) rather than ``buffer(0)``, which can
    drop half of a self-intersecting polygon.
    """
    if geom.is_valid:
        return to_multipolygon(geom)
    fixed = shapely.make_valid(geom, method="structure", keep_collapsed=False)
    return to_multipolygon(fixed)


def rasterize(geom: BaseGeometry, width: int, height: int, xmax: float, ymin: float) -> np.ndarray:
    """Burn one (multi)polygon in grid coordinates into a (height, width) uint8 {0, 1} mask.

    A pixel is set when its centre lies inside the polygon; holes are cleared.
    """
    out = np.zeros((height, width), dtype=np.uint8)
    if geom is None or geom.is_empty:
        return out
    transform = pixel_transform(width, height, xmax, ymin)
    features.rasterize(
        [(geom, 1)], out=out, transform=transform, fill=0, all_touched=False, dtype=np.uint8
    )
    return out


def rasterize_classes(
    labels: Mapping[int, BaseGeometry],
    width: int,
    height: int,
    xmax: float,
    ymin: float,
    num_classes: int = NUM_CLASSES,
) -> np.ndarray:
    """All classes of a scene as a (num_classes, height, width) uint8 {0, 1} array.

    ``labels`` maps the 1-based class to its geometry in grid coordinates; missing classes
    stay empty. Channel ``c - 1`` holds class ``c``.
    """
    out = np.zeros((num_classes, height, width), dtype=np.uint8)
    for cls, geom in labels.items():
        if not 1 <= cls <= num_classes:
            raise ValueError(f"class {cls} outside 1..{num_classes}")
        out[cls - 1] = rasterize(geom, width, height, xmax, ymin)
    return out
