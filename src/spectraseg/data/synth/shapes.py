"""Geometric primitives of a layout, in metres (x right, y down) unless stated.

Vectorised shapely helpers: rectangles, meandering lines, points along a line, rejection
sampling in a polygon, greedy non-overlapping selection, tree crowns, ponds, the field
partition, and the conversion of metres to RGB pixel coordinates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import shapely
import shapely.ops
from shapely.geometry import LineString, Polygon
from shapely.geometry.base import BaseGeometry

from spectraseg.data.geometry import EMPTY


def rot(xy: np.ndarray, angle: np.ndarray | float) -> np.ndarray:
    """Rotate (..., k, 2) local coordinates by ``angle`` (broadcast over leading axes)."""
    c = np.cos(angle)[..., None] if np.ndim(angle) else math.cos(angle)
    s = np.sin(angle)[..., None] if np.ndim(angle) else math.sin(angle)
    x, y = xy[..., 0], xy[..., 1]
    return np.stack([x * c - y * s, x * s + y * c], axis=-1)


def rects(
    cx: np.ndarray,
    cy: np.ndarray,
    length: np.ndarray | Sequence[float],
    width: np.ndarray | Sequence[float],
    angle: np.ndarray | Sequence[float],
) -> np.ndarray:
    """Rectangles (n,) centred at (cx, cy), ``length`` along ``angle``, ``width`` across."""
    n = len(cx)
    unit = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])
    local = unit[None] * np.stack([length, width], -1)[:, None, :]
    xy = rot(local, np.broadcast_to(angle, (n,))) + np.stack([cx, cy], -1)[:, None, :]
    return shapely.polygons(xy)


def meander(
    p0: np.ndarray,
    angle: float,
    t0: float,
    t1: float,
    waves: Sequence[tuple[float, float, float]],
    step: float = 8.0,
) -> LineString:
    """A line through ``p0`` along ``angle`` from ``t0`` to ``t1`` metres, displaced sideways
    by the sum of ``(amplitude, wavelength, phase)`` sine waves."""
    t = np.arange(t0, t1 + step, step)
    lateral = np.zeros_like(t)
    for amp, wl, ph in waves:
        lateral += amp * np.sin(2 * math.pi * t / wl + ph)
    u = np.array([math.cos(angle), math.sin(angle)])
    v = np.array([-u[1], u[0]])
    return LineString(p0 + t[:, None] * u + lateral[:, None] * v)


def along(line: LineString, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points (n, 2) at distances ``d`` along ``line`` and unit tangents (n, 2) there."""
    d = np.clip(d, 0, line.length)
    p = shapely.get_coordinates(shapely.line_interpolate_point(line, d))
    a = shapely.get_coordinates(shapely.line_interpolate_point(line, np.maximum(d - 1, 0)))
    b = shapely.get_coordinates(
        shapely.line_interpolate_point(line, np.minimum(d + 1, line.length))
    )
    t = b - a
    t /= np.maximum(np.hypot(t[:, 0], t[:, 1]), 1e-9)[:, None]
    return p, t


def greedy(geoms: Sequence[BaseGeometry], blocked: BaseGeometry | None, gap: float) -> list[int]:
    """Indices of a subset of ``geoms`` that keeps ``gap`` from ``blocked`` and each other."""
    if len(geoms) == 0:
        return []
    arr = np.asarray(geoms, dtype=object)
    grown = shapely.buffer(arr, gap / 2, quad_segs=2) if gap > 0 else arr
    ok = np.ones(len(arr), dtype=bool)
    if blocked is not None and not blocked.is_empty:
        ok &= ~shapely.intersects(grown, blocked)
    tree = shapely.STRtree(grown)
    left, right = tree.query(grown, predicate="intersects")
    conflicts: dict[int, list[int]] = {}
    for i, j in zip(left.tolist(), right.tolist(), strict=True):
        if i != j:
            conflicts.setdefault(i, []).append(j)
    keep: list[int] = []
    for i in range(len(arr)):
        if not ok[i]:
            continue
        keep.append(i)
        for j in conflicts.get(i, ()):
            ok[j] = False
    return keep


