"""Accuracy levers on real data, compared the way docs/accuracy.md asks: the same region
folds, a fixed number of optimizer steps per fold, several seeds per setting.

Run::

    .venv/bin/python benchmarks/bench_accuracy.py --out runs/accuracy \\
        [--steps 1000] [--seeds 0 1] [--folds 4] [--only NAME ...] [--set KEY=VALUE ...]

For each lever (:data:`LEVERS`: a name and the config overrides it adds to the real-data
demo's recipe) and seed, ``spectraseg.crossval.train_folds`` trains the folds of
``../shared/data/dstl-lite`` (aligned once into ``OUT/cache``) and scores every scene out
of fold. Printed per run and per lever (mean and spread over seeds): the nested pooled
raster mean Jaccard (the honest figure) and its per-class values, the plain one, and the
U-Net alone / per-pixel alone nested means. Runs already complete in ``OUT`` are read
back, so the script can be interrupted and rerun, and levers added later.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from spectraseg.runtime import tune_memory

tune_memory()

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dstl-lite"

LEVERS: dict[str, tuple[str, ...]] = {
    "recipe": (),
    "no pixel model": ("pixel.enabled=false",),
    "tuned blend": ('pixel.blend="tuned"',),
    "image statistics": ('data.norm="image"',),
    "tta": ("predict.tta=true",),
    "256 px patches": ("train.patch_size=256",),
    "rare share 0.25": ("train.rare_share=0.25",),
    "photometric 0.1": ("train.photometric=0.1",),
}
"""Levers tried: config overrides on top of the demo's real-data recipe."""


def recipe(cache: Path, steps: int, seed: int, extra: list[str]):  # -> Config
    """The real-data demo's config (pixel model, every available index) with a fixed
    step budget and ``extra`` overrides."""
    from spectraseg.align.cache import open_cache
    from spectraseg.config import Config
    from spectraseg.demo import DEMO_OVERRIDES, REAL_OVERRIDES
    from spectraseg.features.indices import available_indices, band_ratio_indices

    channels = open_cache(cache).channels(open_cache(cache).image_ids[0])
    names = available_indices(channels) + band_ratio_indices(channels)
    return Config().replace(
        [
            f"data.root={DATA}",
            f"data.cache={cache}",
            *DEMO_OVERRIDES,
            *REAL_OVERRIDES,
            f"data.indices={json.dumps(names)}",
            f"train.seed={seed}",
            "train.minutes=0",
            f"train.steps={steps}",
            "train.threads=2",
            *extra,
        ]
    )


def run_one(out: Path, cache: Path, name: str, extra: list[str], steps: int, seed: int,
            folds: int) -> dict:  # fmt: skip
    """One cross-validated run (read back when complete): its scores document."""
    from spectraseg.crossval import train_folds
    from spectraseg.runs import read_cv

    run = out / f"{name.replace(' ', '_')}_s{seed}"
    cv = read_cv(run) if (run / "cv.json").is_file() else None
    if cv is None or not cv.scores:
        config = recipe(cache, steps, seed, extra)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            train_folds(None if cv else config, run, folds, resume=cv is not None,
                        progress=False)  # fmt: skip
        print(f"  {name} seed {seed}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        cv = read_cv(run)
    assert cv is not None
    return dict(cv.scores)


def summary(name: str, docs: list[dict]) -> str:
    nested = np.array([d["nested"]["mean"] for d in docs])
    plain = np.array([d["plain"]["mean"] for d in docs])
    per_class = np.mean([d["nested"]["jaccard"] for d in docs], axis=0)
    models = docs[0].get("models_nested", {})
    alone = " ".join(
        f"{m} {np.mean([d['models_nested'][m]['mean'] for d in docs]):.3f}" for m in models
    )
    classes = " ".join(f"{v:.3f}" for v in per_class)
    return (
        f"{name:<18} nested {nested.mean():.4f} (seeds {', '.join(f'{v:.4f}' for v in nested)}; "
        f"spread {np.ptp(nested):.4f})  plain {plain.mean():.4f}  {alone}\n"
        f"{'':<18} per class (nested): {classes}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/accuracy"))
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps per fold")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--only", nargs="+", help="levers to run (default: all)")
    p.add_argument("--set", nargs="*", default=[], help="overrides for every lever")
    args = p.parse_args()
    if not (DATA / "grid_sizes.csv").is_file():
        sys.exit(f"real data not found at {DATA}")
    from spectraseg.align.fusion import align_dataset

    cache = args.out / "cache"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        align_dataset(DATA, cache, progress=False)
    for name in args.only or list(LEVERS):
        extra = [*LEVERS[name], *args.set]
        docs = [
            run_one(args.out, cache, name, extra, args.steps, s, args.folds) for s in args.seeds
        ]
        print(summary(name, docs), flush=True)


if __name__ == "__main__":
    main()
