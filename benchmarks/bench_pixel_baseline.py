"""The per-pixel gradient-boosting baseline on real data, as a bar for the demo's score.

Reproduces the per-pixel experiment that sets the real-data bar (GUIDE section 8) on a
dataset in the competition layout (default ``../shared/data/dstl-lite``, RGB + A) and scores
it exactly as ``spectraseg demo --data`` scores itself, so the two numbers compare:

- scenes registered and fused by :func:`spectraseg.align.fusion.align_dataset` (A bands resampled
  to the RGB grid), label masks by :func:`spectraseg.align.masks.build_masks`;
- 29 features per pixel (:func:`features`): the 11 channels, 12 band log-ratios, grey, its
  5 x 5 and 15 x 15 local mean and standard deviation, and its Sobel magnitude;
- one sklearn ``HistGradientBoostingClassifier`` per class, trained on up to 20000 pixels
  per scene (half positives where the class has that many);
- 4-fold cross-validation by region with the demo's folds
  (:func:`spectraseg.demo.region_folds`: near-duplicate regions 6110/6140 kept together);
- per-class thresholds chosen on the pooled out-of-fold predictions of all scenes (the
  baseline's protocol, "plain": optimistic, as the thresholds see the scored scenes); then
  the same predictions under the U-Net's headline protocol, "nested" (each fold at
  thresholds fitted on the other folds, as ``spectraseg train --folds`` reports), so that
  the two models can be compared like for like;
- the competition metric on pixel areas, intersections and unions summed over all scenes
  (:func:`spectraseg.evaluation.metrics.evaluate_masks`), i.e. the demo's pooled raster
  figure. Per-fold means with other conventions for classes absent from a fold are printed
  too, because they differ a lot on 20 scenes.

Run: ``.venv/bin/python benchmarks/bench_pixel_baseline.py [--data DIR] [--no-ratios]``
(about 4 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "dstl-lite"

RGB = ("R", "G", "B")
ABANDS = tuple(f"A{i}" for i in range(1, 9))
RATIOS = (
    ("R", "G"),
    ("G", "B"),
    ("R", "B"),
    *pairwise(ABANDS),
    ("A1", "R"),
    ("A8", "R"),
)
"""The 12 band pairs whose log-ratio ``log((x + 1) / (y + 1))`` is a feature."""


def features(stack: np.ndarray, channels: list[str], ratios: bool = True) -> np.ndarray:
    """(F, H, W) float32 features of a fused (C, H, W) stack of digital numbers."""
    from spectraseg.models.pixel import grey_texture

    x = stack.astype(np.float32)
    at = {c: x[i] for i, c in enumerate(channels)}
    grey = np.mean([at[c] for c in RGB], axis=0).astype(np.float32)
    out = [at[c] for c in (*RGB, *ABANDS)]
    if ratios:
        out += [np.log((at[a] + 1.0) / (at[b] + 1.0)) for a, b in RATIOS]
    out.append(grey)
    out += list(grey_texture(grey))
    return np.stack(out).astype(np.float32)


def fit_class(feats, masks, train, cls, per_scene, rng):
    """One classifier for class ``cls`` (0-based), or None when the class never occurs."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from spectraseg.models.pixel import sample_pixels

    xs, ys = [], []
    for i in train:
        idx = sample_pixels(masks[i], cls + 1, per_scene, rng)
        xs.append(feats[i].reshape(feats[i].shape[0], -1)[:, idx].T)
        ys.append(masks[i][cls].reshape(-1)[idx].astype(bool))
    y = np.concatenate(ys)
    if y.min() == y.max():
        return None
    clf = HistGradientBoostingClassifier(
        max_iter=200, learning_rate=0.1, max_leaf_nodes=31, l2_regularization=1.0,
        early_stopping=True, random_state=int(rng.integers(2**31)),
    )  # fmt: skip
    return clf.fit(np.concatenate(xs), y)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--seed", type=int, default=0, help="the demo's --seed (fold assignment)")
    p.add_argument("--per-scene", type=int, default=20000)
    p.add_argument("--no-ratios", action="store_true", help="drop the 12 log-ratio features")
    args = p.parse_args()
    if not args.data.is_dir():
        print(f"no dataset at {args.data}", file=sys.stderr)
        return 1

    from spectraseg.align.cache import open_cache
    from spectraseg.align.fusion import align_dataset
    from spectraseg.align.masks import build_masks, mask_path
    from spectraseg.data.dstl import open_dataset
    from spectraseg.evaluation.metrics import evaluate_masks, pixel_areas
    from spectraseg.features.split import region_folds

    t0 = time.perf_counter()
    ds = open_dataset(args.data)
    ids = list(ds.labelled_ids)
    with tempfile.TemporaryDirectory() as tmp:
        align_dataset(args.data, Path(tmp), ids, progress=False)
        cache = open_cache(Path(tmp))
        build_masks(cache, args.data, ids, progress=False)
        feats, masks, valid = {}, {}, {}
        areas = pixel_areas(cache, args.data, ids)
        for i in ids:
            channels = list(cache.channels(i))
            feats[i] = features(np.asarray(cache.load(i)), channels, not args.no_ratios)
            masks[i] = np.load(mask_path(cache, i))
            valid[i] = cache.counted(i)
    print(f"{len(ids)} scenes, {feats[ids[0]].shape[0]} features, aligned in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip

    rng = np.random.default_rng(args.seed)
    folds = region_folds(ids, args.folds, args.seed)
    oof = {i: np.zeros(masks[i].shape, np.float32) for i in ids}
    for k, test in enumerate(folds):
        train = [i for i in ids if i not in test]
        for c in range(10):
            clf = fit_class(feats, masks, train, c, args.per_scene, rng)
            for i in test:
                if clf is not None:
                    x = feats[i].reshape(feats[i].shape[0], -1).T
                    oof[i][c] = clf.predict_proba(x)[:, 1].reshape(masks[i].shape[1:])
        print(f"fold {k + 1}/{len(folds)} ({len(test)} test scenes) done at "
              f"{time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip

    grid = np.round(np.arange(0.02, 0.99, 0.02), 2)
    sizes = {i: ds.grid_sizes[i] for i in ids}
    best = np.zeros(10)
    thresholds = np.ones(10)  # 1: predict nothing, unless a threshold scores above 0
    for t in grid:
        ev = evaluate_masks({i: oof[i] > t for i in ids}, masks, sizes)
        better = ev.jaccard > best
        best[better], thresholds[better] = ev.jaccard[better], t
    final = {i: oof[i] > thresholds[:, None, None] for i in ids}
    ev = evaluate_masks(final, masks, sizes)
    print("class  jaccard  threshold")
    for c in range(10):
        print(f"{c + 1:>5}  {ev.jaccard[c]:.3f}    {thresholds[c]:.2f}")
    print(f"pooled over all scenes (the demo's figure): mean Jaccard {ev.mean:.3f}")
    for label, empty in (("absent classes score 0", 0.0), ("absent classes score 1", 1.0)):
        per_fold = [evaluate_masks({i: final[i] for i in f}, {i: masks[i] for i in f}, sizes,
                                   empty_score=empty).mean for f in folds]  # fmt: skip
        print(f"mean of per-fold means, {label}: {np.mean(per_fold):.3f} "
              f"({', '.join(f'{m:.3f}' for m in per_fold)})")  # fmt: skip
    print_nested(oof, masks, valid, areas, folds)
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


def print_nested(oof, masks, valid, areas, folds) -> None:
    """The baseline under the U-Net's own protocol (``spectraseg train --folds``): each
    fold scored at thresholds fitted on the other folds' out-of-fold predictions, with the
    peak (plateau 0) and with the middle of the plateau (the U-Net's default rule)."""
    from spectraseg.crossval import nested_scores
    from spectraseg.evaluation.thresholds import PLATEAU, class_histograms

    hist = {}
    for i in oof:
        pos, neg = class_histograms(oof[i], masks[i], areas[i], valid[i])
        hist[i] = (pos[None], neg[None])
    for label, plateau in (("peak", 0.0), (f"plateau {PLATEAU:g}", PLATEAU)):
        ev = nested_scores(hist, folds, "average", plateau=plateau)[0]
        print(f"nested, thresholds at the {label} (the U-Net's protocol): mean Jaccard "
              f"{ev.mean:.3f}; per class {' '.join(f'{v:.3f}' for v in ev.jaccard)}")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
