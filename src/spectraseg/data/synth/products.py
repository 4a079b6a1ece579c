"""Product grids: RGB sizes, the scale of a scene, each product's array shape, its shift.

Sizes are RGB pixels (P shares the RGB grid, M is 1/4 of it and A 1/24); the ground sample
distance is metres per RGB pixel; shifts are ``(dx, dy)`` in the product's own pixels (see
the package docstring for their sign).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from spectraseg.data.dstl import PRODUCTS
from spectraseg.errors import ConfigError

MIN_SIZE = 192
"""Smallest RGB side in pixels: the A product (1/24) must keep at least 8 x 8 pixels."""

MAX_SIZE = 4096
"""Largest RGB side in pixels (a full DSTL scene is about 3348 x 3392)."""

FULL_SIDE = 3370.0
FULL_GSD = 0.31
"""Metres per RGB pixel of a full-size scene (WorldView-3 pan-sharpened)."""

SHIFT_LIMITS: dict[str, float] = {"P": 1.5, "M": 3.0, "A": 3.0}
"""Largest |dx|, |dy| of each product's shift, in its own pixels."""

SHIFT_JITTER = 0.15
"""Largest per-scene deviation (per axis, own pixels) from the region's shift."""


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


def check_products(products: Sequence[str]) -> tuple[str, ...]:
    """The requested product names in ``PRODUCTS`` order; ConfigError if empty, unknown or
    repeated. A single string names one product."""
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


def scene_shifts(
    rng: np.random.Generator,
    base: Mapping[str, tuple[float, float]],
    override: Mapping[str, tuple[float, float]] | None,
) -> dict[str, tuple[float, float]]:
    """The true ``(dx, dy)`` of P, M and A in a scene: the region's ``base`` plus a jitter of
    at most ``SHIFT_JITTER`` per axis (always drawn, two values per product), rounded to
    1e-4 px; ``override`` replaces the shifts of the products it names."""
    true_shifts: dict[str, tuple[float, float]] = {}
    for product in ("P", "M", "A"):
        jx, jy = rng.uniform(-SHIFT_JITTER, SHIFT_JITTER, 2)
        bx, by = base[product]
        true_shifts[product] = (round(float(bx + jx), 4), round(float(by + jy), 4))
    if override is not None:
        for product, (dx, dy) in override.items():
            if product not in true_shifts:
                raise ConfigError(f"shift given for product {product!r}; only P, M, A shift")
            true_shifts[product] = (round(float(dx), 4), round(float(dy), 4))
    return true_shifts
