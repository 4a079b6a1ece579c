"""The layout of a scene: every feature, drawn in a fixed order, as objects in z-order.

Fields from a rectangular partition with slightly oblique cuts, aligned with the region's
orientation: crops (green rows, ripening cereal or ploughed furrows), pasture and woods.
Hedgerows (tree crowns) and dirt tracks run along field boundaries; tracks also cross fields
and lead to farms. Roads are gently curving lines; villages line a road with houses
(rectangles, L-shapes, blocks around a courtyard), back streets, garden sheds, garages, trees
and parked cars. Farms have a yard, barns, silos, tanks, containers and machinery. A
meandering river with tree-lined banks, ponds, and vehicles in the lanes of the roads
complete it. Over many scenes the class shares come out near the real data's: at
1024 x 1024 about 22 % crops, 10 % trees, 3.5 % buildings, 0.4 % structures, 2.8 % road,
2.6 % track, 1.1 % waterway, 0.2 % standing water, 0.1 % / 0.25 % large / small vehicles
(roads, water and vehicles somewhat above the real shares, so that small datasets see them).

Every feature draws from the one random stream of the scene's layout, so the order of the
calls in :func:`layout` is part of the output format.
"""

from __future__ import annotations

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from spectraseg.data.geometry import EMPTY
from spectraseg.data.synth.landscape import (
    LandUse,
    River,
    draw_bank_trees,
    draw_boundary_use,
    draw_fields,
    draw_hedges,
    draw_land_use,
    draw_ponds,
    draw_river,
    draw_roads,
    draw_tracks,
    draw_tree_groups,
    draw_woods,
)
from spectraseg.data.synth.materials import Entity
from spectraseg.data.synth.region import Region
from spectraseg.data.synth.settlements import (
    draw_buildings,
    draw_farms,
    draw_structures,
    draw_vehicles,
    draw_village_plots,
    draw_village_streets,
)
from spectraseg.data.synth.shapes import crowns
from spectraseg.data.synth.site import Site, make_site


def layout(
    rng: np.random.Generator,
    wm: float,
    hm: float,
    gsd: float,
    reg: Region,
    force: bool,
) -> list[tuple[int, Entity]]:
    """Draw a landscape of ``wm x hm`` metres (x right, y down) -> ``[(class, object)]`` in
    z-order, class 0 for unlabelled ground. ``gsd`` is metres per RGB pixel (objects stay
    a few pixels wide); ``force`` places every one of the 10 classes."""
    site = make_site(rng, wm, hm, gsd, reg, force)
    cells, edges = draw_fields(site)
    roads = draw_roads(site)
    river = draw_river(site)
    streets, back_roads = draw_village_streets(site, roads)
    roads = roads + back_roads
    zone = shapely.union_all([s.buffer(50, quad_segs=4) for s, _ in streets]) if streets else EMPTY

    road_polys = [
        line.buffer(w / 2, cap_style="flat", join_style="round", quad_segs=4) for line, w in roads
    ]
    road_union = shapely.union_all(road_polys) if road_polys else EMPTY
    water = river.poly if river is not None else EMPTY
    corridor = shapely.union_all([road_union, water])

    village = draw_village_plots(site, streets)
    farms = draw_farms(site, corridor, zone, road_union)
    land = draw_land_use(site, cells, zone, farms.zones, corridor)
    track_edges = _draw_trees(site, land, edges, river, village.garden_trees)
    draw_tracks(site, track_edges, edges, zone, land, farms.tracks)
    houses = [h.footprint for h in village.houses]
    draw_ponds(site, corridor, zone, farms.zones, houses)
    for poly in road_polys:  # roads on top of tracks and water (bridges)
        site.builder.add(3, poly, "road")

    # Buildings and structures: none on roads, water or each other.
    bldg_union = draw_buildings(site, village.houses, farms.barns, corridor)
    structures = village.sheds + farms.structures
    draw_structures(site, structures, shapely.union_all([corridor, bldg_union]))
    draw_vehicles(site, roads, village.cars, farms.trucks, shapely.union_all([bldg_union, water]))
    return site.builder.entities()


def _draw_trees(
    site: Site,
    land: LandUse,
    edges: np.ndarray,
    river: River | None,
    garden_trees: list[np.ndarray],
) -> np.ndarray:
    """Woods, hedgerows, groups, river banks and gardens, added as trees (class 5); on the
    way, decide which field boundaries carry tracks -> those boundaries (lines)."""
    trees: list[BaseGeometry] = draw_woods(site, land.wood_cells, land.blocked)
    track_edges, hedge_edges = draw_boundary_use(site, edges)
    trees += draw_hedges(site, hedge_edges, land.excluded)
    trees += draw_tree_groups(site, land.open_cells)
    if river is not None:
        trees.append(draw_bank_trees(site, river))
    for pts in garden_trees:
        trees.append(crowns(site.rng, pts, 2.0, 4.0, site.gsd))
    for g in trees:
        site.builder.add(5, g, "tree")
    return track_edges
