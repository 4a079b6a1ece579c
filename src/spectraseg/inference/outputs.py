"""The prediction directory ``spectraseg predict --out PRED``: what each scene writes.

::

    PRED/probs/{id}.npy          uint8 (10, H, W) probability levels round(p * 255)
    PRED/polygons/{id}.geojson   one Feature per class, coordinates in DSTL grid units
    PRED/wkt/{id}.csv            the scene's 10 rows of predictions.csv
    PRED/sources/{id}.*.npy      each model's own levels (PredictOptions.sources)
    PRED/predictions.csv         ImageId,ClassType,MultipolygonWKT for every predicted scene

A georeferenced scene (of a dataset description) writes instead of the GeoJSON and WKT::

    PRED/{id}/polygons.gpkg      layer ``polygons``: one Polygon feature per part, attributes
                                 ``class`` (the schema's class name) and ``area`` (squared
                                 map units), in the scene's CRS

and is not in ``predictions.csv`` (the competition format has no CRS).
Every file is written atomically.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio.raw
import shapely
from shapely.geometry import MultiPolygon

from spectraseg import CLASS_NAMES, NUM_CLASSES
from spectraseg.data.dstl import PREDICTIONS_CSV, WKT_HEADER, check_image_id, write_wkt_csv
from spectraseg.data.files import atomic_output, write_text_atomic
from spectraseg.data.geometry import EMPTY
from spectraseg.data.georef import PREDICTION_LAYER, prediction_gpkg
from spectraseg.vectorize import DEFAULT_DECIMALS


def scene_paths(out_dir: str | os.PathLike[str], image_id: str) -> dict[str, Path]:
    """Where the outputs of a scene go under a prediction directory ``PRED``.

    ``probs``: ``PRED/probs/{id}.npy``, uint8 ``(10, H, W)`` levels ``round(p * 255)`` on
    the scene's RGB grid; ``geojson``: ``PRED/polygons/{id}.geojson``; ``wkt``:
    ``PRED/wkt/{id}.csv``, the scene's 10 rows of ``predictions.csv``; ``unet`` and
    ``pixel``: ``PRED/sources/{id}.{unet,pixel}.npy``, each model's own levels (only with
    ``PredictOptions.sources`` and a blended pixel model).
    """
    out = Path(out_dir)
    check_image_id(image_id)
    return {
        "probs": out / "probs" / f"{image_id}.npy",
        "unet": out / "sources" / f"{image_id}.unet.npy",
        "pixel": out / "sources" / f"{image_id}.pixel.npy",
        "geojson": out / "polygons" / f"{image_id}.geojson",
        "wkt": out / "wkt" / f"{image_id}.csv",
    }


def scene_geojson(
    image_id: str,
    polygons: Mapping[int, MultiPolygon],
    xmax: float,
    ymin: float,
    width: int,
    height: int,
    thresholds: Mapping[int, float] | None = None,
) -> str:
    """A GeoJSON FeatureCollection of a scene's polygons, one Feature per class, as text.

    Coordinates are **DSTL grid units**, not longitude/latitude: x in ``[0, xmax]``, y in
    ``[ymin, 0]`` (``ymin < 0``), the coordinates of the competition's WKT. Foreign members
    record this (``coordinates``), the grid extent and the raster size the polygons were
    traced on. Each Feature has ``class``, ``name``, ``threshold`` and ``area`` (squared
    grid units); empty classes have a MultiPolygon with no coordinates.

    Geometries are GEOS's own GeoJSON text, spliced in: parsing it into Python objects and
    writing it again took a third of a 640 x 640 scene's prediction time (MEASUREMENTS).
    """
    features = []
    for c in sorted(polygons):
        g = polygons[c]
        props: dict[str, Any] = {"class": c, "name": CLASS_NAMES.get(c, str(c)), "area": g.area}
        if thresholds is not None:
            props["threshold"] = float(thresholds.get(c, 0.5))
        geometry = (
            '{"type": "MultiPolygon", "coordinates": []}' if g.is_empty else shapely.to_geojson(g)
        )
        features.append(
            f'{{"type": "Feature", "properties": {json.dumps(props)}, "geometry": {geometry}}}'
        )
    head = {
        "type": "FeatureCollection",
        "image_id": image_id,
        "coordinates": "DSTL grid units: x in [0, xmax], y in [ymin, 0]; not longitude/latitude",
        "xmax": xmax,
        "ymin": ymin,
        "width": width,
        "height": height,
    }
    return json.dumps(head)[:-1] + ', "features": [' + ", ".join(features) + "]}"


def save_levels(path: Path, levels: np.ndarray) -> None:
    """Save uint8 probability levels ``(K, H, W)`` as ``.npy``, atomically."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.save(f, levels)


