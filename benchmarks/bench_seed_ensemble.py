"""Seed ensembles of cross-validated runs, scored nested without training anything.

Run::

    .venv/bin/python benchmarks/bench_seed_ensemble.py RUN_A RUN_B [RUN_C ...] [--pairs]

Each ``RUN`` is a finished ``spectraseg train --folds K`` run (``bench_accuracy.py`` writes
them) over the same scenes and folds, differing only in seed or setting. Per scene, the
runs' out-of-fold probabilities (``RUN/oof/{id}.unet.npy``: each scene predicted only by
fold models that never saw its region) are averaged, and the average is scored as the
runs are: per-class thresholds at the middle of the plateau fitted on the other folds'
scenes, intersections and unions pooled over every scene (nested). Printed: each run alone,
then the average of all of them (with ``--pairs``: of every pair too), as the nested mean
Jaccard and per class. The average is what ``train --folds`` would give with each fold (and
the final model) trained once per run, so it costs that many trainings.

``bench_accuracy.py`` draws a run's folds from its seed, so runs of different seeds group
the regions differently. Their average is still out of region for every scene (each run's
model for a scene never saw its region); the nested thresholds are fitted on the first
run's folds. A threshold for fold k is then fitted partly on predictions, of other scenes,
by models that trained on fold k's regions: no label of fold k is scored at a threshold
fitted on it, but the same-folds ensemble that a run with several members per fold makes
is slightly more pessimistic than this.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import warnings
from pathlib import Path

import numpy as np


def mean_levels(runs: list[Path], image_id: str) -> np.ndarray:
    """uint8 ``(10, H, W)``: the mean of the runs' out-of-fold probability levels of a scene,
    rounded back to levels (the mean of probabilities, on the 1/255 grid)."""
    total = None
    for run in runs:
        levels = np.load(run / "oof" / f"{image_id}.unet.npy").astype(np.float32)
        total = levels if total is None else total + levels
    assert total is not None
    return np.rint(total / len(runs)).astype(np.uint8)


def nested(runs: list[Path]):  # -> Evaluation
    """The nested pooled score of the mean of ``runs``' out-of-fold probabilities."""
    from spectraseg.align.cache import open_cache
    from spectraseg.crossval import level_histograms, nested_scores
    from spectraseg.evaluation.metrics import pixel_areas
    from spectraseg.runs import RunDir, read_config, read_cv

    cv, config = read_cv(RunDir.of(runs[0])), read_config(RunDir.of(runs[0]))
    assert cv is not None
    for other in runs[1:]:
        if sorted(read_cv(RunDir.of(other)).scenes) != sorted(cv.scenes):
            sys.exit(f"{other} holds other scenes than {runs[0]}: its predictions do not pair")
    cache = open_cache(config.data.cache)
    scenes = cv.scenes
    areas = pixel_areas(cache, config.data.root, scenes)
    hist = {i: level_histograms(cache, i, mean_levels(runs, i), areas[i]) for i in scenes}
    return nested_scores(hist, cv.folds, "average")[0]


def line(label: str, runs: list[Path]) -> str:
    ev = nested(runs)
    return f"{label:<60} nested {ev.mean:.4f}  " + " ".join(f"{v:.3f}" for v in ev.jaccard)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument("--pairs", action="store_true", help="also every pair of runs")
    args = p.parse_args()
    for run in args.runs:
        if not (run / "cv.json").is_file():
            sys.exit(f"{run} is not a finished cross-validated run (no cv.json)")
    warnings.simplefilter("ignore")
    for run in args.runs:
        print(line(run.name, [run]), flush=True)
    if args.pairs and len(args.runs) > 2:
        for a, b in itertools.combinations(args.runs, 2):
            print(line(f"{a.name} + {b.name}", [a, b]), flush=True)
    print(line(f"mean of {len(args.runs)}", args.runs), flush=True)


if __name__ == "__main__":
    main()
