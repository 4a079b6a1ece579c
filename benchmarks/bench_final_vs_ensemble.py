"""What a cross-validated run should ship for new regions: the average of its K fold models,
or one model trained on every scene, measured without touching the scenes it is scored on.

Run::

    .venv/bin/python benchmarks/bench_final_vs_ensemble.py --out runs/accuracy \\
        [--steps 1600] [--seeds 0 1] [--folds 4]

A cross-validated run (``spectraseg train --folds K``) can ship its K fold models (each
trained on the other folds' regions) averaged (``--ensemble``), or a final model trained on
every scene for the same number of steps (the default since this measurement), with
thresholds fitted on the pooled out-of-fold predictions either way. Neither can be scored
on the scenes it was trained on, so each outer fold of the real-data recipe's region folds
(``../shared/data/dstl-lite``) is held out in turn, and on the other folds' scenes (the
training set a user would have):

- **ensemble**: ``train --folds K-1`` on those scenes (a cross-validated run of its own: K-1
  fold models and thresholds fitted on their out-of-fold predictions); the held-out fold's
  scenes are predicted by the average of its K-1 models at those thresholds.
- **final**: one model trained on all of those scenes, which is exactly the outer
  cross-validated run's fold model (a U-Net-only run of the real-data recipe with the same
  steps and seed, ``OUT/{steps}_steps_unet_only_s{seed}``), at the same thresholds.

Both are scored on the held-out fold's scenes, intersections and unions pooled over all
scenes (the U-Net alone, as the real-data default). Printed per seed and candidate: the mean
and per-class Jaccard, and the outer run's own nested score (one fold model per scene,
thresholds fitted on the other folds: the demo's headline) for reference.

Every run here is U-Net only (no per-pixel partner: its fits and predictions would cost more
than 2-step trainings). Cost: (K-1) x K trainings for the inner runs plus K for the outer
run, each ``--steps`` steps: 35-40 minutes per seed at 1600 steps on the 2-core machine
with bfloat16 and nothing else running. Measured (docs/accuracy.md): seed 0 average 0.1248,
final 0.1324; seed 1 average 0.1245, final 0.1224. Runs
already complete in ``OUT`` are read back, so the script can be interrupted and rerun.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from bench_accuracy import (  # the script's own folder
    aligned_cache,
    recipe,
    run_args,
    run_one,
    run_path,
)
from spectraseg.runtime import tune_memory

tune_memory()


def inner_run(out: Path, cache: Path, outer: Path, k: int, steps: int, seed: int,
              folds: int) -> Path:  # fmt: skip
    """Outer fold ``k`` held out: a ``folds - 1``-fold run on the other folds' scenes."""
    from spectraseg.crossval import train_folds
    from spectraseg.runs import read_cv

    cv = read_cv(outer)
    assert cv is not None
    keep = [i for j, f in enumerate(cv.folds) if j != k for i in f]
    run = out / f"final_vs_ensemble_s{seed}" / f"outer{k + 1}"
    done = read_cv(run) if (run / "cv.json").is_file() else None
    if done is None or not done.scores:
        config = recipe(cache, steps, seed, ["pixel.enabled=false"])
        config = config.replace([f"data.scenes={json.dumps(keep)}"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            train_folds(None if done else config, run, folds - 1, resume=done is not None,
                        progress=False, final=False)  # fmt: skip
    return run


def outer_counts(inner: Path, final: Path, scenes: list[str]) -> dict[str, np.ndarray]:
    """TP/FP/FN ``(n, K, 3)`` of ``scenes`` for both candidates at the inner run's
    thresholds (fitted on the inner out-of-fold predictions, U-Net alone)."""
    from spectraseg.align.cache import open_cache
    from spectraseg.crossval import level_histograms
    from spectraseg.evaluation.metrics import pixel_areas
    from spectraseg.evaluation.thresholds import counts_at
    from spectraseg.features.patches import load_scene
    from spectraseg.inference.scene import PredictOptions, resolve_options, scene_levels
    from spectraseg.runs import load_model, read_thresholds

    tuned = read_thresholds(inner)
    assert tuned is not None
    out: dict[str, list[np.ndarray]] = {"ensemble": [], "final": []}
    for name, run in (("ensemble", inner), ("final", final)):
        model, config, stats = load_model(run, "latest", "cpu")
        assert stats is not None
        cache = open_cache(config.data.cache)
        areas = pixel_areas(cache, config.data.root, scenes)
        opts = resolve_options(PredictOptions(device="cpu"), config)
        for i in scenes:
            levels = scene_levels(model, load_scene(cache, i, stats, config.data.indices), opts)
            pos, neg = level_histograms(cache, i, levels, areas[i])
            out[name].append(counts_at(pos, neg, tuned.thresholds))
    return {name: np.stack(c) for name, c in out.items()}


def main() -> None:
    args = run_args(__doc__, 1600).parse_args()
    cache = aligned_cache(args.out)
    from spectraseg.evaluation.metrics import Evaluation
    from spectraseg.runs import read_cv

    name = f"{args.steps} steps unet only"
    only = [f"train.steps={args.steps}", "pixel.enabled=false"]
    for seed in args.seeds:
        scores = run_one(args.out, cache, name, only, args.steps, seed, args.folds)
        outer = run_path(args.out, name, seed)
        cv = read_cv(outer)
        assert cv is not None
        ids: list[str] = []
        counts: dict[str, list[np.ndarray]] = {"ensemble": [], "final": []}
        for k, held_out in enumerate(cv.folds):
            inner = inner_run(args.out, cache, outer, k, args.steps, seed, args.folds)
            got = outer_counts(inner, outer / cv.members[k], list(held_out))
            for c in counts:
                counts[c].append(got[c])
            ids.extend(held_out)
        print(f"seed {seed}, {args.steps} steps per model, U-Net alone, pooled raster Jaccard")
        for c, parts in counts.items():
            ev = Evaluation(tuple(ids), np.concatenate(parts), "raster")
            per_class = " ".join(f"{v:.3f}" for v in ev.jaccard)
            print(f"  {c:<9} {ev.mean:.4f}  per class: {per_class}", flush=True)
        print(
            f"  outer run nested (one fold model per scene, thresholds fitted on the other "
            f"folds: the demo's headline) {scores['nested']['mean']:.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
