from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from spectraseg.data.dstl import CHANNEL_ORDER
from spectraseg.errors import ConfigError, SpectrasegWarning
from spectraseg.features.indices import (
    available_indices,
    band_ratio_indices,
    compute_indices,
    normalized_difference,
    resolve_indices,
)

ALL = list(CHANNEL_ORDER)  # R,G,B,P,M1..M8,A1..A8
LITE = ["R", "G", "B", *(f"A{i}" for i in range(1, 9))]


def stack(channels, **values):
    """A (C, 1, 2) stack: every channel 0 except those given (two pixels each)."""
    x = np.zeros((len(channels), 1, 2), dtype=np.uint16)
    for name, v in values.items():
        x[channels.index(name), 0] = v
    return x


def test_index_values_on_known_inputs():
    x = stack(ALL, M2=(100, 0), M3=(300, 50), M5=(200, 0), M6=(400, 0), M7=(600, 0))
    x[ALL.index("A3"), 0] = (900, 0)
    x[ALL.index("A6"), 0] = (300, 0)
    out = compute_indices(x, ALL, ["NDWI", "NDVI", "NDRE", "CCCI", "EVI", "NBR2"])
    assert out.dtype == np.float32 and out.shape == (6, 1, 2)
    ndwi, ndvi, ndre, ccci, evi, nbr2 = out[:, 0, 0]
    assert ndwi == pytest.approx((300 - 600) / 900)
    assert ndvi == pytest.approx(400 / 800)
    assert ndre == pytest.approx(200 / 1000)
    assert ccci == pytest.approx(0.2 * 0.5)
    assert evi == pytest.approx(2.5 * 400 / (600 + 6 * 200 - 7.5 * 100 + 1))
    assert nbr2 == pytest.approx(600 / 1200)
    # Second pixel: NDWI from green alone is 1; all-zero bands give 0, not NaN.
    assert out[0, 0, 1] == 1.0
    assert out[1:, 0, 1].tolist() == [0.0] * 5


def test_generic_normalized_difference():
    x = stack(LITE, A1=(5000, 10), A8=(1000, 30))
    out = compute_indices(x, LITE, ["ND:A1:A8"])
    np.testing.assert_allclose(out[0, 0], [4000 / 6000, -20 / 40], rtol=1e-6)


def test_cross_product_difference_warns():
    with pytest.warns(SpectrasegWarning, match="mixes products"):
        resolve_indices(["ND:G:A1"], LITE)


def test_evi_is_clipped():
    x = stack(ALL, M7=(1000, 0), M5=(0, 0), M2=(130, 0))  # denominator 26 -> 2.5 * 1000 / 26
    assert compute_indices(x, ALL, ["EVI"])[0, 0, 0] == 1.0


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float32, (2, 5), elements=st.floats(-1e5, 1e5, width=32)),
)
def test_normalized_difference_is_safe(ab):
    out = normalized_difference(ab[0], ab[1])
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    assert (out >= -1).all() and (out <= 1).all()


@settings(max_examples=40, deadline=None)
@given(arrays(np.uint16, (len(ALL), 3, 3)))
def test_every_index_is_finite_and_bounded(x):
    out = compute_indices(x, ALL, ["NDWI", "NDVI", "NDRE", "CCCI", "EVI", "NBR2", "ND:R:B"])
    assert np.isfinite(out).all() and (np.abs(out) <= 1).all()


def test_availability_without_m():
    assert available_indices(LITE) == ["NBR2"]
    assert available_indices(ALL) == ["NDWI", "NDVI", "NDRE", "CCCI", "EVI", "NBR2"]
    with pytest.raises(ConfigError, match=r"'NDVI' needs channel\(s\) M7, M5.*M product"):
        resolve_indices(["NDVI"], LITE)


def test_band_ratios_stay_within_each_product():
    lite = band_ratio_indices(LITE)
    assert lite == ["ND:R:G", "ND:G:B", "ND:R:B", *(f"ND:A{i}:A{i + 1}" for i in range(1, 8))]
    full = band_ratio_indices(ALL)
    assert len(full) == 3 + 7 + 7 and "ND:M7:M8" in full and "ND:P:R" not in full
    assert band_ratio_indices(["R", "G", "A1"]) == []
    # They resolve without a mixed-product warning and equal the band formula.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plans = resolve_indices(lite, LITE)
    assert len(plans) == 10
    x = stack(LITE, R=[30, 0], G=[10, 0], A7=[300, 5], A8=[100, 5])
    out = compute_indices(x, LITE, lite)
    np.testing.assert_array_equal(out[0, 0], [0.5, 0.0])  # (30 - 10) / 40; 0/0 -> 0
    np.testing.assert_array_equal(out[-1, 0], [0.5, 0.0])  # (300 - 100) / 400


def test_unknown_and_repeated_names():
    with pytest.raises(ConfigError, match="unknown spectral index 'NDXI'"):
        resolve_indices(["NDWI", "NDXI"], ALL)
    with pytest.raises(ConfigError, match="'NDWI' is listed twice"):
        resolve_indices(["NDWI", "NDWI"], ALL)
    with pytest.raises(ConfigError, match=r"'ND:A1:A9' needs channel\(s\) A9"):
        resolve_indices(["ND:A1:A9"], LITE)


def test_channel_count_mismatch():
    with pytest.raises(ValueError, match="3 channel names for a stack of 2"):
        compute_indices(np.zeros((2, 1, 1)), ["R", "G", "B"], ["ND:R:G"])