def write_scene_outputs(
    out_dir: str | os.PathLike[str],
    image_id: str,
    levels: np.ndarray,
    polygons: Mapping[int, MultiPolygon],
    xmax: float,
    ymin: float,
    thresholds: Mapping[int, float],
    decimals: int = DEFAULT_DECIMALS,
) -> dict[str, Path]:
    """Write a scene's probabilities, GeoJSON and WKT rows (each atomically)."""
    paths = scene_paths(out_dir, image_id)
    save_levels(paths["probs"], levels)
    text = scene_geojson(
        image_id, polygons, xmax, ymin, levels.shape[2], levels.shape[1], thresholds
    )
    write_text_atomic(paths["geojson"], text + "\n")
    rows = [(image_id, c, polygons.get(c, EMPTY)) for c in range(1, NUM_CLASSES + 1)]
    write_wkt_csv(paths["wkt"], rows, decimals=decimals)
    return paths


def write_gpkg(
    path: Path, polygons: Mapping[int, MultiPolygon], names: Sequence[str], crs_wkt: str
) -> None:
    """Write a scene's polygons as a GeoPackage layer, atomically: one Polygon feature per
    part (what GIS tools select and style), ``class`` = ``names[c - 1]``, ``area``."""
    parts, classes = [], []
    for c in sorted(polygons):
        geoms = shapely.get_parts(polygons[c])
        parts.extend(geoms)
        classes.extend([names[c - 1]] * len(geoms))
    geoms = np.array(parts, dtype=object)
    fields = [np.array(classes, dtype=object), shapely.area(geoms).astype(np.float64)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp, warnings.catch_warnings():
        # The temporary name ends in .tmp; the file is renamed to .gpkg when complete.
        warnings.filterwarnings("ignore", "The filename extension should be", RuntimeWarning)
        pyogrio.raw.write(
            str(tmp), shapely.to_wkb(geoms), geometry_type="Polygon", field_data=fields,
            fields=["class", "area"], crs=crs_wkt, driver="GPKG", layer=PREDICTION_LAYER,
        )  # fmt: skip


def write_georef_outputs(
    out_dir: str | os.PathLike[str],
    image_id: str,
    levels: np.ndarray,
    polygons: Mapping[int, MultiPolygon],
    names: Sequence[str],
    crs_wkt: str,
) -> dict[str, Path]:
    """Write a georeferenced scene's probabilities and ``polygons.gpkg`` (each atomically)."""
    paths = {
        "probs": scene_paths(out_dir, image_id)["probs"],
        "gpkg": prediction_gpkg(out_dir, image_id),
    }
    save_levels(paths["probs"], levels)
    write_gpkg(paths["gpkg"], polygons, names, crs_wkt)
    return paths


def write_predictions_csv(out_dir: str | os.PathLike[str], image_ids: Sequence[str]) -> Path:
    """Concatenate the scenes' WKT rows into ``PRED/predictions.csv``, atomically.

    Streams scene by scene, so memory does not grow with the number of scenes.
    """
    path = Path(out_dir) / PREDICTIONS_CSV
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(",".join(WKT_HEADER) + "\n")
        for i in image_ids:
            with open(scene_paths(out_dir, i)["wkt"], encoding="utf-8", newline="") as src:
                src.readline()  # header
                for line in src:
                    f.write(line)
    return path
