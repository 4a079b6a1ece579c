"""Validation during training: the competition metric on whole held-out scenes, at the
config's thresholds and at thresholds tuned exactly as ``spectraseg predict`` tunes them."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from spectraseg.config import Config, per_class
from spectraseg.evaluation.levels import quantize, threshold_masks
from spectraseg.evaluation.metrics import Evaluation, mask_counts
from spectraseg.evaluation.thresholds import choose_thresholds, class_histograms
from spectraseg.inference.tiling import predict_probs
from spectraseg.training.data import TrainData


def _bce_sum(probs: np.ndarray, truth: np.ndarray) -> float:
    """Summed binary cross-entropy of probabilities ``(H, W)`` against a 0/1 mask ``(H, W)``."""
    t = truth.astype(bool)
    p = np.clip(probs, 1e-7, 1 - 1e-7)
    return float(-(np.log(p[t]).sum(dtype=np.float64) + np.log1p(-p[~t]).sum(dtype=np.float64)))


def validate(
    model: nn.Module,
    data: TrainData,
    config: Config,
    device: torch.device,
    progress: bool = False,
) -> dict[str, Any]:
    """The competition metric on whole held-out scenes.

    Each scene is predicted by tiled inference (:func:`spectraseg.inference.tiling.predict_probs`,
    ``predict.tile``/``margin``/``batch``, no TTA), thresholded with ``predict.thresholds``
    on the stored probability levels (:func:`spectraseg.evaluation.levels.threshold_masks`)
    and counted per class (TP, FP, FN pixel areas in grid units, summed over scenes). The
    tuned scores come from the one tuner prediction uses
    (:func:`spectraseg.evaluation.thresholds.choose_thresholds` on the summed level
    histograms), so ``val_mean_tuned`` is what ``spectraseg predict`` scores on these scenes
    with this model and its tuned thresholds. Also reports the mean pixel BCE.

    Returns a JSON-ready dict: ``val_loss``, ``val_mean``, ``val_jaccard`` (K, one per
    class of the data's schema), ``val_empty`` (K bools: union empty over all scenes),
    ``val_mean_tuned``, ``val_jaccard_tuned`` (K), ``val_thresholds_tuned`` (K).
    """
    assert data.load_val is not None
    p = config.predict
    k = len(data.schema)
    thresholds = dict(enumerate(per_class(p.thresholds, k, "predict.thresholds", 0.5), start=1))
    ids = list(data.val_scenes)
    counts = np.zeros((len(ids), k, 3), dtype=np.float64)
    pos = neg = np.zeros((k, 256))
    bce_sum, n_values = 0.0, 0
    for n, image_id in enumerate(
        tqdm(ids, desc="validate", unit="scene", disable=not progress, leave=False)
    ):
        image, truth = data.load_val(image_id)
        probs = predict_probs(
            model, image, tile=p.tile, margin=p.margin, batch=p.batch, device=device,
            amp=config.train.amp,
        )  # fmt: skip
        area = data.pixel_area(image_id) if data.pixel_area is not None else 1.0
        levels = quantize(probs)
        valid = data.counted(image_id) if data.counted is not None else None
        counts[n] = mask_counts(threshold_masks(levels, thresholds), truth, valid) * area
        hp, hn = class_histograms(levels, truth, area, valid)
        pos, neg = pos + hp, neg + hn
        # Class by class: a full-resolution scene's (K, H, W) maps are large.
        bce_sum += sum(_bce_sum(probs[c], truth[c]) for c in range(k))
        n_values += probs.size
    ev = Evaluation(tuple(ids), counts, "raster")
    tuned = choose_thresholds(pos, neg)
    jaccard = [tuned["jaccard"][c] for c in range(1, k + 1)]
    return {
        "val_loss": bce_sum / max(1, n_values),
        "val_mean": ev.mean,
        "val_jaccard": [float(v) for v in ev.jaccard],
        "val_empty": [bool(v) for v in ev.empty],
        "val_mean_tuned": float(np.mean(jaccard)),
        "val_jaccard_tuned": jaccard,
        "val_thresholds_tuned": [tuned["thresholds"][c] for c in range(1, k + 1)],
    }
