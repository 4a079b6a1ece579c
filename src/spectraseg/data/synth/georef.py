"""A synthetic georeferenced scene of any size, streamed to disk: ``spectraseg synth
--georef``.

Writes, without ever holding the scene in memory::

    DIR/scene.tif       (B, H, W) uint16 multispectral (8 WorldView-3 bands, or 4: B, G, R,
                        N1), tiled 256 x 256, DEFLATE, BigTIFF when large, in UTM zone 33N
    DIR/labels.gpkg     layer ``labels``: one polygon per object part, ``class`` = 1..10
                        (the DSTL classes), in the raster's CRS
    DIR/dataset.toml    the dataset description of both (classes, band group, labels)

The scene is a mosaic of blocks of :data:`BLOCK` x :data:`BLOCK` pixels. Each block is one
of :data:`DISTINCT` synthetic landscapes (:func:`spectraseg.data.synth.make_scene` with
every class present, its multispectral product rendered at 4 x 4 times the block on its RGB
grid, registered) placed under one of the 8 symmetries of the square, chosen per block from
the seed; its labels follow it. So the scene holds fields, villages, roads, rivers and
vehicles everywhere, at the multispectral resolution of the landscapes (about 1.6 m), and
rendering costs the same for a 4k or a 32k scene. Blocks are written one at a time (the
GeoTIFF's tiles align with them, so each is written once); labels are appended one row of
blocks at a time. The same arguments give the same pixels and polygons.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyogrio.raw
import rasterio
import shapely
from affine import Affine
from rasterio.windows import Window
from shapely.geometry.base import BaseGeometry
from tqdm import tqdm

from spectraseg import CLASS_NAMES
from spectraseg.data.classes import DSTL_COLORS
from spectraseg.data.files import atomic_output, temporary_name_accepted, write_text_atomic
from spectraseg.data.geometry import geom_grid_to_pixel
from spectraseg.data.synth.scene import make_scene
from spectraseg.errors import ConfigError

BLOCK = 512
"""Side of one landscape block, in scene pixels."""

DISTINCT = 6
"""Distinct landscapes the blocks are drawn from (each about 3 s to render)."""

CRS = "EPSG:32633"
ORIGIN = (500_000.0, 5_000_000.0)
"""Map coordinates of the scene's top-left corner (UTM 33N, metres)."""

FOUR_BANDS = (1, 2, 4, 6)
"""Indices of B, G, R, N1 among the 8 multispectral bands (``--bands 4``)."""


@dataclass(frozen=True)
class Landscape:
    """One rendered block: ``(8, BLOCK, BLOCK)`` uint16 and per class its polygons in block
    pixel coordinates."""

    image: np.ndarray
    labels: dict[int, BaseGeometry]
    resolution: float
    """Metres per pixel."""


def landscape(seed: int, k: int) -> Landscape:
    """Landscape ``k`` of a seed: every class present, bands registered."""
    rgb = 4 * BLOCK
    scene = make_scene(
        f"synth{k}_0_0", rgb, rgb, np.random.SeedSequence([seed, k]), products=("M",),
        shifts={"M": (0.0, 0.0)}, all_classes=True,
    )  # fmt: skip
    image = scene.products["M"]
    if image.shape[1:] != (BLOCK, BLOCK):
        raise AssertionError(f"multispectral block {image.shape} is not {BLOCK} square")
    labels = {}
    for c, geom in scene.labels.items():
        px = geom_grid_to_pixel(geom, rgb, rgb, scene.xmax, scene.ymin)
        labels[c] = shapely.transform(px, lambda xy: xy * (BLOCK / rgb))
    return Landscape(image, labels, 4 * scene.gsd)


def symmetry(image: np.ndarray, geoms: dict[int, BaseGeometry], k: int):  # type: ignore[no-untyped-def]
    """Symmetry ``k`` (0..7) of a square block and its polygons alike: transposed when
    ``k & 4``, then rows flipped when ``k & 1``, columns when ``k & 2``."""
    n = image.shape[-1]

    def move(xy: np.ndarray) -> np.ndarray:
        xy = xy[:, ::-1] if k & 4 else xy.copy()
        if k & 1:
            xy[:, 1] = n - xy[:, 1]
        if k & 2:
            xy[:, 0] = n - xy[:, 0]
        return xy

    if k & 4:
        image = image.transpose(0, 2, 1)
    if k & 1:
        image = image[:, ::-1]
    if k & 2:
        image = image[:, :, ::-1]
    return image, {c: shapely.transform(g, move) for c, g in geoms.items()}


