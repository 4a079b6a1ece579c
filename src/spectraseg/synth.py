"""Synthetic datasets in the DSTL competition layout, with labels and true band shifts.

A synthetic scene is a small rural or village landscape drawn as polygons in metres, rendered
as WorldView-3-like imagery in all four products, and labelled with the same polygons in the
DSTL grid. :func:`make_scene` builds one scene in memory (pure: no I/O);
:func:`synthesize` writes a whole dataset::

    three_band/{id}.tif          (3, H, W)          uint16, 11-bit (R, G, B)
    sixteen_band/{id}_P.tif      (H, W)             uint16, 11-bit
    sixteen_band/{id}_M.tif      (8, ~H/4, ~W/4)    uint16, 11-bit
    sixteen_band/{id}_A.tif      (8, ~H/24, ~W/24)  uint16, 14-bit
    grid_sizes.csv               ",Xmax,Ymin"
    train_wkt_v4.csv             every scene x 10 classes (MULTIPOLYGON EMPTY where absent)
    sample_submission.csv        same rows, a full-extent placeholder polygon, as the real one
    shifts.csv                   image_id,product,dx,dy: the true displacement of P, M, A
    synth.json                   the parameters of the run and the files it wrote

Scenes
    Ids are ``{region}_{i}_{j}`` (regions ``6010``, ``6020``, ...; ``i, j`` in 0..4, so at most
    25 scenes per region). ``synthesize`` spreads ``scenes`` over ``regions`` regions (default
    ``ceil(scenes / 4)``) as evenly as possible. The scenes of a region share one acquisition:
    illumination and haze (per-band gains and offsets), sun direction, band shifts, and a
    landscape style (field size and orientation, crop/wood/hedge/track shares, village size,
    traffic, roof materials). Sizes vary by a few pixels between scenes (``-2..2`` rows,
    ``-3..3`` columns around the requested size). The first scene of every region contains all
    10 classes, so a small dataset can learn each class; other scenes draw their features at
    random (a river in 20-50 % of a region's scenes, a village in most, ...).

Landscape
    Fields from a rectangular partition with slightly oblique cuts, aligned with the region's
    orientation: crops (green rows, ripening cereal or ploughed furrows), pasture and woods.
    Hedgerows (tree crowns) and dirt tracks run along field boundaries; tracks also cross
    fields and lead to farms. Roads are gently curving lines; villages line a road with
    houses (rectangles, L-shapes, blocks around a courtyard), back streets, garden sheds,
    garages, trees and parked cars. Farms have a yard, barns, silos, tanks, containers and
    machinery. A meandering river with tree-lined banks, ponds, and vehicles in the lanes of
    the roads complete it. Over many scenes the class shares come out near the real data's:
    at 1024 x 1024 about 22 % crops, 10 % trees, 3.5 % buildings, 0.4 % structures, 2.8 %
    road, 2.6 % track, 1.1 % waterway, 0.2 % standing water, 0.1 % / 0.25 % large / small
    vehicles (roads, water and vehicles somewhat above the real shares, so that small
    datasets see them).

Scale
    A full-size scene (about 3348 x 3392) covers about 1 km at 0.31 m per RGB pixel. Smaller
    scenes use a coarser ground sample distance, ``0.31 m * sqrt(3370 / mean(H, W))``, so they
    cover a smaller area with objects that are still several pixels wide (a car is about
    2.5 x 5.5 px at 512 x 512); vehicles are never thinner than 2 px.

Rendering
    Every object has its own 16-band reflectance spectrum (M: coastal, blue, green, yellow,
    red, red edge, NIR1, NIR2; A: SWIR1..8), drawn around its class's endmembers (vegetation
    bright in red edge and NIR, water dark in NIR and SWIR, roofs and tracks bright in SWIR,
    ...) and mixed with a second spectrum through a texture (crop rows, tree crowns, roof
    pitches, turbidity). Objects are rasterised on the RGB grid in z-order (crops, trees,
    standing water, waterway, track, road, buildings, structures, vehicles) from the very
    polygons that become the labels, shaded by low-frequency illumination and cast shadows.
    RGB takes the red, green and blue bands at full resolution; P is a broadband mean
    (blue..NIR1) at full resolution; M and A are area-averaged to their grids. Each product
    is blurred by its point-spread function, shifted (below; the uncovered border is filled
    by reflection), scaled to digital numbers with the region's gains and offsets, given
    sensor noise and quantised to its bit depth.

Labels
    Per class, the visible footprint: a class loses what the classes above it in z-order
    cover, except that vehicles hide nothing (a car on a road leaves the road labelled). They
    are clipped to the grid extent ``[0, Xmax] x [Ymin, 0]``, which on the RGB grid ends at
    ``W' = W^2 / (W + 1)``: as in the real data the last pixel row and column are unlabelled.
    Coordinates are snapped to the 1e-8 lattice the WKT is written with, and stay valid.

Product grids
    All products cover the same ground extent as RGB: with edges aligned, product pixel
    ``(u, v)`` (continuous, pixel ``(col, row)`` covers ``[col, col+1)``) sees the ground of
    RGB pixel ``(u * W / w, v * H / h)``; this is what ``cv2.resize`` assumes.

Shifts (``shifts.csv``, see docs/architecture.md)
    ``(dx, dy)`` is the displacement of the product's content relative to RGB in the
    product's own pixels: a ground feature at product pixel ``(u, v)`` of a perfectly
    registered product appears at ``(u + dx, v + dy)`` in the file. |dx|, |dy| <= 1.5 for P
    and <= 3 for M and A; the scenes of a region share a shift up to a per-scene jitter of at
    most 0.15 px per axis. Values are rounded to 1e-4 px before they are applied, so the file
    holds the exact truth.

Determinism
    The same arguments give the same bytes. Each region and scene draws from its own
    ``numpy.random.SeedSequence([seed, region, scene])`` stream, and each product's noise from
    its own child stream, so leaving a product out does not change the others.
"""

from __future__ import annotations

import json
import math
import sys
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import cv2
import numpy as np
import shapely
import shapely.errors
import shapely.ops
import tifffile
from rasterio import features
from shapely.geometry import LineString, MultiPolygon, Point, Polygon
from shapely.geometry.base import BaseGeometry

from spectraseg import NUM_CLASSES
from spectraseg.errors import ConfigError
from spectraseg.geometry import EMPTY, geom_pixel_to_grid, rasterize, repair, to_multipolygon
from spectraseg.io import (
    PRODUCTS,
    atomic_output,
    format_wkt,
    product_path,
    write_grid_sizes,
    write_text_atomic,
    write_wkt_csv,
)

__all__ = [
    "BAND_NAMES",
    "MAX_SIZE",
    "MIN_SIZE",
    "SHIFT_JITTER",
    "SHIFT_LIMITS",
    "Region",
    "SyntheticScene",
    "check_size",
    "ground_sample_distance",
    "make_region",
    "make_scene",
    "product_shape",
    "region_names",
    "synthesize",
]

MIN_SIZE = 192
"""Smallest RGB side in pixels: the A product (1/24) must keep at least 8 x 8 pixels."""

MAX_SIZE = 4096
"""Largest RGB side in pixels (a full DSTL scene is about 3348 x 3392)."""

TILES_PER_REGION = 25
"""A region is a 5 x 5 grid of tiles, ``{region}_{i}_{j}`` with i, j in 0..4."""

FULL_SIDE = 3370.0
FULL_GSD = 0.31
"""Metres per RGB pixel of a full-size scene (WorldView-3 pan-sharpened)."""

BAND_NAMES: tuple[str, ...] = (
    "coastal",
    "blue",
    "green",
    "yellow",
    "red",
    "red_edge",
    "nir1",
    "nir2",
    "swir1",
    "swir2",
    "swir3",
    "swir4",
    "swir5",
    "swir6",
    "swir7",
    "swir8",
)
"""The 16 spectral bands of a scene: M1..M8 then A1..A8 (WorldView-3 order)."""

SHIFT_LIMITS: dict[str, float] = {"P": 1.5, "M": 3.0, "A": 3.0}
"""Largest |dx|, |dy| of each product's shift, in its own pixels."""

SHIFT_JITTER = 0.15
"""Largest per-scene deviation (per axis, own pixels) from the region's shift."""

_BITS = {"RGB": 11, "P": 11, "M": 11, "A": 14}
_RGB_BANDS = (4, 2, 1)  # red, green, blue among the M bands
_PAN_WEIGHTS = np.array([0.0, 0.12, 0.2, 0.2, 0.2, 0.16, 0.12, 0.0], dtype=np.float32)
_PSF_SIGMA = {"RGB": 0.55, "P": 0.5, "M": 0.45, "A": 0.55}  # in each product's own pixels
_CLASS_Z = (6, 5, 8, 7, 4, 3, 1, 2, 9, 10)
"""Classes from bottom to top: a pixel shows the topmost class covering it."""
_VEHICLES = (9, 10)

# --------------------------------------------------------------------------- spectra

