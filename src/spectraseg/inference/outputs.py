"""The prediction directory ``spectraseg predict --out PRED``: what each scene writes.

::

    PRED/probs/{id}.npy          uint8 (10, H, W) probability levels round(p * 255)
    PRED/polygons/{id}.geojson   one Feature per class, coordinates in DSTL grid units
    PRED/wkt/{id}.csv            the scene's 10 rows of predictions.csv
    PRED/sources/{id}.*.npy      each model's own levels (PredictOptions.sources)
    PRED/predictions.csv         ImageId,ClassType,MultipolygonWKT for every predicted scene

A georeferenced scene (of a dataset description) is predicted strip by strip
(:mod:`spectraseg.inference.streaming`) and writes instead, in the scene's CRS and grid::

    PRED/{id}/classes.tif        COG, uint8: the class per pixel (0 none, 255 nodata), with
                                 a colour table; category names in classes.tif.aux.xml
    PRED/{id}/probs.tif          COG, uint8 levels round(p * 255), a band per class
                                 (not with --no-probs)
    PRED/{id}/polygons.gpkg      layer ``polygons``: one Polygon feature per part, attributes
                                 ``class`` (the schema's class name) and ``area`` (squared
                                 map units)
    PRED/{id}/polygons.geojson   the same in EPSG:4326, RFC 7946 (with --geojson)
    PRED/{id}/.strips/           the strips of a prediction under way (removed when done)

and is not in ``predictions.csv`` (the competition format has no CRS).
Every file is written atomically.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pyogrio.raw
import shapely
from shapely.geometry import MultiPolygon

from spectraseg import CLASS_NAMES, NUM_CLASSES
from spectraseg.data.dstl import PREDICTIONS_CSV, WKT_HEADER, check_image_id, write_wkt_csv
from spectraseg.data.files import atomic_output, temporary_name_accepted
from spectraseg.data.geometry import EMPTY
from spectraseg.data.georef import PREDICTION_LAYER
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
) -> Iterator[str]:
    """A GeoJSON FeatureCollection of a scene's polygons, one Feature per class, as pieces
    of text to write one after the other (the whole, a noisy scene's 200 MB, is never
    joined in memory).

    Coordinates are **DSTL grid units**, not longitude/latitude: x in ``[0, xmax]``, y in
    ``[ymin, 0]`` (``ymin < 0``), the coordinates of the competition's WKT. Foreign members
    record this (``coordinates``), the grid extent and the raster size the polygons were
    traced on. Each Feature has ``class``, ``name``, ``threshold`` and ``area`` (squared
    grid units); empty classes have a MultiPolygon with no coordinates.

    Geometries are GEOS's own GeoJSON text, spliced in: parsing it into Python objects and
    writing it again took a third of a 640 x 640 scene's prediction time (MEASUREMENTS).
    """
    head = {
        "type": "FeatureCollection",
        "image_id": image_id,
        "coordinates": "DSTL grid units: x in [0, xmax], y in [ymin, 0]; not longitude/latitude",
        "xmax": xmax,
        "ymin": ymin,
        "width": width,
        "height": height,
    }
    yield json.dumps(head)[:-1] + ', "features": ['
    for n, c in enumerate(sorted(polygons)):
        g = polygons[c]
        props: dict[str, Any] = {"class": c, "name": CLASS_NAMES.get(c, str(c)), "area": g.area}
        if thresholds is not None:
            props["threshold"] = float(thresholds.get(c, 0.5))
        geometry = (
            '{"type": "MultiPolygon", "coordinates": []}' if g.is_empty else shapely.to_geojson(g)
        )
        yield f'{", " if n else ""}{{"type": "Feature", "properties": {json.dumps(props)}, '
        yield f'"geometry": {geometry}}}'
    yield "]}\n"


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
    pieces = scene_geojson(
        image_id, polygons, xmax, ymin, levels.shape[2], levels.shape[1], thresholds
    )
    with atomic_output(paths["geojson"]) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.writelines(pieces)
    rows = [(image_id, c, polygons.get(c, EMPTY)) for c in range(1, NUM_CLASSES + 1)]
    write_wkt_csv(paths["wkt"], rows, decimals=decimals)
    return paths


GPKG_DATE = "2000-01-01T00:00:00.000Z"
"""``gpkg_contents.last_change`` of written GeoPackages (GDAL's ``OGR_CURRENT_DATE``): with
the time of writing there, the same prediction would give different bytes."""


@contextmanager
def _gdal_options(**options: str) -> Iterator[None]:
    """GDAL configuration options set for the block, restored after."""
    before = {k: pyogrio.get_gdal_config_option(k) for k in options}
    pyogrio.set_gdal_config_options(options)
    try:
        yield
    finally:
        pyogrio.set_gdal_config_options(before)


@dataclass
class GpkgWriter:
    """A scene's polygons appended to a GeoPackage layer in batches (one Polygon feature per
    part, what GIS tools select and style; ``class`` = the class name, ``area`` in squared
    map units), written under a temporary name: :meth:`close` renames it into place."""

    path: Path
    crs_wkt: str
    names: Sequence[str]
    """Class names: class ``c`` is ``names[c - 1]``."""
    batch: int = 20_000
    parts: list[np.ndarray] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    written: bool = False

    def __post_init__(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._out = atomic_output(self.path)
        self.tmp = self._out.__enter__()

    def add(self, c: int, polygons: np.ndarray) -> None:
        """Queue the Polygons ``polygons`` (object array) of class ``c``."""
        self.parts.append(polygons)
        self.classes.extend([self.names[c - 1]] * len(polygons))
        if len(self.classes) >= self.batch:
            self.flush()

    def flush(self) -> None:
        """Append what is queued (the first call creates the layer, even empty)."""
        if self.written and not self.classes:
            return
        geoms = np.concatenate(self.parts) if self.parts else np.empty(0, dtype=object)
        fields = [np.array(self.classes, dtype=object), shapely.area(geoms).astype(np.float64)]
        with temporary_name_accepted(), _gdal_options(OGR_CURRENT_DATE=GPKG_DATE):
            pyogrio.raw.write(
                str(self.tmp), shapely.to_wkb(geoms), geometry_type="Polygon",
                field_data=fields, fields=["class", "area"], crs=self.crs_wkt, driver="GPKG",
                layer=PREDICTION_LAYER, append=self.written,
            )  # fmt: skip
        self.parts, self.classes, self.written = [], [], True

    def close(self, ok: bool = True) -> None:
        """Write what is left and rename the file into place (``ok``), or drop it."""
        if ok:
            self.flush()
            self._out.__exit__(None, None, None)
        else:
            self._out.__exit__(RuntimeError, RuntimeError("abandoned"), None)


def write_gpkg(
    path: Path, polygons: Mapping[int, MultiPolygon], names: Sequence[str], crs_wkt: str
) -> None:
    """Write a scene's ``{class: MultiPolygon}`` as a GeoPackage layer, atomically
    (:class:`GpkgWriter`)."""
    writer = GpkgWriter(path, crs_wkt, names)
    try:
        for c in sorted(polygons):
            writer.add(c, shapely.get_parts(polygons[c]))
    except BaseException:
        writer.close(ok=False)
        raise
    writer.close()


def write_geojson_4326(gpkg: Path, path: Path) -> None:
    """A GeoPackage layer written by :class:`GpkgWriter` again as RFC 7946 GeoJSON
    (EPSG:4326 longitude/latitude, which GDAL reprojects to; 7 decimals), atomically."""
    meta, _, wkb, field_data = pyogrio.raw.read(gpkg, layer=PREDICTION_LAYER)
    with atomic_output(path) as tmp, temporary_name_accepted():
        pyogrio.raw.write(
            str(tmp), wkb, geometry_type="Polygon", field_data=field_data,
            fields=meta["fields"], crs=meta["crs"], driver="GeoJSON",
            layer_options={"RFC7946": "YES"},
        )  # fmt: skip


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
                shutil.copyfileobj(src, f, 1 << 20)  # in 1 MiB pieces, not line by line
    return path
