"""Band registration: the shift of every product of a scene, and fallbacks across scenes.

The stage's entry points, pure functions on arrays: :func:`estimate_products` (phase 1, one
scene) and :func:`resolve_shifts` (phase 2, across the scenes of each region), with the
records they produce (:class:`ProductEstimate`, :class:`ShiftRow`, a row of ``shifts.csv``).
The estimators they call on pairs of products live in :mod:`spectraseg.align.estimators`
(with :class:`~spectraseg.align.estimators.RegistrationConfig`), the grey images those
compare in :mod:`spectraseg.align.greys`; reading files and writing the cache live in
:mod:`spectraseg.align.fusion`.

Convention (``docs/architecture.md``, ``shifts.csv``): the shift ``(dx, dy)`` of a product is
the displacement of its content relative to the reference grid (RGB), in the product's own
pixels: a ground feature at pixel ``(u, v)`` of a perfectly registered product appears at
``(u + dx, v + dy)`` in the file. All products of a scene cover the same ground, so pixel
*edges* map linearly between grids: continuous coordinate ``x`` on a grid ``w`` pixels wide is
``x * W / w`` on a grid ``W`` pixels wide (pixel centres at ``i + 0.5``).

Estimation, per product (``estimate_products``; steps 1, 2 and 4 are those of the
estimators):

1. Compare like with like, on the *coarser* of the two grids (the finer image is
   area-averaged onto it, which is what the coarse sensor itself does): the multi-band side
   is combined linearly to best predict the other side's grey (``greys.matched_greys``),
   since P sees the near infrared and SWIR nothing visible.
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

import numpy as np

from spectraseg.align.estimators import (
    DEFAULT_CONFIG,
    Estimate,
    RegistrationConfig,
    compose,
    ecc_shift,
    phase_correlation_shift,
)
from spectraseg.align.greys import image_shape
from spectraseg.data.dstl import PRODUCTS, region_of
from spectraseg.errors import SpectrasegWarning

METHODS: tuple[str, ...] = ("ecc", "region_median", "phase_corr", "identity")
"""Values of the ``method`` column of ``shifts.csv``, best first."""

# (region, product) -> {image_id: (dx, dy)}: the usable ECC shifts of a region's scenes.
_Pool = dict[tuple[str, str], dict[str, tuple[float, float]]]


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
        h, w = image_shape(arr)
        reasons: list[str] = []
        est: Estimate | None = None
        path = ""
        if via is not None and product != via:
            assert via_est is not None  # P comes before M and A in PRODUCTS
            if via_est.ok:
                vh, vw = image_shape(images[via])
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
    pool = _ecc_pool(estimates, known)
    # Outliers are judged against the full pool (the median is robust), then removed from it.
    verdicts = _outliers(estimates, pool, config)
    for image_id, product in verdicts:
        pool[region_of(image_id), product].pop(image_id, None)
    rows: list[ShiftRow] = []
    for e in estimates:
        row = _resolve(e, verdicts.get((e.image_id, e.product)), pool)
        # A plain ECC row, or a lone outlier kept with its verdict as reason, is no fallback.
        if warn and row.method != "ecc":
            warnings.warn(
                f"scene {e.image_id} product {e.product}: shift fell back to {row.method} "
                f"({row.dx:.2f}, {row.dy:.2f}) px: {row.reason}",
                SpectrasegWarning,
                stacklevel=2,
            )
        rows.append(row)
    return rows


def _ecc_pool(estimates: Sequence[ProductEstimate], known: Sequence[ShiftRow]) -> _Pool:
    """The usable ECC shifts per region and product: ``ecc`` rows of scenes aligned earlier,
    then the successful ECC estimates of this run (which replace them for the same scene)."""
    pool: _Pool = defaultdict(dict)
    for row in known:
        if row.method == "ecc":
            pool[region_of(row.image_id), row.product][row.image_id] = (row.dx, row.dy)
    for e in estimates:
        if e.ecc.ok:
            pool[region_of(e.image_id), e.product][e.image_id] = (e.ecc.dx, e.ecc.dy)
    return pool


def _outliers(
    estimates: Sequence[ProductEstimate], pool: _Pool, config: RegistrationConfig
) -> dict[tuple[str, str], str]:
    """Step 1, ``ecc`` unless an outlier: ``(image_id, product) -> verdict`` of every ECC
    shift too far from the median of its region neighbours (with enough neighbours)."""
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
    return verdicts


def _resolve(e: ProductEstimate, verdict: str | None, pool: _Pool) -> ShiftRow:
    """The row of one product: its ECC shift unless failed or an outlier (``verdict``),
    else the first fallback that applies, in the order of :data:`METHODS`."""
    if e.ecc.ok and verdict is None:
        return ShiftRow(e.image_id, e.product, e.ecc.dx, e.ecc.dy, e.ecc.corr, "ecc", "")
    reason = verdict or e.ecc.reason
    others = _others(pool[region_of(e.image_id), e.product], e.image_id)
    if others:
        return _region_median(e, others, reason)
    if e.backup is not None and e.backup.ok and verdict is None:
        return _phase_corr(e, e.backup, reason)
    if verdict is not None:
        # A lone outlier: trust ECC over nothing, but say so.
        return ShiftRow(e.image_id, e.product, e.ecc.dx, e.ecc.dy, e.ecc.corr, "ecc", verdict)
    return _identity(e, reason)


def _region_median(
    e: ProductEstimate, others: Sequence[tuple[float, float]], reason: str
) -> ShiftRow:
    """Step 2, ``region_median``: the median ECC shift of the product's region neighbours."""
    mx, my = _median(others)
    why = f"{reason}; median of {len(others)} region neighbour(s)"
    return ShiftRow(e.image_id, e.product, mx, my, math.nan, "region_median", why)


def _phase_corr(e: ProductEstimate, backup: Estimate, reason: str) -> ShiftRow:
    """Step 3, ``phase_corr``: the backup estimate, when no region neighbour has a shift."""
    why = f"{reason}; no region neighbour"
    return ShiftRow(e.image_id, e.product, backup.dx, backup.dy, backup.corr, "phase_corr", why)


def _identity(e: ProductEstimate, reason: str) -> ShiftRow:
    """Step 4, ``identity``: no shift, saying why the backup failed too (if it ran)."""
    backup = e.backup.reason if e.backup is not None and not e.backup.ok else ""
    why = f"{reason}; no region neighbour" + (f"; {backup}" if backup else "")
    return ShiftRow(e.image_id, e.product, 0.0, 0.0, math.nan, "identity", why)


def _others(shifts: Mapping[str, tuple[float, float]], image_id: str) -> list[tuple[float, float]]:
    return [s for i, s in shifts.items() if i != image_id]


def _median(shifts: Sequence[tuple[float, float]]) -> tuple[float, float]:
    arr = np.asarray(shifts, dtype=np.float64)
    return float(np.median(arr[:, 0])), float(np.median(arr[:, 1]))
