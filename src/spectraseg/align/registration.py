"""Band registration: translation shifts between products, failure detection and fallbacks.

Pure functions on arrays; reading files and writing the cache live in
:mod:`spectraseg.align.fusion`.

Convention (``docs/architecture.md``, ``shifts.csv``): the shift ``(dx, dy)`` of a product is
the displacement of its content relative to the reference grid (RGB), in the product's own
pixels: a ground feature at pixel ``(u, v)`` of a perfectly registered product appears at
``(u + dx, v + dy)`` in the file. All products of a scene cover the same ground, so pixel
*edges* map linearly between grids: continuous coordinate ``x`` on a grid ``w`` pixels wide is
``x * W / w`` on a grid ``W`` pixels wide (pixel centres at ``i + 0.5``).

Estimation, per product (``estimate_products``):

1. Compare like with like, on the *coarser* of the two grids (the finer image is
   area-averaged onto it, which is what the coarse sensor itself does): the multi-band side
   is combined linearly to best predict the other side's grey (:func:`matched_greys`), since
   P sees the near infrared and SWIR nothing visible.
2. OpenCV ECC, ``MOTION_TRANSLATION``, sub-pixel; on a coarse pyramid level first (several
   starting points: zero and a phase-correlation guess), then, with band weights refitted on
   the aligned pixels, polished on the finest level. If the intensities do not correlate the
   same is tried on gradient magnitudes.
3. M and A are registered to P and composed with P -> RGB (P is the sharpest common
   reference); if that path fails they are registered directly to RGB. Without P they are
   registered directly to RGB.
4. An estimate is *failed* (never used) on ``cv2.error``/non-convergence, a correlation below
   ``min_corr``, a shift beyond ``max_shift``, or a featureless image (signal-to-noise ratio
   below ``min_snr``). For a failed product a phase-correlation estimate on gradients is kept
   as a backup.

Resolution over many scenes (``resolve_shifts``), in order of preference:

- ``ecc``: the ECC estimate, unless it is an outlier against the other scenes of its region
  (the 5 x 5 tiles of one acquisition share their misregistration);
- ``region_median``: the median of the ECC shifts of the same product in the other scenes of
  the same region;
- ``phase_corr``: the backup estimate, if its peak response is strong enough;
- ``identity``: no shift, with a :class:`~spectraseg.errors.SpectrasegWarning`.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np

from spectraseg.data.dstl import PRODUCTS, region_of
from spectraseg.errors import SpectrasegWarning

METHODS: tuple[str, ...] = ("ecc", "region_median", "phase_corr", "identity")
"""Values of the ``method`` column of ``shifts.csv``, best first."""

# Immerkaer's fast noise estimator kernel (a difference of two Laplacians; zero on planes).
_NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)


@dataclass(frozen=True)
class RegistrationConfig:
    """Parameters of shift estimation and failure detection.

    Sizes are in pixels of the grid named; shifts in the moving product's pixels.
    """

    min_corr: float = 0.5
    """Minimum ECC correlation coefficient for an estimate to be accepted."""
    max_shift_frac: float = 0.05
    """Largest plausible shift as a fraction of the moving product's smaller side ..."""
    min_max_shift: float = 5.0
    """... but never below this many pixels."""
    min_snr: float = 1.25
    """Images whose std / noise std is below this are featureless (pure noise gives 1)."""
    max_size: int = 2048
    """ECC runs on at most this many pixels along the longer side (finest level)."""
    coarse_size: int = 1024
    """Longer side of the coarse pyramid level where the search starts."""
    ecc_iterations: int = 100
    ecc_epsilon: float = 1e-5
    gauss_filt_size: int = 5
    """Gaussian pre-filter of ECC (odd kernel size), against noise and aliasing."""
    fit_size: int = 256
    """Longer side of the coarse copy on which band weights are fitted (matched_greys)."""
    min_phase_response: float = 0.1
    """Minimum phase-correlation peak response for the phase_corr fallback."""
    outlier_frac: float = 0.02
    """An ECC shift farther than this fraction of the product's smaller side ..."""
    min_outlier_px: float = 2.0
    """... (and than this many pixels) from its region's median is rejected as diverged."""
    min_outlier_neighbours: int = 3
    """Region neighbours needed before the outlier test applies."""

    def max_shift(self, height: int, width: int) -> float:
        """Largest plausible shift magnitude (px) for a ``height x width`` product."""
        return max(self.min_max_shift, self.max_shift_frac * min(height, width))

    def outlier_px(self, height: int, width: int) -> float:
        """Distance (px) from the region median beyond which an ECC shift is an outlier."""
        return max(self.min_outlier_px, self.outlier_frac * min(height, width))


