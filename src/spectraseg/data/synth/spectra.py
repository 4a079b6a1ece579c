"""Reflectance tables: the 16 bands, the materials' spectra and the base sensor gains.

Every table is indexed by band in WorldView-3 order, M1..M8 then A1..A8 (16 values), and
holds unitless reflectance (0..1) or digital numbers per unit reflectance. Objects draw their
own spectra around these endmembers (:mod:`.materials`).
"""

from __future__ import annotations

import numpy as np

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


# Reflectance (0..1) of the materials in the 16 bands (M1..M8, A1..A8), after typical
# library spectra: vegetation has a red edge and absorbs at 2.1-2.3 um; water is dark beyond
# red; soils, roofs and tracks rise into the SWIR; paints are bright in the visible.
ENDMEMBERS: dict[str, np.ndarray] = {
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

"""Reflectance (16,) float32 of each named material."""

ROOFS = ("red_tile", "slate", "concrete", "metal")
"""Roof materials, in the order of :attr:`.region.Region.roof_palette`."""
CAR_PAINTS = ("white_paint", "silver", "black_paint", "red_paint", "blue_paint")
CAR_PAINT_P = (0.3, 0.25, 0.25, 0.1, 0.1)
"""Probabilities of the :data:`CAR_PAINTS`."""
TRUCK_PAINTS = ("white_paint", "silver", "red_paint", "blue_paint", "green_paint")

# DN per unit reflectance and path radiance (haze) offsets before the region's variation.
BASE_GAIN = np.array([1700.0] * 8 + [9500.0] * 8, dtype=np.float32)
BASE_OFFSET = np.array(
    [260, 220, 170, 140, 120, 100, 90, 80, 1100, 1000, 950, 950, 900, 900, 880, 870],
    dtype=np.float32,
)
