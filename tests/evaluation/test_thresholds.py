"""The one threshold tuner (``spectraseg.evaluation.thresholds``)."""

from __future__ import annotations

import numpy as np
import pytest

from spectraseg.evaluation.levels import level_of, quantize, threshold_masks
from spectraseg.evaluation.metrics import mask_counts
from spectraseg.evaluation.thresholds import (
    DEFAULT_GRID,
    choose_thresholds,
    class_histograms,
    jaccard_curves,
    tune_details,
)


def test_tune_thresholds_finds_the_separating_threshold() -> None:
    rng = np.random.default_rng(5)
    scenes = [rng.random((10, 40, 50)).astype(np.float32) for _ in range(3)]
    truths = []
    for p in scenes:
        t = np.zeros(p.shape, np.uint8)
        t[0] = quantize(p[:1])[0] >= level_of(0.3)  # perfectly separable at 0.3
        t[1] = quantize(p[1:2])[0] >= level_of(0.85)
        t[2] = p[2] > 2  # never true: untunable
        t[3] = rng.random(p[3].shape) < 0.5  # noise: best is to predict everything
        t[4] = quantize(p[4:5])[0] < level_of(0.02)  # true only below every threshold
        truths.append(t)
    details = tune_details(iter(scenes), iter(truths), plateau=0.0)
    th = details["thresholds"]
    assert th[1] == pytest.approx(0.3) and details["jaccard"][1] == pytest.approx(1.0)
    assert th[2] == pytest.approx(0.85) and details["jaccard"][2] == pytest.approx(1.0)
    assert th[3] == pytest.approx(DEFAULT_GRID[-1]) and not details["tuned"][3]
    assert th[4] == pytest.approx(0.05)
    # No threshold finds a true pixel: the highest one, fewest false positives.
    assert details["jaccard"][5] == 0.0 and details["tuned"][5]
    assert th[5] == pytest.approx(DEFAULT_GRID[-1])
    # Lists and generators, with weights 1, tune alike.
    assert (
        tune_details(scenes, truths, weights=[1.0] * len(scenes), plateau=0.0)["thresholds"] == th
    )


def test_the_middle_of_the_plateau_is_chosen() -> None:
    """Uniform probabilities, truth where p >= 0.3: the Jaccard at t < 0.3 is 0.7 / (1 - t)
    and at t > 0.3 it is (1 - t) / 0.7, so the thresholds within 20 % of the best (1.0) are
    0.125 <= t <= 0.44: 0.15 ... 0.40 of the grid, whose lower middle is 0.25."""
    rng = np.random.default_rng(7)
    probs = rng.random((1, 400, 400)).astype(np.float32)
    truth = (quantize(probs) >= level_of(0.3)).astype(np.uint8)
    details = tune_details([probs], [truth], plateau=0.2)
    assert details["thresholds"][1] == pytest.approx(0.25)
    assert details["jaccard"][1] == pytest.approx(0.7 / 0.75, abs=0.01)
    # The default is that plateau; 0 takes the peak.
    assert tune_details([probs], [truth])["thresholds"] == details["thresholds"]
    assert tune_details([probs], [truth], plateau=0.0)["thresholds"][1] == pytest.approx(0.3)


def test_ties_at_the_peak_go_to_the_lowest_threshold_and_the_plateau_to_its_middle() -> None:
    """Every level 200 (0.78), every pixel true: the Jaccard is 1 at thresholds 0.05-0.75
    and 0 above. Plateau 0 takes the lowest of the tied peaks, as before 2026-12-02; the
    plateau rule the middle of the fifteen, 0.40."""
    probs, truth = np.full((1, 4, 4), 200, np.uint8), np.ones((1, 4, 4), np.uint8)
    assert tune_details([probs], [truth], plateau=0.0)["thresholds"][1] == pytest.approx(0.05)
    assert tune_details([probs], [truth])["thresholds"][1] == pytest.approx(0.40)


def test_plateau_must_be_a_fraction() -> None:
    with pytest.raises(ValueError, match="plateau"):
        choose_thresholds(np.ones((1, 256)), np.ones((1, 256)), plateau=1.0)


def test_jaccard_curves_match_the_metric_on_masks() -> None:
    rng = np.random.default_rng(6)
    probs = quantize(rng.random((10, 30, 30)))
    truth = (rng.random((10, 30, 30)) < 0.3).astype(np.uint8)
    pos, neg = class_histograms(probs, truth, weight=2.5)
    curves = jaccard_curves(pos, neg, [0.2, 0.6])
    for j, t in enumerate([0.2, 0.6]):
        counts = mask_counts(threshold_masks(probs, t), truth)
        want = counts[:, 0] / counts.sum(1)
        np.testing.assert_allclose(curves[:, j], want)


def test_pixels_outside_valid_are_not_counted() -> None:
    """Counting with a valid mask equals counting the valid pixels alone."""
    from spectraseg.evaluation.metrics import mask_counts

    rng = np.random.default_rng(0)
    levels = rng.integers(0, 256, size=(2, 6, 7)).astype(np.uint8)
    truth = (rng.random((2, 6, 7)) > 0.5).astype(np.uint8)
    valid = np.ones((6, 7), dtype=bool)
    valid[:, 4:] = False
    pos, neg = class_histograms(levels, truth, 2.0, valid)
    pos_l, neg_l = class_histograms(levels[:, :, :4], truth[:, :, :4], 2.0)
    np.testing.assert_array_equal(pos, pos_l)
    np.testing.assert_array_equal(neg, neg_l)
    pred = levels >= 128
    np.testing.assert_array_equal(
        mask_counts(pred, truth, valid), mask_counts(pred[:, :, :4], truth[:, :, :4])
    )
