"""Accuracy levers on real data, compared the way docs/accuracy.md asks: the same region
folds, a fixed number of optimizer steps per fold, several seeds per setting.

Run::

    .venv/bin/python benchmarks/bench_accuracy.py --out runs/accuracy \\
        [--steps 1000] [--seeds 0 1] [--folds 4] [--only NAME ...] [--set KEY=VALUE ...] \\
        [--tta]

For each lever (:data:`LEVERS`: a name and the config overrides it adds to the real-data
demo's recipe) and seed, ``spectraseg.crossval.train_folds`` trains the folds of
``../shared/data/dstl-lite`` (aligned once into ``OUT/cache``) and scores every scene out
of fold. Printed per lever (mean and spread over seeds), re-scored from the runs' out-of-fold
predictions with the current threshold rule: the nested pooled raster mean Jaccard of the
U-Net alone (the honest figure for the real-data default) and its per-class values, then
every decision rule's nested mean (per-pixel alone, blends, thresholds at the peak or at
the middle of wider plateaus); with ``--tta``, each run's nested mean with its held-out
scenes predicted again by the same fold models with and without test-time augmentation.
Runs already complete in ``OUT`` are read
back, so the script can be interrupted and rerun, and levers added later.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from spectraseg.runtime import tune_memory

tune_memory()

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dstl-lite"

UNET_1600 = ("train.steps=1600", "pixel.enabled=false")
PRECISE_BN = (*UNET_1600, "train.precise_bn=800")
"""The real-data demo's recipe since 2026-12-02 (its seed-0 run is the demo's own)."""
INDEX_NORM = (*PRECISE_BN, "data.index_norm=true")
"""The real-data demo's recipe from 2026-12-04: the index channels normalised like the
bands."""
EMA_TTA = (*INDEX_NORM, "train.ema=0.997", "predict.tta=true")
"""The real-data demo's recipe since the second run of 2026-12-04: the weights averaged over
about the last 330 steps, every prediction averaged over the 8 symmetries (``--tta`` scores
a run of "index norm + ema 0.997" with and without them, on the same fold models)."""

LEVERS: dict[str, tuple[str, ...]] = {
    "recipe": (),
    "image statistics": ('data.norm="image"',),
    "tta": ("predict.tta=true",),
    "256 px patches": ("train.patch_size=256",),
    "rare share 0.1": ("train.rare_share=0.1",),
    "rare + road, track": ("train.rare_classes=[2, 3, 4, 7, 8, 9, 10]",),
    "photometric 0.1": ("train.photometric=0.1",),
    # 1600 steps per fold is the demo's whole 20-minute training budget on 2 cores.
    "1600 steps": ("train.steps=1600",),
    "1600 steps + rare + road, track": (
        "train.steps=1600",
        "train.rare_classes=[2, 3, 4, 7, 8, 9, 10]",
    ),
    # Against "1600 steps" (the real-data demo's recipe since 2026-12-02):
    "1600 steps + image statistics": ("train.steps=1600", 'data.norm="image"'),
    "1600 steps + log jaccard": ("train.steps=1600", "loss.log_jaccard=true"),
    # bfloat16 autocast on CPU (train.amp, since 2026-12-02) makes steps 1.4x faster on the
    # 2-core machine: 2100 steps take the 20 minutes that 1600 float32 steps took. Runs
    # above were trained in float32; this one in bfloat16 (on a CPU with native bfloat16).
    "2100 steps (bfloat16)": ("train.steps=2100",),
    # The real-data demo's recipe before precise BN (U-Net alone, 1600 steps per fold,
    # bfloat16 where the CPU has it); bench_final_vs_ensemble.py trains the same runs. The
    # levers below pair with it (no per-pixel partner: half the time of the levers above).
    "1600 steps unet only": UNET_1600,
    "unet only + photometric 0.2": (*UNET_1600, "train.photometric=0.2"),
    # A region's band standard deviation is 5-12 % of its mean on dstl-lite: a gain of
    # exp(0.2) moves a band by 2-3 of them, exp(0.03) by about a third of one.
    "unet only + photometric 0.03": (*UNET_1600, "train.photometric=0.03"),
    "unet only + instance norm": (*UNET_1600, 'model.norm="instance"'),
    "unet only + ema 0.999": (*UNET_1600, "train.ema=0.999"),
    "unet only + depth 5": (*UNET_1600, "model.depth=5"),
    "unet only + log jaccard": (*UNET_1600, "loss.log_jaccard=true"),
    "unet only + dataset statistics": (*UNET_1600, 'data.norm="dataset"'),
    # The real-data demo's recipe since precise BN was adopted (bench_precise_bn.py measured
    # it on the "1600 steps unet only" runs' own weights; this trains it in the loop).
    "unet only + precise bn": PRECISE_BN,
    # Feature statistics of the first two encoder levels mixed between the batch's patches
    # (MixStyle, p = 0.5 as in its paper): other real patches' styles, not random gains.
    "precise bn + mixstyle": (*PRECISE_BN, "model.mixstyle=0.5"),
    # Fewer patches centred on the rare classes (structures, waterway, standing water,
    # vehicles, which score about 0 on held-out regions): more of the budget on the rest.
    "precise bn + rare share 0.2": (*PRECISE_BN, "train.rare_share=0.2"),
    "precise bn + dropout 0.3": (*PRECISE_BN, "model.dropout=0.3"),
    # Decoupled weight decay (AdamW, ConvNeXt's 0.05): the fold models fit their training
    # regions far better than new ones (bench_fit_gap.py: 0.357 against 0.131).
    "precise bn + weight decay 0.05": (*PRECISE_BN, "train.weight_decay=0.05"),
    # One set of statistics for every region (in cross-validation they include the held-out
    # scenes' pixels, so slightly optimistic against a new region at prediction).
    "precise bn + dataset statistics": (*PRECISE_BN, 'data.norm="dataset"'),
    # A narrower U-Net (0.56x the multiply-adds, 0.75x the step time on 2 cores): could an
    # average of two narrow ones (seed ensembles gain ~0.005-0.01) fit one recipe's budget?
    "precise bn + width 12": (*PRECISE_BN, "model.width=12"),
    # The learning rate was never compared under this protocol (Adam, 4 patches a step).
    "precise bn + lr 1e-3": (*PRECISE_BN, "train.lr=1e-3"),
    # The 11 index channels are appended unnormalised (within-scene sd 0.01-0.04 against
    # ~0.8 for the bands) and their scene means vary between scenes by 0.8-3.4x their
    # within-scene sd: do they carry region offsets more than ground?
    "precise bn + no indices": (*PRECISE_BN, "data.indices=[]"),
    # The same indices normalised like the bands, with their region's own statistics.
    "precise bn + index norm": INDEX_NORM,
    # Against "precise bn + index norm" (the real-data demo's recipe since 2026-12-04):
    # lr 1e-3 lost 0.010 against 3e-3 (above); is 3e-3 below the best for 1600 steps?
    "index norm + lr 6e-3": (*INDEX_NORM, "train.lr=6e-3"),
    # More context per patch at the same pixels per step (2 x 176^2 against 4 x 128^2):
    # trees and crops are judged from texture over tens of pixels.
    "index norm + 176 px patches, batch 2": (
        *INDEX_NORM,
        "train.patch_size=176",
        "train.batch_size=2",
    ),
    # Track fell with the index channels normalised (0.099 -> 0.070): half the patches
    # centred on rare classes with road and track among them.
    "index norm + rare + road, track": (
        *INDEX_NORM,
        "train.rare_classes=[2, 3, 4, 7, 8, 9, 10]",
    ),
    # Held-out scores swing with the seed (which region a model carries to) and averaging
    # two seeds' predictions gained 0.005: does an average of the weights along the last
    # ~330 steps (BatchNorm statistics then re-estimated on it by precise BN) gain some of
    # that for free? (EMA 0.999 without precise BN reached into the high-lr half: -0.025.)
    "index norm + ema 0.997": (*INDEX_NORM, "train.ema=0.997"),
    # The weight average with a higher floor of the cosine schedule, so that the averaged
    # weights differ (closer to SWA: an average over a phase of non-vanishing rate).
    "index norm + lr floor 0.1, ema 0.995": (
        *INDEX_NORM,
        "train.min_lr_ratio=0.1",
        "train.ema=0.995",
    ),
    # Adopted with test-time augmentation: the recipe for levers from here on.
    "ema + tta": EMA_TTA,
    # On top of the weight average (scored with --tta against its runs): a longer horizon
    # (about 500 steps), and BCE - log(soft Jaccard) (track up with it before).
    "index norm + ema 0.998": (*INDEX_NORM, "train.ema=0.998"),
    "index norm + ema 0.997 + log jaccard": (
        *INDEX_NORM,
        "train.ema=0.997",
        "loss.log_jaccard=true",
    ),
    # Capacity: width 12 lost 0.009 and 0.023 against width 16. Width 24: 1.8x the
    # time per step alone, 1.6-2.0x the training time of two runs at once.
    # Ten seeds: +0.0074 on the mean, nine pairs up and one down by 0.021; at 1600 steps over
    # the demo's training budget (docs/accuracy.md, "Capacity and scale"): see below.
    "ema + tta + width 24": (*EMA_TTA, "model.width=24"),
    # Wider within the demo's training budget: width 20 (about 1.4x the time per step of
    # width 16), or width 24 for three quarters of the steps (1200 per model). Seeds 0-3:
    # width 20 -0.0025 on the mean (not adopted); width 24 at 1200 steps +0.0031 (seeds 0-5
    # +0.0080), as width 24 at 1600 steps seed by seed: the demo's recipe since 2026-12-04.
    "ema + tta + width 20": (*EMA_TTA, "model.width=20"),
    "ema + tta + width 24, 1200 steps": (*EMA_TTA, "model.width=24", "train.steps=1200"),
    # Random magnification 0.78x-1.28x: the held-out regions' buildings and fields differ
    # in size from the training regions'. Seeds 0 and 1: -0.010, +0.001.
    "ema + tta + zoom 0.25": (*EMA_TTA, "train.zoom=0.25"),
}
"""Levers that need training: config overrides on top of the demo's real-data recipe. The
decision levers (the U-Net alone, the per-pixel model alone, a blend weight tuned per
class instead of the plain average) need no training: :func:`decision_levers` scores them
on every run's out-of-fold predictions."""


