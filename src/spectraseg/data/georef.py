"""Georeferenced scenes: band files in any CRS read onto one target grid, and vector labels.

A scene of a dataset description (:mod:`spectraseg.data.description`) is a set of band
groups (GeoTIFFs or any raster GDAL reads) on one target grid, a :class:`Grid`: an affine
transform, a shape and a CRS. By default the grid is the finest file's own (most pixels
per unit of ground); ``crs``/``resolution`` in the description choose another. Every read
goes through a rasterio ``WarpedVRT`` onto the grid (or a window of it), so files of other
resolutions and CRSs are warped, not resized, and no read needs the whole file in memory.

Labels come from any OGR vector source through pyogrio, are reprojected once to the grid's
CRS (``rasterio.warp.transform_geom``, GDAL's own transformer) and rasterised with
``rasterio.features.rasterize`` (a pixel is in a polygon when its centre is).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyogrio
import rasterio
import rasterio.features
import rasterio.warp
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import CRSError, RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from spectraseg.data.classes import ClassSchema, schema_of
from spectraseg.data.description import (
    RASTER_SUFFIXES,
    VECTOR_SUFFIXES,
    BandGroup,
    Description,
    LabelSource,
    SceneSpec,
    is_stack_directory,
    read_description,
)
from spectraseg.data.dstl import CHANNEL_ORDER, CHANNELS, check_image_id, region_of
from spectraseg.data.rasters import read_header
from spectraseg.errors import DataError, first_line


@dataclass(frozen=True)
class Grid:
    """A north-up pixel grid: ``transform`` maps (col, row) to map coordinates of ``crs``."""

    transform: Affine
    width: int
    height: int
    crs: CRS

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)``."""
        return (self.height, self.width)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` in map units."""
        left, bottom, right, top = rasterio.transform.array_bounds(
            self.height, self.width, self.transform
        )
        return (left, bottom, right, top)

    @property
    def res(self) -> tuple[float, float]:
        """Pixel ``(width, height)`` in map units."""
        return (abs(self.transform.a), abs(self.transform.e))


@dataclass(frozen=True)
class GroupInfo:
    """Header of one band file, checked against its description."""

    group: BandGroup
    channels: tuple[str, ...]
    dtype: np.dtype
    grid: Grid
    nodata: float | None

    @property
    def product(self) -> str:
        return self.group.product

    @property
    def path(self) -> Path:
        return self.group.path


def open_group(group: BandGroup) -> GroupInfo:
    """Read and check one band file's header (no pixels).

    DataError when the file is unreadable, not numeric, not georeferenced, rotated, or
    holds a different number of bands than its description names.
    """
    head = read_header(group.path)
    crs, transform = head.crs, head.transform
    if crs is None:
        raise DataError(f"{group.path} has no CRS: every raster of a georeferenced scene needs one")
    if transform.b != 0 or transform.d != 0 or transform.a <= 0 or transform.e >= 0:
        raise DataError(f"{group.path} is not north-up (transform {tuple(transform)[:6]})")
    channels = _channels(group, head.count)
    grid = Grid(transform, head.width, head.height, crs)
    nodata = group.nodata if group.nodata is not None else head.nodata
    return GroupInfo(group, channels, head.dtype, grid, nodata)


def _channels(group: BandGroup, count: int) -> tuple[str, ...]:
    """The cache channels of a file of ``count`` bands: its group's names, or the product's
    full list when it names none; DataError when the count does not match."""
    names = group.channels
    if names is None:
        names = CHANNELS[group.product]
        if count != len(names):
            raise DataError(
                f"{group.path} has {count} band(s), but a {group.key} group without names "
                f"has {len(names)}: name its bands with names = [...]"
            )
    elif count != len(names):
        fewer = count < len(names)
        raise DataError(
            f"{group.path} has {count} band(s), {'fewer' if fewer else 'more'} than the "
            f"{len(names)} its {group.key} group names" + ("" if fewer else ": name every band")
        )
    return tuple(names)


def open_groups(scene: SceneSpec) -> list[GroupInfo]:
    """Headers of all band files of a scene, in product order."""
    return [open_group(g) for g in scene.groups]


def _grid_in(info: GroupInfo, crs: CRS, resolution: float | None) -> Grid:
    g = info.grid
    if g.crs == crs and resolution is None:
        return g
    left, bottom, right, top = g.bounds
    kwargs = {} if resolution is None else {"resolution": resolution}
    try:
        transform, width, height = rasterio.warp.calculate_default_transform(
            g.crs, crs, g.width, g.height, left, bottom, right, top, **kwargs
        )
    except (CRSError, RasterioError) as exc:
        raise DataError(f"{info.path} cannot be warped to {crs} ({first_line(exc)})") from None
    return Grid(transform, int(width), int(height), crs)


def target_grid(
    infos: Sequence[GroupInfo], crs: str | None = None, resolution: float | None = None
) -> Grid:
    """The grid a scene is fused on: the finest file's grid (in ``crs`` when given, else in
    the finest file's CRS), at ``resolution`` map units per pixel when given.

    DataError when ``crs`` is not a CRS or a file does not overlap the grid.
    """
    if crs is not None:
        try:
            dst = CRS.from_user_input(crs)
        except CRSError as exc:
            raise DataError(f"crs {crs!r} is not a CRS ({first_line(exc)})") from None
    else:
        # The finest in its own units; files in other CRSs are compared once warped.
        dst = max(infos, key=lambda i: i.grid.width * i.grid.height).grid.crs
    grids = [(_grid_in(i, dst, None), i) for i in infos]
    fine, finest = min(grids, key=lambda gi: gi[0].res[0] * gi[0].res[1])
    grid = fine if resolution is None else _grid_in(finest, dst, resolution)
    for g, info in grids:
        if not _overlap(g.bounds, grid.bounds):
            raise DataError(
                f"{info.path} does not overlap {finest.path} (bounds {_fmt(g.bounds)} vs "
                f"{_fmt(grid.bounds)} in {dst})"
            )
    return grid


def _overlap(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _fmt(bounds: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.2f}" for v in bounds) + ")"


def native_grid(info: GroupInfo, grid: Grid) -> Grid:
    """``grid``'s extent at ``info``'s own resolution (in ``grid``'s CRS).

    Registration compares groups at their native resolutions over the same ground, as it
    compares DSTL products; when the file is in ``grid``'s CRS and on a pixel grid aligned
    with it, this is a window of the file itself.
    """
    own = _grid_in(info, grid.crs, None)
    left, bottom, right, top = grid.bounds
    width = max(1, round((right - left) / own.res[0]))
    height = max(1, round((top - bottom) / own.res[1]))
    sx, sy = (right - left) / width, (top - bottom) / height
    return Grid(Affine(sx, 0, left, 0, -sy, top), width, height, grid.crs)


def read_on_grid(
    info: GroupInfo,
    grid: Grid,
    shift: tuple[float, float] = (0.0, 0.0),
    resampling: Resampling = Resampling.cubic,
    window: Window | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A band file warped onto ``grid`` (or a window of it).

    ``shift``: ``(dx, dy)`` in ``grid`` pixels, the registration correction: output pixel
    ``u`` takes the file's content at ``u + shift`` (the convention of
    :func:`spectraseg.align.estimators.ecc_shift`). Returns ``(bands, valid)``: ``(B, h, w)``
    float32 values times the group's ``scale``, and ``(h, w)`` bool, False where the file
    has no data (outside its footprint or nodata in any band).
    """
    transform = grid.transform @ Affine.translation(*shift)
    try:
        with (
            rasterio.open(info.path) as src,
            WarpedVRT(
                src,
                crs=grid.crs,
                transform=transform,
                width=grid.width,
                height=grid.height,
                resampling=resampling,
                src_nodata=info.nodata,
                add_alpha=True,
            ) as vrt,
        ):
            n = src.count
            data = vrt.read(list(range(1, n + 1)), window=window, out_dtype="float32")
            alpha = vrt.read(n + 1, window=window)
    except (RasterioError, CRSError) as exc:
        raise DataError(
            f"{info.path} cannot be warped onto the scene grid ({first_line(exc)})"
        ) from None
    if info.group.scale != 1.0:
        data *= np.float32(info.group.scale)
    # GDAL's alpha is the data type's maximum (255 for floats) where a pixel is covered.
    full = np.iinfo(info.dtype).max if np.issubdtype(info.dtype, np.integer) else 255
    return data, alpha >= full


# --------------------------------------------------------------------------- labels


def _crs_of(text: str | None, path: Path) -> CRS:
    if not text:
        raise DataError(f"{path} has no CRS: labels must say which CRS their coordinates use")
    try:
        return CRS.from_user_input(text)
    except CRSError as exc:
        raise DataError(f"{path} has a CRS that cannot be read ({first_line(exc)})") from None


def read_labels(
    source: LabelSource, schema: ClassSchema, attribute: str | None, crs: CRS
) -> dict[int, list[BaseGeometry]]:
    """Polygons of one label layer per class channel (1-based), in ``crs``.

    Each feature's class is the schema class whose value equals its ``attribute`` (every
    feature is the class of value 1 without one). DataError naming the file when it cannot
    be read, has no usable CRS or cannot be transformed to ``crs``, lacks the attribute, or
    holds a value that is no class of the schema. Features without polygonal area (points,
    lines, empty) are skipped.
    """
    path = source.path
    try:
        meta, _, wkb, fields = pyogrio.raw.read(
            path, layer=source.layer, columns=[attribute] if attribute else []
        )
    except Exception as exc:  # pyogrio raises its own DataSourceError/FieldError family
        raise DataError(f"{path} cannot be read as a vector layer ({first_line(exc)})") from None
    if attribute and (not len(meta["fields"]) or meta["fields"][0] != attribute):
        raise DataError(f"{path} has no attribute {attribute!r} (label_attribute)")
    src_crs = _crs_of(meta.get("crs"), path)
    geoms = shapely.from_wkb(wkb)
    if src_crs != crs:
        geoms = _transform(geoms, src_crs, crs, path)
    values = fields[0] if attribute else np.ones(len(geoms), dtype=np.int64)
    out: dict[int, list[BaseGeometry]] = {c.index: [] for c in schema.classes}
    for n, (geom, value) in enumerate(zip(geoms, values, strict=True)):
        if geom is None or geom.is_empty or geom.area == 0:
            continue
        index = schema.index_of(value)
        if index is None:
            raise DataError(
                f"{path}: feature {n} has {attribute or 'class'} = {value!r}, which is not "
                f"the value of any class of the schema {schema.names}"
            )
        out[index].append(geom)
    return out


def _transform(geoms: np.ndarray, src: CRS, dst: CRS, path: Path) -> np.ndarray:
    try:
        moved = rasterio.warp.transform_geom(src, dst, [g for g in geoms if g is not None])
    except Exception as exc:  # GDAL's CPLE_* errors are not RasterioErrors
        raise DataError(
            f"{path}: its CRS {src} cannot be transformed to the scene's {dst} ({first_line(exc)})"
        ) from None
    it = iter(moved)
    out = np.array([None if g is None else shape(next(it)) for g in geoms], dtype=object)
    bad = [g for g in out if g is not None and not np.all(np.isfinite(shapely.get_coordinates(g)))]
    if bad:
        raise DataError(f"{path}: its CRS {src} cannot be transformed to the scene's {dst}")
    return out


STRIP_ROWS = 1024
"""Rows rasterised at a time by :func:`rasterize_labels` (one strip of one class in memory)."""


def rasterize_labels(
    labels: dict[int, list[BaseGeometry]],
    grid: Grid,
    num_classes: int,
    out: np.ndarray | None = None,
    rows: int = STRIP_ROWS,
) -> np.ndarray:
    """``(num_classes, H, W)`` uint8 {0, 1} masks on ``grid``; channel ``c - 1`` is class ``c``.

    A pixel belongs to a class when its centre is inside one of the class's polygons
    (``rasterio.features.rasterize``, ``all_touched=False``), as DSTL masks are made. Strip
    by strip of ``rows`` rows, each with the polygons an STRtree finds over it, into ``out``
    (e.g. a memory map; zeros allocated when None): the same pixels as one whole-grid call,
    for grids larger than memory.
    """
    if out is None:
        out = np.zeros((num_classes, grid.height, grid.width), dtype=np.uint8)
    for c, geoms in labels.items():
        if not geoms:
            out[c - 1] = 0
            continue
        parts = np.array(geoms, dtype=object)
        tree = shapely.STRtree(parts)
        for r0 in range(0, grid.height, rows):
            h = min(rows, grid.height - r0)
            transform = grid.transform @ Affine.translation(0, r0)
            left, bottom, right, top = rasterio.transform.array_bounds(h, grid.width, transform)
            hits = parts[tree.query(shapely.box(left, bottom, right, top))]
            strip = np.zeros((h, grid.width), dtype=np.uint8)
            if len(hits):
                rasterio.features.rasterize(
                    [(g, 1) for g in hits], out=strip, transform=transform, fill=0
                )
            out[c - 1, r0 : r0 + h] = strip
    return out


def scene_labels(desc: Description, scene: SceneSpec, crs: CRS) -> dict[int, list[BaseGeometry]]:
    """Polygons of every label layer of a scene, per class channel, in ``crs``."""
    out: dict[int, list[BaseGeometry]] = {c.index: [] for c in desc.classes.classes}
    for source in scene.labels:
        for c, geoms in read_labels(source, desc.classes, desc.label_attribute, crs).items():
            out[c].extend(geoms)
    return out


def footprint_fraction(info: GroupInfo, grid: Grid) -> float:
    """Share of ``grid`` a file covers (its bounds, warped), for ``inspect``."""
    g = _grid_in(info, grid.crs, None)
    a, b = g.bounds, grid.bounds
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    total = (b[2] - b[0]) * (b[3] - b[1])
    return w * h / total if total > 0 else math.nan


# --------------------------------------------------------------------------- scenes


@dataclass(frozen=True)
class GeoScene:
    """One scene of a description with its files opened (headers only) and its grid.

    Offers what the fusion stage asks of a DSTL :class:`~spectraseg.data.dstl.Scene`:
    ``image_id``, ``region``, ``products``, ``has``, ``reference`` (the grid's size) and
    ``channels``.
    """

    spec: SceneSpec
    infos: tuple[GroupInfo, ...]
    grid: Grid

    @property
    def image_id(self) -> str:
        return self.spec.image_id

    @property
    def region(self) -> str:
        """``{region}`` of an id ``{region}_{i}_{j}`` (normalisation, folds), else the id."""
        return region_of(self.spec.image_id)

    @property
    def products(self) -> dict[str, GroupInfo]:
        """Product -> its band file, in product order."""
        return {i.product: i for i in self.infos}

    def has(self, product: str) -> bool:
        return product in self.products

    @property
    def reference(self) -> Grid:
        """The target grid (``height``/``width`` as a DSTL scene's reference product)."""
        return self.grid

    @property
    def bands(self) -> list[tuple[GroupInfo, int, str]]:
        """``(file, band index, channel)`` of every band, in the cache's channel order."""
        bands = [(i, b, ch) for i in self.infos for b, ch in enumerate(i.channels)]
        return sorted(bands, key=lambda t: CHANNEL_ORDER.index(t[2]))

    @property
    def channels(self) -> list[str]:
        """The fused stack's channel names, in cache order."""
        return [ch for _, _, ch in self.bands]


class GeoDataset:
    """The scenes of a dataset description (or of a plain directory of stacks,
    :func:`describe_directory`), opened on demand."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        stacks = is_stack_directory(path)
        self.description = describe_directory(path) if stacks else read_description(path)
        self.root = self.description.path
        self._scenes: dict[str, GeoScene] = {}

    @property
    def image_ids(self) -> list[str]:
        """Scene ids in description order."""
        return [s.image_id for s in self.description.scenes]

    def select(self, image_ids: Iterable[str] | None, verb: str) -> list[str]:
        """The scenes a command works on (every scene when None), each once; DataError
        naming the first id the description does not list."""
        ids = list(dict.fromkeys(self.image_ids if image_ids is None else image_ids))
        if not ids:
            raise DataError(f"no scene to {verb} in {self.root}")
        known = set(self.image_ids)
        for image_id in ids:
            if image_id not in known:
                raise DataError(f"scene {image_id} is not in {self.root}")
        return ids

    def scene(self, image_id: str) -> GeoScene:
        """A scene with its files' headers read and its target grid chosen."""
        if image_id not in self._scenes:
            spec = self.description.scene(image_id)
            infos = tuple(open_groups(spec))
            grid = target_grid(infos, self.description.crs, self.description.resolution)
            self._scenes[image_id] = GeoScene(spec, infos, grid)
        return self._scenes[image_id]

    def labels(self, image_id: str) -> dict[int, list[BaseGeometry]]:
        """A scene's label polygons per class channel, in its grid's CRS."""
        scene = self.scene(image_id)
        return scene_labels(self.description, scene.spec, scene.grid.crs)

    def labelled_area(self, image_id: str) -> np.ndarray | None:
        """``(H, W)`` bool, True inside the scene's ``label_extent`` polygons (any feature,
        reprojected, pixel centres); None when the scene has no extent (all labelled)."""
        scene = self.scene(image_id)
        source = scene.spec.label_extent
        if source is None:
            return None
        geoms = read_labels(source, schema_of([("extent", 1)]), None, scene.grid.crs)[1]
        return rasterize_labels({1: geoms}, scene.grid, 1)[0].astype(bool)

    @property
    def labelled_ids(self) -> list[str]:
        """Ids of the scenes that name label layers, in description order."""
        return [s.image_id for s in self.description.scenes if s.labels]


PREDICTION_LAYER = "polygons"
"""Layer name of a georeferenced scene's predicted polygons."""


def prediction_gpkg(pred_dir: str | os.PathLike[str], image_id: str) -> Path:
    """``PRED/{id}/polygons.gpkg``: where ``predict`` writes a georeferenced scene's polygons
    (layer :data:`PREDICTION_LAYER`, a ``class`` attribute holding class names)."""
    return Path(pred_dir) / check_image_id(image_id) / "polygons.gpkg"


def read_predicted(
    pred_dir: str | os.PathLike[str], image_id: str, schema: ClassSchema, crs: CRS
) -> dict[int, list[BaseGeometry]]:
    """A scene's predicted polygons per class channel, in ``crs`` (see :func:`read_labels`;
    the ``class`` attribute holds the schema's class names)."""
    by_name = ClassSchema(tuple(dataclasses.replace(c, value=c.name) for c in schema.classes))
    source = LabelSource(prediction_gpkg(pred_dir, image_id), PREDICTION_LAYER)
    return read_labels(source, by_name, "class", crs)


# --------------------------------------------------------------------------- plain directories


STACK_GROUPS: dict[int, str] = {1: "pan", 3: "rgb", 8: "ms"}
"""The band group of a plain directory's stack by its band count: panchromatic, RGB, or
WorldView-3 multispectral (C, B, G, Y, R, RE, N1, N2). Other counts are ambiguous (a
4-band file may be B, G, R, N or R, G, B, N) and need a dataset description."""


def describe_directory(path: str | os.PathLike[str]) -> Description:
    """A description of a plain directory: each GeoTIFF at its top level is one scene (id:
    its file name without suffix) whose one band group follows from its band count
    (:data:`STACK_GROUPS`), labelled by the vector layer of the same name if there is one
    (``.gpkg``, ``.geojson``, ``.json``, ``.shp``), every feature of the one class
    ``object``. DataError naming a file this cannot describe."""
    root = Path(path)
    scenes = []
    for raster in sorted(p for p in root.iterdir() if p.suffix.lower() in RASTER_SUFFIXES):
        count = read_header(raster).count
        key = STACK_GROUPS.get(count)
        if key is None:
            raise DataError(
                f"{raster} has {count} bands: a plain directory holds 1-band (pan), 3-band "
                "(RGB) or 8-band (WorldView-3 MS) stacks; describe it in a dataset "
                "description that names its bands (README: your own GeoTIFFs)"
            )
        check_image_id(raster.stem)
        group = BandGroup(key, raster, None)
        labels = [raster.with_suffix(s) for s in VECTOR_SUFFIXES]
        found = tuple(LabelSource(p) for p in labels if p.is_file())[:1]
        scenes.append(SceneSpec(raster.stem, (group,), found))
    return Description(root, schema_of([("object", 1)]), tuple(scenes))
