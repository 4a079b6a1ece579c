"""The whole pipeline in one call: data -> register and fuse -> statistics -> train ->
predict held-out scenes -> polygons -> evaluate -> submission -> report.

Layout of ``OUT`` (``spectraseg demo --out OUT``)::

    OUT/data/            the synthetic dataset (only without --data)
    OUT/cache/           fused stacks, shifts.csv, masks (spectraseg align)
    OUT/run/             the training run (config.toml, stats.json, checkpoints, metrics,
                         thresholds.json); usable with ``spectraseg predict --run OUT/run``
    OUT/pred/            predictions of the held-out (test) scenes (spectraseg predict)
    OUT/submission.csv   rows in sample_submission.csv order (held-out scenes filled in)
    OUT/report/          report.json, report.html and its PNGs
    OUT/demo.json        what was run: split, timings, scores

Scenes are split by whole region groups (:func:`spectraseg.features.split.split_scenes`) into
training, validation (best checkpoint and per-class thresholds) and test scenes (the
report's scores), so nothing reported was seen while training or tuning.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from spectraseg import CLASS_NAMES
from spectraseg.align.cache import SHIFTS, open_cache, read_shifts
from spectraseg.align.fusion import align_dataset
from spectraseg.align.masks import build_masks, mask_path
from spectraseg.config import Config, from_dict, to_dict
from spectraseg.crossval import CVResult, oof_levels, train_folds
from spectraseg.data.dstl import PREDICTIONS_CSV, Dataset, open_dataset, read_predictions
from spectraseg.data.files import write_text_atomic
from spectraseg.data.geometry import rasterize_classes
from spectraseg.data.synth import synthesize
from spectraseg.errors import DataError
from spectraseg.evaluation.levels import blend_levels, threshold_masks
from spectraseg.evaluation.metrics import Evaluation, evaluate_masks, evaluate_polygons
from spectraseg.features.indices import available_indices, band_ratio_indices
from spectraseg.features.split import split_three
from spectraseg.inference.outputs import scene_paths, write_predictions_csv, write_scene_outputs
from spectraseg.inference.pipeline import predict_run
from spectraseg.inference.scene import PredictOptions, levels_to_polygons, resolve_options
from spectraseg.report import SceneView, to_display, write_report
from spectraseg.runs import RunDir, read_config, read_thresholds
from spectraseg.submission import write_submission
from spectraseg.training.loop import train


class SynthDefaults(TypedDict):
    """The synthetic dataset the demo makes: scene count, (height, width) and the optimizer
    steps it trains for."""

    scenes: int
    size: tuple[int, int]
    steps: int


SYNTH_DEFAULTS: SynthDefaults = {"scenes": 16, "size": (448, 448), "steps": 2000}
"""The embedded synthetic default: small enough for 10 minutes on 2 CPU cores. A fixed
number of steps (not minutes) so that the same command gives the same numbers on the same
platform however busy the machine; 2000 steps took 5.6 minutes of training in bfloat16 (5.7
for the whole demo; 6.2 and 6.6 in float32) on the 2-core development machine (README)."""

REAL_STEPS = 6000
"""Default training budget on real data, all models together: 1200 optimizer steps for each
of the 4 folds and for the final model (:data:`spectraseg.crossval.FINAL`), at width 24
(:data:`REAL_OVERRIDES`; since 2026-12-04: three quarters of width 16's 1600 steps, which
is what pays for the wider model). The figures below are of width 16 at 1600 steps. The 4
folds took about 18 minutes of training and out-of-fold prediction on 2 CPU cores in
bfloat16 on a busy day, 9 on a quiet one (19 on a slower 2-core Xeon, quiet, 2026-12-04; 22
in float32, on CPUs without native bfloat16). 2100 bfloat16 steps per fold, the same 20
minutes as 1600 float32 ones, scored no better (seed 0: 0.124 against
0.127). Against 1000 steps per fold, on the same folds (nested pooled mean Jaccard of the
U-Net alone, thresholds at the middle of their plateau): 0.127 and 0.121 against 0.110 and
0.106 for seeds 0 and 1, a gain (+0.014) larger than either setting's seed spread
(docs/accuracy.md). A fixed count, not minutes, so the demo's score is the table's (seed 0)
and the same on every run."""

REAL_FOLDS = 4
"""Cross-validation folds on real data: every scene is scored by a model that never saw its
region, so the score covers all scenes (one small split is too noisy on 20 scenes)."""

REAL_OVERRIDES: tuple[str, ...] = (
    "pixel.enabled=false",
    "train.precise_bn=800",
    "data.index_norm=true",
    "train.ema=0.997",
    "predict.tta=true",
    "model.width=24",
)
"""On real data the U-Net alone: with the decisions fitted on every scene's out-of-fold
prediction, it beat the per-pixel model and every blend of the two on dstl-lite (nested
pooled mean Jaccard, same folds, 1000 steps per fold, seeds 0, 1 and 2: U-Net alone 0.110,
0.106 and 0.116, plain average 0.083, 0.078 and 0.083, per-class tuned blend 0.107, 0.102
and 0.110, per-pixel alone 0.067; ``benchmarks/bench_accuracy.py``, docs/accuracy.md). Spectral
indices are added from what the products allow
(:func:`spectraseg.features.indices.available_indices`), with the normalised differences of
neighbouring bands (:func:`spectraseg.features.indices.band_ratio_indices`).