# Reflectance (0..1) of the materials in the 16 bands (M1..M8, A1..A8), after typical
# library spectra: vegetation has a red edge and absorbs at 2.1-2.3 um; water is dark beyond
# red; soils, roofs and tracks rise into the SWIR; paints are bright in the visible.
_E: dict[str, np.ndarray] = {
    name: np.array([*m, *a], dtype=np.float32)
    for name, (m, a) in {
        "green_veg": (
            (0.035, 0.04, 0.085, 0.06, 0.04, 0.2, 0.45, 0.46),
            (0.38, 0.27, 0.25, 0.22, 0.12, 0.11, 0.1, 0.09),
        ),
        "conifer": (
            (0.025, 0.03, 0.055, 0.04, 0.03, 0.12, 0.28, 0.29),
            (0.22, 0.15, 0.14, 0.12, 0.06, 0.055, 0.05, 0.045),
        ),
        "dry_veg": (
            (0.07, 0.09, 0.14, 0.18, 0.21, 0.25, 0.3, 0.32),
            (0.38, 0.4, 0.4, 0.38, 0.25, 0.27, 0.28, 0.25),
        ),
        "soil": (
            (0.07, 0.09, 0.13, 0.17, 0.2, 0.23, 0.26, 0.28),
            (0.33, 0.38, 0.39, 0.39, 0.36, 0.33, 0.33, 0.31),
        ),
        "dirt": (
            (0.13, 0.16, 0.22, 0.27, 0.3, 0.32, 0.34, 0.35),
            (0.41, 0.46, 0.47, 0.47, 0.43, 0.4, 0.41, 0.39),
        ),
        "water": (
            (0.075, 0.065, 0.05, 0.035, 0.025, 0.015, 0.008, 0.005),
            (0.003, 0.002, 0.002, 0.002, 0.001, 0.001, 0.001, 0.001),
        ),
        "turbid": (
            (0.085, 0.085, 0.095, 0.085, 0.07, 0.05, 0.03, 0.02),
            (0.008, 0.005, 0.005, 0.005, 0.003, 0.003, 0.003, 0.003),
        ),
        "algae": (
            (0.05, 0.05, 0.08, 0.06, 0.04, 0.08, 0.12, 0.1),
            (0.04, 0.02, 0.02, 0.02, 0.01, 0.01, 0.01, 0.01),
        ),
        "asphalt": (
            (0.07, 0.075, 0.08, 0.085, 0.09, 0.095, 0.1, 0.105),
            (0.12, 0.14, 0.145, 0.15, 0.15, 0.145, 0.14, 0.14),
        ),
        "concrete": (
            (0.2, 0.23, 0.27, 0.29, 0.3, 0.31, 0.32, 0.32),
            (0.35, 0.36, 0.36, 0.35, 0.32, 0.31, 0.31, 0.3),
        ),
        "red_tile": (
            (0.06, 0.07, 0.1, 0.17, 0.26, 0.32, 0.37, 0.4),
            (0.46, 0.52, 0.53, 0.53, 0.5, 0.49, 0.49, 0.48),
        ),
        "slate": (
            (0.06, 0.065, 0.07, 0.072, 0.075, 0.08, 0.085, 0.09),
            (0.1, 0.11, 0.11, 0.11, 0.11, 0.105, 0.1, 0.1),
        ),
        "metal": (
            (0.32, 0.34, 0.35, 0.36, 0.36, 0.36, 0.37, 0.37),
            (0.38, 0.38, 0.38, 0.37, 0.35, 0.35, 0.35, 0.35),
        ),
        "white_paint": (
            (0.55, 0.62, 0.66, 0.67, 0.67, 0.67, 0.66, 0.65),
            (0.6, 0.5, 0.48, 0.46, 0.35, 0.33, 0.32, 0.3),
        ),
        "black_paint": ((0.04,) * 8, (0.05,) * 8),
        "red_paint": (
            (0.05, 0.05, 0.06, 0.15, 0.45, 0.55, 0.6, 0.6),
            (0.55, 0.45, 0.43, 0.42, 0.32, 0.3, 0.3, 0.28),
        ),
        "blue_paint": (
            (0.15, 0.2, 0.1, 0.07, 0.05, 0.08, 0.3, 0.35),
            (0.35, 0.3, 0.3, 0.28, 0.2, 0.19, 0.18, 0.17),
        ),
        "silver": (
            (0.3, 0.32, 0.33, 0.33, 0.33, 0.33, 0.33, 0.33),
            (0.32, 0.3, 0.3, 0.29, 0.25, 0.24, 0.24, 0.23),
        ),
        "green_paint": (
            (0.04, 0.05, 0.12, 0.08, 0.05, 0.1, 0.25, 0.28),
            (0.28, 0.24, 0.23, 0.22, 0.15, 0.14, 0.13, 0.12),
        ),
    }.items()
}

_ROOFS = ("red_tile", "slate", "concrete", "metal")
_CAR_PAINTS = ("white_paint", "silver", "black_paint", "red_paint", "blue_paint")
_CAR_P = (0.3, 0.25, 0.25, 0.1, 0.1)
_TRUCK_PAINTS = ("white_paint", "silver", "red_paint", "blue_paint", "green_paint")

# DN per unit reflectance and path radiance (haze) offsets before the region's variation.
_BASE_GAIN = np.array([1700.0] * 8 + [9500.0] * 8, dtype=np.float32)
_BASE_OFFSET = np.array(
    [260, 220, 170, 140, 120, 100, 90, 80, 1100, 1000, 950, 950, 900, 900, 880, 870],
    dtype=np.float32,
)


# --------------------------------------------------------------------------- regions


@dataclass(frozen=True, eq=False)
class Region:
    """One acquisition: what the scenes of a region share.

    ``gain`` and ``offset`` are float32 (16,) arrays (DN = offset + gain * reflectance) for
    the bands M1..M8, A1..A8; RGB uses the M red/green/blue bands times ``rgb_factor``.
    ``shifts`` maps P, M, A to the region's ``(dx, dy)`` in the product's own pixels.
    Angles are radians in image axes (x right, y down); lengths are metres.
    """

    name: str
    gain: np.ndarray
    offset: np.ndarray
    rgb_factor: float
    pan_gain: float
    pan_offset: float
    shifts: dict[str, tuple[float, float]]
    sun_azimuth: float
    """Direction in which shadows fall."""
    shadow_length: float
    orientation: float
    """Main direction of fields and roads."""
    field_size: float
    crop_share: float
    """Probability that a field is cropped."""
    wood_share: float
    hedge_share: float
    """Probability that a field boundary carries a hedgerow."""
    track_share: float
    """Probability that a field boundary carries a track."""
    urban: float
    """0..1: village probability and size."""
    river_p: float
    pond_rate: float
    """Ponds per km^2."""
    group_rate: float
    """Tree groups per km^2."""
    traffic: float
    """Vehicles per km of road (small; large is a fifth of it)."""
    roof_palette: tuple[float, ...]
    """Probabilities of the roof materials red tile, slate, concrete, metal."""


def region_names(count: int) -> list[str]:
    """Names of the first ``count`` regions: ``6010``, ``6020``, ..."""
    return [str(6010 + 10 * r) for r in range(count)]


def _as_seedseq(seed: int | np.random.SeedSequence) -> np.random.SeedSequence:
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"seed {seed!r} is not valid: use a non-negative integer")
    return np.random.SeedSequence(int(seed))


def make_region(name: str, seed: int | np.random.SeedSequence = 0) -> Region:
    """Draw the shared acquisition and landscape parameters of region ``name``."""
    rng = np.random.default_rng(_as_seedseq(seed))
    illum = rng.uniform(0.8, 1.2)  # sun elevation and atmosphere
    haze = rng.uniform(0.6, 1.5)
    gain = (_BASE_GAIN * illum * (1 + rng.normal(0, 0.04, 16))).astype(np.float32)
    offset = (_BASE_OFFSET * haze * (1 + rng.normal(0, 0.05, 16))).astype(np.float32)
    shifts = {}
    for product, limit in SHIFT_LIMITS.items():
        lim = limit - SHIFT_JITTER
        shifts[product] = (float(rng.uniform(-lim, lim)), float(rng.uniform(-lim, lim)))
    palette = rng.dirichlet([3.0, 2.0, 1.0, 1.0])
    return Region(
        name=name,
        gain=gain,
        offset=offset,
        rgb_factor=float(rng.uniform(0.95, 1.05)),
        pan_gain=float(1700.0 * illum * (1 + rng.normal(0, 0.03))),
        pan_offset=float(150.0 * haze),
        shifts=shifts,
        sun_azimuth=float(rng.uniform(0, 2 * math.pi)),
        shadow_length=float(rng.uniform(2.5, 5.5)),
        orientation=float(rng.uniform(0, math.pi)),
        field_size=float(rng.uniform(90, 170)),
        crop_share=float(rng.uniform(0.25, 0.5)),
        wood_share=float(rng.uniform(0.08, 0.16)),
        hedge_share=float(rng.uniform(0.3, 0.6)),
        track_share=float(rng.uniform(0.2, 0.4)),
        urban=float(rng.uniform(0.2, 1.0)),
        river_p=float(rng.uniform(0.2, 0.5)),
        pond_rate=float(rng.uniform(1.0, 4.0)),
        group_rate=float(rng.uniform(30, 70)),
        traffic=float(rng.uniform(15, 40)),
        roof_palette=tuple(float(p) for p in palette),
    )


# --------------------------------------------------------------------------- scene


@dataclass(eq=False)
class SyntheticScene:
    """One synthetic scene in memory.

    ``products`` maps product name to its pixels in the file's layout and dtype (uint16):
    RGB (3, H, W), P (H, W), M (8, h, w), A (8, h', w'). ``labels`` holds all 10 classes as
    valid MultiPolygons in grid coordinates (empty where absent). ``shifts`` gives the true
    ``(dx, dy)`` of each rendered product other than RGB, in its own pixels (module
    docstring). ``height``/``width`` are the RGB grid; ``gsd`` is metres per RGB pixel.
    """

    image_id: str
    height: int
    width: int
    xmax: float
    ymin: float
    gsd: float
    products: dict[str, np.ndarray]
    labels: dict[int, MultiPolygon]
    shifts: dict[str, tuple[float, float]] = field(default_factory=dict)


def ground_sample_distance(height: int, width: int) -> float:
    """Metres per RGB pixel used for a scene of ``height x width`` (0.31 m at full size)."""
    return FULL_GSD * math.sqrt(FULL_SIDE / ((height + width) / 2))


def product_shape(product: str, height: int, width: int) -> tuple[int, ...]:
    """Array shape of ``product`` for an RGB grid of ``height x width``, as in its file."""
    if product == "RGB":
        return (3, height, width)
    if product == "P":
        return (height, width)
    if product == "M":
        return (8, max(1, round(height / 4)), max(1, round(width / 4)))
    if product == "A":
        return (8, max(1, round(height / 24)), max(1, round(width / 24)))
    raise ConfigError(f"product {product!r} is not one of {', '.join(PRODUCTS)}")


