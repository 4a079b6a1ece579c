"""Dataset descriptions: the TOML file that lists georeferenced scenes, their band files,
their label layers and the class schema.

A description is the input of every verb for imagery that is not in the DSTL layout (the
README's "your own GeoTIFFs" section has a complete example)::

    crs = "EPSG:32631"            # optional: the target CRS (default: the finest file's)
    resolution = 0.5              # optional: target pixel size in CRS units
    label_attribute = "class"     # optional: the label field holding each class's value

    [classes]                     # table order is channel order; values are attribute values
    building = { value = 1, color = "#e41a1c" }

    [[scenes]]
    id = "siteA_0_1"              # "{region}_{i}_{j}" groups scenes by region, as DSTL ids do
    bands = { pan = "pan1.tif", ms = { file = "ms1.tif", names = ["B", "G", "R", "N1"] } }
    labels = "buildings.gpkg"     # a path, or { file = "x.gpkg", layer = "buildings" }
    label_extent = "surveyed.gpkg"  # optional: where labels are complete (rest ignored)

Paths are relative to the description file. Band groups are the WorldView products
``rgb``, ``pan``, ``ms`` and ``swir`` (the DSTL products RGB, P, M and A); band names map
onto the cache's channel names, so that registration, indices and normalisation treat a
georeferenced scene exactly as a DSTL one. :func:`read_description` checks everything that
can be checked without opening a raster; :mod:`spectraseg.data.georef` checks the files.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spectraseg.data.classes import ClassSchema, ClassSpec, value_text
from spectraseg.data.dstl import check_image_id
from spectraseg.errors import DataError

GROUPS: dict[str, str] = {"rgb": "RGB", "pan": "P", "ms": "M", "swir": "A"}
"""Band-group keys of a description -> the product (and cache channel family) they fill."""

BAND_NAMES: dict[str, dict[str, str]] = {
    "RGB": {"R": "R", "G": "G", "B": "B"},
    "P": {"P": "P", "PAN": "P"},
    "M": {
        **{f"M{i}": f"M{i}" for i in range(1, 9)},
        **{n: f"M{i}" for i, n in enumerate(("C", "B", "G", "Y", "R", "RE", "N1", "N2"), 1)},
        "N": "M7",
        "NIR": "M7",
    },
    "A": {
        **{f"A{i}": f"A{i}" for i in range(1, 9)},
        **{f"S{i}": f"A{i}" for i in range(1, 9)},
    },
}
"""Accepted band names per product -> cache channel. WorldView-3 names: multispectral C
(coastal), B, G, Y, R, RE (red edge), N1, N2 (NIR1 = ``N``/``NIR``); SWIR S1..S8."""


_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")


@dataclass(frozen=True)
class BandGroup:
    """One raster file of a scene and the cache channels its bands fill, in file order."""

    key: str
    """``rgb``, ``pan``, ``ms`` or ``swir``."""
    path: Path
    channels: tuple[str, ...] | None
    """Cache channel per file band (None: the product's full list, checked on open)."""
    nodata: float | None = None
    """Overrides the file's own nodata value."""
    scale: float = 1.0
    """Multiplies the file's values into the cache's uint16 digital numbers."""

    @property
    def product(self) -> str:
        return GROUPS[self.key]


@dataclass(frozen=True)
class LabelSource:
    """A vector label layer (any OGR format) and, optionally, the layer to read."""

    path: Path
    layer: str | None = None


@dataclass(frozen=True)
class SceneSpec:
    """One scene: its band groups (in product order), label layers and, when only part of
    it is labelled, the polygons of that part (outside them labels say nothing)."""

    image_id: str
    groups: tuple[BandGroup, ...]
    labels: tuple[LabelSource, ...] = ()
    label_extent: LabelSource | None = None


@dataclass(frozen=True)
class Description:
    """A parsed dataset description (see the module docstring)."""

    path: Path
    classes: ClassSchema
    scenes: tuple[SceneSpec, ...]
    crs: str | None = None
    resolution: float | None = None
    label_attribute: str | None = None

    def scene(self, image_id: str) -> SceneSpec:
        for s in self.scenes:
            if s.image_id == image_id:
                return s
        raise DataError(f"scene {image_id} is not in {self.path}")


def is_description(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a dataset description (a ``.toml`` file) rather than a root."""
    return Path(path).suffix.lower() == ".toml"


RASTER_SUFFIXES = (".tif", ".tiff")
"""Files a plain directory's scenes are read from."""

VECTOR_SUFFIXES = (".gpkg", ".geojson", ".json", ".shp")
"""Label layers a plain directory pairs with its rasters (same stem), in this order."""


def is_stack_directory(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a plain directory of georeferenced stacks: GeoTIFFs at its top
    level and none of the DSTL layout's ``grid_sizes.csv``, ``three_band/``,
    ``sixteen_band/``."""
    root = Path(path)
    if not root.is_dir() or any(
        (root / n).exists() for n in ("grid_sizes.csv", "three_band", "sixteen_band")
    ):
        return False
    return any(p.suffix.lower() in RASTER_SUFFIXES for p in root.iterdir())


def read_description(path: str | os.PathLike[str]) -> Description:
    """Parse and check a dataset description; DataError naming the file and key at fault.

    Checks: TOML syntax, known keys, class values and colours, unique scene ids and band
    names, band groups among ``rgb``/``pan``/``ms``/``swir``, band names known for their
    group, and that every referenced file exists. Raster contents are checked when opened.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"dataset description {path} does not exist")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise DataError(f"{path} is not a readable TOML file ({exc})") from None
    where = _Where(path)
    where.keys(doc, {"classes", "scenes", "crs", "resolution", "label_attribute"}, "")
    classes = _classes(doc.get("classes"), where)
    attribute = doc.get("label_attribute")
    if attribute is not None and not isinstance(attribute, str):
        raise where.error("label_attribute", "must be a field name (text)")
    if attribute is None and classes.index_of(1) is None:
        raise where.error(
            "classes", "needs a class with value = 1 when no label_attribute is named "
            "(every label feature is then class 1)",
        )  # fmt: skip
    raw_scenes = doc.get("scenes")
    if not isinstance(raw_scenes, list) or not raw_scenes:
        raise where.error("scenes", "must list at least one [[scenes]] table")
    scenes = tuple(_scene(s, n, where) for n, s in enumerate(raw_scenes))
    ids = [s.image_id for s in scenes]
    for i in ids:
        if ids.count(i) > 1:
            raise where.error("scenes", f"scene id {i!r} is listed twice")
    return Description(
        path, classes, scenes, _crs(doc.get("crs"), where), _resolution(doc, where), attribute
    )


class _Where:
    """Error messages that name the description file and the key at fault."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, key: str, problem: str) -> DataError:
        return DataError(f"{self.path}: {key} {problem}")

    def keys(self, table: Mapping[str, Any], allowed: set[str], prefix: str) -> None:
        for k in table:
            if k not in allowed:
                raise self.error(
                    f"{prefix}{k}", f"is not a known key (expected one of {sorted(allowed)})"
                )

    def file(self, value: object, key: str) -> Path:
        if not isinstance(value, str) or not value:
            raise self.error(key, "must be a file path (text)")
        p = Path(value)
        p = p if p.is_absolute() else self.path.parent / p
        if not p.is_file():
            raise self.error(key, f"names {p}, which does not exist")
        return p


def _crs(value: object, where: _Where) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise where.error("crs", "must be a CRS string such as 'EPSG:32631'")
    return value


def _resolution(doc: Mapping[str, Any], where: _Where) -> float | None:
    value = doc.get("resolution")
    return None if value is None else _number(value, "resolution", where)


def _classes(table: object, where: _Where) -> ClassSchema:
    if not isinstance(table, dict) or not table:
        raise where.error("[classes]", "must name at least one class")
    out: list[ClassSpec] = []
    seen: dict[str, str] = {}
    for index, (name, spec) in enumerate(table.items(), start=1):
        key = f"classes.{name}"
        if not isinstance(spec, dict):
            raise where.error(key, "must be a table such as { value = 1, color = '#e41a1c' }")
        where.keys(spec, {"value", "color", "min_area", "tolerance"}, key + ".")
        value = spec.get("value", index)
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise where.error(key + ".value", f"must be an integer or text, not {value!r}")
        text = value_text(value)
        if text in seen:
            raise where.error(key + ".value", f"{value!r} is also the value of {seen[text]}")
        seen[text] = name
        color = spec.get("color", "#808080")
        if not isinstance(color, str) or not _COLOR.match(color):
            raise where.error(key + ".color", f"must be '#rrggbb', not {color!r}")
        min_area = _number(spec.get("min_area", 0.0), key + ".min_area", where, zero=True)
        tol = spec.get("tolerance")
        tolerance = None if tol is None else _number(tol, key + ".tolerance", where, zero=True)
        out.append(ClassSpec(name, index, value, color, min_area, tolerance))
    return ClassSchema(tuple(out))


def _number(value: object, key: str, where: _Where, zero: bool = False) -> float:
    """``value`` as a float; DataError unless it is a finite number > 0 (>= 0 with ``zero``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise where.error(key, f"must be a number, not {value!r}")
    x = float(value)
    if not math.isfinite(x) or x < 0 or (x == 0 and not zero):
        raise where.error(key, f"must be a {'non-negative' if zero else 'positive'} number")
    return x


def _scene(raw: object, n: int, where: _Where) -> SceneSpec:
    key = f"scenes[{n}]"
    if not isinstance(raw, dict):
        raise where.error(key, "must be a table")
    where.keys(raw, {"id", "bands", "labels", "label_extent"}, key + ".")
    image_id = raw.get("id")
    if not isinstance(image_id, str):
        raise where.error(key + ".id", "must be text")
    try:
        check_image_id(image_id)
    except DataError as exc:
        raise where.error(key + ".id", str(exc)) from None
    bands = raw.get("bands")
    if not isinstance(bands, dict) or not bands:
        raise where.error(
            key + ".bands", "must name at least one band file, e.g. { pan = 'x.tif' }"
        )
    groups = [_group(k, v, f"{key}.bands.{k}", where) for k, v in bands.items()]
    order = list(GROUPS)
    groups.sort(key=lambda g: order.index(g.key))
    labels = raw.get("labels", [])
    labels = labels if isinstance(labels, list) else [labels]
    sources = tuple(_label(v, f"{key}.labels", where) for v in labels)
    extent = raw.get("label_extent")
    if extent is not None and not sources:
        raise where.error(key + ".label_extent", "needs labels to bound")
    ext = None if extent is None else _label(extent, f"{key}.label_extent", where)
    return SceneSpec(image_id, tuple(groups), sources, ext)


def _group(name: str, raw: object, key: str, where: _Where) -> BandGroup:
    if name not in GROUPS:
        raise where.error(key, f"is not a band group (expected one of {list(GROUPS)})")
    if isinstance(raw, str):
        return BandGroup(name, where.file(raw, key), None)
    if not isinstance(raw, dict):
        raise where.error(key, "must be a file path or { file = ..., names = [...] }")
    where.keys(raw, {"file", "names", "nodata", "scale"}, key + ".")
    path = where.file(raw.get("file"), key + ".file")
    names = raw.get("names")
    channels = None if names is None else _channels(names, GROUPS[name], key + ".names", where)
    nodata = raw.get("nodata")
    if nodata is not None and (isinstance(nodata, bool) or not isinstance(nodata, (int, float))):
        raise where.error(key + ".nodata", f"must be a number, not {nodata!r}")
    scale = _number(raw.get("scale", 1.0), key + ".scale", where)
    return BandGroup(name, path, channels, None if nodata is None else float(nodata), scale)


def _channels(names: object, product: str, key: str, where: _Where) -> tuple[str, ...]:
    known = BAND_NAMES[product]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise where.error(key, "must be a list of band names")
    out: list[str] = []
    for n in names:
        channel = known.get(n.upper())
        if channel is None:
            raise where.error(key, f"has {n!r}, not a band name of this group {sorted(known)}")
        if channel in out:
            raise where.error(key, f"lists band {n!r} twice (as channel {channel})")
        out.append(channel)
    return tuple(out)


def _label(raw: object, key: str, where: _Where) -> LabelSource:
    if isinstance(raw, dict):
        where.keys(raw, {"file", "layer"}, key + ".")
        layer = raw.get("layer")
        if layer is not None and not isinstance(layer, str):
            raise where.error(key + ".layer", "must be a layer name (text)")
        return LabelSource(where.file(raw.get("file"), key + ".file"), layer)
    return LabelSource(where.file(raw, key))
