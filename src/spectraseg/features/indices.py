"""Spectral indices computed on the fly from the fused stack, as extra input channels.

Indices are computed from **physical digital numbers** (the cache's ``stored * scale +
offset``) *before* normalisation, in float32, and are appended to the normalised channels
unnormalised: every index lies in ``[-1, 1]`` already. Divisions are safe: where the
denominator's magnitude is below :data:`EPS` the index is 0, and results are clipped to
``[-1, 1]``, so no index is ever NaN or infinite.

Band choices (WorldView-3; M band order coastal, blue, green, yellow, red, red-edge, NIR1,
NIR2; A bands SWIR1..SWIR8 at about 1210, 1570, 1660, 1730, 2165, 2205, 2260, 2330 nm):

========  ==========================================  ==================  ============
name      formula                                      bands               needs
========  ==========================================  ==================  ============
NDWI      (G - NIR) / (G + NIR)   (McFeeters)          G=M3, NIR=M7        M
NDVI      (NIR - R) / (NIR + R)                        NIR=M7, R=M5        M
NDRE      (NIR - RE) / (NIR + RE)                      NIR=M7, RE=M6       M
CCCI      NDRE * NDVI                                  M7, M6, M5          M
EVI       2.5 (NIR - R) / (NIR + 6 R - 7.5 B + 1)      M7, M5, B=M2        M
NBR2      (SWIR3 - SWIR6) / (SWIR3 + SWIR6)            A3, A6              A
ND:X:Y    (X - Y) / (X + Y) for any two channels       X, Y                X, Y
========  ==========================================  ==================  ============

Every named index uses bands of a single product, because the products' digital numbers
are on different scales (RGB and M are 11-bit, A is 14-bit, and dstl-lite's RGB is an
8-bit render): a ratio mixing products measures the scale difference more than the
ground. In particular the near-infrared needed by NDWI, NDVI, NDRE, CCCI and EVI exists
only in M; RGB has no NIR band, so on a cache without M (dstl-lite: RGB + A) these
indices are **not available** and asking for them raises :class:`ConfigError`. What a
cache without M offers is SWIR-only: NBR2 and any ``ND:Ax:Ay`` (e.g. ``ND:A1:A8``, a
moisture/vegetation contrast: water is dark in all SWIR bands, vegetation much brighter at
1.2 µm than at 2.3 µm). ``ND:X:Y`` across products (e.g. the MNDWI-like ``ND:G:A2``) is
allowed but warns, because of the scale difference. EVI's constants assume reflectance;
on digital numbers it is an approximation, clipped to ``[-1, 1]``.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from spectraseg.align.cache import product_of
from spectraseg.errors import ConfigError, DataError, SpectrasegWarning

EPS = 1e-6
"""Denominators with a smaller magnitude give an index of 0."""

INDEX_BANDS: dict[str, tuple[str, ...]] = {
    "NDWI": ("M3", "M7"),
    "NDVI": ("M7", "M5"),
    "NDRE": ("M7", "M6"),
    "CCCI": ("M7", "M6", "M5"),
    "EVI": ("M7", "M5", "M2"),
    "NBR2": ("A3", "A6"),
}
"""The cache channels each named index reads, in formula order."""

_ND = re.compile(r"ND:([A-Za-z0-9]+):([A-Za-z0-9]+)")


@dataclass(frozen=True)
class IndexPlan:
    """A resolved index: its name, kind and the positions of its bands in the stack."""

    name: str
    kind: str
    """``nd`` (normalised difference of two bands), ``ccci`` or ``evi``."""
    bands: tuple[int, ...]


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    ok = np.abs(den) >= EPS
    out = np.divide(num, np.where(ok, den, 1.0).astype(num.dtype), dtype=np.float32)
    out[~ok] = 0.0
    return np.clip(out, -1.0, 1.0, out=out)


def normalized_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(a - b) / (a + b)``: float32 in [-1, 1], 0 where ``|a + b| < EPS``."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    return _safe_ratio(a - b, a + b)


def is_index_name(name: str) -> bool:
    """Whether ``name`` names a spectral index (a named one or ``ND:X:Y``), not a band."""
    return name in INDEX_BANDS or _ND.fullmatch(name) is not None


def available_indices(channels: Sequence[str]) -> list[str]:
    """The named indices whose bands are all among ``channels``."""
    have = set(channels)
    return [name for name, bands in INDEX_BANDS.items() if set(bands) <= have]


def band_ratio_indices(channels: Sequence[str]) -> list[str]:
    """``ND:X:Y`` of neighbouring bands within each product present in ``channels``.

    RGB gives ``ND:R:G``, ``ND:G:B``, ``ND:R:B`` (chromaticity, free of the brightness
    differences between scenes and regions); M and A give their 7 consecutive band pairs
    (the spectral shape: ``ND:A1:A2`` ... ``ND:A7:A8``). A normalised difference is a
    monotonic function of the band log-ratio, which a per-pixel model can use directly.
    On dstl-lite (RGB + A) adding these 10 ratios to a per-pixel gradient-boosting model
    raised its cross-validated mean Jaccard from 0.087 to 0.094 (buildings 0.070 to 0.120,
    roads 0.055 to 0.088; ``benchmarks/bench_pixel_baseline.py``).
    """
    have = set(channels)
    out: list[str] = []
    rgb = [c for c in ("R", "G", "B") if c in have]
    if len(rgb) == 3:
        out += ["ND:R:G", "ND:G:B", "ND:R:B"]
    for product in ("M", "A"):
        bands = [f"{product}{i}" for i in range(1, 9)]
        out += [f"ND:{a}:{b}" for a, b in pairwise(bands) if a in have and b in have]
    return out


def resolve_indices(names: Sequence[str], channels: Sequence[str]) -> list[IndexPlan]:
    """Check index names against a stack's channels and locate their bands.

    Raises ConfigError naming an unknown index, a repeated one, or one whose bands the
    stack lacks (with the reason, e.g. no NIR without the M product).
    """
    pos = {c: i for i, c in enumerate(channels)}
    plans: list[IndexPlan] = []
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ConfigError(f"spectral index {name!r} is listed twice")
        seen.add(name)
        m = _ND.fullmatch(name)
        bands: tuple[str, ...]
        if m:
            bands = (m.group(1), m.group(2))
            kind = "nd"
        elif name in INDEX_BANDS:
            bands = INDEX_BANDS[name]
            kind = {"CCCI": "ccci", "EVI": "evi"}.get(name, "nd")
        else:
            known = ", ".join([*INDEX_BANDS, "ND:X:Y"])
            raise ConfigError(f"unknown spectral index {name!r}; known: {known}")
        missing = [b for b in bands if b not in pos]
        if missing:
            extra = ""
            if any(b.startswith("M") for b in missing) and m is None:
                avail = ", ".join(available_indices(channels)) or "none"
                extra = (
                    "; it needs the M product (RGB has no near-infrared band); "
                    f"named indices available here: {avail}, or ND:X:Y of two channels"
                )
            raise ConfigError(
                f"spectral index {name!r} needs channel(s) {', '.join(missing)}, which the "
                f"stack ({','.join(channels)}) lacks{extra}"
            )
        if kind == "nd" and m is not None:
            try:
                products = {product_of(b) for b in bands}
            except DataError:  # a channel outside the documented products: nothing to compare
                products = set()
            if len(products) > 1:
                warnings.warn(
                    f"spectral index {name!r} mixes products {sorted(products)} whose digital "
                    "numbers are on different scales",
                    SpectrasegWarning,
                    stacklevel=2,
                )
        plans.append(IndexPlan(name, kind, tuple(pos[b] for b in bands)))
    return plans


def compute_plans(
    x: np.ndarray, plans: Sequence[IndexPlan], scale: float = 1.0, offset: float = 0.0
) -> np.ndarray:
    """Indices of a stack ``x`` (C, ...) -> float32 (len(plans), ...) in [-1, 1]. ``x`` holds
    stored values whose physical DN are ``x * scale + offset`` (a cache's
    :func:`~spectraseg.align.cache.scale_offset`; the defaults: ``x`` is physical)."""
    if (scale, offset) != (1.0, 0.0):
        x = x * scale + offset
    out = np.empty((len(plans), *x.shape[1:]), dtype=np.float32)
    for k, p in enumerate(plans):
        if p.kind == "nd":
            out[k] = normalized_difference(x[p.bands[0]], x[p.bands[1]])
        elif p.kind == "ccci":
            nir, re_, red = (np.asarray(x[i], dtype=np.float32) for i in p.bands)
            out[k] = normalized_difference(nir, re_) * normalized_difference(nir, red)
        elif p.kind == "evi":
            nir, red, blue = (np.asarray(x[i], dtype=np.float32) for i in p.bands)
            out[k] = _safe_ratio(2.5 * (nir - red), nir + 6.0 * red - 7.5 * blue + 1.0)
        else:  # pragma: no cover - IndexPlan is only built by resolve_indices
            raise ValueError(f"unknown index kind {p.kind!r}")
    return out


def compute_indices(x: np.ndarray, channels: Sequence[str], names: Sequence[str]) -> np.ndarray:
    """Spectral indices of a stack.

    Args:
        x: (C, ...) physical digital numbers (stored * scale + offset), any real dtype,
            not normalised.
        channels: the C channel names of ``x`` (cache names: R, G, B, P, M1..M8, A1..A8).
        names: index names (module docstring), e.g. ``["NDWI", "NDVI", "CCCI"]``.

    Returns:
        float32 (len(names), ...) with every value in [-1, 1].
    """
    if len(channels) != x.shape[0]:
        raise ValueError(f"{len(channels)} channel names for a stack of {x.shape[0]} channels")
    return compute_plans(x, resolve_indices(names, channels))