PLATEAUS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)
"""Threshold rules compared on every run: the peak (0) and the middle of each plateau."""


def decision_levers(run: Path, plateaus: tuple[float, ...] = PLATEAUS) -> dict[str, Any]:
    """One trained run under each decision rule, from its out-of-fold histograms (no
    retraining), with the current threshold rule: nested Evaluations of the U-Net alone
    (``unet``, the real-data default), the per-pixel model alone, the recipe's average
    blend and a per-class tuned blend; and of the U-Net alone with each of ``plateaus``
    (``unet plateau P``: thresholds at the peak, P = 0, or the middle of a wider plateau)."""
    from spectraseg.align.cache import open_cache
    from spectraseg.crossval import MODELS, nested_scores, run_histograms
    from spectraseg.runs import RunDir, read_config, read_cv

    rd = RunDir.of(run)
    cv, config = read_cv(rd), read_config(rd)
    assert cv is not None
    pixel = config.pixel.enabled
    scenes = cv.scenes
    hist = run_histograms(rd, open_cache(config.data.cache), scenes, config.data.root, pixel)
    out = {mode: nested_scores(hist, cv.folds, mode)[0] for mode in ("average", "tuned")}
    unet = MODELS["unet"] if pixel else "decided"
    if pixel:
        out.update(
            {name: nested_scores(hist, cv.folds, "average", w)[0] for name, w in MODELS.items()}
        )
    else:
        out["unet"] = out["average"]
    for p in plateaus:
        out[f"unet plateau {p:g}"] = nested_scores(hist, cv.folds, "average", unet, plateau=p)[0]
    return out


