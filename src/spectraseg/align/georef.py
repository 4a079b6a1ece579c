"""Registration and fusion of georeferenced scenes (band groups of a dataset description).

The same ECC estimators and fallbacks as DSTL scenes (:func:`estimate_products`,
:func:`resolve_shifts`): each band group is read at its own resolution over the target
grid's extent (:func:`spectraseg.data.georef.native_grid`), so groups compare exactly as
DSTL products of different sizes do. Sensor products of one order are misregistered by
fractions of a pixel (the SpaceNet pan/MS pairs by 0.3-0.75 MS px), which a georeference
does not correct. Fusion then warps each group once onto the target grid with its shift
folded into the warp (``WarpedVRT``, cubic), rather than resampling twice.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from rasterio.enums import Resampling
from rasterio.windows import Window

from spectraseg.align.cache import NODATA_DIR, write_pixel_mask
from spectraseg.align.estimators import (
    DEFAULT_CONFIG,
    SHIFT_DECIMALS,
    Estimate,
    RegistrationConfig,
)
from spectraseg.align.registration import ProductEstimate, ShiftRow, estimate_products
from spectraseg.data.files import atomic_output
from spectraseg.data.georef import GeoScene, Grid, GroupInfo, native_grid, read_on_grid

STRIP_ROWS = 512
"""Rows of the target grid warped and written at a time: memory holds one strip of every
band (``C x 512 x W`` float32), whatever the scene's height."""


def reference_group(infos: Sequence[GroupInfo], grid: Grid) -> GroupInfo:
    """The group the others are registered to: the one whose native grid is finest."""

    def area(info: GroupInfo) -> float:
        res = native_grid(info, grid).res
        return res[0] * res[1]

    return min(infos, key=area)


