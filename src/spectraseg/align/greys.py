"""Grey images that registration compares: band means, area resampling onto a common grid,
the band mix that makes two products of different spectra look alike, gradient magnitude
and the signal-to-noise ratio that tells imagery from noise.

Pure functions on arrays, used by the shift estimators of :mod:`spectraseg.align.estimators`.
Shapes are ``(B, h, w)`` band stacks or ``(h, w)`` images; sizes in pixels.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

# Immerkaer's fast noise estimator kernel (a difference of two Laplacians; zero on planes).
_NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)


def image_shape(image: np.ndarray) -> tuple[int, int]:
    """``(h, w)`` of a ``(B, h, w)`` stack or an ``(h, w)`` image."""
    h, w = np.shape(image)[-2:]
    return int(h), int(w)


def level_shape(height: int, width: int, longest: int) -> tuple[int, int]:
    """A ``height x width`` grid scaled down (never up) to at most ``longest`` px along its
    longer side, aspect ratio kept, at least 1 px."""
    if max(height, width) <= longest:
        return height, width
    f = longest / max(height, width)
    return max(1, round(height * f)), max(1, round(width * f))


def grey(bands: np.ndarray) -> np.ndarray:
    """The mean of a product's bands: ``(B, h, w)`` or ``(h, w)`` any dtype -> ``(h, w)``
    float32, non-finite pixels replaced by the mean of the finite ones."""
    arr = np.asarray(bands)
    if arr.ndim == 2:
        arr = arr[None]
    out = np.zeros(arr.shape[1:], np.float32)
    for band in arr:
        out += band.astype(np.float32, copy=False)
    out /= np.float32(arr.shape[0])
    return _finite(out)


def _finite(img: np.ndarray) -> np.ndarray:
    bad = ~np.isfinite(img)
    if bad.any():
        good = img[~bad]
        img[bad] = good.mean() if good.size else 0.0
    return img


def area_stack(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(B, h, w)`` or ``(h, w)`` any dtype -> ``(B, height, width)`` float32, area-averaged
    (non-finite pixels replaced by the band's finite mean first)."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[None]
    out = np.empty((arr.shape[0], height, width), np.float32)
    for b, band in enumerate(arr):
        band = _finite(band.astype(np.float32))
        out[b] = resample_area(band, height, width)
    return out


def resample_area(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area-average (or copy) a ``(h, w)`` float32 image onto a ``height x width`` grid."""
    if image.shape == (height, width):
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def _translate(image: np.ndarray, tx: float, ty: float) -> np.ndarray:
    """``out(u, v) = image(u + tx, v + ty)`` (bilinear, reflected borders)."""
    h, w = image.shape
    m = np.array([[1.0, 0.0, tx], [0.0, 1.0, ty]])
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(image, m, (w, h), flags=flags, borderMode=cv2.BORDER_REFLECT)


def _fit(
    bands: np.ndarray,
    target: np.ndarray,
    size: int,
    shift: tuple[float, float] | None = None,
    shift_bands: bool = True,
) -> np.ndarray | None:
    """Least-squares weights ``(B,)`` making ``sum_b w_b * bands[b]`` resemble ``target``.

    Fitted on a coarse copy (longer side ``size``), where an unknown misregistration of a
    few pixels matters little; with ``shift`` (pixels of the full grid) the moving side
    (``bands`` if ``shift_bands`` else ``target``) is first resampled at ``u + shift``.
    None when the target or every band is constant.
    """
    _, h, w = bands.shape
    hs, ws = level_shape(h, w, size)
    xs = [resample_area(b, hs, ws) for b in bands]
    y = resample_area(target, hs, ws)
    if shift is not None:
        tx, ty = shift[0] * ws / w, shift[1] * hs / h
        if shift_bands:
            xs = [_translate(b, tx, ty) for b in xs]
        else:
            y = _translate(y, tx, ty)
        # Borders resampled from outside the image carry no information.
        m = min(math.ceil(max(abs(tx), abs(ty))) + 1, min(hs, ws) // 4)
        xs = [b[m : hs - m, m : ws - m] for b in xs]
        y = y[m : hs - m, m : ws - m]
    x = np.stack([b.ravel() for b in xs]).astype(np.float64)
    yv = y.ravel().astype(np.float64)
    x -= x.mean(axis=1, keepdims=True)
    yv -= yv.mean()
    scale = x.std(axis=1)
    keep = scale > 0
    if not keep.any() or not yv.std() > 0:
        return None
    coef, *_ = np.linalg.lstsq((x[keep] / scale[keep, None]).T, yv, rcond=1e-6)
    weights = np.zeros(len(bands))
    weights[keep] = coef / scale[keep]
    return weights if np.any(weights) else None


def _combine(weights: np.ndarray, bands: np.ndarray) -> np.ndarray:
    out = np.zeros(bands.shape[1:], np.float32)
    for wb, band in zip(weights, bands, strict=True):
        if wb:
            cv2.scaleAdd(band, float(wb), out, dst=out)
    return out


def matched_greys(
    reference: np.ndarray,
    moving: np.ndarray,
    fit_size: int = 256,
    shift: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Single grey images of two products on the same grid that look alike.

    ``reference`` ``(Br, h, w)`` and ``moving`` ``(Bm, h, w)`` float32. Products see
    different spectra (P includes near infrared, SWIR none of the visible), so the
    multi-band side is combined linearly to best predict the other side's grey
    (least squares on a coarse copy): compare like with like. ``shift``: a first estimate
    of the moving image's shift (grid pixels) to fit on aligned pixels. Returns two
    ``(h, w)`` float32 images; band means where no fit is possible.
    """
    if moving.shape[0] > 1:
        target = grey(reference)
        weights = _fit(moving, target, fit_size, shift, shift_bands=True)
        mov = grey(moving) if weights is None else _combine(weights, moving)
        return target, mov
    mov = moving[0]
    if reference.shape[0] > 1:
        weights = _fit(reference, mov, fit_size, shift, shift_bands=False)
        ref = grey(reference) if weights is None else _combine(weights, reference)
        return ref, mov
    return reference[0], mov


def gradient_magnitude(image: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude ``(h, w)`` float32 of a lightly smoothed image.

    Insensitive to the sign and gain of contrast, so images of different spectra compare.
    """
    smooth = cv2.GaussianBlur(image, (0, 0), 1.0)
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3)
    return cv2.magnitude(gx, gy)


def snr(image: np.ndarray) -> float:
    """Signal std over noise std of a ``(h, w)`` image (Immerkaer's noise estimate).

    About 1 for pure noise, 2-10 for imagery at the resolutions registered here; 0 for a
    constant image.
    """
    img = np.asarray(image, dtype=np.float32)
    if img.shape[0] < 3 or img.shape[1] < 3:
        return 0.0
    std = float(img.std())
    if not std > 0:
        return 0.0
    lap = cv2.filter2D(img, -1, _NOISE_KERNEL, borderType=cv2.BORDER_REFLECT)[1:-1, 1:-1]
    noise = float(np.abs(lap).mean()) * math.sqrt(math.pi / 2) / 6.0
    return std / noise if noise > 0 else math.inf