def check_size(height: int, width: int) -> None:
    """Raise ConfigError unless ``height x width`` is a usable RGB size."""
    for name, v in (("height", height), ("width", width)):
        if not isinstance(v, int | np.integer) or not MIN_SIZE <= v <= MAX_SIZE:
            raise ConfigError(
                f"scene {name} {v!r} is out of range: use {MIN_SIZE}..{MAX_SIZE} pixels "
                f"(the A product is 1/24 of the RGB size and needs at least 8 pixels)"
            )


def _check_products(products: Sequence[str]) -> tuple[str, ...]:
    if isinstance(products, str):
        products = [products]
    out = tuple(products)
    if not out:
        raise ConfigError("no product requested: choose from RGB, P, M, A")
    for p in out:
        if p not in PRODUCTS:
            raise ConfigError(f"product {p!r} is not one of {', '.join(PRODUCTS)}")
    if len(set(out)) != len(out):
        raise ConfigError(f"products {','.join(out)} name a product twice")
    return tuple(p for p in PRODUCTS if p in out)


def make_scene(
    image_id: str,
    height: int,
    width: int,
    seed: int | np.random.SeedSequence = 0,
    region: Region | None = None,
    *,
    products: Sequence[str] = PRODUCTS,
    shifts: Mapping[str, tuple[float, float]] | None = None,
    noise: float = 1.0,
    all_classes: bool = False,
) -> SyntheticScene:
    """Build one synthetic scene in memory (no I/O).

    Args:
        image_id: the scene id, ``{region}_{i}_{j}``.
        height, width: the RGB grid in pixels (``MIN_SIZE..MAX_SIZE``).
        seed: a non-negative int or a SeedSequence; the scene is a pure function of it and
            of the other arguments.
        region: the shared acquisition; by default one drawn from the id's region name and
            the seed.
        products: which products to render (others are skipped, labels are always made).
        shifts: override the true shifts ``{product: (dx, dy)}`` (own pixels), e.g. zeros
            for perfectly registered products; by default the region's shift plus jitter.
        noise: scale of the sensor noise (0 renders noise-free products).
        all_classes: place every one of the 10 classes in the scene.
    """
    check_size(height, width)
    products = _check_products(products)
    ss = _as_seedseq(seed)
    if region is None:
        name = image_id.rsplit("_", 2)[0]
        # Another region name gives another acquisition for the same seed.
        region_seed = [zlib.crc32(name.encode()), *ss.generate_state(2).tolist()]
        region = make_region(name, np.random.SeedSequence(region_seed))
    if noise < 0:
        raise ConfigError(f"noise scale {noise} is negative")
    layout_ss, texture_ss, *noise_ss = ss.spawn(2 + len(PRODUCTS))
    rng = np.random.default_rng(layout_ss)

    xmax = round(float(rng.uniform(0.00915, 0.00919)), 7)
    ymin = -round(float(rng.uniform(0.00903, 0.00905)), 7)
    true_shifts: dict[str, tuple[float, float]] = {}
    for product in ("P", "M", "A"):
        jx, jy = rng.uniform(-SHIFT_JITTER, SHIFT_JITTER, 2)
        bx, by = region.shifts[product]
        true_shifts[product] = (round(float(bx + jx), 4), round(float(by + jy), 4))
    if shifts is not None:
        for product, (dx, dy) in shifts.items():
            if product not in true_shifts:
                raise ConfigError(f"shift given for product {product!r}; only P, M, A shift")
            true_shifts[product] = (round(float(dx), 4), round(float(dy), 4))
    scene_gain = np.float32(1 + rng.normal(0, 0.015))

    gsd = ground_sample_distance(height, width)
    for _attempt in range(6):
        ents = _layout(rng, width * gsd, height * gsd, gsd, region, all_classes)
        labels = _labels(ents, width, height, gsd, xmax, ymin)
        # Rarely a forced feature ends up hidden (a track under a road); draw again.
        if not all_classes or all(
            _has_pixels(g, width, height, xmax, ymin) for g in labels.values()
        ):
            break
    images = _render(
        ents,
        height,
        width,
        gsd,
        region,
        scene_gain,
        true_shifts,
        products,
        np.random.default_rng(texture_ss),
        {p: np.random.default_rng(s) for p, s in zip(PRODUCTS, noise_ss, strict=True)},
        noise,
    )
    return SyntheticScene(
        image_id=image_id,
        height=height,
        width=width,
        xmax=xmax,
        ymin=ymin,
        gsd=gsd,
        products=images,
        labels=labels,
        shifts={p: true_shifts[p] for p in products if p != "RGB"},
    )


def _has_pixels(geom: MultiPolygon, width: int, height: int, xmax: float, ymin: float) -> bool:
    """Whether ``geom`` (grid coordinates) covers at least one pixel centre of the RGB grid."""
    return not geom.is_empty and bool(rasterize(geom, width, height, xmax, ymin).any())


# --------------------------------------------------------------------------- layout


@dataclass
class _Ent:
    """One rendered object: a polygon in metres and its spectral/texture parameters."""

    geom: BaseGeometry
    sa: np.ndarray  # (16,) reflectance of the texture's first component
    sb: np.ndarray  # (16,) ... and its second
    f0: float  # mixing fraction of sa
    fr: float = 0.0  # amplitude of the row/pitch pattern
    fn1: float = 0.0  # amplitude of fine texture (about 1 m)
    fn2: float = 0.0  # amplitude of coarse texture (about 6 m)
    theta: float = 0.0  # direction across the rows (radians)
    period: float = 0.0  # row period in metres (0: no rows)
    centre: tuple[float, float] | None = None  # a pattern crest sits here (roof ridge)
    tall: bool = False  # casts a shadow


_LAYERS: tuple[str | int, ...] = ("ground", "garden", "yard", *_CLASS_Z)


class _Builder:
    """Collects objects per layer and draws their materials."""

    def __init__(self, rng: np.random.Generator, region: Region) -> None:
        self.rng = rng
        self.region = region
        self.layers: dict[str | int, list[_Ent]] = {k: [] for k in _LAYERS}

    def spectrum(self, base: np.ndarray, bright: float = 0.08) -> np.ndarray:
        """A per-object variant of a spectrum: overall brightness and per-band jitter."""
        r = self.rng
        s = base * np.float32(math.exp(r.normal(0, bright))) * (1 + r.normal(0, 0.02, 16))
        return np.clip(s, 0.0005, 1.0).astype(np.float32)

    def mix(self, *parts: tuple[str, float]) -> np.ndarray:
        return sum((_E[n] * np.float32(w) for n, w in parts), np.zeros(16, np.float32))

    def add(self, layer: str | int, geom: BaseGeometry, kind: str, **kw: object) -> None:
        if geom is None or geom.is_empty:
            return
        self.layers[layer].append(self.material(geom, kind, **kw))

    def material(self, geom: BaseGeometry, kind: str, **kw: object) -> _Ent:
        r, sp = self.rng, self.spectrum
        if kind == "grass":
            dry = r.uniform(0.1, 0.45)
            sa = sp(self.mix(("green_veg", 1 - dry), ("dry_veg", dry)))
            return _Ent(geom, sa, sp(_E["soil"]), r.uniform(0.55, 0.8), fn1=0.08, fn2=0.15)
        if kind == "garden":
            sa = sp(self.mix(("green_veg", 0.8), ("dry_veg", 0.2)))
            sb = sp(self.mix(("dry_veg", 0.5), ("soil", 0.4), ("concrete", 0.1)))
            return _Ent(geom, sa, sb, r.uniform(0.55, 0.8), fn1=0.1, fn2=0.15)
        if kind == "yard":
            sa = sp(self.mix(("concrete", 0.6), ("dirt", 0.4)))
            return _Ent(geom, sa, sp(_E["soil"]), r.uniform(0.5, 0.8), fn1=0.08, fn2=0.25)
        if kind == "crop":
            state = r.choice(3, p=[0.5, 0.25, 0.25])
            theta = float(kw["theta"])
            period = float(r.uniform(1.5, 4.0))
            if state == 0:  # green crop in rows
                sa = sp(self.mix(("green_veg", r.uniform(0.8, 1.0)), ("dry_veg", 0.1)))
                f0, fr = r.uniform(0.55, 0.85), r.uniform(0.12, 0.3)
            elif state == 1:  # ripening cereal
                sa = sp(self.mix(("dry_veg", 0.8), ("green_veg", 0.2)))
                f0, fr = r.uniform(0.6, 0.85), r.uniform(0.1, 0.2)
            else:  # ploughed: moist furrows against dry ridges
                sa = sp(_E["soil"] * np.float32(0.6))
                f0, fr = 0.5, r.uniform(0.3, 0.5)
            return _Ent(
                geom, sa, sp(_E["soil"]), f0, fr=fr, fn1=0.05, fn2=0.1, theta=theta, period=period
            )
        if kind == "tree":
            base = "conifer" if r.random() < 0.25 else "green_veg"
            sa = sp(_E[base] * np.float32(1.05))
            sb = sp(self.mix((base, 0.3), ("soil", 0.05)))
            return _Ent(geom, sa, sb, 0.65, fn1=0.35, fn2=0.1, tall=True)
        if kind == "water":
            sb = sp(_E["turbid"], 0.15)
            return _Ent(geom, sp(_E["water"], 0.1), sb, r.uniform(0.4, 0.9), fn2=0.1)
        if kind == "pond":
            sa = sp(_E["water"] * np.float32(0.8), 0.1)
            return _Ent(geom, sa, sp(_E["algae"], 0.15), r.uniform(0.5, 0.95), fn2=0.12)
        if kind == "track":
            sb = sp(self.mix(("green_veg", 0.6), ("dry_veg", 0.4)))
            return _Ent(geom, sp(_E["dirt"]), sb, r.uniform(0.75, 0.9), fn1=0.15, fn2=0.1)
        if kind == "road":
            sa = sp(_E["asphalt"] * np.float32(r.uniform(0.85, 1.25)))
            return _Ent(geom, sa, sp(_E["concrete"]), r.uniform(0.85, 0.97), fn1=0.05)
        if kind == "roof":
            mat = str(kw.get("material") or _ROOFS[r.choice(4, p=self.region.roof_palette)])
            sa = sp(_E[mat])
            pitched = bool(kw.get("pitched", True)) and mat != "concrete"
            centre = cast("tuple[float, float] | None", kw.get("centre"))
            return _Ent(
                geom,
                sa,
                sa * np.float32(r.uniform(0.6, 0.8)),
                0.5,
                fr=1.5 if pitched else 0.0,
                fn1=0.05,
                theta=float(kw.get("theta", 0.0)),
                period=2 * float(kw.get("depth", 0.0)) if pitched else 0.0,
                centre=centre,
                tall=True,
            )
        if kind == "structure":
            mat = ("concrete", "metal", "slate", "white_paint")[r.choice(4, p=[0.4, 0.3, 0.2, 0.1])]
            sa = sp(_E[mat])
            return _Ent(geom, sa, sa * np.float32(0.7), 0.7, fn1=0.1, tall=True)
        if kind in ("car", "truck"):
            if kind == "car":
                paint = _CAR_PAINTS[r.choice(5, p=_CAR_P)]
            else:
                paint = _TRUCK_PAINTS[r.choice(5)]
            sa = sp(_E[paint], 0.1)
            return _Ent(geom, sa, sa * np.float32(0.5), 0.75, fn1=0.2, tall=kind == "truck")
        raise ValueError(f"unknown material kind {kind!r}")


