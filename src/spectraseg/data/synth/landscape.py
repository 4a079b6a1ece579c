"""The open landscape of a layout: fields, roads, river, land use, trees, tracks, ponds.

Each ``draw_*`` function draws one kind of feature on a :class:`.site.Site`, in metres, from
the site's random stream; those that add objects add them to the site's builder, the others
return geometry for later features. :func:`.layout.layout` calls them in a fixed order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry import LineString, Point, Polygon
from shapely.geometry.base import BaseGeometry

from spectraseg.data.synth.shapes import along, blob, crowns, meander, partition, rot, uniform_in
from spectraseg.data.synth.site import Road, Site


@dataclass(frozen=True)
class River:
    """A river: its centre ``line``, its ``width`` and the water polygon, in metres."""

    line: LineString
    width: float
    poly: Polygon


@dataclass(frozen=True)
class LandUse:
    """The fields by use, and the ground no field may take.

    ``excluded``: villages and farm yards; ``blocked``: ``excluded`` plus roads and river
    (grown by 2 m). ``crop_theta`` holds the row direction (radians) of each crop cell.
    """

    excluded: BaseGeometry
    blocked: BaseGeometry
    crop_cells: list[Polygon]
    crop_theta: list[float]
    wood_cells: list[BaseGeometry]
    open_cells: list[BaseGeometry]


def draw_fields(site: Site) -> tuple[np.ndarray, np.ndarray]:
    """A rectangular partition (slightly oblique cuts) aligned with the region -> field
    cells (polygons) and their boundary segments (lines), object arrays clipped to the
    padded extent."""
    rng, theta, centre = site.rng, site.theta, site.centre
    size = site.region.field_size * rng.uniform(0.85, 1.15)
    local_cells, cuts = partition(rng, site.half + size, size * size)

    def place(g: np.ndarray) -> np.ndarray:
        return shapely.transform(g, lambda c: rot(c, theta) + centre)

    cells = shapely.intersection(place(local_cells), site.ext)
    cells = cells[~shapely.is_empty(cells) & (shapely.area(cells) > 1.0)]
    edges = shapely.intersection(place(cuts), site.ext)
    edges = edges[(shapely.get_type_id(edges) == 1) & (shapely.length(edges) > 5.0)]
    return cells, edges


def draw_roads(site: Site) -> list[Road]:
    """Gently curving roads across the scene, aligned with the fields, and perhaps a side
    road branching off the first one."""
    rng, theta, half = site.rng, site.theta, site.half
    roads: list[Road] = []
    if site.force or rng.random() < 0.75:
        for k in range(1 + min(2, int(rng.poisson(0.5 * site.area)))):
            angle = theta + (0 if k % 2 == 0 else math.pi / 2) + rng.normal(0, 0.12)
            wave = (rng.uniform(2, 15), rng.uniform(500, 1200), rng.uniform(0, 2 * math.pi))
            line = meander(site.somewhere(), angle, -half, half, [wave])
            roads.append((line, rng.uniform(5.0, 7.0)))
        if rng.random() < 0.4 + 0.4 * site.region.urban:
            main = roads[0][0]
            d0 = main.project(Point(site.somewhere(0.25)))
            (p,), (t,) = along(main, np.array([d0]))
            angle = math.atan2(t[1], t[0]) + rng.choice([-1, 1]) * rng.uniform(1.1, 2.0)
            wave = (rng.uniform(2, 10), rng.uniform(400, 900), rng.uniform(0, 2 * math.pi))
            roads.append((meander(p, angle, 0, 2 * half, [wave]), rng.uniform(4.0, 5.5)))
    return roads


def draw_river(site: Site) -> River | None:
    """Perhaps a meandering river (always when forced), added as waterway (class 7)."""
    rng, half = site.rng, site.half
    if not (site.force or rng.random() < site.region.river_p):
        return None
    wl1, wl2 = rng.uniform(180, 450), rng.uniform(60, 150)
    waves = [
        (rng.uniform(0.3, 0.9) * wl1 / (2 * math.pi), wl1, rng.uniform(0, 2 * math.pi)),
        (rng.uniform(0.1, 0.4) * wl2 / (2 * math.pi), wl2, rng.uniform(0, 2 * math.pi)),
    ]
    river_line = meander(site.somewhere(0.25), rng.uniform(0, math.pi), -half, half, waves)
    river_w = rng.uniform(6, 16)
    river = river_line.buffer(river_w / 2, quad_segs=4)
    site.builder.add(7, river, "water")
    return River(river_line, river_w, river)


def draw_land_use(
    site: Site,
    cells: np.ndarray,
    zone: BaseGeometry,
    farm_zones: Sequence[BaseGeometry],
    corridor: BaseGeometry,
) -> LandUse:
    """Grass under every field and garden under the village ``zone``; then crops (added as
    class 6), woods and open fields among the cells outside villages and farms."""
    rng, reg, b, scene = site.rng, site.region, site.builder, site.scene
    excluded = shapely.union_all([zone, *farm_zones])
    blocked = shapely.union_all([corridor.buffer(2, quad_segs=2), excluded])
    use = rng.random(len(cells))
    for cell in cells:
        b.add("ground", cell, "grass")
    if not zone.is_empty:
        b.add("garden", zone, "garden")
    crop_cells: list[Polygon] = []
    crop_theta: list[float] = []
    wood_cells: list[BaseGeometry] = []
    open_cells: list[BaseGeometry] = []
    in_scene = shapely.intersection(cells, scene)
    for i, cell in enumerate(cells):
        if excluded.contains(cell.centroid):
            continue
        if use[i] < reg.crop_share:
            crop_cells.append(cell)
        elif use[i] < reg.crop_share + reg.wood_share:
            wood_cells.append(cell)
        else:
            open_cells.append(cell)
    if site.force and not any(c.intersects(scene.buffer(-20)) for c in crop_cells):
        # The field with the most free ground inside the scene becomes a crop.
        free = shapely.area(shapely.difference(in_scene, blocked))
        crop_cells.append(cells[int(np.argmax(free))])
    margins = rng.uniform(1.5, 4.0, len(crop_cells))
    for cell, m in zip(crop_cells, margins, strict=True):
        field_theta = site.theta + (math.pi / 2 if rng.random() < 0.3 else 0) + rng.normal(0, 0.05)
        crop = cell.buffer(-m, quad_segs=2).difference(blocked)
        b.add(6, crop, "crop", theta=field_theta)
        crop_theta.append(field_theta)
    return LandUse(excluded, blocked, crop_cells, crop_theta, wood_cells, open_cells)


def draw_woods(
    site: Site, wood_cells: Sequence[BaseGeometry], blocked: BaseGeometry
) -> list[BaseGeometry]:
    """Woods filling their cells, with ragged edges of crowns (geometries, not yet added)."""
    rng, gsd = site.rng, site.gsd
    woods: list[BaseGeometry] = []
    for cell in wood_cells:
        core = cell.buffer(-rng.uniform(2, 5), quad_segs=2)
        if core.is_empty:
            continue
        edge = core.exterior if isinstance(core, Polygon) else core.boundary
        d = np.arange(0, edge.length, 6.0)
        rim = shapely.get_coordinates(shapely.line_interpolate_point(edge, d))
        rim = rim + rng.normal(0, 2.0, rim.shape)
        woods.append(shapely.union_all([core, crowns(rng, rim, 2.5, 5.0, gsd)]).difference(blocked))
    return woods


def draw_boundary_use(site: Site, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which field boundaries carry a track and which a hedgerow -> (track edges, hedge
    edges), object arrays of lines; the others stay bare."""
    reg = site.region
    use_edge = site.rng.random(len(edges))
    track_edges = edges[use_edge < reg.track_share]
    hedge_edges = edges[
        (use_edge >= reg.track_share) & (use_edge < reg.track_share + reg.hedge_share)
    ]
    return track_edges, hedge_edges


