"""How well each fold model fits the regions it trained on, against the regions it never saw.

Run::

    .venv/bin/python benchmarks/bench_fit_gap.py RUN [RUN ...]

For each fold model of a cross-validated run (``spectraseg train --folds K``, e.g. the runs
of ``bench_accuracy.py``'s "1600 steps unet only"), its training scenes and its held-out
scenes are predicted and scored with the best threshold per class on each set (an oracle on
both sides, so that thresholds do not enter the comparison): pooled raster Jaccard, per
class and the mean of the 10. A class far better on the training regions than on the
held-out ones is one the model learned but does not carry to a new region (a regulariser
or more regions are the levers); a class poor on both is one it did not learn (capacity,
resolution, steps). About 2 minutes per run on 2 cores.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from spectraseg.runtime import tune_memory

tune_memory()


def oracle(hist: dict) -> np.ndarray:
    """Per class, the best pooled Jaccard over the threshold grid, float64 ``(10,)``."""
    from spectraseg.evaluation.thresholds import jaccard_curves

    pos = sum(p for p, _ in hist.values())[0]
    neg = sum(n for _, n in hist.values())[0]
    return jaccard_curves(pos, neg).max(1)


def fit_gap(run: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Per fold: its name, oracle Jaccard on its training scenes and on its held-out ones."""
    from cv_predictions import CVRun  # the script's own folder

    fr = CVRun.open(run)
    rows = []
    for k, (model, fold) in enumerate(fr.fold_models(), start=1):
        train = [i for i in fr.scenes if i not in fold]
        rows.append(
            (f"fold {k}", oracle(fr.histograms(model, train)), oracle(fr.histograms(model, fold)))
        )
    return rows


def main() -> None:
    for arg in sys.argv[1:]:
        rows = fit_gap(Path(arg))
        print(arg)
        for name, train, held in rows:
            for side, j in (("training", train), ("held out", held)):
                print(f"  {name} {side}: mean {j.mean():.3f}  " + " ".join(f"{v:.2f}" for v in j))
        train = np.mean([r[1] for r in rows], axis=0)
        held = np.mean([r[2] for r in rows], axis=0)
        print(
            f"  mean of folds, training: {train.mean():.3f}  " + " ".join(f"{v:.2f}" for v in train)
        )
        print(
            f"  mean of folds, held out: {held.mean():.3f}  " + " ".join(f"{v:.2f}" for v in held),
            flush=True,
        )


if __name__ == "__main__":
    main()
