"""Shift estimators on arrays: ECC on a coarse-to-fine pyramid, phase correlation, the
featureless test that fails an estimate before it starts, and composition of two shifts.

Each estimator takes two products of the same ground, ``(B, H, W)`` or ``(H, W)`` arrays of
any numeric dtype at any two resolutions, compares them as grey images of
:mod:`spectraseg.align.greys` on the coarser of their two grids, and returns an
:class:`Estimate`: the shift ``(dx, dy)`` of the moving product in its own pixels
(convention of :mod:`spectraseg.align.registration`), or a failure with its reason.
Parameters of both estimators and of the fallbacks are one :class:`RegistrationConfig`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from spectraseg.align.greys import (
    area_stack,
    gradient_magnitude,
    grey,
    image_shape,
    level_shape,
    matched_greys,
    resample_area,
    snr,
)


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


SHIFT_DECIMALS = 4
"""Decimals (product pixels) an ECC shift is rounded to. OpenCV's ``findTransformECC``
answers differ in the 7th decimal between identical calls in one process (measured on a
19 x 19 px A product: two answers over 12 calls, one thread), and a 1-DN difference in 310
resampled pixels of one synthetic scene changed everything trained on it. Rounding to
1e-4 px, far below the registration accuracy (0.03-0.05 px RMS), makes the shifts and the
fused cache reproducible unless a shift falls within 1e-7 px of a rounding boundary."""


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
    # OpenCV's stubs refuse None (no mask) for inputMask when gaussFiltSize follows it.
    corr, warp = cv2.findTransformECC(  # type: ignore[call-overload]
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


def _common_grid(
    reference: np.ndarray, moving: np.ndarray, longest: int
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Both products as float32 stacks on the coarser of their two grids, itself
    area-averaged to at most ``longest`` px along its longer side.

    ``reference``/``moving``: ``(B, H, W)`` or ``(H, W)``, any numeric dtype. Returns
    ``(ref, mov, kx, ky)``: ``(Br, h, w)`` and ``(Bm, h, w)`` float32 and the factors with
    ``shift_in_moving_px = shift_on_grid * (kx, ky)`` (all grids share pixel edges).
    """
    (hr, wr), (hm, wm) = image_shape(reference), image_shape(moving)
    h, w = (hm, wm) if hm * wm <= hr * wr else (hr, wr)
    h, w = level_shape(h, w, longest)
    return area_stack(reference, h, w), area_stack(moving, h, w), wm / w, hm / h


def _featureless(
    reference: np.ndarray, moving: np.ndarray, config: RegistrationConfig
) -> str | None:
    """Why registration is hopeless: an image too small or featureless; None if neither.

    The signal-to-noise ratio is judged on each product's band mean at its own resolution
    (resampling would colour the noise and fool the estimator).
    """
    (hr, wr), (hm, wm) = image_shape(reference), image_shape(moving)
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
    hm, wm = image_shape(moving)
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
    hm, wm = image_shape(moving)
    limit = config.max_shift(hm, wm)
    ref_s, mov_s, kx, ky = _common_grid(reference, moving, config.max_size)
    ref, mov = matched_greys(ref_s, mov_s, config.fit_size)
    h, w = ref.shape

    coarse = level_shape(h, w, config.coarse_size)
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
            dx, dy = round(dx, SHIFT_DECIMALS), round(dy, SHIFT_DECIMALS)
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
