"""The one threshold tuner: per-class thresholds, and U-Net / pixel-model blend weights,
chosen on labelled scenes.

Scenes are reduced to per-class histograms of their probability levels on true and on
false pixels (:func:`class_histograms`, weighted by pixel area), summed, and every
threshold of the grid is scored from the sums (:func:`jaccard_curves`), so tuning costs
one pass per scene and memory does not grow with the number of scenes.
:func:`choose_thresholds` is the decision rule; training's validation
(:mod:`spectraseg.training.validate`), ``spectraseg predict``
(:mod:`spectraseg.inference.tuning`) and the demo all call it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from spectraseg.evaluation.levels import PROB_LEVELS, as_levels, level_of

DEFAULT_GRID: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(1, 20))
"""Thresholds tried when tuning: 0.05, 0.10, ..., 0.95."""

PLATEAU = 0.2
"""How far below its best a threshold's Jaccard may be and still count as on the plateau
(relative). The chosen threshold is the middle of the plateau, not its peak: on dstl-lite a
class's probabilities are scaled differently in each region (crops in 6110/6140 peak at 0.04,
elsewhere at 0.4-0.96), so the peak fitted on some regions misses a new one. Over the ten
cross-validated runs of ``docs/accuracy.md`` the middle of the 20 % plateau raised the
nested mean Jaccard in every run, 0.109 -> 0.118 on average (by 0.003 to 0.017; crops
0.485 -> 0.542 in the first nine); 5 %, 10 %, 15 % and 30 % gave 0.113, 0.115, 0.117 and 0.118."""


def class_histograms(
    probs: np.ndarray, truth: np.ndarray, weight: float = 1.0, valid: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class counts of stored probability levels on true and on false pixels.

    Args:
        probs: ``(K, H, W)`` uint8 levels or float probabilities (quantised first).
        truth: ``(K, H, W)`` {0, 1} masks on the same grid.
        weight: multiplies the counts (the pixel area, to sum scenes in grid units).
        valid: ``(H, W)`` bool; the other pixels (nodata) are not counted (None: all).

    Returns:
        ``(pos, neg)``, float64 ``(K, 256)``: weighted pixel counts per level.
    """
    if probs.shape != truth.shape:
        raise ValueError(f"probabilities {probs.shape} and truth {truth.shape} differ in shape")
    k_ = probs.shape[0]
    pos = np.zeros((k_, PROB_LEVELS + 1))
    neg = np.zeros((k_, PROB_LEVELS + 1))
    keep = None if valid is None else np.asarray(valid, dtype=bool)
    for k in range(k_):
        q = as_levels(probs[k])
        t = truth[k].astype(bool, copy=False)
        if keep is not None:
            q, t = q[keep], t[keep]
        allc = np.bincount(q.ravel(), minlength=PROB_LEVELS + 1)
        pos[k] = np.bincount(q[t], minlength=PROB_LEVELS + 1)
        neg[k] = allc - pos[k]
    return pos * weight, neg * weight


def jaccard_curves(
    pos: np.ndarray, neg: np.ndarray, grid: Sequence[float] = DEFAULT_GRID
) -> np.ndarray:
    """Per-class Jaccard at each threshold of ``grid`` from :func:`class_histograms` sums.

    Returns float64 ``(10, len(grid))``; an empty union scores 0 (as in
    :mod:`spectraseg.evaluation.metrics`).
    """
    levels = [level_of(t) for t in grid]
    # Pixels at level >= L are positive: reverse cumulative sums give TP and FP per level.
    tp_all = pos[:, ::-1].cumsum(1)[:, ::-1]
    fp_all = neg[:, ::-1].cumsum(1)[:, ::-1]
    tp, fp = tp_all[:, levels], fp_all[:, levels]
    fn = pos.sum(1, keepdims=True) - tp
    union = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, 0.0)


