"""Synthetic scenes with known product shifts, for the registration and fusion tests.

A random ground texture (1/f^beta spectrum, like imagery) seen by sensors of different
resolutions whose content is displaced by given shifts (the ``shifts.csv`` convention).
"""

from __future__ import annotations

import cv2
import numpy as np


def texture(h: int, w: int, seed: int, beta: float = 2.5) -> np.ndarray:
    """A ``(h, w)`` float32 random field with a 1/f^beta power spectrum (like imagery)."""
    rng = np.random.default_rng(seed)
    spec = np.fft.rfft2(rng.standard_normal((h, w)))
    ky = np.fft.fftfreq(h)[:, None]
    kx = np.fft.rfftfreq(w)[None, :]
    k = np.hypot(kx, ky)
    k[0, 0] = 1.0
    img = np.fft.irfft2(spec / k ** (beta / 2), s=(h, w))
    return ((img - img.mean()) / img.std()).astype(np.float32)


def observe(ground: np.ndarray, h: int, w: int, dx: float, dy: float) -> np.ndarray:
    """The ground seen by an ``h x w`` sensor whose content is displaced by ``(dx, dy)`` of
    its own pixels (the ``shifts.csv`` convention): shift at ground resolution, then
    area-average, as a coarse detector integrates."""
    gh, gw = ground.shape
    m = np.float32([[1, 0, dx * gw / w], [0, 1, dy * gh / h]])
    moved = cv2.warpAffine(
        ground, m, (gw, gh), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT
    )
    return cv2.resize(moved, (w, h), interpolation=cv2.INTER_AREA)


def make_scene(
    shifts: dict[str, tuple[float, float]],
    size: tuple[int, int] = (768, 800),
    seed: int = 0,
    featureless: tuple[str, ...] = (),
) -> dict[str, np.ndarray]:
    """RGB, P, M (1/4) and A (1/12) of one synthetic scene, uint16 ``(B, h, w)``."""
    hh, ww = size
    # The ground is twice as fine as the finest product, which integrates over its pixels.
    ground = texture(2 * hh, 2 * ww, seed)
    detail = texture(2 * hh, 2 * ww, seed + 1) * 0.3
    noise = np.random.default_rng(seed + 7)
    g, d = observe(ground, hh, ww, 0, 0), observe(detail, hh, ww, 0, 0)
    rgb = np.stack([600 + 150 * (g + a * d) for a in (1, 0, -1)])
    out = {"RGB": np.clip(rgb, 0, 2047).astype(np.uint16)}
    dims = {"P": (hh, ww), "M": (hh // 4, ww // 4), "A": (hh // 12, ww // 12)}
    for p, (h, w) in dims.items():
        nb = 1 if p == "P" else 8
        if p in featureless:
            bands = [500 + noise.normal(0, 2, (h, w)) for _ in range(nb)]
        else:
            g = observe(ground, h, w, *shifts[p])
            d = observe(detail, h, w, *shifts[p])
            gain = 6 if p == "A" else 1
            bands = [
                gain * (500 + 120 * (g + (b - 3.5) / 3.5 * d * (nb > 1)))
                + noise.normal(0, 2, (h, w))
                for b in range(nb)
            ]
        out[p] = np.clip(np.stack(bands), 0, 65535).astype(np.uint16)
    return out