Each model's BatchNorm statistics are re-estimated after its last step on 800 patches drawn
uniformly over its training scenes (``train.precise_bn``, about 10 s): on the demo's own
runs the nested score rose in both seeds, 0.1321 -> 0.1410 and 0.1245 -> 0.1290
(``benchmarks/bench_precise_bn.py``), a gain about the size of the seed spread but the same
sign in both seeds and for every patch stream and count tried.

The index channels are normalised like the bands, with their region's own statistics
(``data.index_norm``): as computed they are small channels (within-scene sd 0.01-0.04)
dominated by offsets between scenes. Paired with the recipe on the same folds (1600 steps
per fold, bfloat16, nested): 0.1322 -> 0.1409, 0.1375 -> 0.1381, 0.1253 -> 0.1509 for
seeds 0-2 (mean 0.1317 -> 0.1433; road 0.022 -> 0.123, trees 0.279 -> 0.335;
``benchmarks/bench_accuracy.py``, docs/accuracy.md).

Each model is the average of its weights over about its last 330 steps (``train.ema``,
BatchNorm statistics then re-estimated on it by precise BN), and every prediction averages
the 8 symmetries of the square (``predict.tta``: out-of-fold predictions, so the thresholds
are fitted on what ``predict`` computes). Paired on the same folds and machine (nested, seeds
0-4): the average 0.1431 -> 0.1457, 0.1394 -> 0.1412, 0.1315 -> 0.1344, 0.1597 -> 0.1585,
0.1185 -> 0.1210 (+0.0017 on the mean); test-time augmentation, on the same fold models,
+0.0005 to +0.0044 in all ten runs (both settings, five seeds); together 0.1384 -> 0.1426
(+0.006, +0.005, +0.003, +0.0015, +0.005). The price is about 5 times the prediction time
(README).

