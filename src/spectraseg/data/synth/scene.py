"""One synthetic scene in memory: :class:`SyntheticScene` and :func:`make_scene` (no I/O).

A scene's random draws come from child streams of its seed, in this order: the layout (grid
extent, shifts, scene gain, then every feature), the textures, then one noise stream per
product.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from shapely.geometry import MultiPolygon

from spectraseg.data.dstl import PRODUCTS
from spectraseg.data.synth.labels import has_pixels, scene_labels
from spectraseg.data.synth.layout import layout
from spectraseg.data.synth.products import (
    check_products,
    check_size,
    ground_sample_distance,
    scene_shifts,
)
from spectraseg.data.synth.region import Region, as_seedseq, make_region
from spectraseg.data.synth.render import render
from spectraseg.errors import ConfigError


@dataclass(eq=False)
class SyntheticScene:
    """One synthetic scene in memory.

    ``products`` maps product name to its pixels in the file's layout and dtype (uint16):
    RGB (3, H, W), P (H, W), M (8, h, w), A (8, h', w'). ``labels`` holds all 10 classes as
    valid MultiPolygons in grid coordinates (empty where absent). ``shifts`` gives the true
    ``(dx, dy)`` of each rendered product other than RGB, in its own pixels (package
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
    products = check_products(products)
    ss = as_seedseq(seed)
    if region is None:
        region = _default_region(image_id, ss)
    if noise < 0:
        raise ConfigError(f"noise scale {noise} is negative")
    layout_ss, texture_ss, *noise_ss = ss.spawn(2 + len(PRODUCTS))
    rng = np.random.default_rng(layout_ss)

    xmax = round(float(rng.uniform(0.00915, 0.00919)), 7)
    ymin = -round(float(rng.uniform(0.00903, 0.00905)), 7)
    true_shifts = scene_shifts(rng, region.shifts, shifts)
    scene_gain = np.float32(1 + rng.normal(0, 0.015))

    gsd = ground_sample_distance(height, width)
    for _attempt in range(6):
        ents = layout(rng, width * gsd, height * gsd, gsd, region, all_classes)
        labels = scene_labels(ents, width, height, gsd, xmax, ymin)
        # Rarely a forced feature ends up hidden (a track under a road); draw again.
        if not all_classes or all(
            has_pixels(g, width, height, xmax, ymin) for g in labels.values()
        ):
            break
    images = render(
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


def _default_region(image_id: str, ss: np.random.SeedSequence) -> Region:
    """The acquisition of a scene made without one: drawn from the id's region name and the
    scene's seed, so that another region name gives another acquisition for the same seed."""
    name = image_id.rsplit("_", 2)[0]
    region_seed = [zlib.crc32(name.encode()), *ss.generate_state(2).tolist()]
    return make_region(name, np.random.SeedSequence(region_seed))
