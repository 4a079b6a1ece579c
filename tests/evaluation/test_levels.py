"""uint8 probability levels: quantising, thresholding, blending (``evaluation.levels``)."""

from __future__ import annotations

import numpy as np

from spectraseg.evaluation.levels import blend_levels, quantize, threshold_masks


def test_quantize_and_threshold_masks_agree_for_float_and_uint8() -> None:
    rng = np.random.default_rng(4)
    probs = rng.random((10, 20, 30)).astype(np.float32)
    probs[0, 0, 0], probs[0, 0, 1] = 0.0, 1.0
    levels = quantize(probs)
    assert levels.dtype == np.uint8 and levels[0, 0, 0] == 0 and levels[0, 0, 1] == 255
    assert np.abs(levels / 255.0 - probs).max() <= 0.5 / 255 + 1e-7
    thr = {c: 0.05 * c for c in range(1, 11)}
    np.testing.assert_array_equal(threshold_masks(probs, thr), threshold_masks(levels, thr))
    # A level exactly at the threshold counts as positive.
    exact = np.full((1, 1, 1), 102, np.uint8)  # 102 / 255 = 0.4
    assert threshold_masks(exact, 0.4)[0, 0, 0] and not threshold_masks(exact, 0.41)[0, 0, 0]


def test_blend_levels_mixes_per_class() -> None:
    unet = np.full((10, 2, 3), 200, np.uint8)
    pixel = np.full((10, 2, 3), 100, np.uint8)
    out = blend_levels(unet, pixel, {1: 1.0, 2: 0.0, 3: 0.25})
    assert out.dtype == np.uint8
    assert (out[0] == 200).all() and (out[1] == 100).all() and (out[2] == 125).all()
    assert (out[3:] == 200).all()  # classes without a weight keep the U-Net