def decimation(scene: GeoScene, config: RegistrationConfig = DEFAULT_CONFIG) -> int:
    """The integer factor every group is read down by for registration: as large as keeps
    the coarsest group's longer side at least ``config.max_size`` px, the most ECC ever
    works on (it runs on the coarser grid of each pair, capped there). 1 for scenes whose
    coarsest group is under twice that; a 32k px pan with an 8k px MS is read at 1/4, so
    registration never holds a full-resolution strip."""
    coarsest = min(
        max(g.width, g.height) for g in (native_grid(i, scene.grid) for i in scene.infos)
    )
    return max(1, coarsest // config.max_size)


def native_images(scene: GeoScene, factor: int = 1) -> dict[str, np.ndarray]:
    """Product -> ``(B, h, w)`` float32 pixels of each group at its own resolution divided
    by ``factor`` over the scene grid's extent (bilinear where warped, averaged where
    decimated; a plain window where aligned and ``factor`` is 1)."""
    out: dict[str, np.ndarray] = {}
    resampling = Resampling.bilinear if factor == 1 else Resampling.average
    for info in scene.infos:
        g = _decimated(native_grid(info, scene.grid), factor)
        out[info.product], _ = read_on_grid(info, g, resampling=resampling)
    return out


def _decimated(g: Grid, factor: int) -> Grid:
    """``g``'s extent with about ``factor`` times fewer pixels along each axis."""
    w, h = max(1, round(g.width / factor)), max(1, round(g.height / factor))
    return Grid(g.transform @ Affine.scale(g.width / w, g.height / h), w, h, g.crs)


def estimate_georef(
    scene: GeoScene, config: RegistrationConfig = DEFAULT_CONFIG
) -> list[ProductEstimate]:
    """Phase 1 of one georeferenced scene: the ECC shift of every group other than the
    finest, in that group's native pixels over the grid's extent (``shifts.csv`` units),
    estimated on groups read down by :func:`decimation` and scaled back."""
    reference = reference_group(scene.infos, scene.grid).product
    factor = decimation(scene, config)
    found = estimate_products(native_images(scene, factor), scene.image_id, reference, config)
    return found if factor == 1 else [_scaled(e, scene, factor) for e in found]


def _scaled(e: ProductEstimate, scene: GeoScene, factor: int) -> ProductEstimate:
    """An estimate made on decimated pixels, in the group's native pixels."""
    g = native_grid(scene.products[e.product], scene.grid)
    d = _decimated(g, factor)
    sx, sy = g.width / d.width, g.height / d.height

    def up(est: Estimate | None) -> Estimate | None:
        if est is None:
            return None
        dx, dy = round(est.dx * sx, SHIFT_DECIMALS), round(est.dy * sy, SHIFT_DECIMALS)
        return replace(est, dx=dx, dy=dy)

    ecc = up(e.ecc)
    assert ecc is not None
    return replace(e, height=g.height, width=g.width, ecc=ecc, backup=up(e.backup))


def grid_shifts(rows: Sequence[ShiftRow], scene: GeoScene) -> dict[str, tuple[float, float]]:
    """Product -> ``(dx, dy)`` of each row of the scene, from native to grid pixels."""
    out: dict[str, tuple[float, float]] = {}
    for r in rows:
        if r.image_id == scene.image_id and scene.has(r.product):
            g = native_grid(scene.products[r.product], scene.grid)
            out[r.product] = (
                r.dx * g.res[0] / scene.grid.res[0],
                r.dy * g.res[1] / scene.grid.res[1],
            )
    return out


def fuse_window(
    scene: GeoScene,
    shifts: Mapping[str, tuple[float, float]],
    window: Window | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """All groups warped onto the scene grid (or a window of it) with their shifts.

    ``shifts``: product -> ``(dx, dy)`` in grid pixels (:func:`grid_shifts`; missing: none).
    Returns ``(stack, valid)``: ``(C, h, w)`` float32 in ``scene.channels`` order and
    ``(h, w)`` bool, True where every group has data.
    """
    per_group: dict[str, np.ndarray] = {}
    valid: np.ndarray | None = None
    for info in scene.infos:
        data, ok = read_on_grid(
            info, scene.grid, shifts.get(info.product, (0.0, 0.0)), window=window
        )
        per_group[info.product] = data
        valid = ok if valid is None else valid & ok
    assert valid is not None
    return np.stack([per_group[i.product][b] for i, b, _ in scene.bands]), valid


def _strips(height: int, width: int) -> list[Window]:
    return [Window(0, r, width, min(STRIP_ROWS, height - r)) for r in range(0, height, STRIP_ROWS)]


def write_georef(
    cache_dir: str | os.PathLike[str], scene: GeoScene, rows: Sequence[ShiftRow]
) -> dict[str, Any]:
    """Fuse a georeferenced scene into ``cache_dir/{id}.npy`` strip by strip, atomically.

    Values are rounded and clipped to uint16 (after each group's ``scale``). Pixels where
    some group has no data get each channel's mean over the pixels where all have data,
    and are listed in ``nodata/{id}.npy``. Returns the manifest entry, which adds the
    grid (``crs`` as WKT, ``transform`` as the six affine coefficients) to a DSTL entry's.
    """
    cache = Path(cache_dir)
    h, w = scene.grid.shape
    channels = scene.channels
    shifts = grid_shifts(rows, scene)
    nodata = np.zeros((h, w), dtype=bool)
    sums = np.zeros(len(channels), dtype=np.float64)
    path = cache / f"{scene.image_id}.npy"
    cache.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype="<u2", shape=(len(channels), h, w))
        for win in _strips(h, w):
            stack, valid = fuse_window(scene, shifts, win)
            rows_ = slice(win.row_off, win.row_off + win.height)
            out[:, rows_] = np.clip(np.rint(stack), 0, 65535)
            nodata[rows_] = ~valid
            sums += out[:, rows_][:, valid].sum(axis=1, dtype=np.float64)
        _fill_nodata(out, nodata, sums)
        out.flush()
        del out
    write_pixel_mask(cache, NODATA_DIR, scene.image_id, nodata)
    box = _valid_box(~nodata)
    return {
        "channels": channels,
        "height": h,
        "width": w,
        "products": list(scene.products),
        "reference": reference_group(scene.infos, scene.grid).product,
        "valid": {p: box for p in scene.products},
        "crs": scene.grid.crs.to_wkt(),
        "transform": list(scene.grid.transform)[:6],
    }


def _fill_nodata(out: np.ndarray, nodata: np.ndarray, sums: np.ndarray) -> None:
    n_valid = int(nodata.size - nodata.sum())
    if n_valid == nodata.size:
        return
    means = np.rint(sums / max(n_valid, 1)).astype(np.uint16)
    for c in range(out.shape[0]):
        out[c][nodata] = means[c]


def _valid_box(valid: np.ndarray) -> list[int]:
    """``[row0, row1, col0, col1]`` bounding the True pixels (an empty box when none)."""
    rows, cols = np.flatnonzero(valid.any(axis=1)), np.flatnonzero(valid.any(axis=0))
    if not len(rows):
        return [0, 0, 0, 0]
    return [int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1]
