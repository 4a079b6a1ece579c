"""BatchNorm statistics re-estimated after training (``train.precise_bn``), measured nested.

Run::

    .venv/bin/python benchmarks/bench_precise_bn.py RUN [RUN ...]

For each fold model of a cross-validated run trained without ``train.precise_bn`` (e.g. the
runs of ``bench_accuracy.py``'s "1600 steps unet only"), the BatchNorm running statistics
are re-estimated with the weights fixed (:func:`spectraseg.training.batchnorm.recalibrate`)
on patches of the fold's training scenes, drawn as listed in :data:`VARIANTS`; the held-out
scenes are predicted again and the run is scored nested as the demo scores it (thresholds
fitted on the other folds' predictions). This is what training with ``train.precise_bn``
does after its last step, so no retraining is needed to compare. About 10 minutes per run
on 2 cores.

Measured on dstl-lite (docs/accuracy.md): uniform patches raise the nested score in both
seeds; class-centred ones (the training sampler's) do not.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from spectraseg.runtime import tune_memory

tune_memory()

VARIANTS = (
    # name, patches, patch side, rare-class share, sampler seed
    ("training sampler, 800 x 128 px", 800, 128, None, 123),
    ("uniform, 800 x 128 px", 800, 128, 0.0, 7),
    ("uniform, 800 x 128 px, another stream", 800, 128, 0.0, 123),
    ("uniform, 3200 x 128 px", 3200, 128, 0.0, 123),
    ("uniform, 400 x 256 px", 400, 256, 0.0, 7),
)
"""Which patches the statistics are re-estimated on (``None``: the run's ``rare_share``)."""


def batches(dataset, n: int, size: int = 8):
    """``n`` items of ``dataset`` as ``(size, C, S, S)`` image batches."""
    for i in range(0, n, size):
        yield torch.stack([dataset[j]["image"] for j in range(i, min(i + size, n))])


def main() -> None:
    from cv_predictions import CVRun  # the script's own folder
    from spectraseg.crossval import nested_scores
    from spectraseg.features.patches import PatchDataset
    from spectraseg.training.batchnorm import recalibrate
    from spectraseg.training.data import rare_classes

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    args = p.parse_args()
    cpu = torch.device("cpu")
    for run in args.runs:
        fr = CVRun.open(run)
        t, schema = fr.config.train, fr.cache.schema
        hist: dict[str, dict] = {"as trained": {}, **{v[0]: {} for v in VARIANTS}}
        for model, fold in fr.fold_models():
            hist["as trained"].update(fr.histograms(model, fold))
            train = [i for i in fr.scenes if i not in fold]
            for name, n, side, share, seed in VARIANTS:
                ds = PatchDataset(
                    fr.cache, train, fr.stats, size=side, length=n, seed=seed,
                    rare_share=t.rare_share if share is None else share,
                    rare_classes=rare_classes(fr.config, len(schema), schema.is_dstl),
                    indices=fr.config.data.indices,
                )  # fmt: skip
                trained = {k: v.clone() for k, v in model.state_dict().items()}
                recalibrate(model, batches(ds, n), cpu)
                hist[name].update(fr.histograms(model, fold))
                model.load_state_dict(trained)
        for name, h in hist.items():
            ev = nested_scores(h, fr.cv.folds, "average")[0]
            per = " ".join(f"{v:.3f}" for v in ev.jaccard)
            print(f"{run} {name}: nested {ev.mean:.4f}  {per}", flush=True)


if __name__ == "__main__":
    main()
