"""Rendering: a layout's objects -> the pixels of the RGB, P, M and A products.

Every object has its own 16-band reflectance spectrum (M: coastal, blue, green, yellow, red,
red edge, NIR1, NIR2; A: SWIR1..8), drawn around its class's endmembers (vegetation bright in
red edge and NIR, water dark in NIR and SWIR, roofs and tracks bright in SWIR, ...) and mixed
with a second spectrum through a texture (crop rows, tree crowns, roof pitches, turbidity).
Objects are rasterised on the RGB grid in z-order (crops, trees, standing water, waterway,
track, road, buildings, structures, vehicles) from the very polygons that become the labels,
shaded by low-frequency illumination and cast shadows. RGB takes the red, green and blue
bands at full resolution; P is a broadband mean (blue..NIR1) at full resolution; M and A are
area-averaged to their grids. Each product is blurred by its point-spread function, shifted
(the uncovered border is filled by reflection), scaled to digital numbers with the region's
gains and offsets, given sensor noise and quantised to its bit depth.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np
from rasterio import features

from spectraseg.data.dstl import PRODUCTS
from spectraseg.data.synth.materials import Entity
from spectraseg.data.synth.products import product_shape
from spectraseg.data.synth.region import Region
from spectraseg.data.synth.shapes import to_pixels
from spectraseg.data.synth.spectra import ENDMEMBERS

_BITS = {"RGB": 11, "P": 11, "M": 11, "A": 14}
_RGB_BANDS = (4, 2, 1)  # red, green, blue among the M bands
_PAN_WEIGHTS = np.array([0.0, 0.12, 0.2, 0.2, 0.2, 0.16, 0.12, 0.0], dtype=np.float32)
_PSF_SIGMA = {"RGB": 0.55, "P": 0.5, "M": 0.45, "A": 0.55}  # in each product's own pixels


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
    ents: list[tuple[int, Entity]], gsd: float
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
    sa[0] = 0.7 * ENDMEMBERS["green_veg"] + 0.3 * ENDMEMBERS["dry_veg"]
    sb[0] = ENDMEMBERS["soil"]
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
    out: np.ndarray = cv2.GaussianBlur(
        img, (0, 0), _PSF_SIGMA[product], borderType=cv2.BORDER_REFLECT
    )
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


@dataclass
class _Grids:
    """The products being made, band by band, each None unless requested: ``rgb`` (3, H, W)
    uint16 finished bands, ``pan`` (H, W) float32 weighted sum of M reflectances, ``m``
    (8, h, w) and ``a`` (8, h', w') float32 reflectances area-averaged to their grids."""

    rgb: np.ndarray | None
    pan: np.ndarray | None
    m: np.ndarray | None
    a: np.ndarray | None

    @classmethod
    def empty(cls, products: tuple[str, ...], height: int, width: int) -> _Grids:
        """Buffers for ``products`` on an RGB grid of ``height x width`` pixels."""
        m_shape, a_shape = product_shape("M", height, width), product_shape("A", height, width)
        return cls(
            rgb=np.empty((3, height, width), np.uint16) if "RGB" in products else None,
            pan=np.zeros((height, width), np.float32) if "P" in products else None,
            m=np.empty(m_shape, np.float32) if "M" in products else None,
            a=np.empty(a_shape, np.float32) if "A" in products else None,
        )

    def needs(self, band: int) -> bool:
        """Whether any requested product uses ``band`` (0..15)."""
        is_m = band < 8
        return (
            (is_m and self.m is not None)
            or (not is_m and self.a is not None)
            or (self.rgb is not None and band in _RGB_BANDS)
            or (self.pan is not None and is_m and _PAN_WEIGHTS[band] > 0)
        )

    def take(
        self,
        band: int,
        val: np.ndarray,
        gain: np.ndarray,
        region: Region,
        rng: np.random.Generator,
        noise: float,
    ) -> None:
        """Use the reflectance ``val`` (H, W) float32 of ``band`` in every product; RGB
        bands are finished at once with ``gain`` (16,) and the RGB noise stream ``rng``."""
        is_m = band < 8
        if self.rgb is not None and band in _RGB_BANDS:
            k = _RGB_BANDS.index(band)
            self.rgb[k] = _finish(
                val,
                "RGB",
                None,
                float(gain[band] * region.rgb_factor),
                float(region.offset[band]),
                rng,
                noise,
            )
        if self.pan is not None and is_m and _PAN_WEIGHTS[band] > 0:
            cv2.scaleAdd(val, float(_PAN_WEIGHTS[band]), self.pan, dst=self.pan)
        if is_m and self.m is not None:
            self.m[band] = cv2.resize(val, self.m.shape[:0:-1], interpolation=cv2.INTER_AREA)
        if not is_m and self.a is not None:
            self.a[band - 8] = cv2.resize(val, self.a.shape[:0:-1], interpolation=cv2.INTER_AREA)


def render(
    ents: list[tuple[int, Entity]],
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
    """Rasterise the objects on the RGB grid and make each requested product from them.

    ``ents``: ``(class, entity)`` in z-order, geometries in metres, ``gsd`` metres per RGB
    pixel; ``shifts``: ``(dx, dy)`` of P, M and A in their own pixels; ``trng`` draws the
    textures and ``nrngs`` each product's sensor noise (scaled by ``noise``). Returns the
    products in ``PRODUCTS`` order as uint16 arrays shaped as their files
    (:func:`.products.product_shape`).
    """
    if len(ents) >= 2**16 - 1:
        raise ValueError(f"too many objects to render ({len(ents)})")
    sbt, dt, tex, tall_t = _tables(ents, gsd)
    shapes = to_pixels(np.array([e.geom for _, e in ents], dtype=object), gsd)
    obj = features.rasterize(
        zip(shapes, range(1, len(ents) + 1), strict=True),
        out_shape=(height, width),
        fill=0,
        dtype="uint16",
    ).astype(np.intp)  # intp indices make np.take several times faster than uint16 ones
    tmp = np.empty((height, width), np.float32)
    tmp2 = np.empty((height, width), np.float32)
    f = _mixing_fraction(obj, tex, gsd, trng, tmp, tmp2)
    m = _brightness(obj, tall_t, gsd, region, trng)

    grids = _Grids.empty(products, height, width)
    gain = region.gain * scene_gain
    for band in range(16):
        if grids.needs(band):
            # Reflectance sb + (sa - sb) * f, times brightness, in the scratch buffer tmp.
            val = np.take(sbt[band], obj, out=tmp, mode="clip")
            np.take(dt[band], obj, out=tmp2, mode="clip")
            tmp2 *= f
            val += tmp2
            val *= m
            grids.take(band, val, gain, region, nrngs["RGB"], noise)
    del f, m, tmp, tmp2, obj
    return _finish_products(grids, region, scene_gain, gain, shifts, nrngs, noise)


def _mixing_fraction(
    obj: np.ndarray,
    tex: np.ndarray,
    gsd: float,
    trng: np.random.Generator,
    tmp: np.ndarray,
    tmp2: np.ndarray,
) -> np.ndarray:
    """Mixing fraction f (H, W) float32 in 0..1 of each pixel's first spectrum: per-object
    base, rows/pitches, fine and coarse texture. ``obj`` (H, W) intp indexes the rows of
    ``tex`` (:func:`_tables`); ``tmp`` and ``tmp2`` are (H, W) float32 scratch."""
    height, width = obj.shape
    f = np.empty((height, width), np.float32)
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
    return f


def _brightness(
    obj: np.ndarray, tall_t: np.ndarray, gsd: float, region: Region, trng: np.random.Generator
) -> np.ndarray:
    """Brightness m (H, W) float32 around 1: slow illumination changes and the shadows that
    objects marked tall in ``tall_t`` (n,) uint8 cast along the region's sun azimuth."""
    height, width = obj.shape
    m = np.empty((height, width), np.float32)
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
        shade: np.ndarray = cv2.dilate(tall, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
        shade &= 1 - tall
        m[shade.astype(bool)] *= np.float32(0.45)
    return m


def _finish_products(
    grids: _Grids,
    region: Region,
    scene_gain: np.float32,
    gain: np.ndarray,
    shifts: Mapping[str, tuple[float, float]],
    nrngs: Mapping[str, np.random.Generator],
    noise: float,
) -> dict[str, np.ndarray]:
    """The sensor model on P, M and A (RGB is done): blur, shift, gain (16,), noise ->
    ``{product: uint16 array}`` in ``PRODUCTS`` order."""
    out: dict[str, np.ndarray] = {}
    if grids.rgb is not None:
        out["RGB"] = grids.rgb
    if grids.pan is not None:
        pan_gain = region.pan_gain * float(scene_gain)
        out["P"] = _finish(
            grids.pan, "P", shifts["P"], pan_gain, region.pan_offset, nrngs["P"], noise
        )
    for name, small, first in (("M", grids.m, 0), ("A", grids.a, 8)):
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
