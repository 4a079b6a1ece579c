"""Shift estimation, failure detection and fallbacks (spectraseg.align.registration)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import rasterio
from hypothesis import given, settings
from hypothesis import strategies as st
from shifted_scenes import make_scene, observe, texture

from spectraseg.align.estimators import (
    DEFAULT_CONFIG,
    Estimate,
    compose,
    ecc_shift,
    phase_correlation_shift,
)
from spectraseg.align.greys import grey, matched_greys, snr
from spectraseg.align.registration import (
    ProductEstimate,
    ShiftRow,
    estimate_products,
    resolve_shifts,
)
from spectraseg.errors import SpectrasegWarning


def _err(est: Estimate, truth: tuple[float, float]) -> float:
    return math.hypot(est.dx - truth[0], est.dy - truth[1])


# --------------------------------------------------------------------------- ECC


def test_sign_convention_integer_shift() -> None:
    # Content at (u, v) of the registered image appears at (u + 3, v - 2) in the moving one.
    ground = texture(300, 300, 1)
    ref = ground[50:250, 50:250]
    mov = ground[52:252, 47:247]  # mov[v, u] = ground[v + 52, u + 47] = ref[v + 2, u - 3]
    est = ecc_shift(ref, mov)
    assert est.ok, est.reason
    assert est.dx == pytest.approx(3.0, abs=0.02)
    assert est.dy == pytest.approx(-2.0, abs=0.02)
    assert est.corr > 0.99


@settings(max_examples=8, deadline=None)
@given(
    dx=st.floats(-3, 3, allow_nan=False),
    dy=st.floats(-3, 3, allow_nan=False),
    seed=st.integers(0, 50),
)
def test_ecc_recovers_subpixel_shift_across_resolutions(dx: float, dy: float, seed: int) -> None:
    ground = texture(512, 544, seed)
    ref = ground  # fine grid
    mov = observe(ground, 128, 136, dx, dy)  # 1/4 resolution, shift in its own pixels
    est = ecc_shift(ref, mov)
    assert est.ok, est.reason
    assert _err(est, (dx, dy)) < 0.05


def test_ecc_coarse_to_fine_on_large_images() -> None:
    cfg = DEFAULT_CONFIG.__class__(max_size=400, coarse_size=200)
    ground = texture(800, 832, 3)
    mov = observe(ground, 800, 832, 6.4, -4.3)
    est = ecc_shift(ground, mov, cfg)
    assert est.ok, est.reason
    assert _err(est, (6.4, -4.3)) < 0.1


def test_featureless_and_constant_images_fail_with_reason() -> None:
    ref = texture(200, 200, 4) * 100 + 500
    flat = np.full((200, 200), 500, np.float32)
    est = ecc_shift(ref, flat)
    assert not est.ok and "featureless" in est.reason
    noise = np.random.default_rng(0).normal(500, 3, (200, 200)).astype(np.float32)
    assert snr(noise) == pytest.approx(1.0, abs=0.1)
    est = ecc_shift(ref, noise)
    assert not est.ok and "moving image is featureless" in est.reason
    est = ecc_shift(flat, ref)
    assert not est.ok and "reference image is featureless" in est.reason
    assert math.isnan(est.dx) and math.isnan(est.dy)


def test_uncorrelated_images_fail_on_correlation() -> None:
    est = ecc_shift(texture(200, 200, 5), texture(200, 200, 6))
    assert not est.ok
    assert "correlation" in est.reason or "ECC:" in est.reason


def test_implausible_shift_is_rejected() -> None:
    ground = texture(400, 400, 7)
    ref, mov = ground[100:300, 100:300], ground[100:300, 108:308]  # dx = -8 px
    est = ecc_shift(ref, mov)
    assert est.ok and est.dx == pytest.approx(-8.0, abs=0.02)
    tight = DEFAULT_CONFIG.__class__(max_shift_frac=0.01, min_max_shift=5.0)
    est = ecc_shift(ref, mov, tight)
    assert not est.ok and "exceeds the 5.0 px limit" in est.reason


def test_contrast_inversion_is_registered_on_gradients() -> None:
    ground = texture(400, 400, 8)
    ref = ground[100:300, 100:300]
    mov = -ground[101:301, 98:298]  # inverted contrast, shift (2, -1)
    est = ecc_shift(ref, mov)
    assert est.ok, est.reason
    assert est.feature == "gradient"
    assert _err(est, (2.0, -1.0)) < 0.1


def test_phase_correlation_recovers_shift_and_rejects_noise() -> None:
    ground = texture(512, 512, 9)
    mov = observe(ground, 128, 128, -2.3, 1.6)
    est = phase_correlation_shift(ground, mov)
    assert est.ok and est.feature == "gradient"
    assert _err(est, (-2.3, 1.6)) < 0.3
    noise = np.random.default_rng(1).normal(0, 1, (128, 128)).astype(np.float32)
    bad = phase_correlation_shift(ground, noise)
    assert not bad.ok and "featureless" in bad.reason


# --------------------------------------------------------------------------- scenes


def test_grey_is_a_nan_safe_band_mean() -> None:
    m = np.stack([np.full((4, 4), float(b)) for b in range(8)])
    assert np.all(grey(m) == 3.5) and grey(m).dtype == np.float32
    nan = np.full((1, 3, 3), np.nan)
    nan[0, 0, 0] = 7.0
    assert np.all(grey(nan) == 7.0)


def test_matched_greys_fit_the_multiband_side_to_the_other() -> None:
    a, b, c = (texture(64, 64, s) for s in (21, 22, 23))
    # The reference sees a - b (e.g. visible), the moving bands a, b, c separately.
    ref = np.stack([a - b, a - b])
    mov = np.stack([a, b, c])
    r, m = matched_greys(ref, mov)
    assert np.corrcoef(r.ravel(), m.ravel())[0, 1] > 0.999
    # Single-band moving against a multi-band reference: the reference is combined.
    r, m = matched_greys(mov, (2 * b - c)[None])
    assert np.corrcoef(r.ravel(), m.ravel())[0, 1] > 0.999
    # Constant sides fall back to band means.
    r, m = matched_greys(np.ones((1, 8, 8), np.float32), np.stack([a[:8, :8], b[:8, :8]]))
    assert np.allclose(m, (a[:8, :8] + b[:8, :8]) / 2)


def test_compose_converts_via_shift_to_moving_pixels() -> None:
    edge = Estimate(0.5, -0.25, 0.9, True)
    via = Estimate(2.0, 4.0, 0.95, True)
    got = compose(edge, via, 0.25, 0.5)
    assert (got.dx, got.dy, got.corr, got.ok) == (1.0, 1.75, 0.9, True)
    assert not compose(Estimate.failed("x"), via, 1, 1).ok


def test_estimate_products_recovers_all_shifts_via_p() -> None:
    truth = {"P": (1.3, -0.7), "M": (-2.2, 1.1), "A": (0.8, -1.6)}
    ests = estimate_products(make_scene(truth, seed=11), "r_0_0")
    assert [e.product for e in ests] == ["P", "M", "A"]
    assert [e.path for e in ests] == ["P->RGB", "M->P->RGB", "A->P->RGB"]
    errors = [_err(e.ecc, truth[e.product]) for e in ests]
    assert all(e.ecc.ok for e in ests)
    assert math.sqrt(np.mean(np.square(errors))) <= 0.1, errors


def test_estimate_products_without_p_registers_to_rgb() -> None:
    truth = {"P": (0, 0), "M": (1.5, 0.5), "A": (-0.6, 0.9)}
    images = make_scene(truth, seed=12)
    del images["P"]
    ests = estimate_products(images, "r_0_0")
    assert [e.path for e in ests] == ["M->RGB", "A->RGB"]
    for e in ests:
        assert e.ecc.ok and _err(e.ecc, truth[e.product]) < 0.1


def test_featureless_p_and_m_fail_but_a_goes_direct() -> None:
    truth = {"P": (1.0, 1.0), "M": (1.0, -1.0), "A": (0.5, 0.5)}
    ests = {
        e.product: e
        for e in estimate_products(make_scene(truth, seed=13, featureless=("P", "M")), "r_0_0")
    }
    assert not ests["P"].ecc.ok and "featureless" in ests["P"].ecc.reason
    assert not ests["M"].ecc.ok and "skipped, P->RGB failed" in ests["M"].ecc.reason
    assert ests["P"].backup is not None and not ests["P"].backup.ok
    assert ests["A"].ecc.ok and ests["A"].path == "A->RGB"
    assert _err(ests["A"].ecc, truth["A"]) < 0.1


# --------------------------------------------------------------------------- resolution


def _pe(image_id: str, product: str, est: Estimate, backup: Estimate | None = None):
    return ProductEstimate(image_id, product, 100, 100, est, backup)


def test_region_median_fallback_uses_same_region_and_product_only() -> None:
    ests = [
        _pe("6010_0_0", "M", Estimate(1.0, 2.0, 0.9, True)),
        _pe("6010_0_1", "M", Estimate(1.2, 2.4, 0.9, True)),
        _pe("6010_0_2", "M", Estimate(5.0, 9.0, 0.9, True)),
        _pe("6010_0_3", "M", Estimate.failed("ECC: featureless")),
        _pe("6020_0_0", "M", Estimate(-7.0, -7.0, 0.9, True)),
        _pe("6010_0_0", "A", Estimate(-3.0, -3.0, 0.9, True)),
    ]
    with pytest.warns(SpectrasegWarning, match="6010_0_3 product M: shift fell back"):
        rows = resolve_shifts(ests)
    row = rows[3]
    assert (row.method, row.dx, row.dy) == ("region_median", 1.2, 2.4)
    assert math.isnan(row.corr)
    assert row.reason.startswith("ECC: featureless; median of 3 region neighbour(s)")
    assert [r.method for r in rows[:3]] == ["ecc"] * 3


def test_known_rows_are_neighbours_then_phase_corr_then_identity() -> None:
    known = [ShiftRow("6010_1_1", "P", 0.5, -0.5, 0.9, "ecc")]
    ests = [
        _pe("6010_0_0", "P", Estimate.failed("low corr")),
        _pe("6030_0_0", "P", Estimate.failed("low corr"), Estimate(0.7, 0.1, 0.4, True)),
        _pe("6040_0_0", "P", Estimate.failed("low corr"), Estimate.failed("peak 0.01")),
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = resolve_shifts(ests, known)
    assert [(r.method, r.dx, r.dy) for r in rows] == [
        ("region_median", 0.5, -0.5),
        ("phase_corr", 0.7, 0.1),
        ("identity", 0.0, 0.0),
    ]
    assert rows[1].corr == 0.4
    assert "peak 0.01" in rows[2].reason
    assert len(caught) == 3 and all(w.category is SpectrasegWarning for w in caught)


def test_diverged_outlier_is_replaced_by_region_median() -> None:
    ests = [_pe(f"6010_0_{i}", "A", Estimate(0.1 * i, 0.0, 0.9, True)) for i in range(4)]
    ests.append(_pe("6010_1_0", "A", Estimate(30.0, 0.0, 0.6, True)))
    with pytest.warns(SpectrasegWarning):
        rows = resolve_shifts(ests)
    assert [r.method for r in rows] == ["ecc"] * 4 + ["region_median"]
    assert rows[4].dx == pytest.approx(0.15)
    assert "from the median" in rows[4].reason


# --------------------------------------------------------------------------- real data


def _spacenet_pair(root, n: int) -> tuple[np.ndarray, np.ndarray]:
    with rasterio.open(root / f"ms{n}.tif") as src:
        ms = src.read().astype(np.float32)
    with rasterio.open(root / f"pan{n}.tif") as src:
        pan = src.read(1).astype(np.float32)
    return ms[:3].mean(axis=0), pan  # ms bands 1-3 overlap the pan band


@pytest.mark.parametrize("pair", [1, 2])
def test_spacenet_injected_shifts_are_recovered(spacenet, pair: int) -> None:
    ms, pan = _spacenet_pair(spacenet, pair)
    a, n = 22, 256  # ms crop origin and size; pan crops are twice as fine

    def estimate(k: tuple[int, int], j: tuple[int, int]) -> Estimate:
        # Moving the ms crop by k ms px and the pan crop by j pan px displaces the ms
        # content by exactly j / 2 - k ms px relative to the pan: no interpolation.
        mov = ms[a + k[1] : a + k[1] + n, a + k[0] : a + k[0] + n]
        ref = pan[2 * a + j[1] : 2 * a + j[1] + 2 * n, 2 * a + j[0] : 2 * a + j[0] + 2 * n]
        est = ecc_shift(ref, mov)
        assert est.ok, est.reason
        return est

    base = estimate((0, 0), (0, 0))
    cases = [
        ((3, 0), (0, 0)),
        ((-3, 2), (0, 0)),
        ((1, -2), (1, -1)),
        ((-2, 3), (-1, 1)),
        ((0, 0), (1, 1)),
        ((2, 1), (-1, 0)),
    ]
    for k, j in cases:
        injected = (j[0] / 2 - k[0], j[1] / 2 - k[1])
        est = estimate(k, j)
        got = (est.dx - base.dx, est.dy - base.dy)
        assert got == pytest.approx(injected, abs=0.1), (k, j, got)
