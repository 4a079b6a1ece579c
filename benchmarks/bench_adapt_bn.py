"""Test-time BatchNorm adaptation (AdaBN) to a new region, measured nested on trained runs.

Run::

    .venv/bin/python benchmarks/bench_adapt_bn.py RUN [RUN ...]

A new region's scenes are normalised with that region's own statistics, but every layer
after the first still normalises with BatchNorm statistics of the training regions. AdaBN
re-estimates them on the new region's scenes (unsupervised, like region statistics): for
each fold of a cross-validated U-Net-only run (``spectraseg train --folds K``, e.g. the runs
of ``bench_accuracy.py``'s "1600 steps unet only"), the fold model's running means and
variances are replaced by ``alpha`` x those of the held-out scenes' 256 px tiles (per region
group) + ``(1 - alpha)`` x the trained ones, every scene is predicted again, and the run is
scored nested as the demo scores it (thresholds fitted on the other folds' adapted
predictions). ``alpha`` 0 is the run as trained. About 3 minutes per run on 2 cores.

Measured on dstl-lite (docs/accuracy.md): it lowers the nested score (crops most), so
prediction does not adapt BatchNorm.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import torch

from spectraseg.runtime import tune_memory

tune_memory()


def adapted(model: torch.nn.Module, images: list[np.ndarray], alpha: float,
            tile: int = 256, batch: int = 4) -> torch.nn.Module:  # fmt: skip
    """A copy of ``model`` whose BatchNorm running statistics are ``alpha`` x those of
    ``images``' tiles + (1 - alpha) x the trained ones."""
    m = copy.deepcopy(model)
    bns = [b for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    old = [(b.running_mean.clone(), b.running_var.clone()) for b in bns]
    for b in bns:
        b.reset_running_stats()
        b.momentum = None
    m.train()
    tiles = []
    for img in images:
        h, w = img.shape[1:]
        for y in range(0, h - tile + 1, tile):
            for x in range(0, w - tile + 1, tile):
                tiles.append(np.ascontiguousarray(img[:, y : y + tile, x : x + tile]))
    with torch.no_grad():
        for i in range(0, len(tiles), batch):
            x = torch.from_numpy(np.stack(tiles[i : i + batch]))
            m(x.to(memory_format=torch.channels_last))
    for b, (mu, var) in zip(bns, old, strict=True):
        b.running_mean.mul_(alpha).add_(mu, alpha=1 - alpha)
        b.running_var.mul_(alpha).add_(var, alpha=1 - alpha)
    m.eval()
    return m


def adapted_histograms(run: Path, alphas: tuple[float, ...]) -> tuple[dict, list]:
    """Per ``alpha``, every scene's class histograms predicted by its fold model adapted to
    the scene's region group; and the run's folds."""
    from cv_predictions import CVRun  # the script's own folder
    from spectraseg.features.split import split_group

    fr = CVRun.open(run)
    hist: dict[float, dict] = {a: {} for a in alphas}
    for model, fold in fr.fold_models():
        groups: dict[str, list[str]] = {}
        for i in fold:
            groups.setdefault(split_group(i), []).append(i)
        for ids in groups.values():
            images = [fr.image(i) for i in ids]
            for a in alphas:
                m = adapted(model, images, a) if a else model
                hist[a].update(fr.histograms(m, ids))
    return hist, fr.cv.folds


def main() -> None:
    from spectraseg.crossval import nested_scores

    alphas = (0.0, 0.5, 1.0)
    for arg in sys.argv[1:]:
        hist, folds = adapted_histograms(Path(arg), alphas)
        for a in alphas:
            ev = nested_scores(hist[a], folds, "average")[0]
            per = " ".join(f"{v:.3f}" for v in ev.jaccard)
            print(f"{arg} alpha {a}: nested {ev.mean:.4f}  {per}", flush=True)


if __name__ == "__main__":
    main()
