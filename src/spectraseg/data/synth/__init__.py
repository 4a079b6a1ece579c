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

Scale
    A full-size scene (about 3348 x 3392) covers about 1 km at 0.31 m per RGB pixel. Smaller
    scenes use a coarser ground sample distance, ``0.31 m * sqrt(3370 / mean(H, W))``, so they
    cover a smaller area with objects that are still several pixels wide (a car is about
    2.5 x 5.5 px at 512 x 512); vehicles are never thinner than 2 px.

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
    its own child stream, so leaving a product out does not change the others. The order of
    the random draws is therefore part of the format (``tests/data/test_synth.py`` pins digests).

Modules, in import order (each imports only those above it)
    :mod:`.spectra`      reflectance tables of the materials, the 16 band names
    :mod:`.products`     product grids, sizes, scale and the shift limits
    :mod:`.region`       :class:`Region` (one acquisition) and :func:`make_region`
    :mod:`.shapes`       geometric primitives in metres (rectangles, meanders, crowns, ...)
    :mod:`.materials`    :class:`~.materials.Entity` and the builder that draws materials
    :mod:`.site`         the frame a layout is drawn in (extent, orientation, random stream)
    :mod:`.landscape`    fields, roads, river, land use, trees, tracks, ponds
    :mod:`.settlements`  villages, farms, buildings, structures, vehicles
    :mod:`.layout`       :func:`~.layout.layout`: the features in drawing order
    :mod:`.labels`       per-class visible footprints in grid coordinates
    :mod:`.render`       objects -> RGB, P, M, A pixels (spectra, texture, shadows, sensor)
    :mod:`.scene`        :class:`SyntheticScene` and :func:`make_scene`
    :mod:`.dataset`      :func:`synthesize`: a whole dataset on disk
"""

from spectraseg.data.synth.dataset import synthesize
from spectraseg.data.synth.products import (
    MAX_SIZE,
    MIN_SIZE,
    SHIFT_JITTER,
    SHIFT_LIMITS,
    check_size,
    ground_sample_distance,
    product_shape,
)
from spectraseg.data.synth.region import Region, make_region, region_names
from spectraseg.data.synth.scene import SyntheticScene, make_scene
from spectraseg.data.synth.spectra import BAND_NAMES

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
