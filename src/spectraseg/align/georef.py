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

from collections.abc import Mapping, Sequence

import numpy as np
from rasterio.enums import Resampling
from rasterio.windows import Window

from spectraseg.align.cache import CHANNEL_ORDER
from spectraseg.align.estimators import DEFAULT_CONFIG, RegistrationConfig
from spectraseg.align.registration import ShiftRow, estimate_products, resolve_shifts
from spectraseg.data.georef import Grid, GroupInfo, native_grid, read_on_grid


def reference_group(infos: Sequence[GroupInfo], grid: Grid) -> GroupInfo:
    """The group the others are registered to: the one whose native grid is finest."""
    return min(infos, key=lambda i: native_grid(i, grid).res[0] * native_grid(i, grid).res[1])


def native_images(infos: Sequence[GroupInfo], grid: Grid) -> dict[str, np.ndarray]:
    """Product -> ``(B, h, w)`` float32 pixels of each group at its own resolution over
    ``grid``'s extent (bilinear where warped; a plain window where aligned)."""
    out: dict[str, np.ndarray] = {}
    for info in infos:
        data, _ = read_on_grid(info, native_grid(info, grid), resampling=Resampling.bilinear)
        out[info.product] = data
    return out


def estimate_shifts(
    image_id: str,
    infos: Sequence[GroupInfo],
    grid: Grid,
    config: RegistrationConfig = DEFAULT_CONFIG,
) -> list[ShiftRow]:
    """The shift rows of one scene's non-reference groups, in each group's native pixels
    over ``grid``'s extent (the units of ``shifts.csv``), fallbacks resolved in the scene."""
    reference = reference_group(infos, grid).product
    estimates = estimate_products(native_images(infos, grid), image_id, reference, config)
    return resolve_shifts(estimates, config=config)


def grid_shifts(
    rows: Sequence[ShiftRow], infos: Sequence[GroupInfo], grid: Grid
) -> dict[str, tuple[float, float]]:
    """Product -> ``(dx, dy)`` of each row converted from native pixels to ``grid`` pixels."""
    native = {i.product: native_grid(i, grid) for i in infos}
    out: dict[str, tuple[float, float]] = {}
    for r in rows:
        g = native[r.product]
        out[r.product] = (r.dx * g.res[0] / grid.res[0], r.dy * g.res[1] / grid.res[1])
    return out


def channel_order(infos: Sequence[GroupInfo]) -> list[tuple[GroupInfo, int, str]]:
    """``(group, band index, channel)`` of every band in the cache's channel order."""
    bands = [(i, b, ch) for i in infos for b, ch in enumerate(i.channels)]
    return sorted(bands, key=lambda t: CHANNEL_ORDER.index(t[2]))


def fuse_window(
    infos: Sequence[GroupInfo],
    grid: Grid,
    shifts: Mapping[str, tuple[float, float]],
    window: Window | None = None,
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """All groups warped onto ``grid`` (or a window of it) with their shifts.

    ``shifts``: product -> ``(dx, dy)`` in grid pixels (:func:`grid_shifts`; missing: none).
    Returns ``(stack, channels, valid)``: ``(C, h, w)`` float32 in the cache's channel
    order, the channel names, and ``(h, w)`` bool, True where every group has data.
    """
    per_group: dict[str, np.ndarray] = {}
    valid: np.ndarray | None = None
    for info in infos:
        data, ok = read_on_grid(info, grid, shifts.get(info.product, (0.0, 0.0)), window=window)
        per_group[info.product] = data
        valid = ok if valid is None else valid & ok
    order = channel_order(infos)
    stack = np.stack([per_group[i.product][b] for i, b, _ in order])
    assert valid is not None
    return stack, [ch for _, _, ch in order], valid
