"""Thresholds chosen on the scenes being predicted, without their labels, measured nested.

Run::

    .venv/bin/python benchmarks/bench_adaptive_thresholds.py RUN [RUN ...]

A class's probabilities are scaled differently in each region (on dstl-lite crops in
6110/6140 peak at 0.04, elsewhere at 0.4-0.96), so one threshold per class fitted on other
regions misses some. These rules pick each class's threshold on the predicted scenes
themselves, from the distribution of their probabilities alone:

- ``expected J``: the threshold maximising the *expected* pooled Jaccard of the group,
  ``E[I] / (A + E[S] - E[I])`` with ``A`` the predicted area, ``E[I]`` the probability mass
  above the threshold and ``E[S]`` the group's whole mass (Nowozin 2014), with the
  probabilities as they are (``raw``) or calibrated (``calibrated``: per class, the
  frequency of truth at each level on the *other* folds' out-of-fold predictions, made
  monotone by isotonic regression);
- ``area``: the threshold whose predicted area is closest to the calibrated expected area.

Groups: the held-out fold (every scene of a request), each region, each scene. Everything is
scored nested, as the demo scores: calibration and the fixed thresholds it is compared with
come from the other folds, and no held-out label is read before scoring. Reads the runs'
out-of-fold predictions only (a few seconds per run).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from spectraseg.runtime import tune_memory

tune_memory()

Hist = dict[str, tuple[np.ndarray, np.ndarray]]


def calibration(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Per class and level the frequency of truth, monotone in the level: ``(K, 256)``
    float64 from summed ``(K, 256)`` histograms (a level never seen gets its neighbours')."""
    from sklearn.isotonic import IsotonicRegression

    levels = np.arange(pos.shape[1], dtype=float)
    out = np.zeros(pos.shape)
    for k in range(pos.shape[0]):
        total = pos[k] + neg[k]
        seen = total > 0
        if not seen.any() or pos[k].sum() == 0:
            continue
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
        iso.fit(levels[seen], pos[k][seen] / total[seen], sample_weight=total[seen])
        out[k] = iso.predict(levels)
    return out


def expected_jaccard_level(total: np.ndarray, prob: np.ndarray) -> int:
    """The level (1-255) whose threshold maximises expected Jaccard of one class: ``total``
    area per level, ``prob`` the probability of truth at each level."""
    mass = total * prob
    inter = mass[::-1].cumsum()[::-1]  # expected intersection at each threshold level
    area = total[::-1].cumsum()[::-1]
    whole = mass.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        ej = np.where(area + whole - inter > 0, inter / (area + whole - inter), 0.0)
    return int(np.argmax(ej[1:]) + 1)


def area_level(total: np.ndarray, prob: np.ndarray) -> int:
    """The level whose predicted area is closest to the expected area of truth."""
    area = total[::-1].cumsum()[::-1]
    return int(np.argmin(np.abs(area[1:] - (total * prob).sum())) + 1)


Rule = Callable[[np.ndarray, np.ndarray], int]
RULES: dict[str, tuple[Rule, bool]] = {
    "expected J, raw": (expected_jaccard_level, False),
    "expected J, calibrated": (expected_jaccard_level, True),
    "area, calibrated": (area_level, True),
}


def counts(pos: np.ndarray, neg: np.ndarray, levels: Sequence[int]) -> np.ndarray:
    """TP/FP/FN ``(K, 3)`` of summed ``(K, 256)`` histograms at per-class levels."""
    out = np.zeros((pos.shape[0], 3))
    for k, lv in enumerate(levels):
        tp = pos[k, lv:].sum()
        out[k] = (tp, neg[k, lv:].sum(), pos[k].sum() - tp)
    return out


def nested(hist: Hist, folds: Sequence[Sequence[str]], rule: str, group: str) -> np.ndarray:
    """Pooled per-class Jaccard ``(K,)`` of every fold's scenes at levels chosen per group
    by ``rule`` (calibration fitted on the other folds)."""
    from spectraseg.data.dstl import region_of

    fn, calibrated = RULES[rule]
    k_ = next(iter(hist.values()))[0].shape[0]
    total = np.zeros((k_, 3))
    for k, held in enumerate(folds):
        others = [i for j, f in enumerate(folds) if j != k for i in f]
        cal = calibration(sum(hist[i][0] for i in others), sum(hist[i][1] for i in others))
        key = {"fold": lambda i: "all", "region": region_of, "scene": lambda i: i}[group]
        for g in sorted({key(i) for i in held}):
            members = [i for i in held if key(i) == g]
            pos = sum(hist[i][0] for i in members)
            neg = sum(hist[i][1] for i in members)
            raw = np.arange(pos.shape[1]) / (pos.shape[1] - 1.0)
            prob = cal if calibrated else np.broadcast_to(raw, pos.shape)
            levels = [fn(pos[c] + neg[c], prob[c]) for c in range(k_)]
            total += counts(pos, neg, levels)
    union = total.sum(1)
    return np.where(union > 0, total[:, 0] / np.maximum(union, 1e-12), 0.0)


def main() -> None:
    from spectraseg.align.cache import open_cache
    from spectraseg.crossval import nested_scores, run_histograms
    from spectraseg.evaluation.levels import level_of
    from spectraseg.runs import RunDir, read_config, read_cv

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    args = p.parse_args()
    for run in args.runs:
        rd = RunDir.of(run)
        cv, config = read_cv(rd), read_config(rd)
        assert cv is not None
        cache = open_cache(config.data.cache)
        full = run_histograms(rd, cache, cv.scenes, config.data.root, config.pixel.enabled)
        hist = {i: (pos[-1], neg[-1]) for i, (pos, neg) in full.items()}  # the U-Net alone
        unet = "decided" if not config.pixel.enabled else 1.0
        key = "thresholds_unet" if config.pixel.enabled else "thresholds"
        fixed, decisions = nested_scores(full, cv.folds, "average", unet)
        check = sum(
            counts(sum(hist[i][0] for i in held), sum(hist[i][1] for i in held),
                   [level_of(t) for t in d[key].values()])
            for held, d in zip(cv.folds, decisions, strict=True)
        )  # fmt: skip
        assert np.isclose((check[:, 0] / np.maximum(check.sum(1), 1e-12)).mean(), fixed.mean)
        print(f"{run}\n  fixed thresholds (the default) {fixed.mean:.4f}  "
              + " ".join(f"{v:.3f}" for v in fixed.jaccard))  # fmt: skip
        for rule in RULES:
            for group in ("fold", "region", "scene"):
                j = nested(hist, cv.folds, rule, group)
                print(f"  {rule:<24} per {group:<6} {j.mean():.4f}  "
                      + " ".join(f"{v:.3f}" for v in j))  # fmt: skip


if __name__ == "__main__":
    main()