DEFAULT_CONFIG = RegistrationConfig()


@dataclass(frozen=True)
class Estimate:
    """One estimator's answer for one product: a shift in the product's pixels, or a failure.

    ``corr`` is the ECC correlation coefficient (or the phase-correlation peak response);
    NaN where there is none. ``reason`` says why a failed estimate failed ("" when ok).
    """

    dx: float
    dy: float
    corr: float
    ok: bool
    reason: str = ""
    feature: str = "intensity"
    """What was compared: ``intensity`` or ``gradient`` (magnitude)."""

    @classmethod
    def failed(cls, reason: str, corr: float = math.nan) -> Estimate:
        """A failed estimate carrying its reason."""
        return cls(math.nan, math.nan, corr, False, reason)


@dataclass(frozen=True)
class ProductEstimate:
    """Phase-1 result for one product of one scene (before fallbacks across scenes)."""

    image_id: str
    product: str
    height: int
    width: int
    ecc: Estimate
    """The ECC shift relative to the reference (composed via P where P was the reference)."""
    backup: Estimate | None = None
    """A phase-correlation estimate, computed only when ``ecc`` failed."""
    path: str = ""
    """How ``ecc`` was obtained: ``M->P->RGB``, ``M->RGB``, ..."""


@dataclass(frozen=True)
class ShiftRow:
    """One row of ``shifts.csv``: the shift used for a product of a scene."""

    image_id: str
    product: str
    dx: float
    dy: float
    corr: float
    method: str
    reason: str = ""


# --------------------------------------------------------------------------- images


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