def _rot(xy: np.ndarray, angle: np.ndarray | float) -> np.ndarray:
    """Rotate (..., k, 2) local coordinates by ``angle`` (broadcast over leading axes)."""
    c = np.cos(angle)[..., None] if np.ndim(angle) else math.cos(angle)
    s = np.sin(angle)[..., None] if np.ndim(angle) else math.sin(angle)
    x, y = xy[..., 0], xy[..., 1]
    return np.stack([x * c - y * s, x * s + y * c], axis=-1)


def _rects(
    cx: np.ndarray, cy: np.ndarray, length: np.ndarray, width: np.ndarray, angle: np.ndarray
) -> np.ndarray:
    """Rectangles (n,) centred at (cx, cy), ``length`` along ``angle``, ``width`` across."""
    n = len(cx)
    unit = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])
    local = unit[None] * np.stack([length, width], -1)[:, None, :]
    xy = _rot(local, np.broadcast_to(angle, (n,))) + np.stack([cx, cy], -1)[:, None, :]
    return shapely.polygons(xy)


def _meander(
    p0: np.ndarray,
    angle: float,
    t0: float,
    t1: float,
    waves: Sequence[tuple[float, float, float]],
    step: float = 8.0,
) -> LineString:
    """A line through ``p0`` along ``angle`` from ``t0`` to ``t1`` metres, displaced sideways
    by the sum of ``(amplitude, wavelength, phase)`` sine waves."""
    t = np.arange(t0, t1 + step, step)
    lateral = np.zeros_like(t)
    for amp, wl, ph in waves:
        lateral += amp * np.sin(2 * math.pi * t / wl + ph)
    u = np.array([math.cos(angle), math.sin(angle)])
    v = np.array([-u[1], u[0]])
    return LineString(p0 + t[:, None] * u + lateral[:, None] * v)