def draw_hedges(site: Site, hedge_edges: np.ndarray, excluded: BaseGeometry) -> list[BaseGeometry]:
    """Hedgerows of crowns along ``hedge_edges``, with gaps, outside villages and farms."""
    rng = site.rng
    hedges: list[BaseGeometry] = []
    for e in hedge_edges:
        d = np.arange(0, e.length, 3.5)
        pts = shapely.get_coordinates(shapely.line_interpolate_point(e, d))
        pts = pts[rng.random(len(pts)) < 0.85]  # gaps
        hedge = crowns(rng, pts + rng.normal(0, 0.7, pts.shape), 1.5, 3.0, site.gsd)
        hedges.append(hedge.difference(excluded))
    return hedges


def draw_tree_groups(site: Site, open_cells: Sequence[BaseGeometry]) -> list[BaseGeometry]:
    """Groups of 1-11 trees scattered over the open fields (the scene if there are none)."""
    rng, scene = site.rng, site.scene
    n_groups = int(rng.poisson(site.region.group_rate * site.area)) + int(site.force)
    pool = shapely.union_all(open_cells) if open_cells else scene
    groups: list[BaseGeometry] = []
    for q in uniform_in(rng, pool.intersection(scene), n_groups):
        k = int(rng.integers(1, 12))
        spread = rng.uniform(3, 12)
        groups.append(crowns(rng, q + rng.normal(0, spread, (k, 2)), 2.0, 5.0, site.gsd))
    return groups