def recipe(cache: Path, steps: int, seed: int, extra: list[str]):  # -> Config
    """The real-data demo's config (every available index) with the per-pixel model, a
    fixed step budget and ``extra`` overrides."""
    from spectraseg.align.cache import open_cache
    from spectraseg.config import Config
    from spectraseg.demo import DEMO_OVERRIDES
    from spectraseg.features.indices import available_indices, band_ratio_indices

    channels = open_cache(cache).channels(open_cache(cache).image_ids[0])
    names = available_indices(channels) + band_ratio_indices(channels)
    return Config().replace(
        [
            f"data.root={DATA}",
            f"data.cache={cache}",
            *DEMO_OVERRIDES,
            # The per-pixel partner stays on here whatever the demo's default, so that every
            # run scores the U-Net alone, the per-pixel model alone and their blends.
            "pixel.enabled=true",
            f"data.indices={json.dumps(names)}",
            f"train.seed={seed}",
            "train.minutes=0",
            f"train.steps={steps}",
            "train.threads=2",
            *extra,
        ]
    )


def tta_lever(run: Path) -> dict[str, float]:
    """Nested means of the U-Net alone of one trained run, its held-out scenes predicted
    again with the 8 symmetries averaged (test-time augmentation), against without; and
    without, at thresholds fitted on the predictions with (``predict --no-tta`` on a run
    whose decisions were fitted with test-time augmentation)."""
    from cv_predictions import CVRun  # the script's own folder
    from spectraseg.crossval import nested_scores

    fr = CVRun.open(run)
    hists = {}
    for tta in (False, True):
        hists[tta] = {}
        for model, fold in fr.fold_models():
            hists[tta].update(fr.histograms(model, fold, tta=tta))
    folds = fr.cv.folds
    return {
        "no tta": nested_scores(hists[False], folds, "average")[0].mean,
        "tta": nested_scores(hists[True], folds, "average")[0].mean,
        "no tta, tta thresholds": nested_scores(
            hists[False], folds, "average", decide_on=hists[True]
        )[0].mean,
    }