The U-Net has width 24 (since 2026-12-04; the library's default stays 16): at 1600 steps
per model it scored 0.1485 against width 16's 0.1412 over ten paired seeds (+0.0074, nine
pairs up, the seeds spread half as much) but took about twice the training time; at 1200
steps (:data:`REAL_STEPS`) it scores the same as at 1600 seed by seed (0.1505 against 0.1494
over seeds 0-5, largest difference 0.006) for about 1.35x width 16's training time, inside
the demo's 20 minutes. Width 20 at 1600 steps: -0.0025 over four seeds (docs/accuracy.md,
"Capacity and scale")."""

# Training settings of the demo on top of configs/default.toml; users add --set overrides.
DEMO_OVERRIDES: tuple[str, ...] = (
    "train.steps=0",
    "train.epochs=1000",
    "train.steps_per_epoch=60",
)


@dataclass(frozen=True)
class DemoSettings:
    """What ``spectraseg demo`` runs (CLI flags map one to one)."""

    out: Path
    data: Path | None = None
    """A DSTL-layout dataset; None synthesizes one into ``OUT/data``."""
    scenes: int = int(SYNTH_DEFAULTS["scenes"])
    size: tuple[int, int] = SYNTH_DEFAULTS["size"]
    regions: int | None = None
    seed: int = 0
    minutes: float | None = None
    """Training time budget (all models together) instead of ``steps``."""
    steps: int | None = None
    """Optimizer steps (all models together: the folds and the final model of a
    cross-validated run); None: 2000 on synthetic data, 6000 on real."""
    test_fraction: float = 0.2
    val_fraction: float = 0.2
    test_scenes: tuple[str, ...] = ()
    val_scenes: tuple[str, ...] = ()
    folds: int | None = None
    """Cross-validation folds by region; None: 1 (one split) on synthetic data, 4 on real."""
    workers: int = 0
    overrides: tuple[str, ...] = ()
    progress: bool = True


@dataclass
class DemoResult:
    """Scores and where everything went."""

    out: Path
    evaluation: dict[str, Any]
    report: Path
    split: dict[str, list[str]]
    timings: dict[str, float] = field(default_factory=dict)


def _log(msg: str) -> None:
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


def build_config(
    settings: DemoSettings,
    root: Path,
    cache: Path,
    scenes: Sequence[str],
    val_ids: Sequence[str],
    budget: tuple[float, int],
    presets: Sequence[str] = (),
) -> Config:
    """The run's config: defaults, the demo's settings and ``presets``, then the user's
    overrides. ``budget``: ``(minutes, steps)``; steps > 0 fix the run's length, else the
    minutes stop it."""
    raw = to_dict(from_dict({}))
    raw["data"].update(
        root=str(root), cache=str(cache), scenes=list(scenes), val_scenes=list(val_ids)
    )
    minutes, steps = budget
    raw["train"].update(minutes=float(minutes), seed=settings.seed)
    fixed = (f"train.steps={steps}", "train.minutes=0") if steps > 0 else ()
    config = from_dict(raw).replace((*DEMO_OVERRIDES, *fixed, *presets))
    return config.replace(settings.overrides)


def _stage(timings: dict[str, float], name: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` as the demo stage ``name``: logged on stderr, its seconds summed into
    ``timings`` (over folds)."""
    _log(f"{name} ...")
    t0 = time.perf_counter()
    out = fn()
    took = time.perf_counter() - t0
    timings[name] = round(timings.get(name, 0.0) + took, 2)  # summed over folds
    _log(f"{name} done in {took:.1f} s")
    return out


Plan = tuple[list[str], list[str], list[str]]
"""``(train, validation, test)`` scenes of one fold."""


@dataclass
class _Demo:
    """What the stages of one demo share."""

    settings: DemoSettings
    out: Path
    root: Path
    ds: Dataset
    labelled: list[str]
    cache_dir: Path
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def synthetic(self) -> bool:
        return self.settings.data is None

    def stage(self, name: str, fn: Callable[[], Any]) -> Any:
        return _stage(self.timings, name, fn)


def _open_data(settings: DemoSettings, out: Path, timings: dict[str, float]) -> _Demo:
    """The dataset: synthesized into ``OUT/data`` without ``--data``; at least 3 labelled
    scenes."""
    root = out / "data" if settings.data is None else Path(settings.data)
    if settings.data is None:
        # Test, validation and training each take whole regions: at least three.
        regions = settings.regions or min(settings.scenes, max(3, math.ceil(settings.scenes / 4)))
        _stage(
            timings,
            "synthesize",
            lambda: synthesize(
                root, settings.scenes, settings.size, settings.seed, regions=regions,
                progress=settings.progress,
            ),
        )  # fmt: skip
    ds = open_dataset(root)
    labelled = ds.labelled_ids
    if len(labelled) < 3:
        raise DataError(f"{root} has {len(labelled)} labelled scene(s); the demo needs at least 3")
    return _Demo(settings, out, root, ds, labelled, out / "cache", timings)