def _along(line: LineString, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points (n, 2) at distances ``d`` along ``line`` and unit tangents (n, 2) there."""
    d = np.clip(d, 0, line.length)
    p = shapely.get_coordinates(shapely.line_interpolate_point(line, d))
    a = shapely.get_coordinates(shapely.line_interpolate_point(line, np.maximum(d - 1, 0)))
    b = shapely.get_coordinates(
        shapely.line_interpolate_point(line, np.minimum(d + 1, line.length))
    )
    t = b - a
    t /= np.maximum(np.hypot(t[:, 0], t[:, 1]), 1e-9)[:, None]
    return p, t


def _greedy(geoms: Sequence[BaseGeometry], blocked: BaseGeometry | None, gap: float) -> list[int]:
    """Indices of a subset of ``geoms`` that keeps ``gap`` from ``blocked`` and each other."""
    if len(geoms) == 0:
        return []
    arr = np.asarray(geoms, dtype=object)
    grown = shapely.buffer(arr, gap / 2, quad_segs=2) if gap > 0 else arr
    ok = np.ones(len(arr), dtype=bool)
    if blocked is not None and not blocked.is_empty:
        ok &= ~shapely.intersects(grown, blocked)
    tree = shapely.STRtree(grown)
    left, right = tree.query(grown, predicate="intersects")
    conflicts: dict[int, list[int]] = {}
    for i, j in zip(left.tolist(), right.tolist(), strict=True):
        if i != j:
            conflicts.setdefault(i, []).append(j)
    keep: list[int] = []
    for i in range(len(arr)):
        if not ok[i]:
            continue
        keep.append(i)
        for j in conflicts.get(i, ()):
            ok[j] = False
    return keep


def _blob(rng: np.random.Generator, cx: float, cy: float, radius: float) -> Polygon:
    """A smooth irregular closed shape (pond) of about ``radius`` metres."""
    phi = np.linspace(0, 2 * math.pi, 33)[:-1]
    r = np.ones_like(phi)
    for k in (2, 3, 4):
        r += rng.uniform(0, 0.25 / k) * np.cos(k * phi + rng.uniform(0, 2 * math.pi))
    e = rng.uniform(1.0, 1.8)
    xy = np.stack([r * np.cos(phi) * e, r * np.sin(phi) / e], -1) * radius
    return Polygon(_rot(xy, rng.uniform(0, math.pi)) + np.array([cx, cy]))


def _crowns(
    rng: np.random.Generator, xy: np.ndarray, rmin: float, rmax: float, gsd: float
) -> BaseGeometry:
    """Union of tree crowns (discs) at ``xy`` (n, 2) with radii in ``[rmin, rmax]`` metres."""
    if len(xy) == 0:
        return EMPTY
    radii = np.maximum(rng.uniform(rmin, rmax, len(xy)), 0.8 * gsd)
    discs = shapely.buffer(shapely.points(xy), radii, quad_segs=3)
    return shapely.union_all(discs)


def _uniform_in(rng: np.random.Generator, poly: BaseGeometry, n: int, tries: int = 8) -> np.ndarray:
    """Up to ``n`` uniform random points (k, 2) inside ``poly`` (rejection sampling)."""
    if poly.is_empty or n <= 0:
        return np.zeros((0, 2))
    x0, y0, x1, y1 = poly.bounds
    out: list[np.ndarray] = []
    got = 0
    for _ in range(tries):
        cand = rng.uniform((x0, y0), (x1, y1), (max(4 * n, 16), 2))
        inside = cand[shapely.contains_xy(poly, cand[:, 0], cand[:, 1])]
        out.append(inside[: n - got])
        got += len(out[-1])
        if got >= n:
            break
    return np.concatenate(out) if out else np.zeros((0, 2))


def _partition(rng: np.random.Generator, half: float, area: float) -> tuple[np.ndarray, np.ndarray]:
    """Split the square ``[-half, half]^2`` into fields of about ``area`` m^2 by recursive,
    slightly oblique cuts across the longer side -> (fields, boundary segments between
    junctions), both arrays of geometries."""
    stack: list[Polygon] = [shapely.box(-half, -half, half, half)]
    leaves: list[Polygon] = []
    cuts: list[LineString] = []
    while stack:
        poly = stack.pop()
        if poly.area < area * rng.uniform(0.6, 1.6):
            leaves.append(poly)
            continue
        x0, y0, x1, y1 = poly.bounds
        across_x = (x1 - x0) > (y1 - y0) * rng.uniform(0.8, 1.25)
        at = rng.uniform(0.35, 0.65)
        tilt = math.tan(rng.normal(0, 0.06))
        if across_x:
            x = x0 + at * (x1 - x0)
            d = tilt * (y1 - y0)
            line = LineString([(x - d, y0 - 1), (x + d, y1 + 1)])
        else:
            y = y0 + at * (y1 - y0)
            d = tilt * (x1 - x0)
            line = LineString([(x0 - 1, y - d), (x1 + 1, y + d)])
        parts = shapely.get_parts(shapely.ops.split(poly, line))
        if len(parts) < 2:
            leaves.append(poly)
            continue
        cuts.append(line.intersection(poly))
        stack.extend(parts)
    # Node the cuts so that every boundary piece between two junctions is its own edge.
    edges = shapely.get_parts(shapely.union_all(cuts)) if cuts else np.array([], dtype=object)
    return np.array(leaves, dtype=object), edges


def _layout(
    rng: np.random.Generator,
    wm: float,
    hm: float,
    gsd: float,
    reg: Region,
    force: bool,
) -> list[tuple[int, _Ent]]:
    """Draw a landscape of ``wm x hm`` metres (x right, y down) -> ``[(class, object)]`` in
    z-order, class 0 for unlabelled ground."""
    b = _Builder(rng, reg)
    pad = 40.0
    scene = shapely.box(0, 0, wm, hm)
    ext = shapely.box(-pad, -pad, wm + pad, hm + pad)
    area = wm * hm / 1e6
    centre = np.array([wm / 2, hm / 2])
    half = math.hypot(wm, hm) / 2 + pad
    theta = reg.orientation + rng.normal(0, 0.08)

    def somewhere(spread: float = 0.3) -> np.ndarray:
        return centre + rng.uniform(-spread, spread, 2) * (wm, hm)

    # ---- fields: a rectangular partition (slightly oblique cuts) aligned with the region
    size = reg.field_size * rng.uniform(0.85, 1.15)
    local_cells, cuts = _partition(rng, half + size, size * size)

    def place(g: np.ndarray) -> np.ndarray:
        return shapely.transform(g, lambda c: _rot(c, theta) + centre)

    cells = shapely.intersection(place(local_cells), ext)
    cells = cells[~shapely.is_empty(cells) & (shapely.area(cells) > 1.0)]
    edges = shapely.intersection(place(cuts), ext)
    edges = edges[(shapely.get_type_id(edges) == 1) & (shapely.length(edges) > 5.0)]

    # ---- roads: gently curving lines across the scene, aligned with the fields
    roads: list[tuple[LineString, float]] = []
    if force or rng.random() < 0.75:
        for k in range(1 + min(2, int(rng.poisson(0.5 * area)))):
            angle = theta + (0 if k % 2 == 0 else math.pi / 2) + rng.normal(0, 0.12)
            wave = (rng.uniform(2, 15), rng.uniform(500, 1200), rng.uniform(0, 2 * math.pi))
            line = _meander(somewhere(), angle, -half, half, [wave])
            roads.append((line, rng.uniform(5.0, 7.0)))
        if rng.random() < 0.4 + 0.4 * reg.urban:
            main = roads[0][0]
            d0 = main.project(Point(somewhere(0.25)))
            (p,), (t,) = _along(main, np.array([d0]))
            angle = math.atan2(t[1], t[0]) + rng.choice([-1, 1]) * rng.uniform(1.1, 2.0)
            wave = (rng.uniform(2, 10), rng.uniform(400, 900), rng.uniform(0, 2 * math.pi))
            roads.append((_meander(p, angle, 0, 2 * half, [wave]), rng.uniform(4.0, 5.5)))

    # ---- river: a meandering line with banks
    river = None
    if force or rng.random() < reg.river_p:
        wl1, wl2 = rng.uniform(180, 450), rng.uniform(60, 150)
        waves = [
            (rng.uniform(0.3, 0.9) * wl1 / (2 * math.pi), wl1, rng.uniform(0, 2 * math.pi)),
            (rng.uniform(0.1, 0.4) * wl2 / (2 * math.pi), wl2, rng.uniform(0, 2 * math.pi)),
        ]
        river_line = _meander(somewhere(0.25), rng.uniform(0, math.pi), -half, half, waves)
        river_w = rng.uniform(6, 16)
        river = river_line.buffer(river_w / 2, quad_segs=4)
        b.add(7, river, "water")

    # ---- village: houses along the main road and along back streets
    houses: list[tuple[Polygon, float, float, np.ndarray]] = []  # (footprint, angle, depth, c)
    zone = EMPTY
    streets: list[tuple[LineString, float]] = []
    n_villages = 0
    if roads and (force or rng.random() < 0.3 + 0.5 * reg.urban):
        n_villages = 1 + int(rng.poisson(1.0 * area))
    through = list(roads)
    for k in range(n_villages):
        main, width = through[k % len(through)]
        d0 = main.project(Point(somewhere(0.35 if k else 0.2)))
        # Villages fill less of a small scene: their length follows the scene's extent.
        length = rng.uniform(0.35, 0.8) * min(wm, hm, 600.0) * (0.6 + reg.urban)
        street = shapely.ops.substring(main, max(d0 - length / 2, 0), d0 + length / 2)
        streets.append((street, width))
        spacing = rng.uniform(55, 70)
        rows = 1 + (min(wm, hm) > 300) + (min(wm, hm) > 700)  # at most, per side
        for side in (-1, 1):
            outer = None
            for row in range(1, 1 + int(rng.binomial(rows, reg.urban))):
                back = shapely.offset_curve(street, side * row * spacing, quad_segs=4)
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
    if streets:
        zone = shapely.union_all([s.buffer(50, quad_segs=4) for s, _ in streets])

    road_polys = [
        line.buffer(w / 2, cap_style="flat", join_style="round", quad_segs=4) for line, w in roads
    ]
    road_union = shapely.union_all(road_polys) if road_polys else EMPTY
    corridor = shapely.union_all([road_union, river if river is not None else EMPTY])

    sheds: list[Polygon] = []
    cars: list[Polygon] = []
    garden_trees: list[np.ndarray] = []
    for street, width in streets:
        spacing = rng.uniform(14, 22)
        d = np.arange(spacing / 2, street.length, spacing)
        for side in (-1.0, 1.0):
            n = len(d)
            if n == 0:
                continue
            dd = d + rng.normal(0, 1.5, n)
            p, t = _along(street, dd)
            nrm = np.stack([-t[:, 1], t[:, 0]], -1) * side
            w = rng.uniform(8, 14, n)
            dep = rng.uniform(7, 11, n)
            kind = rng.choice(3, n, p=[0.6, 0.32, 0.08])
            setback = width / 2 + rng.uniform(5, 10, n)
            for i in range(n):
                if rng.random() < 0.12:
                    continue  # an empty plot
                if kind[i] == 2:  # a block around a courtyard
                    q, ring = rng.uniform(20, 32), rng.uniform(6, 9)
                    shell = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * q / 2
                    hole = np.array([[-1, -1], [-1, 1], [1, 1], [1, -1]]) * (q / 2 - ring)
                    local = [shell, hole]
                    depth, back = q, q / 2
                else:
                    a, bb = w[i], dep[i]
                    if kind[i] == 1:  # L-shape: a wing at the back, left or right
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
                    local = [shell]
                    depth, back = bb, bb / 2
                cxy = p[i] + nrm[i] * (setback[i] + depth / 2)
                frame = np.stack([t[i], nrm[i]])  # local x along the street, y away from it
                rings = [loc @ frame + cxy for loc in local]
                houses.append(
                    (Polygon(rings[0], rings[1:]), math.atan2(nrm[i, 1], nrm[i, 0]), depth, cxy)
                )
                behind = cxy + nrm[i] * (back + rng.uniform(4, 10))
                along = math.atan2(t[i, 1], t[i, 0])
                if rng.random() < 0.6:  # garden shed
                    q = rng.uniform(3, 5.5)
                    sheds.append(_rects(behind[:1], behind[1:], [q], [q * 0.8], [along])[0])
                if rng.random() < 0.3:  # garage beside the house
                    g = cxy + t[i] * (w[i] / 2 + rng.uniform(2.5, 4)) * rng.choice([-1, 1])
                    sheds.append(_rects(g[:1], g[1:], [rng.uniform(3, 3.5)], [6.0], [along])[0])
                if rng.random() < 0.4:
                    car = p[i] + nrm[i] * (width / 2 + rng.uniform(2.0, 4.0))
                    car = car + t[i] * rng.uniform(-w[i] / 3, w[i] / 3)
                    garden_car = _rects(
                        car[:1],
                        car[1:],
                        [max(rng.uniform(4.2, 4.9), 4 * gsd)],
                        [max(rng.uniform(1.8, 2.0), 2 * gsd)],
                        [math.atan2(nrm[i, 1], nrm[i, 0])],
                    )[0]
                    cars.append(garden_car)
                if rng.random() < 0.4:
                    k = int(rng.integers(1, 4))
                    garden_trees.append(
                        behind + nrm[i] * rng.uniform(3, 10) + rng.normal(0, 4, (k, 2))
                    )

    # ---- farms: a yard with barns, silos and machinery, linked to the road by a track
    farm_zone_parts: list[BaseGeometry] = []
    farm_tracks: list[LineString] = []
    barns: list[tuple[Polygon, float, float, np.ndarray]] = []
    structures: list[BaseGeometry] = list(sheds)
    trucks: list[Polygon] = []
    n_farms = int(force or rng.random() < 0.6) + int(rng.poisson(0.5 * area))
    keep_out = shapely.union_all([corridor.buffer(25, quad_segs=2), zone.buffer(30, quad_segs=2)])
    for _ in range(n_farms):
        for _try in range(20):
            c = rng.uniform((0.1 * wm, 0.1 * hm), (0.9 * wm, 0.9 * hm))
            if not keep_out.contains(Point(c)):
                break
        else:
            continue
        ang = theta + rng.normal(0, 0.1)
        ly, wy = rng.uniform(45, 75), rng.uniform(32, 50)
        yard = _rects(c[:1], c[1:], [ly], [wy], [ang])[0]
        b.add("yard", yard, "yard")
        farm_zone_parts.append(yard.buffer(12, quad_segs=2))
        keep_out = keep_out.union(yard.buffer(100, quad_segs=2))
        u = np.array([math.cos(ang), math.sin(ang)])
        v = np.array([-u[1], u[0]])
        cand: list[tuple[Polygon, float, float, np.ndarray]] = []
        for side in (-1, 1):
            bl, bd = rng.uniform(15, 30), rng.uniform(9, 16)
            bc = c + v * side * (wy / 2 - bd / 2 - 2) + u * rng.uniform(-ly / 4, ly / 4)
            cand.append((_rects(bc[:1], bc[1:], [bl], [bd], [ang])[0], ang + math.pi / 2, bd, bc))
        if rng.random() < 0.6:
            bl, bd = rng.uniform(12, 20), rng.uniform(8, 12)
            bc = c + u * (ly / 2 - bd / 2 - 2)
            a2 = ang + math.pi / 2
            cand.append((_rects(bc[:1], bc[1:], [bl], [bd], [a2])[0], ang, bd, bc))
        idx = _greedy([x[0] for x in cand], None, 3.0)
        barns.extend(cand[i] for i in idx)
        taken = shapely.union_all([cand[i][0] for i in idx])
        # silos, tanks and containers around the yard
        pts = _uniform_in(rng, yard.buffer(-3), 10)
        things: list[BaseGeometry] = []
        for j, q in enumerate(pts):
            r = rng.random()
            if r < 0.45:
                things.append(Point(q).buffer(rng.uniform(2.5, 4.5), quad_segs=4))
            elif r < 0.7:
                things.append(Point(q).buffer(rng.uniform(5, 8), quad_segs=6))
            else:
                things.append(_rects(q[:1], q[1:], [rng.uniform(6, 12)], [2.4], [ang + j])[0])
        for i in _greedy(things, taken, 2.0)[: int(rng.integers(2, 7))]:
            structures.append(things[i])
            taken = taken.union(things[i])
        for q in _uniform_in(rng, yard.buffer(-4), int(rng.integers(1, 4))):
            size = [max(rng.uniform(7, 11), 4 * gsd)], [max(rng.uniform(2.5, 3.0), 2 * gsd)]
            truck = _rects(q[:1], q[1:], *size, [ang])[0]
            if not truck.intersects(taken):
                trucks.append(truck)
                taken = taken.union(truck)
        # the farm track
        if not road_union.is_empty:
            target = shapely.ops.nearest_points(road_union, Point(c))[0]
            farm_tracks.append(LineString([c, target]))
        else:
            farm_tracks.append(LineString([c, c + u * 2 * half]))

    # ---- land use per field
    excluded = shapely.union_all([zone, *farm_zone_parts])
    blocked = shapely.union_all([corridor.buffer(2, quad_segs=2), excluded])
    use = rng.random(len(cells))
    for cell in cells:
        b.add("ground", cell, "grass")
    if not zone.is_empty:
        b.add("garden", zone, "garden")
    crop_cells: list[Polygon] = []
    crop_theta: list[float] = []
    wood_cells: list[BaseGeometry] = []
    open_cells: list[BaseGeometry] = []
    in_scene = shapely.intersection(cells, scene)
    for i, cell in enumerate(cells):
        if excluded.contains(cell.centroid):
            continue
        if use[i] < reg.crop_share:
            crop_cells.append(cell)
        elif use[i] < reg.crop_share + reg.wood_share:
            wood_cells.append(cell)
        else:
            open_cells.append(cell)
    if force and not any(c.intersects(scene.buffer(-20)) for c in crop_cells):
        # The field with the most free ground inside the scene becomes a crop.
        free = shapely.area(shapely.difference(in_scene, blocked))
        crop_cells.append(cells[int(np.argmax(free))])
    margins = rng.uniform(1.5, 4.0, len(crop_cells))
    for cell, m in zip(crop_cells, margins, strict=True):
        field_theta = theta + (math.pi / 2 if rng.random() < 0.3 else 0) + rng.normal(0, 0.05)
        crop = cell.buffer(-m, quad_segs=2).difference(blocked)
        b.add(6, crop, "crop", theta=field_theta)
        crop_theta.append(field_theta)

    # ---- trees: woods with ragged edges, hedgerows along boundaries, groups, banks, gardens
    tree_geoms: list[BaseGeometry] = []
    for cell in wood_cells:
        core = cell.buffer(-rng.uniform(2, 5), quad_segs=2)
        if core.is_empty:
            continue
        edge = core.exterior if isinstance(core, Polygon) else core.boundary
        d = np.arange(0, edge.length, 6.0)
        rim = shapely.get_coordinates(shapely.line_interpolate_point(edge, d))
        rim = rim + rng.normal(0, 2.0, rim.shape)
        wood = shapely.union_all([core, _crowns(rng, rim, 2.5, 5.0, gsd)]).difference(blocked)
        tree_geoms.append(wood)
    use_edge = rng.random(len(edges))
    track_edges = edges[use_edge < reg.track_share]
    hedge_edges = edges[
        (use_edge >= reg.track_share) & (use_edge < reg.track_share + reg.hedge_share)
    ]
    for e in hedge_edges:
        d = np.arange(0, e.length, 3.5)
        pts = shapely.get_coordinates(shapely.line_interpolate_point(e, d))
        pts = pts[rng.random(len(pts)) < 0.85]  # gaps
        hedge = _crowns(rng, pts + rng.normal(0, 0.7, pts.shape), 1.5, 3.0, gsd)
        tree_geoms.append(hedge.difference(excluded))
    n_groups = int(rng.poisson(reg.group_rate * area)) + int(force)
    pool = shapely.union_all(open_cells) if open_cells else scene
    for q in _uniform_in(rng, pool.intersection(scene), n_groups):
        k = int(rng.integers(1, 12))
        spread = rng.uniform(3, 12)
        tree_geoms.append(_crowns(rng, q + rng.normal(0, spread, (k, 2)), 2.0, 5.0, gsd))
    if river is not None:
        d = np.arange(0, river_line.length, 7.0)
        p, t = _along(river_line, d)
        side = rng.choice([-1.0, 1.0], len(d))[:, None]
        off = side * (river_w / 2 + rng.uniform(1, 4, (len(d), 1)))
        bank = p + np.stack([-t[:, 1], t[:, 0]], -1) * off
        tree_geoms.append(_crowns(rng, bank[rng.random(len(d)) < 0.45], 2.0, 4.5, gsd))
    for pts in garden_trees:
        tree_geoms.append(_crowns(rng, pts, 2.0, 4.0, gsd))
    for g in tree_geoms:
        b.add(5, g, "tree")

    # ---- tracks: along boundaries, across fields, to farms
    tracks: list[BaseGeometry] = []
    for e in track_edges:
        if not e.intersects(zone):
            tracks.append(e.buffer(rng.uniform(3.0, 5.0) / 2, quad_segs=2))
    for cell, ft in zip(crop_cells, crop_theta, strict=True):
        if rng.random() < 0.2:
            c = np.array(cell.centroid.coords[0])
            u = np.array([math.cos(ft), math.sin(ft)]) * 2 * half
            line = LineString([c - u, c + u]).intersection(cell)
            tracks.append(line.buffer(rng.uniform(2.5, 3.5) / 2, cap_style="flat", quad_segs=2))
    for line in farm_tracks:
        tracks.append(line.buffer(rng.uniform(3.5, 5.0) / 2, quad_segs=2))
    if force and not any(tr.intersects(scene) for tr in tracks):
        if len(edges):
            e = edges[np.argmin(shapely.distance(edges, Point(centre)))]
            tracks.append(e.buffer(rng.uniform(2.5, 4.5) / 2, quad_segs=2))
        else:
            line = _meander(somewhere(), theta + math.pi / 2, -half, half, [])
            tracks.append(line.buffer(1.75, quad_segs=2))
    for tr in tracks:
        b.add(4, tr, "track")

    # ---- ponds
    n_ponds = int(rng.poisson(reg.pond_rate * area))
    if force:
        n_ponds = max(n_ponds, 1)
    busy = shapely.union_all([corridor, zone, *farm_zone_parts, *(h[0] for h in houses)]).buffer(
        6, quad_segs=2
    )
    placed = 0
    for k in range(n_ponds):
        radius = rng.uniform(7, 22)
        for _try in range(30):
            c = rng.uniform((0.05 * wm, 0.05 * hm), (0.95 * wm, 0.95 * hm))
            pond = _blob(rng, c[0], c[1], radius)
            if not pond.intersects(busy):
                b.add(8, pond, "pond")
                busy = busy.union(pond.buffer(10, quad_segs=2))
                placed += 1
                break
        if k == n_ponds - 1 and force and not placed:
            # A crowded scene: a small pond anywhere off the roads and buildings.
            free = scene.buffer(-8).difference(
                shapely.union_all([corridor, *(h[0] for h in houses)]).buffer(8, quad_segs=2)
            )
            for c in _uniform_in(rng, free, 1):
                b.add(8, _blob(rng, c[0], c[1], rng.uniform(5, 8)), "pond")

    # ---- roads on top of tracks and water (bridges)
    for poly in road_polys:
        b.add(3, poly, "road")

    # ---- buildings and structures (none on roads, water or each other)
    all_b = houses + barns
    keep_b = _greedy([h[0] for h in all_b], corridor.buffer(1.5, quad_segs=2), 2.0)
    if force and not keep_b:
        c = centre + rng.uniform(-0.3, 0.3, 2) * (wm, hm)
        h = _rects(c[:1], c[1:], [12.0], [9.0], [theta])[0]
        all_b.append((h, theta + math.pi / 2, 9.0, c))
        keep_b = [len(all_b) - 1]
    kept_houses = [all_b[i][0] for i in keep_b]
    for i in keep_b:
        poly, ang, depth, c = all_b[i]
        is_barn = i >= len(houses)
        b.add(
            1,
            poly,
            "roof",
            theta=ang,
            depth=depth,
            centre=(float(c[0]), float(c[1])),
            pitched=not is_barn and len(poly.interiors) == 0,
            material="metal" if is_barn and rng.random() < 0.6 else None,
        )
    bldg_union = shapely.union_all(kept_houses) if kept_houses else EMPTY
    keep_s = _greedy(structures, shapely.union_all([corridor, bldg_union]), 1.0)
    if force and not keep_s:
        c = rng.uniform((0.2 * wm, 0.2 * hm), (0.8 * wm, 0.8 * hm))
        structures.append(Point(c).buffer(3.5, quad_segs=4))
        keep_s = [len(structures) - 1]
    for i in keep_s:
        b.add(2, structures[i], "structure")

    # ---- vehicles: mostly on roads, in lanes; some parked at houses and farms
    smalls: list[Polygon] = list(cars)
    larges: list[Polygon] = list(trucks)
    for line, w in roads:
        inside = line.intersection(scene.buffer(5)).length
        if inside <= 0:
            continue
        for kind, rate, (l0, l1), (w0, w1) in (
            ("small", reg.traffic, (4.2, 4.9), (1.8, 2.0)),
            ("large", reg.traffic / 5, (7.0, 12.0), (2.5, 3.0)),
        ):
            n = int(rng.poisson(rate * inside / 1000))
            if n == 0:
                continue
            d = rng.uniform(0, line.length, 4 * n)
            p, t = _along(line, d)
            ok = shapely.contains_xy(scene.buffer(5), p[:, 0], p[:, 1])
            p, t = p[ok][:n], t[ok][:n]
            lane = rng.choice([-1.0, 1.0], len(p))[:, None] * w * rng.uniform(0.15, 0.3)
            p = p + np.stack([-t[:, 1], t[:, 0]], -1) * lane
            rects = _rects(
                p[:, 0],
                p[:, 1],
                np.maximum(rng.uniform(l0, l1, len(p)), 4 * gsd),
                np.maximum(rng.uniform(w0, w1, len(p)), 2 * gsd),
                np.arctan2(t[:, 1], t[:, 0]),
            )
            (smalls if kind == "small" else larges).extend(rects)
    if force:
        for lst, (length, width) in ((larges, (9.0, 2.8)), (smalls, (4.5, 1.9))):
            if not any(v.intersects(scene) for v in lst):
                if roads:
                    line = roads[0][0]
                    d0 = line.project(Point(somewhere(0.2)))
                    (p,), (t,) = _along(line, np.array([d0]))
                else:
                    p, t = somewhere(0.2), np.array([1.0, 0.0])
                lst.append(
                    _rects(
                        p[:1],
                        p[1:],
                        [max(length, 4 * gsd)],
                        [max(width, 2 * gsd)],
                        [math.atan2(t[1], t[0])],
                    )[0]
                )
    vehicles = [(9, v) for v in larges] + [(10, v) for v in smalls]
    keep_v = _greedy([v for _, v in vehicles], shapely.union_all([bldg_union, river or EMPTY]), 0.6)
    for i in keep_v:
        cls, v = vehicles[i]
        b.add(cls, v, "truck" if cls == 9 else "car")

    out: list[tuple[int, _Ent]] = []
    for layer in _LAYERS:
        cls = layer if isinstance(layer, int) else 0
        out.extend((cls, e) for e in b.layers[layer])
    return out


# --------------------------------------------------------------------------- labels


def _to_pixels(geoms: np.ndarray | BaseGeometry, gsd: float) -> np.ndarray | BaseGeometry:
    """Metres -> RGB pixel coordinates (same axes, origin at the top-left corner)."""
    return shapely.transform(geoms, lambda c: c / gsd)


def _labels(
    ents: list[tuple[int, _Ent]], width: int, height: int, gsd: float, xmax: float, ymin: float
) -> dict[int, MultiPolygon]:
    """Per-class visible footprints in grid coordinates, as valid MultiPolygons.

    A class loses what the classes drawn above it cover, except that vehicles cover nothing
    (a car on a road leaves the road labelled), matching the z-ordered rendering.
    """
    geoms: dict[int, list[BaseGeometry]] = {c: [] for c in range(1, NUM_CLASSES + 1)}
    for cls, e in ents:
        if cls:
            geoms[cls].append(e.geom)
    # The grid extent [0, Xmax] x [Ymin, 0] maps to pixels [0, W'] x [0, H'] with
    # W' = W^2 / (W + 1): as in the real labels, the last pixel row and column stay unlabelled.
    frame = shapely.box(0, 0, width**2 / (width + 1) * gsd, height**2 / (height + 1) * gsd)
    above: BaseGeometry = EMPTY
    labels: dict[int, MultiPolygon] = {}
    for cls in reversed(_CLASS_Z):
        g = shapely.union_all(geoms[cls]) if geoms[cls] else EMPTY
        visible = g
        if cls not in _VEHICLES and not g.is_empty:
            if not above.is_empty:
                visible = g.difference(above)
            above = shapely.union(above, g)
        visible = visible.intersection(frame)
        grid = geom_pixel_to_grid(_to_pixels(visible, gsd), width, height, xmax, ymin)
        labels[cls] = _snap(grid)
    return {c: labels[c] for c in range(1, NUM_CLASSES + 1)}


def _snap(geom: BaseGeometry, decimals: int = 8) -> MultiPolygon:
    """A valid MultiPolygon on the ``10**-decimals`` lattice the WKT is written with, whose
    WKT (``spectraseg.io.format_wkt``) reads back valid."""
    try:
        geom = shapely.set_precision(geom, 10.0**-decimals)
    except shapely.errors.GEOSException:
        # GEOS snap-rounding can fail on rare configurations; round and repair instead.
        geom = repair(shapely.transform(geom, lambda c: np.round(c, decimals)))
    out = repair(geom)
    for _ in range(3):
        back = shapely.from_wkt(format_wkt(out, decimals))
        if back.is_valid:
            return to_multipolygon(back)
        out = repair(back)
    return to_multipolygon(out)


# --------------------------------------------------------------------------- rendering


def _smooth_noise(
    rng: np.random.Generator, height: int, width: int, cell: float, out: np.ndarray
) -> np.ndarray:
    """Zero-mean, unit-variance random texture of feature size ``cell`` px into ``out``."""
    cell = max(cell, 1.0)
    h, w = max(2, math.ceil(height / cell) + 1), max(2, math.ceil(width / cell) + 1)
    small = rng.standard_normal((h, w), dtype=np.float32)
    if cell <= 1.0:
        out[...] = small[:height, :width]
        return out
    cv2.resize(small, (width, height), dst=out, interpolation=cv2.INTER_LINEAR)
    # Linear interpolation lowers the variance; restore it from a sparse sample.
    std = float(out[::7, ::7].std()) or 1.0
    out *= np.float32(1.0 / std)
    return out


def _tables(
    ents: list[tuple[int, _Ent]], gsd: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-object lookup tables, row 0 being bare grass where nothing is drawn.

    Returns ``sb`` (16, n) and ``d = sa - sb`` (16, n) float32, ``tex`` (8, n) float32 rows
    f0, fr, fn1, fn2, cos, sin, 1/period, phase (pixels), and ``tall`` (n,) uint8.
    """
    n = len(ents) + 1
    sa = np.empty((n, 16), np.float32)
    sb = np.empty((n, 16), np.float32)
    tex = np.zeros((8, n), np.float32)
    tall = np.zeros(n, np.uint8)
    sa[0] = 0.7 * _E["green_veg"] + 0.3 * _E["dry_veg"]
    sb[0] = _E["soil"]
    tex[0, 0] = 0.7
    for i, (_, e) in enumerate(ents, start=1):
        sa[i], sb[i] = e.sa, e.sb
        tex[0:4, i] = (e.f0, e.fr, e.fn1, e.fn2)
        if e.period > 0:
            period = max(e.period / gsd, 3.0) if e.centre is None else max(e.period / gsd, 2.0)
            c, s = math.cos(e.theta), math.sin(e.theta)
            if e.centre is None:
                phase = (i * 0.618034) % 1.0  # any phase, fixed per object
            else:
                # The crossing between the two roof pitches sits on the footprint's centre.
                cx, cy = e.centre[0] / gsd, e.centre[1] / gsd
                phase = 0.25 - (cx * c + cy * s) / period
            tex[4:8, i] = (c, s, 1.0 / period, phase)
        tall[i] = e.tall
    return np.ascontiguousarray(sb.T), np.ascontiguousarray((sa - sb).T), tex, tall


def _finish(
    img: np.ndarray,
    product: str,
    shift: tuple[float, float] | None,
    gain: float,
    offset: float,
    rng: np.random.Generator,
    noise: float,
) -> np.ndarray:
    """Reflectance (h, w) float32 on a product grid -> DN (h, w) uint16: point-spread blur,
    sub-pixel shift, gain and offset, sensor noise, quantisation to the bit depth."""
    out = cv2.GaussianBlur(img, (0, 0), _PSF_SIGMA[product], borderType=cv2.BORDER_REFLECT)
    if shift is not None and shift != (0.0, 0.0):
        # warpAffine maps source (x, y) to (x + dx, y + dy): content moves by +shift.
        warp = np.array([[1, 0, shift[0]], [0, 1, shift[1]]], dtype=np.float64)
        h, w = out.shape
        out = cv2.warpAffine(
            out, warp, (w, h), flags=cv2.INTER_LANCZOS4, borderMode=cv2.BORDER_REFLECT
        )
    out *= np.float32(gain)
    out += np.float32(offset)
    if noise > 0:
        read, shot = (2.0, 0.008) if _BITS[product] == 11 else (6.0, 0.004)
        sigma = out * np.float32(shot * noise)
        sigma += np.float32(read * noise)
        sigma *= rng.standard_normal(out.shape, dtype=np.float32)
        out += sigma
    np.rint(out, out=out)
    np.clip(out, 0, 2 ** _BITS[product] - 1, out=out)
    return out.astype(np.uint16)


def _render(
    ents: list[tuple[int, _Ent]],
    height: int,
    width: int,
    gsd: float,
    region: Region,
    scene_gain: np.float32,
    shifts: Mapping[str, tuple[float, float]],
    products: tuple[str, ...],
    trng: np.random.Generator,
    nrngs: Mapping[str, np.random.Generator],
    noise: float,
) -> dict[str, np.ndarray]:
    """Rasterise the objects on the RGB grid and make each requested product from them."""
    if len(ents) >= 2**16 - 1:
        raise ValueError(f"too many objects to render ({len(ents)})")
    sbt, dt, tex, tall_t = _tables(ents, gsd)
    shapes = _to_pixels(np.array([e.geom for _, e in ents], dtype=object), gsd)
    obj = features.rasterize(
        zip(shapes, range(1, len(ents) + 1), strict=True),
        out_shape=(height, width),
        fill=0,
        dtype="uint16",
    ).astype(np.intp)  # intp indices make np.take several times faster than uint16 ones
    shape = (height, width)
    f = np.empty(shape, np.float32)
    tmp = np.empty(shape, np.float32)
    tmp2 = np.empty(shape, np.float32)

    # Mixing fraction f: per-object base, rows/pitches, fine and coarse texture.
    np.take(tex[0], obj, out=f, mode="clip")
    if np.any(tex[1]):
        x = (np.arange(width, dtype=np.float32) + 0.5)[None, :]
        y = (np.arange(height, dtype=np.float32) + 0.5)[:, None]
        np.take(tex[4], obj, out=tmp, mode="clip")
        tmp *= x
        np.take(tex[5], obj, out=tmp2, mode="clip")
        tmp2 *= y
        tmp += tmp2
        tmp *= np.take(tex[6], obj, out=tmp2, mode="clip")
        tmp += np.take(tex[7], obj, out=tmp2, mode="clip")
        tmp *= np.float32(2 * math.pi)
        np.cos(tmp, out=tmp)
        tmp *= np.take(tex[1], obj, out=tmp2, mode="clip")
        f += tmp
    for row, cell_m in ((2, 1.0), (3, 6.0)):
        _smooth_noise(trng, height, width, cell_m / gsd, tmp)
        tmp *= np.take(tex[row], obj, out=tmp2, mode="clip")
        f += tmp
    np.clip(f, 0.0, 1.0, out=f)

    # Brightness m: slow illumination changes and cast shadows.
    m = np.empty(shape, np.float32)
    _smooth_noise(trng, height, width, 150.0 / gsd, m)
    m *= np.float32(0.04)
    m += np.float32(1.0)
    steps = round(region.shadow_length / gsd)
    if steps >= 1:
        tall = np.take(tall_t, obj, mode="clip")
        k = 2 * steps + 1
        kernel = np.zeros((k, k), np.uint8)
        dx, dy = math.cos(region.sun_azimuth), math.sin(region.sun_azimuth)
        for s in range(steps + 1):
            kernel[steps - round(s * dy), steps - round(s * dx)] = 1
        shade = cv2.dilate(tall, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
        shade &= 1 - tall
        m[shade.astype(bool)] *= np.float32(0.45)
        del tall, shade

    out: dict[str, np.ndarray] = {}
    want_m, want_a = "M" in products, "A" in products
    m_shape, a_shape = product_shape("M", height, width), product_shape("A", height, width)
    msmall = np.empty(m_shape, np.float32) if want_m else None
    asmall = np.empty(a_shape, np.float32) if want_a else None
    rgb = np.empty((3, height, width), np.uint16) if "RGB" in products else None
    pan = np.zeros(shape, np.float32) if "P" in products else None
    gain = region.gain * scene_gain
    for band in range(16):
        is_m = band < 8
        needed = (
            (is_m and want_m)
            or (not is_m and want_a)
            or (rgb is not None and band in _RGB_BANDS)
            or (pan is not None and is_m and _PAN_WEIGHTS[band] > 0)
        )
        if not needed:
            continue
        val = np.take(sbt[band], obj, out=tmp, mode="clip")
        np.take(dt[band], obj, out=tmp2, mode="clip")
        tmp2 *= f
        val += tmp2
        val *= m
        if rgb is not None and band in _RGB_BANDS:
            k = _RGB_BANDS.index(band)
            rgb[k] = _finish(
                val,
                "RGB",
                None,
                float(gain[band] * region.rgb_factor),
                float(region.offset[band]),
                nrngs["RGB"],
                noise,
            )
        if pan is not None and is_m and _PAN_WEIGHTS[band] > 0:
            cv2.scaleAdd(val, float(_PAN_WEIGHTS[band]), pan, dst=pan)
        if is_m and msmall is not None:
            msmall[band] = cv2.resize(val, m_shape[:0:-1], interpolation=cv2.INTER_AREA)
        if not is_m and asmall is not None:
            asmall[band - 8] = cv2.resize(val, a_shape[:0:-1], interpolation=cv2.INTER_AREA)
    del f, m, tmp, tmp2, obj
    if rgb is not None:
        out["RGB"] = rgb
    if pan is not None:
        pan_gain = region.pan_gain * float(scene_gain)
        out["P"] = _finish(pan, "P", shifts["P"], pan_gain, region.pan_offset, nrngs["P"], noise)
    for name, small, first in (("M", msmall, 0), ("A", asmall, 8)):
        if small is None:
            continue
        out[name] = np.stack(
            [
                _finish(
                    small[i],
                    name,
                    shifts[name],
                    float(gain[first + i]),
                    float(region.offset[first + i]),
                    nrngs[name],
                    noise,
                )
                for i in range(8)
            ]
        )
    return {p: out[p] for p in PRODUCTS if p in out}


# --------------------------------------------------------------------------- dataset


def _write_tiff(path: Path, image: np.ndarray, photometric: str) -> None:
    """Write a planar (bands, h, w) or (h, w) uint16 TIFF atomically, uncompressed like the
    competition files, in strips of about 256 KiB so that windowed reads stay cheap."""
    rows = max(1, (1 << 18) // (2 * image.shape[-1]))
    with atomic_output(path) as tmp:
        tifffile.imwrite(
            tmp,
            image,
            photometric=photometric,
            planarconfig="separate" if image.ndim == 3 else None,
            rowsperstrip=rows,
            metadata=None,
        )


def _plan(
    scenes: int, size: tuple[int, int], seed: int, regions: int
) -> list[tuple[str, int, int, Region, np.random.SeedSequence, bool]]:
    """``(image_id, height, width, region, seed, all_classes)`` of every scene, in id order."""
    plan = []
    counts = [scenes // regions + (r < scenes % regions) for r in range(regions)]
    for r, (name, n) in enumerate(zip(region_names(regions), counts, strict=True)):
        region = make_region(name, np.random.SeedSequence([seed, r]))
        prng = np.random.default_rng(np.random.SeedSequence([seed, r, 0]))
        tiles = sorted(prng.permutation(TILES_PER_REGION)[:n].tolist())
        for k, tile in enumerate(tiles):
            h = int(np.clip(size[0] + prng.integers(-2, 3), MIN_SIZE, MAX_SIZE))
            w = int(np.clip(size[1] + prng.integers(-3, 4), MIN_SIZE, MAX_SIZE))
            ss = np.random.SeedSequence([seed, r, k + 1])
            plan.append((f"{name}_{tile // 5}_{tile % 5}", h, w, region, ss, k == 0))
    return plan


def _default_regions(scenes: int) -> int:
    return max(1, math.ceil(scenes / 4))


def _product_files(root: Path, ids: Sequence[str], products: Sequence[str]) -> set[Path]:
    return {product_path(root, i, p) for i in ids for p in products}


def _prepare_out(out: Path, planned: set[Path]) -> None:
    """Refuse to mix with foreign scenes; remove scenes a previous synth run left behind."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {out} exists and is not a directory")
    existing = set()
    for sub, pattern in (("three_band", "*.tif"), ("sixteen_band", "*_[PMA].tif")):
        if (out / sub).is_dir():
            existing.update((out / sub).glob(pattern))
    stale = existing - planned
    if not stale:
        return
    manifest = out / "synth.json"
    ours: set[Path] = set()
    if manifest.is_file():
        try:
            ours = {out / f for f in json.loads(manifest.read_text())["files"]}
        except (ValueError, KeyError, TypeError):
            ours = set()
    foreign = sorted(stale - ours)
    if foreign:
        raise ConfigError(
            f"output {out} already holds scenes this run would not replace "
            f"(e.g. {foreign[0]}); choose an empty directory"
        )
    for path in stale:
        path.unlink()


def synthesize(
    out: str | Path,
    scenes: int,
    size: tuple[int, int],
    seed: int,
    regions: int | None = None,
    products: Sequence[str] = PRODUCTS,
    progress: bool = True,
) -> list[str]:
    """Write a synthetic dataset in the DSTL layout under ``out``; return its image ids.

    ``scenes`` scenes of about ``size = (height, width)`` RGB pixels are spread over
    ``regions`` regions (default ``ceil(scenes / 4)``, at most 25 scenes each). Every file is
    written atomically; files of an earlier synth run in ``out`` that this run does not
    rewrite are removed, and ``out`` may not hold other scenes. See the module docstring for
    the layout, the shifts and determinism.
    """
    from tqdm import tqdm

    if isinstance(scenes, bool) or not isinstance(scenes, int | np.integer) or scenes < 1:
        raise ConfigError(f"number of scenes {scenes!r} is not valid: use 1 or more")
    if len(size) != 2:
        raise ConfigError(f"size {size!r} is not valid: give height and width")
    check_size(size[0], size[1])
    _as_seedseq(seed)
    if regions is None:
        regions = _default_regions(int(scenes))
    if isinstance(regions, bool) or not isinstance(regions, int | np.integer) or regions < 1:
        raise ConfigError(f"number of regions {regions!r} is not valid: use 1 or more")
    if regions > scenes:
        raise ConfigError(f"{regions} regions cannot be filled by {scenes} scene(s)")
    if math.ceil(scenes / regions) > TILES_PER_REGION:
        raise ConfigError(
            f"{scenes} scenes in {regions} region(s) exceed {TILES_PER_REGION} tiles per "
            f"region: use at least {math.ceil(scenes / TILES_PER_REGION)} regions"
        )
    products = _check_products(products)
    out = Path(out)
    plan = _plan(int(scenes), (int(size[0]), int(size[1])), int(seed), int(regions))
    ids = [p[0] for p in plan]
    _prepare_out(out, _product_files(out, ids, products))

    grid: dict[str, tuple[float, float]] = {}
    label_rows: list[tuple[str, int, BaseGeometry]] = []
    sample_rows: list[tuple[str, int, str]] = []
    shift_lines = ["image_id,product,dx,dy"]
    for image_id, h, w, region, ss, force in tqdm(
        plan, desc="synth", unit="scene", disable=not progress, file=sys.stderr
    ):
        scene = make_scene(image_id, h, w, ss, region, products=products, all_classes=force)
        for name, image in scene.products.items():
            _write_tiff(
                product_path(out, image_id, name), image, "rgb" if name == "RGB" else "minisblack"
            )
        grid[image_id] = (scene.xmax, scene.ymin)
        full = (
            f"POLYGON ((0 0, {scene.xmax!r} 0, {scene.xmax!r} {scene.ymin!r}, "
            f"0 {scene.ymin!r}, 0 0))"
        )
        for cls in range(1, NUM_CLASSES + 1):
            label_rows.append((image_id, cls, scene.labels[cls]))
            sample_rows.append((image_id, cls, full))
        for name, (dx, dy) in scene.shifts.items():
            shift_lines.append(f"{image_id},{name},{dx:.4f},{dy:.4f}")
        del scene

    write_grid_sizes(out / "grid_sizes.csv", grid)
    write_wkt_csv(out / "train_wkt_v4.csv", label_rows)
    write_wkt_csv(out / "sample_submission.csv", sample_rows)
    write_text_atomic(out / "shifts.csv", "\n".join(shift_lines) + "\n")
    files = sorted(str(p.relative_to(out)) for p in _product_files(out, ids, products))
    manifest = {
        "format": "spectraseg-synth",
        "version": 1,
        "seed": int(seed),
        "scenes": int(scenes),
        "size": [int(size[0]), int(size[1])],
        "regions": int(regions),
        "products": list(products),
        "image_ids": ids,
        "files": files,
    }
    write_text_atomic(out / "synth.json", json.dumps(manifest, indent=2) + "\n")
    return ids