def _check(size: tuple[int, int], bands: int) -> None:
    if bands not in (4, 8):
        raise ConfigError(f"--bands {bands}: a synthetic georeferenced scene has 8 or 4 bands")
    if min(size) < 64:
        raise ConfigError(f"--size {size[0]} {size[1]}: use at least 64 pixels a side")


def synthesize_georef(
    out: str | os.PathLike[str],
    size: tuple[int, int],
    bands: int = 8,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Write ``scene.tif``, ``labels.gpkg`` and ``dataset.toml`` under ``out``; the
    description's path. ``size`` is ``(H, W)`` in pixels."""
    _check(size, bands)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    h, w = size
    rng = np.random.default_rng(np.random.SeedSequence([seed, h, w]))
    rows, cols = -(-h // BLOCK), -(-w // BLOCK)
    pick = rng.integers(0, DISTINCT, size=(rows, cols))
    turn = rng.integers(0, 8, size=(rows, cols))
    scapes = [landscape(seed, k) for k in range(DISTINCT)]
    res = round(scapes[0].resolution, 4)
    transform = Affine(res, 0, ORIGIN[0], 0, -res, ORIGIN[1])
    select = list(range(8)) if bands == 8 else list(FOUR_BANDS)
    profile = {
        "driver": "GTiff", "dtype": "uint16", "count": bands, "height": h, "width": w,
        "crs": CRS, "transform": transform, "tiled": True, "blockxsize": 256,
        "blockysize": 256, "compress": "deflate", "BIGTIFF": "IF_SAFER",
    }  # fmt: skip
    labels = root / "labels.gpkg"
    with (
        atomic_output(root / "scene.tif") as tif,
        atomic_output(labels) as gpkg,
        rasterio.Env(GDAL_CACHEMAX=128),
        rasterio.open(tif, "w", **profile) as dst,
    ):
        for r in tqdm(range(rows), desc="synth", unit="block row", disable=not progress):
            geoms: list[BaseGeometry] = []
            classes: list[int] = []
            for c in range(cols):
                image, placed = symmetry(
                    scapes[pick[r, c]].image, scapes[pick[r, c]].labels, int(turn[r, c])
                )
                y0, x0 = r * BLOCK, c * BLOCK
                bh, bw = min(BLOCK, h - y0), min(BLOCK, w - x0)
                dst.write(image[select, :bh, :bw], window=Window(x0, y0, bw, bh))
                frame = shapely.box(0, 0, bw, bh)
                for cls, g in placed.items():
                    parts = shapely.get_parts(shapely.intersection(g, frame))
                    parts = parts[shapely.get_type_id(parts) == 3]
                    shifted = _to_map(parts, x0, y0, transform)
                    geoms.extend(shifted)
                    classes.extend([cls] * len(shifted))
            _append_labels(gpkg, geoms, classes, append=r > 0)
    write_text_atomic(root / "dataset.toml", _description(bands))
    return root / "dataset.toml"


def _to_map(geoms: np.ndarray, x0: int, y0: int, transform: Affine) -> np.ndarray:
    """Geometries in block pixel coordinates -> map coordinates of the block placed at
    ``(x0, y0)``."""
    t = transform @ Affine.translation(x0, y0)
    return shapely.transform(
        geoms, lambda xy: np.column_stack([t.c + xy[:, 0] * t.a, t.f + xy[:, 1] * t.e])
    )


def _append_labels(path: Path, geoms: list[BaseGeometry], classes: list[int], append: bool) -> None:
    with temporary_name_accepted():
        pyogrio.raw.write(
            str(path), shapely.to_wkb(np.array(geoms, dtype=object)), geometry_type="Polygon",
            field_data=[np.array(classes, dtype=np.int32)], fields=["class"], crs=CRS,
            driver="GPKG", layer="labels", append=append,
        )  # fmt: skip


def _description(bands: int) -> str:
    names = '["B", "G", "R", "N1"]' if bands == 4 else '["C", "B", "G", "Y", "R", "RE", "N1", "N2"]'
    classes = "\n".join(
        f'"{CLASS_NAMES[c]}" = {{ value = {c}, color = "{DSTL_COLORS[c - 1]}" }}'
        for c in range(1, 11)
    )
    return (
        "# A synthetic georeferenced scene (spectraseg synth --georef).\n"
        'label_attribute = "class"\n\n'
        f"[classes]\n{classes}\n\n"
        '[[scenes]]\nid = "synth_0_0"\n'
        f'bands = {{ ms = {{ file = "scene.tif", names = {names} }} }}\n'
        'labels = { file = "labels.gpkg", layer = "labels" }\n'
    )