def run_path(out: Path, name: str, seed: int) -> Path:
    return out / f"{name.replace(' ', '_')}_s{seed}"


def run_one(out: Path, cache: Path, name: str, extra: list[str], steps: int, seed: int,
            folds: int) -> dict:  # fmt: skip
    """One cross-validated run (read back when complete): its scores document."""
    from spectraseg.crossval import train_folds
    from spectraseg.runs import read_cv

    run = run_path(out, name, seed)
    cv = read_cv(run) if (run / "cv.json").is_file() else None
    if cv is None or not cv.scores:
        config = recipe(cache, steps, seed, extra)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # The nested score is of the fold models: no final model is trained.
            train_folds(None if cv else config, run, folds, resume=cv is not None,
                        progress=False, final=False)  # fmt: skip
        print(f"  {name} seed {seed}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        cv = read_cv(run)
    assert cv is not None
    return dict(cv.scores)


def summary(name: str, rules: list[dict[str, Any]]) -> str:
    """The lever's U-Net alone, nested, under the current threshold rule (mean and spread
    over seeds, per class), then every decision rule's mean over seeds."""
    nested = np.array([r["unet"].mean for r in rules])
    per_class = " ".join(f"{v:.3f}" for v in np.mean([r["unet"].jaccard for r in rules], 0))
    lines = [
        f"{name:<18} U-Net alone nested {nested.mean():.4f} "
        f"(seeds {', '.join(f'{v:.4f}' for v in nested)}; spread {np.ptp(nested):.4f})",
        f"{'':<18} per class: {per_class}",
    ]
    for rule in rules[0]:
        values = [r[rule].mean for r in rules]
        lines.append(
            f"{'':<18} decisions {rule:<16} nested {np.mean(values):.4f} "
            f"({', '.join(f'{v:.4f}' for v in values)})"
        )
    return "\n".join(lines)


def run_args(doc: str, steps: int) -> argparse.ArgumentParser:
    """The options every real-data accuracy benchmark takes (``steps``: the default)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/accuracy"))
    p.add_argument("--steps", type=int, default=steps, help="optimizer steps per model")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--folds", type=int, default=4)
    return p


def aligned_cache(out: Path) -> Path:
    """``OUT/cache``: dstl-lite aligned once (exits when the real data is absent)."""
    if not (DATA / "grid_sizes.csv").is_file():
        sys.exit(f"real data not found at {DATA}")
    from spectraseg.align.fusion import align_dataset

    cache = out / "cache"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        align_dataset(DATA, cache, progress=False)
    return cache


def main() -> None:
    p = run_args(__doc__, 1000)
    p.add_argument("--only", nargs="+", help="levers to run (default: all)")
    p.add_argument("--set", nargs="*", default=[], help="overrides for every lever")
    p.add_argument(
        "--tta",
        action="store_true",
        help="also predict each run's held-out scenes again with and without the 8 "
        "symmetries averaged (the same fold models) and print both nested means",
    )
    args = p.parse_args()
    cache = aligned_cache(args.out)
    for name in args.only or list(LEVERS):
        extra = [*LEVERS[name], *args.set]
        for s in args.seeds:
            run_one(args.out, cache, name, extra, args.steps, s, args.folds)
        rules = [decision_levers(run_path(args.out, name, s), PLATEAUS) for s in args.seeds]
        print(summary(name, rules), flush=True)
        for s in args.seeds if args.tta else ():
            scores = tta_lever(run_path(args.out, name, s))
            print(f"{'':<18} seed {s}: without tta {scores['no tta']:.4f}, "
                  f"with tta {scores['tta']:.4f}, without tta at thresholds fitted with "
                  f"{scores['no tta, tta thresholds']:.4f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