def blob(rng: np.random.Generator, cx: float, cy: float, radius: float) -> Polygon:
    """A smooth irregular closed shape (pond) of about ``radius`` metres."""
    phi = np.linspace(0, 2 * math.pi, 33)[:-1]
    r = np.ones_like(phi)
    for k in (2, 3, 4):
        r += rng.uniform(0, 0.25 / k) * np.cos(k * phi + rng.uniform(0, 2 * math.pi))
    e = rng.uniform(1.0, 1.8)
    xy = np.stack([r * np.cos(phi) * e, r * np.sin(phi) / e], -1) * radius
    return Polygon(rot(xy, rng.uniform(0, math.pi)) + np.array([cx, cy]))


def crowns(
    rng: np.random.Generator, xy: np.ndarray, rmin: float, rmax: float, gsd: float
) -> BaseGeometry:
    """Union of tree crowns (discs) at ``xy`` (n, 2) with radii in ``[rmin, rmax]`` metres."""
    if len(xy) == 0:
        return EMPTY
    radii = np.maximum(rng.uniform(rmin, rmax, len(xy)), 0.8 * gsd)
    discs = shapely.buffer(shapely.points(xy), radii, quad_segs=3)
    return shapely.union_all(discs)


def uniform_in(rng: np.random.Generator, poly: BaseGeometry, n: int, tries: int = 8) -> np.ndarray:
    """Up to ``n`` uniform random points (k, 2) inside ``poly`` (rejection sampling)."""
    if poly.is_empty or n <= 0:
        return np.zeros((0, 2))
    x0, y0, x1, y1 = poly.bounds
    out: list[np.ndarray] = []
    got = 0
    for _ in range(tries):
        cand = rng.uniform((x0, y0), (x1, y1), (max(4 * n, 16), 2))
        inside = cand[shapely.contains_xy(poly, cand[:, 0], cand[:, 1])]
        out.append(inside[: n - got])
        got += len(out[-1])
        if got >= n:
            break
    return np.concatenate(out) if out else np.zeros((0, 2))


def partition(rng: np.random.Generator, half: float, area: float) -> tuple[np.ndarray, np.ndarray]:
    """Split the square ``[-half, half]^2`` into fields of about ``area`` m^2 by recursive,
    slightly oblique cuts across the longer side -> (fields, boundary segments between
    junctions), both arrays of geometries."""
    stack: list[Polygon] = [shapely.box(-half, -half, half, half)]
    leaves: list[Polygon] = []
    cuts: list[LineString] = []
    while stack:
        poly = stack.pop()
        if poly.area < area * rng.uniform(0.6, 1.6):
            leaves.append(poly)
            continue
        x0, y0, x1, y1 = poly.bounds
        across_x = (x1 - x0) > (y1 - y0) * rng.uniform(0.8, 1.25)
        at = rng.uniform(0.35, 0.65)
        tilt = math.tan(rng.normal(0, 0.06))
        if across_x:
            x = x0 + at * (x1 - x0)
            d = tilt * (y1 - y0)
            line = LineString([(x - d, y0 - 1), (x + d, y1 + 1)])
        else:
            y = y0 + at * (y1 - y0)
            d = tilt * (x1 - x0)
            line = LineString([(x0 - 1, y - d), (x1 + 1, y + d)])
        parts = shapely.get_parts(shapely.ops.split(poly, line))
        if len(parts) < 2:
            leaves.append(poly)
            continue
        cuts.append(line.intersection(poly))
        stack.extend(parts)
    # Node the cuts so that every boundary piece between two junctions is its own edge.
    edges = shapely.get_parts(shapely.union_all(cuts)) if cuts else np.array([], dtype=object)
    return np.array(leaves, dtype=object), edges


def to_pixels(geoms: np.ndarray | BaseGeometry, gsd: float) -> np.ndarray | BaseGeometry:
    """Metres -> RGB pixel coordinates (same axes, origin at the top-left corner)."""
    return shapely.transform(geoms, lambda c: c / gsd)
