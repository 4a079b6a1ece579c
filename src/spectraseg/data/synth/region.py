"""Regions: one acquisition and landscape style shared by the scenes of a region.

:class:`Region` holds the per-band gains and offsets (DN per unit reflectance), the band
shifts, the sun and the landscape parameters; :func:`make_region` draws them from a seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from spectraseg.data.synth.products import SHIFT_JITTER, SHIFT_LIMITS
from spectraseg.data.synth.spectra import BASE_GAIN, BASE_OFFSET
from spectraseg.errors import ConfigError

TILES_PER_REGION = 25
"""A region is a 5 x 5 grid of tiles, ``{region}_{i}_{j}`` with i, j in 0..4."""


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


def as_seedseq(seed: int | np.random.SeedSequence) -> np.random.SeedSequence:
    """``seed`` as a SeedSequence; ConfigError unless it is one or a non-negative int."""
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"seed {seed!r} is not valid: use a non-negative integer")
    return np.random.SeedSequence(int(seed))


def make_region(name: str, seed: int | np.random.SeedSequence = 0) -> Region:
    """Draw the shared acquisition and landscape parameters of region ``name``."""
    rng = np.random.default_rng(as_seedseq(seed))
    illum = rng.uniform(0.8, 1.2)  # sun elevation and atmosphere
    haze = rng.uniform(0.6, 1.5)
    gain = (BASE_GAIN * illum * (1 + rng.normal(0, 0.04, 16))).astype(np.float32)
    offset = (BASE_OFFSET * haze * (1 + rng.normal(0, 0.05, 16))).astype(np.float32)
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
