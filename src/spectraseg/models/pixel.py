"""A per-pixel gradient-boosting model: one binary classifier per class on pixel features.

On small real datasets a per-pixel model is a strong baseline (water from SWIR, vegetation
from red-edge/NIR) and a useful partner of the U-Net: :mod:`spectraseg.demo` blends the two
per class with weights chosen on validation scenes.

Features of a pixel (:func:`pixel_features`): every input channel of the normalised stack
(including spectral indices), and of a grey image (mean of the visible channels) its 5 x 5
and 15 x 15 local mean and standard deviation and its Sobel gradient magnitude.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from spectraseg import NUM_CLASSES
from spectraseg.data.files import atomic_output

if TYPE_CHECKING:  # imported where a model is fitted: 1.7 s that prediction rarely needs
    from sklearn.ensemble import HistGradientBoostingClassifier

GREY_CHANNELS = ("R", "G", "B", "P")
TEXTURE_WINDOWS = (5, 15)


def feature_names(channels: Sequence[str]) -> list[str]:
    """Names of the features :func:`pixel_features` returns for these input channels."""
    names = list(channels)
    for k in TEXTURE_WINDOWS:
        names += [f"grey_mean{k}", f"grey_std{k}"]
    names.append("grey_sobel")
    return names


def pixel_features(image: np.ndarray, channels: Sequence[str]) -> np.ndarray:
    """Per-pixel features of a normalised scene.

    Args:
        image: (C, H, W) float32, normalised channels (zero mean, unit variance).
        channels: the C channel names (``R``, ``G``, ..., ``A8``, index names).

    Returns:
        (F, H, W) float32 with F = C + 2 * len(TEXTURE_WINDOWS) + 1, in
        :func:`feature_names` order.
    """
    if image.ndim != 3 or image.shape[0] != len(channels):
        raise ValueError(f"image {image.shape} does not match {len(channels)} channel names")
    visible = [i for i, c in enumerate(channels) if c in GREY_CHANNELS]
    grey = image[visible].mean(axis=0) if visible else image.mean(axis=0)
    extra = grey_texture(grey)
    return np.concatenate([image.astype(np.float32, copy=False), extra], axis=0)


def grey_texture(grey: np.ndarray) -> np.ndarray:
    """Texture of a grey image (H, W): float32 (2 * len(TEXTURE_WINDOWS) + 1, H, W).

    Per window size k, the k x k local mean and standard deviation, then the 3 x 3 Sobel
    gradient magnitude; edges reflected.
    """
    grey = np.ascontiguousarray(grey, dtype=np.float32)
    extra = []
    for k in TEXTURE_WINDOWS:
        mean = cv2.blur(grey, (k, k), borderType=cv2.BORDER_REFLECT)
        sq = cv2.blur(grey * grey, (k, k), borderType=cv2.BORDER_REFLECT)
        extra += [mean, np.sqrt(np.maximum(sq - mean * mean, 0.0))]
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT)
    extra.append(np.sqrt(gx * gx + gy * gy))
    return np.stack(extra)


def sample_pixels(
    masks: np.ndarray, cls: int, per_scene: int, rng: np.random.Generator
) -> np.ndarray:
    """Flat pixel indices for training class ``cls`` (1-based) on one scene.

    Up to ``per_scene // 2`` positives and as many negatives (fewer positives when the
    class is rare; negatives then fill up), drawn without replacement.

    Args:
        masks: (10, H, W) uint8 truth.
    """
    flat = masks[cls - 1].reshape(-1).astype(bool)
    pos = np.flatnonzero(flat)
    neg = np.flatnonzero(~flat)
    n_pos = min(len(pos), per_scene // 2)
    n_neg = min(len(neg), per_scene - n_pos)
    pick_pos = rng.choice(pos, n_pos, replace=False) if n_pos else pos[:0]
    pick_neg = rng.choice(neg, n_neg, replace=False) if n_neg else neg[:0]
    return np.concatenate([pick_pos, pick_neg])


HALO = max(TEXTURE_WINDOWS) // 2 + 1
"""Rows of context a block of features needs (the largest window's half, and Sobel's)."""


@dataclass
class PixelModel:
    """One HistGradientBoosting classifier per class (None where a class never occurs)."""

    channels: list[str]
    models: dict[int, HistGradientBoostingClassifier | None] = field(default_factory=dict)

    def fit(
        self,
        scenes: Iterable[tuple[np.ndarray, np.ndarray]],
        per_scene: int = 20000,
        max_iter: int = 200,
        seed: int = 0,
    ) -> PixelModel:
        """Train on ``(image, masks)`` scenes: image (C, H, W) float32 normalised channels
        (named :attr:`channels`), masks (10, H, W) uint8.

        Scenes are consumed one at a time; only the sampled pixels are kept, so memory does
        not grow with scene size.
        """
        from sklearn.ensemble import HistGradientBoostingClassifier

        rng = np.random.default_rng(seed)
        xs: dict[int, list[np.ndarray]] = {c: [] for c in range(1, NUM_CLASSES + 1)}
        ys: dict[int, list[np.ndarray]] = {c: [] for c in range(1, NUM_CLASSES + 1)}
        for image, masks in scenes:
            feat = pixel_features(image, self.channels)
            flat = feat.reshape(feat.shape[0], -1)
            for cls in xs:
                idx = sample_pixels(masks, cls, per_scene, rng)
                xs[cls].append(flat[:, idx].T.copy())
                ys[cls].append(np.asarray(masks[cls - 1]).reshape(-1)[idx])
            del feat, flat
        for cls in xs:
            if not ys[cls]:
                raise ValueError("no scene to fit the pixel model on")
            y = np.concatenate(ys[cls])
            if y.min() == y.max():
                self.models[cls] = None
                continue
            clf = HistGradientBoostingClassifier(
                max_iter=max_iter,
                learning_rate=0.1,
                max_leaf_nodes=31,
                l2_regularization=1.0,
                early_stopping=True,
                validation_fraction=0.15,
                random_state=int(rng.integers(2**31)),
            )
            clf.fit(np.concatenate(xs[cls]), y)
            self.models[cls] = clf
        return self

    def predict_proba(self, image: np.ndarray, block_rows: int = 512) -> np.ndarray:
        """Class probabilities (10, H, W) float32 of one normalised scene (C, H, W).

        Features are computed in blocks of rows (with :data:`HALO` rows of context), so
        memory stays at a block's features whatever the scene size. Classes never seen in
        training get 0. Positives were sampled at up to half of each training set, so these
        are not calibrated frequencies: choose thresholds on validation scenes.
        """
        _, h, w = image.shape
        out = np.zeros((NUM_CLASSES, h, w), dtype=np.float32)
        for r0 in range(0, h, block_rows):
            r1 = min(h, r0 + block_rows)
            a0, a1 = max(0, r0 - HALO), min(h, r1 + HALO)
            feat = pixel_features(image[:, a0:a1], self.channels)[:, r0 - a0 : r1 - a0]
            flat = feat.reshape(feat.shape[0], -1).T
            for cls, clf in self.models.items():
                if clf is not None:
                    out[cls - 1, r0:r1] = clf.predict_proba(flat)[:, 1].reshape(r1 - r0, w)
        return out

    def save(self, path: str | Path) -> None:
        """Pickle the model atomically (sklearn estimators are not tensor checkpoints)."""
        with atomic_output(path) as tmp, open(tmp, "wb") as f:
            pickle.dump({"channels": self.channels, "models": self.models}, f)

    @classmethod
    def load(cls, path: str | Path) -> PixelModel:
        """Load a model written by :meth:`save` (only load files you wrote yourself)."""
        with open(path, "rb") as f:
            state = pickle.load(f)
        return cls(channels=state["channels"], models=state["models"])


class PixelEnsemble:
    """Per-pixel models of several folds, their probabilities averaged."""

    def __init__(self, members: Sequence[PixelModel]) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = list(members)
        self.channels = members[0].channels

    def predict_proba(self, image: np.ndarray) -> np.ndarray:
        """Mean class probabilities float32 ``(10, H, W)`` of one normalised scene."""
        out = self.members[0].predict_proba(image)
        for member in self.members[1:]:
            out += member.predict_proba(image)
        out /= len(self.members)
        return out
