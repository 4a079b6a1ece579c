"""The built-up parts of a layout: villages, farms, buildings, structures and vehicles.

Each ``draw_*`` function draws one kind of feature on a :class:`.site.Site`, in metres, from
the site's random stream. Villages and farms return candidate footprints (houses, barns,
sheds, parked vehicles); :func:`draw_buildings`, :func:`draw_structures` and
:func:`draw_vehicles` keep those that fit and add them to the site's builder.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import shapely
import shapely.ops
from shapely.geometry import LineString, Point, Polygon
from shapely.geometry.base import BaseGeometry

from spectraseg.data.geometry import EMPTY
from spectraseg.data.synth.shapes import along, greedy, rects, uniform_in
from spectraseg.data.synth.site import Road, Site


class Building(NamedTuple):
    """A building's ``footprint`` (metres), the direction across its ridge (``angle``,
    radians), its ``depth`` (metres, the roof pitch period is twice that) and its (2,)
    ``centre``."""

    footprint: Polygon
    angle: float
    depth: float
    centre: np.ndarray


@dataclass
class Village:
    """What the plots along the village streets hold, before any is kept: ``houses``,
    ``sheds`` (sheds and garages), parked ``cars`` and ``garden_trees`` ((k, 2) crown
    centres per garden), all in metres."""

    houses: list[Building] = field(default_factory=list)
    sheds: list[Polygon] = field(default_factory=list)
    cars: list[Polygon] = field(default_factory=list)
    garden_trees: list[np.ndarray] = field(default_factory=list)


@dataclass
class Farms:
    """Farm yards (grown by 12 m, as ``zones``), the ``tracks`` linking them to a road, and
    candidate ``barns``, ``structures`` (silos, tanks, containers) and ``trucks``."""

    zones: list[BaseGeometry] = field(default_factory=list)
    tracks: list[LineString] = field(default_factory=list)
    barns: list[Building] = field(default_factory=list)
    structures: list[BaseGeometry] = field(default_factory=list)
    trucks: list[Polygon] = field(default_factory=list)


# --------------------------------------------------------------------------- villages


def draw_village_streets(site: Site, roads: Sequence[Road]) -> tuple[list[Road], list[Road]]:
    """Village streets along ``roads`` -> (streets, new roads): each village takes a stretch
    of a road as its main street, with back streets parallel to it and a lane out."""
    rng = site.rng
    streets: list[Road] = []
    new_roads: list[Road] = []
    n_villages = 0
    if roads and (site.force or rng.random() < 0.3 + 0.5 * site.region.urban):
        n_villages = 1 + int(rng.poisson(1.0 * site.area))
    through = list(roads)
    for k in range(n_villages):
        main, width = through[k % len(through)]
        d0 = main.project(Point(site.somewhere(0.35 if k else 0.2)))
        # Villages fill less of a small scene: their length follows the scene's extent.
        length = rng.uniform(0.35, 0.8) * min(site.wm, site.hm, 600.0) * (0.6 + site.region.urban)
        street = shapely.ops.substring(main, max(d0 - length / 2, 0), d0 + length / 2)
        streets.append((street, width))
        spacing = rng.uniform(55, 70)
        for side in (-1, 1):
            _back_streets(site, street, side * spacing, streets, new_roads)
    return streets, new_roads


def _back_streets(
    site: Site, street: LineString, offset: float, streets: list[Road], roads: list[Road]
) -> None:
    """Up to 3 rows of back streets ``offset`` metres apart on one side of ``street`` (fewer
    in a small scene or a small village) and a lane out to the last one; appends them to
    ``streets`` and ``roads``."""
    rng = site.rng
    rows = 1 + (min(site.wm, site.hm) > 300) + (min(site.wm, site.hm) > 700)  # at most
    outer = None
    for row in range(1, 1 + int(rng.binomial(rows, site.region.urban))):
        back = shapely.offset_curve(street, row * offset, quad_segs=4)
        if back.geom_type == "MultiLineString":
            back = max(back.geoms, key=lambda g: g.length)
        if back.length < 40:
            break
        w = rng.uniform(3.5, 4.5)
        streets.append((back, w))
        roads.append((back, w))
        outer = (back, w)
    if outer is not None:  # a lane from the main street out through the back streets
        mid = outer[0].interpolate(rng.uniform(0.3, 0.7), normalized=True)
        roads.append((LineString([street.interpolate(street.project(mid)), mid]), outer[1]))


def draw_village_plots(site: Site, streets: Sequence[Road]) -> Village:
    """Plots on both sides of every street: a house (rectangle, L-shape or block around a
    courtyard) and perhaps a garden shed, a garage, a parked car and garden trees."""
    village = Village()
    for street, width in streets:
        spacing = site.rng.uniform(14, 22)
        d = np.arange(spacing / 2, street.length, spacing)
        for side in (-1.0, 1.0):
            if len(d):
                _street_side(site, street, width, d, side, village)
    return village


def _street_side(
    site: Site, street: LineString, width: float, d: np.ndarray, side: float, village: Village
) -> None:
    """The plots at distances ``d`` (metres) along one ``side`` of ``street``."""
    rng = site.rng
    n = len(d)
    dd = d + rng.normal(0, 1.5, n)
    p, t = along(street, dd)
    nrm = np.stack([-t[:, 1], t[:, 0]], -1) * side
    w = rng.uniform(8, 14, n)
    dep = rng.uniform(7, 11, n)
    kind = rng.choice(3, n, p=[0.6, 0.32, 0.08])
    setback = width / 2 + rng.uniform(5, 10, n)
    for i in range(n):
        if rng.random() < 0.12:
            continue  # an empty plot
        local, depth, back = _footprint(rng, int(kind[i]), w[i], dep[i])
        cxy = p[i] + nrm[i] * (setback[i] + depth / 2)
        frame = np.stack([t[i], nrm[i]])  # local x along the street, y away from it
        rings = [loc @ frame + cxy for loc in local]
        village.houses.append(
            Building(Polygon(rings[0], rings[1:]), math.atan2(nrm[i, 1], nrm[i, 0]), depth, cxy)
        )
        behind = cxy + nrm[i] * (back + rng.uniform(4, 10))
        _plot_extras(site, p[i], t[i], nrm[i], cxy, behind, w[i], width, village)


def _footprint(
    rng: np.random.Generator, kind: int, a: float, bb: float
) -> tuple[list[np.ndarray], float, float]:
    """A house's rings in local metres (x along the street, y away from it; shell (k, 2)
    then any courtyard), its depth and its half-depth to the back: ``kind`` 0 an ``a x bb``
    rectangle, 1 the same with a wing at the back, 2 a block around a courtyard."""
    if kind == 2:  # a block around a courtyard
        q, ring = rng.uniform(20, 32), rng.uniform(6, 9)
        shell = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * q / 2
        hole = np.array([[-1, -1], [-1, 1], [1, 1], [1, -1]]) * (q / 2 - ring)
        return [shell, hole], q, q / 2
    if kind == 1:  # L-shape: a wing at the back, left or right
        e, c = rng.uniform(4, 8), rng.uniform(4, 0.55 * a)
        shell = np.array(
            [
                [-a / 2, -bb / 2],
                [a / 2, -bb / 2],
                [a / 2, bb / 2 + e],
                [a / 2 - c, bb / 2 + e],
                [a / 2 - c, bb / 2],
                [-a / 2, bb / 2],
            ]
        )
        if rng.random() < 0.5:
            shell = shell[::-1] * (-1, 1)
    else:
        shell = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * (a / 2, bb / 2)
    return [shell], bb, bb / 2


def _plot_extras(
    site: Site,
    p: np.ndarray,
    t: np.ndarray,
    nrm: np.ndarray,
    cxy: np.ndarray,
    behind: np.ndarray,
    house_w: float,
    street_w: float,
    village: Village,
) -> None:
    """Perhaps a shed behind the house at ``cxy``, a garage beside it, a car parked at the
    street (plot point ``p``, tangent ``t``, normal ``nrm``) and trees in the garden."""
    rng, gsd = site.rng, site.gsd
    heading = math.atan2(t[1], t[0])
    if rng.random() < 0.6:  # garden shed
        q = rng.uniform(3, 5.5)
        village.sheds.append(rects(behind[:1], behind[1:], [q], [q * 0.8], [heading])[0])
    if rng.random() < 0.3:  # garage beside the house
        g = cxy + t * (house_w / 2 + rng.uniform(2.5, 4)) * rng.choice([-1, 1])
        village.sheds.append(rects(g[:1], g[1:], [rng.uniform(3, 3.5)], [6.0], [heading])[0])
    if rng.random() < 0.4:
        car = p + nrm * (street_w / 2 + rng.uniform(2.0, 4.0))
        car = car + t * rng.uniform(-house_w / 3, house_w / 3)
        garden_car = rects(
            car[:1],
            car[1:],
            [max(rng.uniform(4.2, 4.9), 4 * gsd)],
            [max(rng.uniform(1.8, 2.0), 2 * gsd)],
            [math.atan2(nrm[1], nrm[0])],
        )[0]
        village.cars.append(garden_car)
    if rng.random() < 0.4:
        k = int(rng.integers(1, 4))
        village.garden_trees.append(behind + nrm * rng.uniform(3, 10) + rng.normal(0, 4, (k, 2)))


# --------------------------------------------------------------------------- farms


def draw_farms(
    site: Site, corridor: BaseGeometry, zone: BaseGeometry, road_union: BaseGeometry
) -> Farms:
    """Farms away from roads, river, villages and each other: a yard (added) with barns,
    silos, tanks, containers and machinery, and a track to the nearest road."""
    rng = site.rng
    farms = Farms()
    n_farms = int(site.force or rng.random() < 0.6) + int(rng.poisson(0.5 * site.area))
    keep_out = shapely.union_all([corridor.buffer(25, quad_segs=2), zone.buffer(30, quad_segs=2)])
    lo, hi = (0.1 * site.wm, 0.1 * site.hm), (0.9 * site.wm, 0.9 * site.hm)
    for _ in range(n_farms):
        for _try in range(20):
            c = rng.uniform(lo, hi)
            if not keep_out.contains(Point(c)):
                break
        else:
            continue
        yard = _farm(site, c, road_union, farms)
        keep_out = keep_out.union(yard.buffer(100, quad_segs=2))
    return farms


def _farm(site: Site, c: np.ndarray, road_union: BaseGeometry, farms: Farms) -> Polygon:
    """One farm centred at ``c`` (2,) metres; adds its yard and returns it."""
    rng = site.rng
    ang = site.theta + rng.normal(0, 0.1)
    ly, wy = rng.uniform(45, 75), rng.uniform(32, 50)
    yard = rects(c[:1], c[1:], [ly], [wy], [ang])[0]
    site.builder.add("yard", yard, "yard")
    farms.zones.append(yard.buffer(12, quad_segs=2))
    u = np.array([math.cos(ang), math.sin(ang)])
    taken = _barns(site, c, ang, ly, wy, farms)
    taken = _yard_things(site, yard, ang, taken, farms)
    for q in uniform_in(rng, yard.buffer(-4), int(rng.integers(1, 4))):
        size = [max(rng.uniform(7, 11), 4 * site.gsd)], [max(rng.uniform(2.5, 3.0), 2 * site.gsd)]
        truck = rects(q[:1], q[1:], *size, [ang])[0]
        if not truck.intersects(taken):
            farms.trucks.append(truck)
            taken = taken.union(truck)
    # the farm track
    if not road_union.is_empty:
        target = shapely.ops.nearest_points(road_union, Point(c))[0]
        farms.tracks.append(LineString([c, target]))
    else:
        farms.tracks.append(LineString([c, c + u * 2 * site.half]))
    return yard


def _barns(
    site: Site, c: np.ndarray, ang: float, ly: float, wy: float, farms: Farms
) -> BaseGeometry:
    """Barns along both long sides of an ``ly x wy`` yard at ``c`` and perhaps one across
    its end; appends those that do not overlap to ``farms.barns``, returns their union."""
    rng = site.rng
    u = np.array([math.cos(ang), math.sin(ang)])
    v = np.array([-u[1], u[0]])
    cand: list[Building] = []
    for side in (-1, 1):
        bl, bd = rng.uniform(15, 30), rng.uniform(9, 16)
        bc = c + v * side * (wy / 2 - bd / 2 - 2) + u * rng.uniform(-ly / 4, ly / 4)
        cand.append(
            Building(rects(bc[:1], bc[1:], [bl], [bd], [ang])[0], ang + math.pi / 2, bd, bc)
        )
    if rng.random() < 0.6:
        bl, bd = rng.uniform(12, 20), rng.uniform(8, 12)
        bc = c + u * (ly / 2 - bd / 2 - 2)
        a2 = ang + math.pi / 2
        cand.append(Building(rects(bc[:1], bc[1:], [bl], [bd], [a2])[0], ang, bd, bc))
    idx = greedy([x.footprint for x in cand], None, 3.0)
    farms.barns.extend(cand[i] for i in idx)
    return shapely.union_all([cand[i].footprint for i in idx])


def _yard_things(
    site: Site, yard: Polygon, ang: float, taken: BaseGeometry, farms: Farms
) -> BaseGeometry:
    """Silos, tanks and containers around the yard, 2-6 of them off ``taken`` ground;
    appends them to ``farms.structures`` and returns ``taken`` grown by them."""
    rng = site.rng
    pts = uniform_in(rng, yard.buffer(-3), 10)
    things: list[BaseGeometry] = []
    for j, q in enumerate(pts):
        r = rng.random()
        if r < 0.45:
            things.append(Point(q).buffer(rng.uniform(2.5, 4.5), quad_segs=4))
        elif r < 0.7:
            things.append(Point(q).buffer(rng.uniform(5, 8), quad_segs=6))
        else:
            things.append(rects(q[:1], q[1:], [rng.uniform(6, 12)], [2.4], [ang + j])[0])
    for i in greedy(things, taken, 2.0)[: int(rng.integers(2, 7))]:
        farms.structures.append(things[i])
        taken = taken.union(things[i])
    return taken


# --------------------------------------------------------------------------- kept objects


def draw_buildings(
    site: Site, houses: Sequence[Building], barns: Sequence[Building], corridor: BaseGeometry
) -> BaseGeometry:
    """Keep the houses and barns off roads, river and each other and add their roofs
    (class 1; one forced house if none is kept) -> the union of the kept footprints."""
    rng, theta = site.rng, site.theta
    all_b = [*houses, *barns]
    keep_b = greedy([h.footprint for h in all_b], corridor.buffer(1.5, quad_segs=2), 2.0)
    if site.force and not keep_b:
        c = site.somewhere(0.3)
        h = rects(c[:1], c[1:], [12.0], [9.0], [theta])[0]
        all_b.append(Building(h, theta + math.pi / 2, 9.0, c))
        keep_b = [len(all_b) - 1]
    kept = [all_b[i].footprint for i in keep_b]
    for i in keep_b:
        poly, ang, depth, c = all_b[i]
        is_barn = i >= len(houses)  # the forced house too: flat roof, maybe metal
        site.builder.add(
            1,
            poly,
            "roof",
            theta=ang,
            depth=depth,
            centre=(float(c[0]), float(c[1])),
            pitched=not is_barn and len(poly.interiors) == 0,
            material="metal" if is_barn and rng.random() < 0.6 else None,
        )
    return shapely.union_all(kept) if kept else EMPTY


def draw_structures(site: Site, structures: Sequence[BaseGeometry], blocked: BaseGeometry) -> None:
    """Keep the structures off ``blocked`` ground and each other and add them (class 2; one
    forced silo if none is kept)."""
    structures = list(structures)
    keep_s = greedy(structures, blocked, 1.0)
    if site.force and not keep_s:
        c = site.rng.uniform((0.2 * site.wm, 0.2 * site.hm), (0.8 * site.wm, 0.8 * site.hm))
        structures.append(Point(c).buffer(3.5, quad_segs=4))
        keep_s = [len(structures) - 1]
    for i in keep_s:
        site.builder.add(2, structures[i], "structure")


def draw_vehicles(
    site: Site,
    roads: Sequence[Road],
    cars: Sequence[Polygon],
    trucks: Sequence[Polygon],
    blocked: BaseGeometry,
) -> None:
    """Traffic in the lanes of the roads plus the parked ``cars`` and ``trucks``; keep those
    off ``blocked`` ground and each other and add them (large: class 9, small: 10)."""
    smalls: list[Polygon] = list(cars)
    larges: list[Polygon] = list(trucks)
    for line, w in roads:
        _traffic(site, line, w, smalls, larges)
    if site.force:
        _forced_vehicles(site, roads, smalls, larges)
    vehicles = [(9, v) for v in larges] + [(10, v) for v in smalls]
    keep_v = greedy([v for _, v in vehicles], blocked, 0.6)
    for i in keep_v:
        cls, v = vehicles[i]
        site.builder.add(cls, v, "truck" if cls == 9 else "car")


def _traffic(
    site: Site, line: LineString, w: float, smalls: list[Polygon], larges: list[Polygon]
) -> None:
    """Cars and trucks in the lanes of one road of width ``w``, at the region's traffic
    rate per km of road inside the scene; appends them to ``smalls`` and ``larges``."""
    rng, gsd, reg = site.rng, site.gsd, site.region
    inside = line.intersection(site.scene.buffer(5)).length
    if inside <= 0:
        return
    for kind, rate, (l0, l1), (w0, w1) in (
        ("small", reg.traffic, (4.2, 4.9), (1.8, 2.0)),
        ("large", reg.traffic / 5, (7.0, 12.0), (2.5, 3.0)),
    ):
        n = int(rng.poisson(rate * inside / 1000))
        if n == 0:
            continue
        d = rng.uniform(0, line.length, 4 * n)
        p, t = along(line, d)
        ok = shapely.contains_xy(site.scene.buffer(5), p[:, 0], p[:, 1])
        p, t = p[ok][:n], t[ok][:n]
        lane = rng.choice([-1.0, 1.0], len(p))[:, None] * w * rng.uniform(0.15, 0.3)
        p = p + np.stack([-t[:, 1], t[:, 0]], -1) * lane
        boxes = rects(
            p[:, 0],
            p[:, 1],
            np.maximum(rng.uniform(l0, l1, len(p)), 4 * gsd),
            np.maximum(rng.uniform(w0, w1, len(p)), 2 * gsd),
            np.arctan2(t[:, 1], t[:, 0]),
        )
        (smalls if kind == "small" else larges).extend(boxes)


def _forced_vehicles(
    site: Site, roads: Sequence[Road], smalls: list[Polygon], larges: list[Polygon]
) -> None:
    """A truck and a car on the first road (or anywhere) unless the scene already has one
    of each."""
    gsd = site.gsd
    for lst, (length, width) in ((larges, (9.0, 2.8)), (smalls, (4.5, 1.9))):
        if any(v.intersects(site.scene) for v in lst):
            continue
        if roads:
            line = roads[0][0]
            d0 = line.project(Point(site.somewhere(0.2)))
            (p,), (t,) = along(line, np.array([d0]))
        else:
            p, t = site.somewhere(0.2), np.array([1.0, 0.0])
        lst.append(
            rects(
                p[:1],
                p[1:],
                [max(length, 4 * gsd)],
                [max(width, 2 * gsd)],
                [math.atan2(t[1], t[0])],
            )[0]
        )
