"""Dataset summaries for ``spectraseg inspect``: products per scene and class area shares."""

from __future__ import annotations

import os
from typing import Any

import shapely

from spectraseg import CLASS_NAMES, NUM_CLASSES
from spectraseg.data import georef
from spectraseg.data.dstl import open_dataset
from spectraseg.data.sources import is_georeferenced


def summarize(root: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON-ready summary of a dataset.

    Keys: ``root``; ``scenes`` (per id: ``image_id``, ``region`` and per product ``bands``,
    ``height``, ``width``, ``dtype``); ``labelled`` (count of labelled scenes present);
    ``class_share`` (class -> total label area / total grid area over those scenes, in [0, 1]);
    ``class_names`` (class -> name). A dataset description (``.toml``) is summarised by
    :func:`summarize_description`.
    """
    if is_georeferenced(root):
        return summarize_description(root)
    ds = open_dataset(root)
    scenes = []
    for scene in ds.scenes():
        scenes.append(
            {
                "image_id": scene.image_id,
                "region": scene.region,
                "products": {
                    name: {
                        "bands": p.bands,
                        "height": p.height,
                        "width": p.width,
                        "dtype": str(p.dtype),
                    }
                    for name, p in scene.products.items()
                },
            }
        )
    labelled = ds.labelled_ids
    share: dict[str, float] = {}
    if labelled:
        total = sum(ds.grid_sizes[i][0] * -ds.grid_sizes[i][1] for i in labelled)
        for c in range(1, NUM_CLASSES + 1):
            area = sum(ds.scene_labels(i)[c].area for i in labelled)
            share[str(c)] = area / total
    return {
        "root": str(ds.root),
        "scenes": scenes,
        "labelled": len(labelled),
        "class_share": share,
        "class_names": {str(c): n for c, n in CLASS_NAMES.items()},
    }


def summarize_description(path: str | os.PathLike[str]) -> dict[str, Any]:
    """:func:`summarize` of a dataset description: per scene its target grid (``grid``:
    ``crs``, ``height``, ``width``, ``res``) and per band group its file, channels, CRS,
    resolution and the share of the grid it covers; class shares of the labelled scenes
    are label areas (after reprojection, clipped to the grid) over grid areas."""
    ds = georef.GeoDataset(path)
    desc = ds.description
    scenes = []
    area = {c.index: 0.0 for c in desc.classes.classes}
    total = 0.0
    for image_id in ds.image_ids:
        scene = ds.scene(image_id)
        grid = scene.grid
        scenes.append(
            {
                "image_id": image_id,
                "region": scene.region,
                "grid": {
                    "crs": grid.crs.to_string(),
                    "height": grid.height,
                    "width": grid.width,
                    "res": list(grid.res),
                },
                "products": {i.product: _group_summary(i, grid) for i in scene.infos},
            }
        )
    for image_id in ds.labelled_ids:
        box = shapely.box(*ds.scene(image_id).grid.bounds)
        total += box.area
        for c, geoms in ds.labels(image_id).items():
            area[c] += shapely.union_all(geoms).intersection(box).area if geoms else 0.0
    share = {str(c): a / total for c, a in area.items()} if total > 0 else {}
    return {
        "root": str(desc.path),
        "scenes": scenes,
        "labelled": len(ds.labelled_ids),
        "class_share": share,
        "class_names": {str(c.index): c.name for c in desc.classes.classes},
    }


def _group_summary(info: georef.GroupInfo, grid: georef.Grid) -> dict[str, Any]:
    g = info.grid
    return {
        "file": str(info.path),
        "bands": len(info.channels),
        "channels": list(info.channels),
        "height": g.height,
        "width": g.width,
        "dtype": str(info.dtype),
        "crs": g.crs.to_string(),
        "res": list(g.res),
        "coverage": round(georef.footprint_fraction(info, grid), 4),
    }