def tune_details(
    probs_list: Iterable[np.ndarray],
    truth_masks_list: Iterable[np.ndarray],
    grid: Sequence[float] = DEFAULT_GRID,
    weights: Iterable[float] | None = None,
    plateau: float = PLATEAU,
) -> dict[str, Any]:
    """Per-class thresholds at the middle of each class's plateau of Jaccard summed over
    scenes (:func:`choose_thresholds`).

    Args:
        probs_list: per scene ``(10, H, W)`` probabilities (uint8 levels or float); consumed
            one scene at a time, so a generator keeps memory to one scene.
        truth_masks_list: per scene ``(10, H, W)`` {0, 1} truth on the same grid.
        grid: candidate thresholds.
        weights: per scene pixel area (squared grid units); default 1 (pixel counts).
        plateau: as :func:`choose_thresholds` (0: the best threshold).

    Returns:
        :func:`choose_thresholds` of the summed histograms: ``thresholds`` (a class no
        threshold gets right, or without a true pixel, gets the highest),
        ``jaccard``, ``curves`` (10 x len(grid)), ``tuned`` and ``grid``.
    """
    pos = neg = None
    ws = iter(weights) if weights is not None else None
    for probs, truth in zip(probs_list, truth_masks_list, strict=True):
        w = next(ws) if ws is not None else 1.0
        p, n = class_histograms(probs, truth, w)
        pos, neg = (p, n) if pos is None else (pos + p, neg + n)
    if pos is None or neg is None:
        raise ValueError("no scene to tune the thresholds on")
    return choose_thresholds(pos, neg, grid, plateau)


def choose_thresholds(
    pos: np.ndarray,
    neg: np.ndarray,
    grid: Sequence[float] = DEFAULT_GRID,
    plateau: float = PLATEAU,
) -> dict[str, Any]:
    """The one tuner: per-class thresholds from summed level histograms.

    Args:
        pos, neg: float64 ``(K, 256)`` weighted counts of each stored level on true and on
            false pixels (:func:`class_histograms`, summed over the tuning scenes).
        grid: candidate thresholds, ascending.
        plateau: per class, the thresholds whose Jaccard is at least ``(1 - plateau)``
            times the best are the plateau; the middle one of them (the lower of two
            middles) is chosen. 0: the best one (ties: the lowest), the rule before
            2026-12-02.

    Returns:
        ``thresholds`` (per class, from ``grid``), ``jaccard`` (at it; 0 for a class
        without true pixels), ``curves`` (K x len(grid)), ``tuned`` (per class: had true
        pixels) and ``grid``.
    """
    if not 0.0 <= plateau < 1.0:
        raise ValueError(f"plateau must be in [0, 1), got {plateau}")
    curves = jaccard_curves(pos, neg, grid)
    tuned = pos.sum(1) > 0
    best = np.array([_middle_of_plateau(row, plateau) for row in curves], dtype=int)
    # A class that no threshold gets right (Jaccard 0 everywhere), or that has no true pixel
    # to calibrate on: the highest threshold, the fewest false positives, not the lowest,
    # which would paint the most. (On dstl-lite's folds an untuned class at 0.5 painted false
    # positives in test scenes without it and never a hit.)
    best[curves.max(1) <= 0.0] = len(grid) - 1
    thresholds = {k + 1: float(grid[best[k]]) for k in range(pos.shape[0])}
    jac = {k + 1: float(curves[k, best[k]]) if tuned[k] else 0.0 for k in range(pos.shape[0])}
    return {
        "thresholds": thresholds,
        "jaccard": jac,
        "curves": curves,
        "tuned": {k + 1: bool(tuned[k]) for k in range(pos.shape[0])},
        "grid": [float(g) for g in grid],
    }