def _stack(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(B, h, w)`` or ``(h, w)`` any dtype -> ``(B, height, width)`` float32, area-averaged."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[None]
    out = np.empty((arr.shape[0], height, width), np.float32)
    for b, band in enumerate(arr):
        band = _finite(band.astype(np.float32))
        out[b] = resample_area(band, height, width)
    return out


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
    hs, ws = _level_shape(h, w, size)
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


def resample_area(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area-average (or copy) a ``(h, w)`` float32 image onto a ``height x width`` grid."""
    if image.shape == (height, width):
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


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


def _level_shape(height: int, width: int, longest: int) -> tuple[int, int]:
    if max(height, width) <= longest:
        return height, width
    f = longest / max(height, width)
    return max(1, round(height * f)), max(1, round(width * f))


# --------------------------------------------------------------------------- estimators


def _ecc(
    template: np.ndarray, moving: np.ndarray, init: tuple[float, float], cfg: RegistrationConfig
) -> tuple[float, float, float]:
    """ECC translation: ``moving(u + t) ~ template(u)``; returns ``(tx, ty, corr)``.

    Raises ``cv2.error`` when ECC fails (homogeneous input, divergence).
    """
    warp = np.array([[1, 0, init[0]], [0, 1, init[1]]], dtype=np.float32)
    criteria = (
        cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT,
        cfg.ecc_iterations,
        cfg.ecc_epsilon,
    )
    corr, warp = cv2.findTransformECC(
        template, moving, warp, cv2.MOTION_TRANSLATION, criteria, None, cfg.gauss_filt_size
    )
    tx, ty = float(warp[0, 2]), float(warp[1, 2])
    if not (math.isfinite(tx) and math.isfinite(ty) and math.isfinite(corr)):
        raise cv2.error("ECC returned a non-finite result")
    return tx, ty, float(corr)


def _phase(reference: np.ndarray, moving: np.ndarray) -> tuple[float, float, float]:
    """Phase correlation of gradient magnitudes: ``moving(u + t) ~ reference(u)``.

    Returns ``(tx, ty, peak response)``; both images on the same grid.
    """
    a = gradient_magnitude(reference).astype(np.float64)
    b = gradient_magnitude(moving).astype(np.float64)
    # Zero-mean, or the Hann window's own envelope correlates at zero shift.
    a -= a.mean()
    b -= b.mean()
    window = cv2.createHanningWindow((a.shape[1], a.shape[0]), cv2.CV_64F)
    (tx, ty), response = cv2.phaseCorrelate(a, b, window)
    return float(tx), float(ty), float(response)


def _shape2(image: np.ndarray) -> tuple[int, int]:
    h, w = np.shape(image)[-2:]
    return int(h), int(w)


def _common_grid(
    reference: np.ndarray, moving: np.ndarray, longest: int
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Both products as float32 stacks on the coarser of their two grids, itself
    area-averaged to at most ``longest`` px along its longer side.

    ``reference``/``moving``: ``(B, H, W)`` or ``(H, W)``, any numeric dtype. Returns
    ``(ref, mov, kx, ky)``: ``(Br, h, w)`` and ``(Bm, h, w)`` float32 and the factors with
    ``shift_in_moving_px = shift_on_grid * (kx, ky)`` (all grids share pixel edges).
    """
    (hr, wr), (hm, wm) = _shape2(reference), _shape2(moving)
    h, w = (hm, wm) if hm * wm <= hr * wr else (hr, wr)
    h, w = _level_shape(h, w, longest)
    return _stack(reference, h, w), _stack(moving, h, w), wm / w, hm / h


def _featureless(
    reference: np.ndarray, moving: np.ndarray, config: RegistrationConfig
) -> str | None:
    """Why registration is hopeless: an image too small or featureless; None if neither.

    The signal-to-noise ratio is judged on each product's band mean at its own resolution
    (resampling would colour the noise and fool the estimator).
    """
    (hr, wr), (hm, wm) = _shape2(reference), _shape2(moving)
    h, w = (hm, wm) if hm * wm <= hr * wr else (hr, wr)
    if min(h, w) < 16:
        return f"image too small ({h} x {w} px) to register"
    for name, img in (("moving", moving), ("reference", reference)):
        s = snr(grey(img))
        if s < config.min_snr:
            return f"{name} image is featureless (SNR {s:.2f} < {config.min_snr})"
    return None


def phase_correlation_shift(
    reference: np.ndarray, moving: np.ndarray, config: RegistrationConfig = DEFAULT_CONFIG
) -> Estimate:
    """Second estimator: phase correlation on gradient magnitudes, on the coarse level.

    ``reference`` ``(Br, H, W)`` and ``moving`` ``(Bm, h, w)`` (or 2-D), any numeric dtype,
    the same ground; compared as :func:`matched_greys`. Returns the shift in moving
    pixels; ``corr`` holds the peak response (0..1). Failed when an image is featureless,
    the response is below ``min_phase_response`` or the shift is implausible.
    """
    why = _featureless(reference, moving, config)
    if why is not None:
        return Estimate.failed(why)
    ref_s, mov_s, kx, ky = _common_grid(reference, moving, config.coarse_size)
    ref, mov = matched_greys(ref_s, mov_s, config.fit_size)
    tx, ty, response = _phase(ref, mov)
    dx, dy = tx * kx, ty * ky
    hm, wm = _shape2(moving)
    limit = config.max_shift(hm, wm)
    if response < config.min_phase_response:
        return Estimate.failed(
            f"phase-correlation peak {response:.3f} < {config.min_phase_response}", response
        )
    if math.hypot(dx, dy) > limit:
        return Estimate.failed(
            f"phase-correlation shift ({dx:.2f}, {dy:.2f}) px exceeds {limit:.1f} px", response
        )
    return Estimate(dx, dy, response, True, feature="gradient")


def ecc_shift(
    reference: np.ndarray, moving: np.ndarray, config: RegistrationConfig = DEFAULT_CONFIG
) -> Estimate:
    """Translation of ``moving`` relative to ``reference`` by ECC, with failure detection.

    ``reference`` ``(Br, H, W)`` and ``moving`` ``(Bm, h, w)`` (or 2-D), any numeric dtype:
    the same ground at any two resolutions, compared as :func:`matched_greys` on the coarser
    of the two grids. The search runs on the coarser of the two grids, capped at
    ``max_size`` px, coarse-to-fine from ``coarse_size``. Returns ``(dx, dy)`` in moving
    pixels, or a failed :class:`Estimate` whose reason names the test that failed.
    """
    why = _featureless(reference, moving, config)
    if why is not None:
        return Estimate.failed(why)
    hm, wm = _shape2(moving)
    limit = config.max_shift(hm, wm)
    ref_s, mov_s, kx, ky = _common_grid(reference, moving, config.max_size)
    ref, mov = matched_greys(ref_s, mov_s, config.fit_size)
    h, w = ref.shape

    coarse = _level_shape(h, w, config.coarse_size)
    levels = [coarse] if coarse == (h, w) else [coarse, (h, w)]
    # A phase-correlation guess (coarse level) widens ECC's basin of convergence.
    px, py, _ = _phase(resample_area(ref, *coarse), resample_area(mov, *coarse))
    inits = [(0.0, 0.0)] + ([(px, py)] if math.hypot(px, py) > 1.0 else [])

    failures: list[str] = []
    best_corr = math.nan
    for feature in ("intensity", "gradient"):
        # Search on the coarse level from every start ...
        found = _ecc_pyramid(ref, mov, levels[:1], inits, feature, config)
        if isinstance(found, str):
            failures.append(f"{feature} ECC: {found}")
            continue
        tx, ty, corr = found
        # ... then refit the band weights on pixels aligned by that estimate and polish on
        # the finest level from it.
        multi = max(len(ref_s), len(mov_s)) > 1
        if multi or len(levels) > 1:
            if multi:
                ref, mov = matched_greys(ref_s, mov_s, config.fit_size, shift=(tx, ty))
            lh, lw = levels[-1]
            again = _ecc_pyramid(
                ref, mov, levels[-1:], [(tx * lw / w, ty * lh / h)], feature, config
            )
            if not isinstance(again, str) and math.hypot(again[0] - tx, again[1] - ty) < 1.0:
                tx, ty, corr = again
        best_corr = corr if math.isnan(best_corr) else max(best_corr, corr)
        dx, dy = tx * kx, ty * ky  # grid pixels -> moving pixels
        if corr < config.min_corr:
            failures.append(f"{feature} ECC correlation {corr:.3f} < {config.min_corr}")
        elif math.hypot(dx, dy) > limit:
            failures.append(
                f"{feature} ECC shift ({dx:.2f}, {dy:.2f}) px exceeds the {limit:.1f} px limit"
            )
        else:
            return Estimate(dx, dy, corr, True, feature=feature)
    return Estimate.failed("; ".join(failures), best_corr)


def _ecc_pyramid(
    ref: np.ndarray,
    mov: np.ndarray,
    levels: Sequence[tuple[int, int]],
    inits: Sequence[tuple[float, float]],
    feature: str,
    cfg: RegistrationConfig,
) -> tuple[float, float, float] | str:
    """Coarse-to-fine ECC over ``levels`` (shapes, coarse first) of two same-grid images.

    ``inits``: starting shifts on the coarse level (the best-correlated result wins).
    Returns ``(tx, ty, corr)`` in pixels of the images' own grid, or a failure message.
    """
    h, w = ref.shape
    shift = (0.0, 0.0)
    corr = math.nan
    for n, (lh, lw) in enumerate(levels):
        r, m = resample_area(ref, lh, lw), resample_area(mov, lh, lw)
        if feature == "gradient":
            r, m = gradient_magnitude(r), gradient_magnitude(m)
        starts = inits if n == 0 else [(shift[0] * lw / w, shift[1] * lh / h)]
        found: list[tuple[float, float, float]] = []
        errors: list[str] = []
        for init in starts:
            try:
                found.append(_ecc(r, m, init, cfg))
            except cv2.error as exc:
                errors.append(_cv_message(exc))
        if not found:
            return errors[0] if errors else "no estimate"
        tx, ty, corr = max(found, key=lambda t: t[2])
        shift = (tx * w / lw, ty * h / lh)
    return shift[0], shift[1], corr


def _cv_message(exc: cv2.error) -> str:
    text = str(exc).strip()
    # OpenCV errors read "...error: (-7:Iterations do not converge) The algorithm ..."
    if ") " in text:
        text = text.rsplit(") ", 1)[-1]
    first = text.splitlines()[0] if text else "cv2.error"
    return first.strip().rstrip(".") or "cv2.error"


def compose(edge: Estimate, via: Estimate, scale_x: float, scale_y: float) -> Estimate:
    """Shift of X relative to the reference from X -> V and V -> reference.

    ``edge``: X relative to V, in X pixels; ``via``: V relative to the reference, in V pixels;
    ``scale_x, scale_y``: X pixels per V pixel (``w_X / w_V``, ``h_X / h_V``).
    The correlation of the result is the weaker of the two.
    """
    if not (edge.ok and via.ok):
        return Estimate.failed(edge.reason or via.reason)
    return Estimate(
        edge.dx + via.dx * scale_x,
        edge.dy + via.dy * scale_y,
        min(edge.corr, via.corr),
        True,
        feature=edge.feature,
    )


# --------------------------------------------------------------------------- per scene


def estimate_products(
    images: Mapping[str, np.ndarray],
    image_id: str = "",
    reference: str = "RGB",
    config: RegistrationConfig = DEFAULT_CONFIG,
) -> list[ProductEstimate]:
    """Phase 1 for one scene: the ECC shift of every product other than ``reference``.

    ``images``: product name -> ``(B, h, w)`` pixels (any numeric dtype), all of the same
    scene. M and A go via P when P is present (composed with P -> reference), directly to
    the reference otherwise or when that path fails. Failed products carry a
    phase-correlation backup. Returns one :class:`ProductEstimate` per moving product, in
    product order.
    """
    if reference not in images:
        raise ValueError(f"reference product {reference!r} is not among {sorted(images)}")
    ref_img = images[reference]
    via = "P" if "P" in images and reference != "P" else None
    via_est: Estimate | None = None
    out: list[ProductEstimate] = []
    for product in [p for p in PRODUCTS if p in images and p != reference]:
        arr = images[product]
        h, w = _shape2(arr)
        reasons: list[str] = []
        est: Estimate | None = None
        path = ""
        if via is not None and product != via:
            assert via_est is not None  # P comes before M and A in PRODUCTS
            if via_est.ok:
                vh, vw = _shape2(images[via])
                edge = ecc_shift(images[via], arr, config)
                if edge.ok:
                    est, path = compose(edge, via_est, w / vw, h / vh), f"{product}->{via}->"
                else:
                    reasons.append(f"{product}->{via}: {edge.reason}")
            else:
                reasons.append(f"{product}->{via}: skipped, {via}->{reference} failed")
        if est is None:
            direct = ecc_shift(ref_img, arr, config)
            if product == via:
                via_est = direct
            if direct.ok:
                est, path = direct, f"{product}->"
            else:
                reasons.append(f"{product}->{reference}: {direct.reason}")
                est = replace(direct, reason="; ".join(reasons))
        backup = None
        if not est.ok:
            backup = phase_correlation_shift(ref_img, arr, config)
        out.append(ProductEstimate(image_id, product, h, w, est, backup, path + reference))
    return out


# --------------------------------------------------------------------------- across scenes


def resolve_shifts(
    estimates: Sequence[ProductEstimate],
    known: Sequence[ShiftRow] = (),
    config: RegistrationConfig = DEFAULT_CONFIG,
    warn: bool = True,
) -> list[ShiftRow]:
    """Phase 2: pick the shift of every product, with fallbacks from the scene's region.

    ``estimates``: phase-1 results of the scenes being aligned; ``known``: final rows of
    scenes aligned earlier (their ``ecc`` rows count as region neighbours). Returns one
    :class:`ShiftRow` per estimate, in input order. Each fallback emits a
    :class:`~spectraseg.errors.SpectrasegWarning` (unless ``warn`` is false).
    """
    # (region, product) -> {image_id: (dx, dy)} of usable ECC shifts.
    pool: dict[tuple[str, str], dict[str, tuple[float, float]]] = defaultdict(dict)
    for row in known:
        if row.method == "ecc":
            pool[region_of(row.image_id), row.product][row.image_id] = (row.dx, row.dy)
    for e in estimates:
        if e.ecc.ok:
            pool[region_of(e.image_id), e.product][e.image_id] = (e.ecc.dx, e.ecc.dy)

    # Outliers are judged against the full pool (the median is robust), then removed from it.
    verdicts: dict[tuple[str, str], str] = {}
    for e in estimates:
        if not e.ecc.ok:
            continue
        others = _others(pool[region_of(e.image_id), e.product], e.image_id)
        if len(others) < config.min_outlier_neighbours:
            continue
        mx, my = _median(others)
        dist = math.hypot(e.ecc.dx - mx, e.ecc.dy - my)
        limit = config.outlier_px(e.height, e.width)
        if dist > limit:
            verdicts[e.image_id, e.product] = (
                f"ECC shift ({e.ecc.dx:.2f}, {e.ecc.dy:.2f}) px is {dist:.2f} px from the "
                f"median ({mx:.2f}, {my:.2f}) of {len(others)} region neighbours "
                f"(limit {limit:.2f} px)"
            )
    for image_id, product in verdicts:
        pool[region_of(image_id), product].pop(image_id, None)

    rows: list[ShiftRow] = []
    for e in estimates:
        verdict = verdicts.get((e.image_id, e.product))
        if e.ecc.ok and verdict is None:
            rows.append(ShiftRow(e.image_id, e.product, e.ecc.dx, e.ecc.dy, e.ecc.corr, "ecc", ""))
            continue
        reason = verdict or e.ecc.reason
        others = _others(pool[region_of(e.image_id), e.product], e.image_id)
        if others:
            mx, my = _median(others)
            row = ShiftRow(
                e.image_id,
                e.product,
                mx,
                my,
                math.nan,
                "region_median",
                f"{reason}; median of {len(others)} region neighbour(s)",
            )
        elif e.backup is not None and e.backup.ok and verdict is None:
            row = ShiftRow(
                e.image_id,
                e.product,
                e.backup.dx,
                e.backup.dy,
                e.backup.corr,
                "phase_corr",
                f"{reason}; no region neighbour",
            )
        else:
            backup = e.backup.reason if e.backup is not None and not e.backup.ok else ""
            why = f"{reason}; no region neighbour" + (f"; {backup}" if backup else "")
            if verdict is not None:
                # A lone outlier: trust ECC over nothing, but say so.
                row = ShiftRow(
                    e.image_id, e.product, e.ecc.dx, e.ecc.dy, e.ecc.corr, "ecc", verdict
                )
                rows.append(row)
                continue
            row = ShiftRow(e.image_id, e.product, 0.0, 0.0, math.nan, "identity", why)
        if warn:
            warnings.warn(
                f"scene {e.image_id} product {e.product}: shift fell back to {row.method} "
                f"({row.dx:.2f}, {row.dy:.2f}) px: {row.reason}",
                SpectrasegWarning,
                stacklevel=2,
            )
        rows.append(row)
    return rows


def _others(shifts: Mapping[str, tuple[float, float]], image_id: str) -> list[tuple[float, float]]:
    return [s for i, s in shifts.items() if i != image_id]


def _median(shifts: Sequence[tuple[float, float]]) -> tuple[float, float]:
    arr = np.asarray(shifts, dtype=np.float64)
    return float(np.median(arr[:, 0])), float(np.median(arr[:, 1]))