def _align(demo: _Demo) -> None:
    """Register, fuse and rasterise the labels of every labelled scene into ``OUT/cache``."""
    s = demo.settings
    report = demo.stage(
        "align",
        lambda: align_dataset(
            demo.root, demo.cache_dir, demo.labelled, workers=s.workers or None,
            progress=s.progress,
        ),
    )  # fmt: skip
    if report.failed:
        reasons = "; ".join(f"{x.image_id}: {x.reason}" for x in report.failed)
        raise DataError(f"registration failed for {len(report.failed)} scene(s): {reasons}")
    cache = open_cache(demo.cache_dir)
    demo.stage("masks", lambda: build_masks(cache, demo.root, demo.labelled, progress=s.progress))


def _folds(demo: _Demo) -> int:
    """``--folds``, else one split on synthetic data and ``REAL_FOLDS`` on real data."""
    return demo.settings.folds or (1 if demo.synthetic else REAL_FOLDS)


def _budget(demo: _Demo, folds: int = 1) -> tuple[float, int]:
    """``(minutes, steps)`` of one of ``folds`` models sharing the demo's training budget:
    ``--minutes``, else ``--steps``, else :data:`SYNTH_DEFAULTS` or :data:`REAL_STEPS`."""
    s = demo.settings
    if s.minutes is not None:
        return s.minutes / folds, 0
    steps = s.steps or (SYNTH_DEFAULTS["steps"] if demo.synthetic else REAL_STEPS)
    return 0.0, max(1, steps // folds)


def _presets(demo: _Demo) -> list[str]:
    """Real data: the pixel model and every spectral index the products allow."""
    if demo.synthetic:
        return []
    channels = open_cache(demo.cache_dir).channels(demo.labelled[0])
    names = available_indices(channels) + band_ratio_indices(channels)
    return [*REAL_OVERRIDES, f"data.indices={json.dumps(names)}"]


@dataclass
class _Outcome:
    """What training and predicting produced, whichever the protocol."""

    plans: list[Plan]
    pred: dict[str, dict[int, Any]]
    """Polygons of every test scene."""
    models: dict[str, Evaluation]
    """Raster scores of the U-Net alone, the per-pixel model alone and their blend."""
    history: list[dict[str, Any]]
    """The first run's metric rows."""
    steps: int
    seconds: float
    notes: dict[str, Any] = field(default_factory=dict)


def _one_split(demo: _Demo, presets: Sequence[str]) -> _Outcome:
    """Train on training + validation regions, predict the held-out test region(s)."""
    s = demo.settings
    val_arg = list(s.val_scenes) or s.val_fraction
    test_arg = list(s.test_scenes) or s.test_fraction
    train_ids, val_ids, test_ids = split_three(demo.labelled, test_arg, val_arg, s.seed)
    sizes = f"{len(train_ids)} train, {len(val_ids)} validation, {len(test_ids)} test scenes"
    _log(f"split: {sizes}")
    config = build_config(
        s, demo.root, demo.cache_dir, train_ids + val_ids, val_ids, _budget(demo), presets
    )
    run_dir, pred_dir = demo.out / "run", demo.out / "pred"
    resume = RunDir.of(run_dir).latest.is_file()
    if resume:
        _log(f"resuming the run in {run_dir}")
    result = demo.stage(
        "train",
        lambda: train(None if resume else config, run_dir, resume=resume, progress=s.progress),
    )
    if result.interrupted:
        raise KeyboardInterrupt
    demo.stage(
        "predict",
        lambda: predict_run(
            run_dir, demo.root, pred_dir, image_ids=test_ids, workers=s.workers,
            cache_dir=demo.cache_dir, options=PredictOptions(sources=True), progress=s.progress,
        ),
    )  # fmt: skip
    models = demo.stage(
        "compare", lambda: compare_models(run_dir, pred_dir, demo.cache_dir, test_ids, demo.ds)
    )
    pred = read_predictions(pred_dir / PREDICTIONS_CSV)
    plans = [(train_ids, val_ids, test_ids)]
    return _Outcome(plans, pred, models, result.history, result.steps, result.seconds)


def _cross_validated(demo: _Demo, presets: Sequence[str]) -> _Outcome:
    """K-fold cross-validation by region (:func:`spectraseg.crossval.train_folds`): every
    scene predicted out of fold, scored with the decisions fitted on the other folds."""
    s, k = demo.settings, _folds(demo)
    # The budget is shared by the k fold models and the final model.
    config = build_config(
        s, demo.root, demo.cache_dir, demo.labelled, [], _budget(demo, k + 1), presets
    )
    run = RunDir.of(demo.out / "run")
    resume = run.cv.is_file()
    if resume:
        _log(f"resuming the cross-validated run in {run.root}")
    result: CVResult = demo.stage(
        "train",
        lambda: train_folds(None if resume else config, run.root, k, resume, s.progress),
    )
    config = read_config(run)  # the run's own when resumed
    pred = demo.stage("polygons", lambda: _nested_polygons(demo, run, result, config))
    history = json.loads((run.root / "folds" / "1" / "metrics.json").read_text())["epochs"]
    plans: list[Plan] = [
        ([i for f in result.folds if f is not t for i in f], [], t) for t in result.folds
    ]
    models = {**result.models, "blend": result.nested} if result.models else {}
    steps = sum(result.steps)
    notes = {"cross-validation (raster, pooled)": {
        "nested mean": round(result.nested.mean, 4), "plain mean": round(result.plain.mean, 4),
    }}  # fmt: skip
    return _Outcome(plans, pred, models, history, steps, result.seconds, notes)


def _nested_polygons(
    demo: _Demo, run: RunDir, result: CVResult, config: Config
) -> dict[str, dict[int, Any]]:
    """Every scene's out-of-fold levels at its fold's nested decisions, vectorised and
    written to ``OUT/pred`` as ``spectraseg predict`` writes a prediction directory."""
    out = demo.out / "pred"
    options = resolve_options(PredictOptions(), config, here=False)
    min_area = dict(enumerate(config.predict.min_area, start=1))
    pred: dict[str, dict[int, Any]] = {}
    for fold, decided in zip(result.folds, result.fold_decisions, strict=True):
        for image_id in fold:
            levels = oof_levels(run, image_id, decided["blend"])
            xmax, ymin = demo.ds.grid_sizes[image_id]
            thresholds = decided["thresholds"]
            polygons = levels_to_polygons(levels, xmax, ymin, thresholds, min_area, options)
            write_scene_outputs(out, image_id, levels, polygons, xmax, ymin, thresholds)
            pred[image_id] = dict(polygons)
    write_predictions_csv(out, sorted(pred))
    return pred


def _shifts_doc(demo: _Demo) -> list[dict[str, Any]]:
    """The estimated shifts of the demo's scenes, for the report."""
    path = demo.cache_dir / SHIFTS
    keep = set(demo.labelled)
    return [
        {
            "image_id": r.image_id,
            "product": r.product,
            "dx": r.dx,
            "dy": r.dy,
            "corr": None if not math.isfinite(r.corr) else r.corr,
            "method": r.method,
        }
        for r in (read_shifts(path) if path.is_file() else [])
        if r.image_id in keep
    ]


def _split_doc(plans: Sequence[Plan]) -> dict[str, Any]:
    if len(plans) == 1:
        train_ids, val_ids, test_ids = plans[0]
        return {"train": train_ids, "validation": val_ids, "test": test_ids}
    return {
        "test": sorted(i for _, _, c in plans for i in c),
        "folds": [{"train": a, "validation": b, "test": c} for a, b, c in plans],
    }


def _extra(demo: _Demo, outcome: _Outcome, models: dict[str, Any]) -> dict[str, Any]:
    """The report's run facts: data, protocol, budget, split, timings, model comparison."""
    plans = outcome.plans
    test_all = sorted(i for _, _, c in plans for i in c)
    extra: dict[str, Any] = {
        "data": "synthetic" if demo.synthetic else str(demo.root),
        "protocol": (
            "one split by region"
            if len(plans) == 1
            else f"{len(plans)}-fold cross-validation by region: every scene predicted out of "
            "fold, thresholds fitted on the other folds (nested), pooled over all scenes"
        ),
        "test scenes": ", ".join(test_all),
        "training minutes": round(outcome.seconds / 60, 2),
        "optimizer steps": outcome.steps,
        "total seconds": demo.timings["total"],
        "split": _split_doc(plans),
        "timings": demo.timings,
        **outcome.notes,
    }
    if models:
        extra["models"] = models
        for name, doc in models.items():
            extra[f"{name} mean (raster)"] = round(doc["mean"], 4)
    return extra


def _report(
    demo: _Demo,
    evaluation: Evaluation,
    pred: dict[str, dict[int, Any]],
    test_all: Sequence[str],
    history: list[dict[str, Any]],
    extra: dict[str, Any],
) -> Path:
    """``OUT/report``: tables, curves, shifts and one panel per test scene."""
    views = _scene_views(demo.ds, pred, test_all, evaluation)
    title = "spectraseg demo: " + ("synthetic data" if demo.synthetic else demo.root.name)
    return demo.stage(
        "report",
        lambda: write_report(
            demo.out / "report", evaluation.to_dict(), history=history,
            shifts=_shifts_doc(demo), scenes=views, title=title, extra=extra,
        ),
    )  # fmt: skip


def run_demo(settings: DemoSettings) -> DemoResult:
    """Run the whole pipeline into ``settings.out``; see the module docstring."""
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    demo = _open_data(settings, out, {})
    _align(demo)
    presets = _presets(demo)
    outcome = _one_split(demo, presets) if _folds(demo) == 1 else _cross_validated(demo, presets)
    pred, plans = outcome.pred, outcome.plans
    test_all = sorted(i for _, _, c in plans for i in c)
    truth = {i: demo.ds.scene_labels(i) for i in test_all}
    evaluation = demo.stage("evaluate", lambda: evaluate_polygons(pred, truth, image_ids=test_all))
    models = {name: ev.to_dict() for name, ev in outcome.models.items()}
    if demo.ds.sample_path is not None:
        sample = demo.ds.sample_path
        demo.stage("submit", lambda: write_submission(pred, sample, out / "submission.csv"))
    demo.timings["total"] = round(time.perf_counter() - t_start, 2)
    extra = _extra(demo, outcome, models)
    folds_doc = fold_means(evaluation, [c for _, _, c in plans]) if len(plans) > 1 else None
    if folds_doc:
        extra["per-fold means"] = folds_doc
    html = _report(demo, evaluation, pred, test_all, outcome.history, extra)
    summary = {
        "evaluation": evaluation.to_dict(),
        "split": extra["split"],
        "timings": demo.timings,
        "models": models,
        "report": str(html),
        **({"cross_validation": outcome.notes} if outcome.notes else {}),
    }
    if folds_doc:
        summary["per_fold"] = folds_doc
    write_text_atomic(out / "demo.json", json.dumps(summary, indent=2) + "\n")
    return DemoResult(out, summary["evaluation"], html, extra["split"], demo.timings)


def compare_models(
    run_dir: Path, pred_dir: Path, cache_dir: Path, ids: Sequence[str], ds: Dataset
) -> dict[str, Evaluation]:
    """Raster scores on the test scenes of the U-Net alone, the pixel model alone and their
    blend, each with its own thresholds tuned on the validation scenes.

    Reads each model's levels written by predict (``PredictOptions(sources=True)``).
    Empty when the run has no pixel model (the U-Net is then the whole prediction).
    """

    doc = read_thresholds(run_dir)
    if doc is None or not doc.thresholds_pixel or not doc.blend:
        return {}
    chosen = {
        "unet": (dict.fromkeys(range(1, 11), 1.0), doc.thresholds_unet),
        "pixel": (dict.fromkeys(range(1, 11), 0.0), doc.thresholds_pixel),
        "blend": (doc.blend, doc.thresholds),
    }
    preds: dict[str, dict[str, np.ndarray]] = {k: {} for k in chosen}
    truth: dict[str, np.ndarray] = {}
    for image_id in ids:
        paths = scene_paths(pred_dir, image_id)
        unet, pixel = np.load(paths["unet"]), np.load(paths["pixel"])
        truth[image_id] = np.load(mask_path(cache_dir, image_id))
        for name, (weights, thr) in chosen.items():
            levels = blend_levels(unet, pixel, weights)
            preds[name][image_id] = threshold_masks(levels, thr)
    grid = {i: ds.grid_sizes[i] for i in ids}
    return {name: evaluate_masks(preds[name], truth, grid) for name in chosen}


def fold_means(evaluation: Any, folds: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Mean Jaccard of each fold's test scenes alone, under both conventions for a class
    absent from a fold (empty union): scored 0 (this project's metric) and scored 1.

    The pooled score over all scenes is the project's figure; per-fold means are what some
    cross-validation reports quote, and with 1 for absent classes they run much higher on
    small data (waterway in one scene of 20 is absent from three folds of four).
    """
    out: dict[str, Any] = {}
    for label, empty in (("absent 0", 0.0), ("absent 1", 1.0)):
        means = [replace(evaluation.subset(f), empty_score=empty).mean for f in folds]
        out[label] = [round(m, 4) for m in means]
        out[f"mean, {label}"] = round(float(np.mean(means)), 4)
    return out


def _scene_views(
    ds: Dataset, pred: dict[str, dict[int, Any]], ids: Sequence[str], evaluation: Evaluation
) -> list[SceneView]:
    """Side-by-side panels: display RGB, truth and predicted polygons rasterised."""
    views = []
    for image_id in ids:
        scene = ds.scene(image_id)
        ref = scene.reference
        image = scene.read(ref.name)
        rgb = to_display(image[:3] if image.shape[0] >= 3 else image[:1])
        w, h = ref.width, ref.height
        truth = rasterize_classes(ds.scene_labels(image_id), w, h, scene.xmax, scene.ymin)
        masks = rasterize_classes(pred.get(image_id, {}), w, h, scene.xmax, scene.ymin)
        jac = evaluation.subset([image_id]).jaccard
        empty = evaluation.subset([image_id]).empty
        scores = {c + 1: float(jac[c]) for c in range(len(jac)) if not empty[c]}
        views.append(SceneView(image_id, rgb, truth, masks, scores))
    return views


def format_summary(result: DemoResult) -> str:
    """The per-class table (seed format) and where the report is."""

    lines = [f"{'class':>5}  {'name':<26} {'Jaccard':>8} {'J/10':>8}"]
    for c in result.evaluation["classes"]:
        flag = " (empty union)" if c.get("empty") else ""
        lines.append(
            f"{c['class']:>5}  {CLASS_NAMES[c['class']]:<26} {c['jaccard']:8.4f} "
            f"{c['jaccard'] / 10:8.5f}{flag}"
        )
    lines.append(f"{'':>5}  {'mean':<26} {result.evaluation['mean']:8.4f}")
    lines.append(f"report: {result.report}")
    lines.append(f"total: {result.timings.get('total', float('nan')):.0f} s")
    return "\n".join(lines)