def draw_bank_trees(site: Site, river: River) -> BaseGeometry:
    """Trees along both banks of ``river``, about every 16 m."""
    rng = site.rng
    d = np.arange(0, river.line.length, 7.0)
    p, t = along(river.line, d)
    side = rng.choice([-1.0, 1.0], len(d))[:, None]
    off = side * (river.width / 2 + rng.uniform(1, 4, (len(d), 1)))
    bank = p + np.stack([-t[:, 1], t[:, 0]], -1) * off
    return crowns(rng, bank[rng.random(len(d)) < 0.45], 2.0, 4.5, site.gsd)


def draw_tracks(
    site: Site,
    track_edges: np.ndarray,
    edges: np.ndarray,
    zone: BaseGeometry,
    land: LandUse,
    farm_tracks: Sequence[LineString],
) -> None:
    """Dirt tracks (class 4) along boundaries outside villages, across some crops, to the
    farms; when forced and none reaches the scene, along the boundary nearest its centre."""
    rng, half, scene = site.rng, site.half, site.scene
    tracks: list[BaseGeometry] = []
    for e in track_edges:
        if not e.intersects(zone):
            tracks.append(e.buffer(rng.uniform(3.0, 5.0) / 2, quad_segs=2))
    for cell, ft in zip(land.crop_cells, land.crop_theta, strict=True):
        if rng.random() < 0.2:
            c = np.array(cell.centroid.coords[0])
            u = np.array([math.cos(ft), math.sin(ft)]) * 2 * half
            line = LineString([c - u, c + u]).intersection(cell)
            tracks.append(line.buffer(rng.uniform(2.5, 3.5) / 2, cap_style="flat", quad_segs=2))
    for line in farm_tracks:
        tracks.append(line.buffer(rng.uniform(3.5, 5.0) / 2, quad_segs=2))
    if site.force and not any(tr.intersects(scene) for tr in tracks):
        if len(edges):
            e = edges[np.argmin(shapely.distance(edges, Point(site.centre)))]
            tracks.append(e.buffer(rng.uniform(2.5, 4.5) / 2, quad_segs=2))
        else:
            line = meander(site.somewhere(), site.theta + math.pi / 2, -half, half, [])
            tracks.append(line.buffer(1.75, quad_segs=2))
    for tr in tracks:
        site.builder.add(4, tr, "track")


def draw_ponds(
    site: Site,
    corridor: BaseGeometry,
    zone: BaseGeometry,
    farm_zones: Sequence[BaseGeometry],
    houses: Sequence[Polygon],
) -> None:
    """Ponds (class 8) off roads, river, villages, farms and houses, and off each other;
    when forced and none fits, one small pond anywhere off roads, river and houses."""
    rng, wm, hm, b = site.rng, site.wm, site.hm, site.builder
    n_ponds = int(rng.poisson(site.region.pond_rate * site.area))
    if site.force:
        n_ponds = max(n_ponds, 1)
    busy = shapely.union_all([corridor, zone, *farm_zones, *houses]).buffer(6, quad_segs=2)
    placed = 0
    for k in range(n_ponds):
        radius = rng.uniform(7, 22)
        for _try in range(30):
            c = rng.uniform((0.05 * wm, 0.05 * hm), (0.95 * wm, 0.95 * hm))
            pond = blob(rng, c[0], c[1], radius)
            if not pond.intersects(busy):
                b.add(8, pond, "pond")
                busy = busy.union(pond.buffer(10, quad_segs=2))
                placed += 1
                break
        if k == n_ponds - 1 and site.force and not placed:
            # A crowded scene: a small pond anywhere off the roads and buildings.
            free = site.scene.buffer(-8).difference(
                shapely.union_all([corridor, *houses]).buffer(8, quad_segs=2)
            )
            for c in uniform_in(rng, free, 1):
                b.add(8, blob(rng, c[0], c[1], rng.uniform(5, 8)), "pond")