def _middle_of_plateau(curve: np.ndarray, plateau: float) -> int:
    """Index into ``curve`` (one class's Jaccard per grid threshold) of the middle of the
    thresholds scoring at least ``(1 - plateau)`` times its maximum."""
    if plateau == 0.0:
        return int(curve.argmax())  # the first maximum: the lowest threshold among ties
    on = np.flatnonzero(curve >= (1.0 - plateau) * curve.max())
    return int(on[(len(on) - 1) // 2])


BLEND_GRID: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
"""Candidate U-Net weights of the per-class blend with the pixel model (1: U-Net alone)."""


def _best_weight(per_weight: Sequence[dict[str, Any]], weights: Sequence[float], c: int) -> int:
    """Index of the weight whose best threshold scores highest on class ``c`` (ties: the
    higher U-Net weight)."""
    return max(range(len(weights)), key=lambda b: (per_weight[b]["jaccard"][c], weights[b]))


def tune_blend(
    pos: np.ndarray,
    neg: np.ndarray,
    mode: str = "average",
    grid: Sequence[float] = DEFAULT_GRID,
    plateau: float = PLATEAU,
) -> dict[str, Any]:
    """Per-class thresholds, and U-Net / pixel-model blend weights, from summed histograms.

    Args:
        pos, neg: float64 ``(B, K, 256)`` level counts on true and on false pixels
            (:func:`class_histograms` summed over scenes), one pair per U-Net weight of
            :data:`BLEND_GRID` (``B = 5``), or ``B = 1`` for the U-Net alone.
        mode: ``average`` gives every class the weight 0.5 (a plain model average: on
            dstl-lite's folds, with 4-6 validation scenes each, per-class weights overfit,
            0.103 against 0.125 pooled); ``tuned`` picks per class the weight whose best
            threshold scores highest (ties keep the U-Net).
        grid: candidate thresholds.
        plateau: as :func:`choose_thresholds`.

    Returns:
        ``thresholds``, ``jaccard`` and ``tuned`` (per class, as :func:`choose_thresholds`
        at the chosen weight), ``grid``, ``blend`` (per class U-Net weight; None for
        ``B = 1``), ``jaccard_unet`` and ``thresholds_unet`` (the U-Net alone),
        ``thresholds_pixel`` (the pixel model alone; None for ``B = 1``).
    """
    weights = BLEND_GRID if pos.shape[0] > 1 else (1.0,)
    if pos.shape[0] != len(weights):
        raise ValueError(f"histograms for {pos.shape[0]} blend weights, expected {len(weights)}")
    per_weight = [choose_thresholds(pos[b], neg[b], grid, plateau) for b in range(len(weights))]
    classes = range(1, pos.shape[1] + 1)
    if len(weights) > 1 and mode == "average":
        best = dict.fromkeys(classes, weights.index(0.5))
    else:
        best = {c: _best_weight(per_weight, weights, c) for c in classes}
    out: dict[str, Any] = {
        key: {c: per_weight[best[c]][key][c] for c in classes}
        for key in ("thresholds", "jaccard", "tuned")
    }
    unet, pixel = per_weight[-1], per_weight[0]
    out.update(
        grid=per_weight[0]["grid"],
        blend={c: float(weights[best[c]]) for c in classes} if len(weights) > 1 else None,
        jaccard_unet=unet["jaccard"],
        thresholds_unet=unet["thresholds"],
        thresholds_pixel=pixel["thresholds"] if len(weights) > 1 else None,
    )
    return out


def counts_at(
    pos: np.ndarray,
    neg: np.ndarray,
    thresholds: Mapping[int, float],
    blend: Mapping[int, float] | None = None,
) -> np.ndarray:
    """TP, FP and FN areas float64 ``(K, 3)`` of one scene's level histograms at per-class
    decisions: class ``c`` thresholded at ``thresholds[c]`` in the histograms of its blend
    weight ``blend[c]`` (:data:`BLEND_GRID`; None: the U-Net alone, the last row).

    ``pos``/``neg`` are ``(B, K, 256)`` as :func:`tune_blend` takes them, for one scene or
    summed over several. The areas are those :func:`choose_thresholds` scores, so decisions
    fitted on some scenes can be scored on others without predicting them again.
    """
    weights = BLEND_GRID if pos.shape[0] > 1 else (1.0,)
    out = np.zeros((pos.shape[1], 3))
    for k in range(pos.shape[1]):
        b = weights.index(blend[k + 1]) if blend is not None else len(weights) - 1
        level = level_of(thresholds[k + 1])
        tp = pos[b, k, level:].sum()
        out[k] = (tp, neg[b, k, level:].sum(), pos[b, k].sum() - tp)
    return out
