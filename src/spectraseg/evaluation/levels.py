"""Probability levels: probabilities stored as uint8 ``round(p * 255)``, and thresholds and
model blends on that grid. Prediction, tuning and validation all threshold levels, so a
threshold means the same pixels everywhere."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

PROB_LEVELS = 255
"""Probabilities are stored as uint8 ``round(p * 255)``; thresholds apply to that grid."""


def as_levels(channel: np.ndarray) -> np.ndarray:
    """One channel as uint8 levels: stored levels pass through, float probabilities in
    [0, 1] become ``round(p * 255)`` (same shape)."""
    if channel.dtype == np.uint8:
        return channel
    return np.rint(np.clip(channel, 0.0, 1.0) * PROB_LEVELS).astype(np.uint8)


def quantize(probs: np.ndarray) -> np.ndarray:
    """float probabilities ``(K, ...)`` in [0, 1] -> uint8 ``round(p * 255)`` (same shape)."""
    out = np.empty(probs.shape, dtype=np.uint8)
    for k in range(probs.shape[0]):  # per channel: temporaries stay one channel big
        out[k] = as_levels(probs[k])
    return out


def level_of(threshold: float) -> int:
    """Smallest stored level counted positive at ``threshold`` (``q >= threshold * 255``)."""
    return int(np.ceil(threshold * PROB_LEVELS - 1e-9))


def threshold_masks(probs: np.ndarray, thresholds: Mapping[int, float] | float) -> np.ndarray:
    """Class probabilities ``(K, H, W)`` -> bool masks ``(K, H, W)``.

    ``probs`` is uint8 (stored levels, see :data:`PROB_LEVELS`) or float in [0, 1] (quantised
    the same way first, so both give identical masks). A pixel is positive when its level is
    ``>= threshold * 255``. ``thresholds`` maps 1-based classes to thresholds in [0, 1]
    (missing: 0.5) or is one value.
    """
    out = np.empty(probs.shape, dtype=bool)
    for k in range(probs.shape[0]):
        t = thresholds.get(k + 1, 0.5) if isinstance(thresholds, Mapping) else thresholds
        np.greater_equal(as_levels(probs[k]), level_of(float(t)), out=out[k])
    return out


def blend_levels(unet: np.ndarray, pixel: np.ndarray, weights: Mapping[int, float]) -> np.ndarray:
    """Per-class convex blend of two uint8 ``(10, H, W)`` level maps.

    Class ``c`` gets ``w_c * unet + (1 - w_c) * pixel`` (``weights[c]`` is the U-Net's
    weight), rounded back to uint8 levels.
    """
    out = np.empty_like(unet)
    for k in range(unet.shape[0]):
        w = float(weights.get(k + 1, 1.0))
        if w >= 1.0:
            out[k] = unet[k]
        elif w <= 0.0:
            out[k] = pixel[k]
        else:
            mix = unet[k].astype(np.float32) * w + pixel[k].astype(np.float32) * (1.0 - w)
            out[k] = np.rint(mix).astype(np.uint8)
    return out
