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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from spectraseg.data.files import write_text_atomic
from spectraseg.errors import DataError
from spectraseg.features.split import cv_plans, split_three

SYNTH_DEFAULTS = {"scenes": 16, "size": (448, 448), "minutes": 5.0}
"""The embedded synthetic default: small enough for 10 minutes on 2 CPU cores."""

REAL_MINUTES = 20.0
"""Default training budget on real data, all folds together: 5 minutes per fold; with the
per-pixel models, threshold tuning and prediction the demo takes about 30 minutes on 2 CPU
cores."""

REAL_FOLDS = 4
"""Cross-validation folds on real data: every scene is scored by a model that never saw its
region, so the score covers all scenes (one small split is too noisy on 20 scenes)."""

REAL_OVERRIDES: tuple[str, ...] = ("pixel.enabled=true",)
"""On real data the per-pixel model joins the U-Net (GUIDE section 8: on small data it is
the stronger of the two for some classes); spectral indices are added from what the
products allow (:func:`spectraseg.features.indices.available_indices`), with the normalised
differences of neighbouring bands (:func:`spectraseg.features.indices.band_ratio_indices`)."""

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
    size: tuple[int, int] = SYNTH_DEFAULTS["size"]  # type: ignore[assignment]
    regions: int | None = None
    seed: int = 0
    minutes: float | None = None
    """Training time budget; None: 5 (synthetic) or 20 in all folds (real data)."""
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
    import sys

    print(f"[demo] {msg}", file=sys.stderr, flush=True)


def build_config(
    settings: DemoSettings,
    root: Path,
    cache: Path,
    scenes: Sequence[str],
    val_ids: Sequence[str],
    minutes: float,
    presets: Sequence[str] = (),
) -> Any:
    """The run's config: defaults, the demo's settings and ``presets``, then the user's
    overrides."""
    from spectraseg.config import from_dict, to_dict

    raw = to_dict(from_dict({}))
    raw["data"].update(
        root=str(root), cache=str(cache), scenes=list(scenes), val_scenes=list(val_ids)
    )
    raw["train"].update(minutes=float(minutes), seed=settings.seed)
    config = from_dict(raw).replace((*DEMO_OVERRIDES, *presets))
    return config.replace(settings.overrides)


def _stage(timings: dict[str, float], name: str, fn: Callable[[], Any]) -> Any:
    _log(f"{name} ...")
    t0 = time.perf_counter()
    out = fn()
    took = time.perf_counter() - t0
    timings[name] = round(timings.get(name, 0.0) + took, 2)  # summed over folds
    _log(f"{name} done in {took:.1f} s")
    return out


def run_demo(settings: DemoSettings) -> DemoResult:
    """Run the whole pipeline into ``settings.out``; see the module docstring."""
    from spectraseg.align.cache import open_cache, read_shifts
    from spectraseg.align.fusion import align_dataset
    from spectraseg.data.dstl import open_dataset, read_predictions
    from spectraseg.evaluation.metrics import evaluate_polygons
    from spectraseg.inference.pipeline import predict_run
    from spectraseg.inference.scene import PredictOptions
    from spectraseg.submission import write_submission
    from spectraseg.training.loop import train

    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    synthetic = settings.data is None

    if synthetic:
        from spectraseg.data.synth import synthesize

        root = out / "data"
        # Test, validation and training each take whole regions: at least three.
        regions = settings.regions or min(settings.scenes, max(3, math.ceil(settings.scenes / 4)))
        _stage(
            timings,
            "synthesize",
            lambda: synthesize(
                root,
                settings.scenes,
                settings.size,
                settings.seed,
                regions=regions,
                progress=settings.progress,
            ),
        )
    else:
        root = Path(settings.data)  # type: ignore[arg-type]
    ds = open_dataset(root)
    labelled = ds.labelled_ids
    if len(labelled) < 3:
        raise DataError(f"{root} has {len(labelled)} labelled scene(s); the demo needs at least 3")

    cache_dir = out / "cache"
    report = _stage(
        timings,
        "align",
        lambda: align_dataset(
            root, cache_dir, labelled, workers=settings.workers or None, progress=settings.progress
        ),
    )
    if report.failed:
        reasons = "; ".join(f"{s.image_id}: {s.reason}" for s in report.failed)
        raise DataError(f"registration failed for {len(report.failed)} scene(s): {reasons}")

    from spectraseg.align.masks import build_masks

    _stage(
        timings,
        "masks",
        lambda: build_masks(open_cache(cache_dir), root, labelled, progress=settings.progress),
    )
    minutes = settings.minutes
    if minutes is None:
        minutes = float(SYNTH_DEFAULTS["minutes"]) if synthetic else REAL_MINUTES
    folds = settings.folds or (1 if synthetic else REAL_FOLDS)
    val_arg = list(settings.val_scenes) or settings.val_fraction
    if folds > 1:
        plans = cv_plans(labelled, folds, val_arg, settings.seed)
    else:
        test_arg = list(settings.test_scenes) or settings.test_fraction
        plans = [split_three(labelled, test_arg, val_arg, settings.seed)]
    presets: list[str] = []
    if not synthetic:
        from spectraseg.features.indices import available_indices, band_ratio_indices

        channels = open_cache(cache_dir).channels(labelled[0])
        names = available_indices(channels) + band_ratio_indices(channels)
        presets = [*REAL_OVERRIDES, f"data.indices={json.dumps(names)}"]

    pred: dict[str, Any] = {}
    pooled: dict[str, list[Any]] = {}
    results = []
    for k, (train_ids, val_ids, test_ids) in enumerate(plans):
        base = out if len(plans) == 1 else out / "folds" / str(k + 1)
        tag = "" if len(plans) == 1 else f" (fold {k + 1}/{len(plans)})"
        _log(
            f"split{tag}: {len(train_ids)} train, {len(val_ids)} validation, "
            f"{len(test_ids)} test scenes"
        )
        config = build_config(
            settings,
            root,
            cache_dir,
            train_ids + val_ids,
            val_ids,
            minutes / len(plans),
            presets,
        )
        run_dir, pred_dir = base / "run", base / "pred"
        resume = (run_dir / "checkpoints" / "latest.pt").is_file()
        if resume:
            _log(f"resuming the run in {run_dir}")
        result = _stage(
            timings,
            "train",
            lambda config=config, run_dir=run_dir, resume=resume: train(
                None if resume else config, run_dir, resume=resume, progress=settings.progress
            ),
        )
        if result.interrupted:
            raise KeyboardInterrupt
        results.append(result)
        _stage(
            timings,
            "predict",
            lambda run_dir=run_dir, pred_dir=pred_dir, test_ids=test_ids: predict_run(
                run_dir,
                root,
                pred_dir,
                image_ids=test_ids,
                workers=settings.workers,
                cache_dir=cache_dir,
                options=PredictOptions(sources=True),
                progress=settings.progress,
            ),
        )
        pred.update(read_predictions(pred_dir / "predictions.csv"))
        comparison = _stage(
            timings,
            "compare",
            lambda run_dir=run_dir, pred_dir=pred_dir, test_ids=test_ids: compare_models(
                run_dir, pred_dir, cache_dir, test_ids, ds
            ),
        )
        for name, ev in comparison.items():
            pooled.setdefault(name, []).append(ev)
    if len(plans) > 1:
        # The first fold's run is the demo's run: `spectraseg predict --run OUT/run` works.
        link = out / "run"
        if not link.exists():
            link.symlink_to(Path("folds") / "1" / "run", target_is_directory=True)
    test_all = sorted(i for _, _, test_ids in plans for i in test_ids)
    truth = {i: ds.scene_labels(i) for i in test_all}
    evaluation = _stage(
        timings, "evaluate", lambda: evaluate_polygons(pred, truth, image_ids=test_all)
    )
    models = {name: _concat(evs).to_dict() for name, evs in pooled.items()}
    submission = out / "submission.csv"
    if ds.sample_path is not None:
        _stage(timings, "submit", lambda: write_submission(pred, ds.sample_path, submission))

    cache = open_cache(cache_dir)
    shifts_path = cache_dir / "shifts.csv"
    shifts = [
        {
            "image_id": r.image_id,
            "product": r.product,
            "dx": r.dx,
            "dy": r.dy,
            "corr": None if not math.isfinite(r.corr) else r.corr,
            "method": r.method,
        }
        for r in (read_shifts(shifts_path) if shifts_path.is_file() else [])
        if r.image_id in set(labelled)
    ]
    first_run = (out if len(plans) == 1 else out / "folds" / "1") / "run"
    history = json.loads((first_run / "metrics.json").read_text()).get("epochs", [])
    timings["total"] = round(time.perf_counter() - t_start, 2)
    ev = evaluation.to_dict()
    if len(plans) == 1:
        train_ids, val_ids, test_ids = plans[0]
        split: dict[str, Any] = {"train": train_ids, "validation": val_ids, "test": test_ids}
    else:
        split = {
            "test": test_all,
            "folds": [{"train": a, "validation": b, "test": c} for a, b, c in plans],
        }
    extra = {
        "data": "synthetic" if synthetic else str(root),
        "protocol": (
            "one split by region"
            if len(plans) == 1
            else f"{len(plans)}-fold cross-validation by region, pooled over all scenes"
        ),
        "test scenes": ", ".join(test_all),
        "training minutes": round(sum(r.seconds for r in results) / 60, 2),
        "optimizer steps": sum(r.steps for r in results),
        "total seconds": timings["total"],
        "split": split,
        "timings": timings,
    }
    folds_doc = fold_means(evaluation, [c for _, _, c in plans]) if len(plans) > 1 else None
    if folds_doc:
        extra["per-fold means"] = folds_doc
    if models:
        extra["models"] = models
        for name, doc in models.items():
            extra[f"{name} mean (raster)"] = round(doc["mean"], 4)
    views = _scene_views(ds, cache, pred, test_all, evaluation)
    from spectraseg.report import write_report

    html = _stage(
        timings,
        "report",
        lambda: write_report(
            out / "report",
            ev,
            history=history,
            shifts=shifts,
            scenes=views,
            title="spectraseg demo: " + ("synthetic data" if synthetic else root.name),
            extra=extra,
        ),
    )
    summary = {
        "evaluation": ev,
        "split": split,
        "timings": timings,
        "models": models,
        "report": str(html),
    }
    if folds_doc:
        summary["per_fold"] = folds_doc
    write_text_atomic(out / "demo.json", json.dumps(summary, indent=2) + "\n")
    return DemoResult(out, ev, html, split, timings)


def compare_models(
    run_dir: Path, pred_dir: Path, cache_dir: Path, ids: Sequence[str], ds: Any
) -> dict[str, Any]:
    """Raster scores on the test scenes of the U-Net alone, the pixel model alone and their
    blend, each with its own thresholds tuned on the validation scenes.

    Reads each model's levels written by predict (``PredictOptions(sources=True)``).
    Empty when the run has no pixel model (the U-Net is then the whole prediction).
    """
    from spectraseg.align.masks import mask_path
    from spectraseg.evaluation.levels import blend_levels, threshold_masks
    from spectraseg.evaluation.metrics import evaluate_masks
    from spectraseg.inference.outputs import scene_paths
    from spectraseg.runs import read_thresholds

    doc = read_thresholds(run_dir)
    if not doc or not doc.get("thresholds_pixel"):
        return {}
    chosen = {
        "unet": (dict.fromkeys(range(1, 11), 1.0), doc["thresholds_unet"]),
        "pixel": (dict.fromkeys(range(1, 11), 0.0), doc["thresholds_pixel"]),
        "blend": ({int(k): v for k, v in doc["blend"].items()}, doc["thresholds"]),
    }
    preds: dict[str, dict[str, np.ndarray]] = {k: {} for k in chosen}
    truth: dict[str, np.ndarray] = {}
    for image_id in ids:
        paths = scene_paths(pred_dir, image_id)
        unet, pixel = np.load(paths["unet"]), np.load(paths["pixel"])
        truth[image_id] = np.load(mask_path(cache_dir, image_id))
        for name, (weights, thr) in chosen.items():
            levels = blend_levels(unet, pixel, weights)
            preds[name][image_id] = threshold_masks(levels, {int(k): v for k, v in thr.items()})
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


def _concat(evaluations: Sequence[Any]) -> Any:
    """One :class:`~spectraseg.evaluation.metrics.Evaluation` over the images of several."""
    from spectraseg.evaluation.metrics import Evaluation

    ids = tuple(i for ev in evaluations for i in ev.image_ids)
    counts = np.concatenate([ev.counts for ev in evaluations])
    return Evaluation(ids, counts, evaluations[0].method, evaluations[0].empty_score)


def _scene_views(ds: Any, cache: Any, pred: dict, ids: Sequence[str], evaluation: Any) -> list:
    """Side-by-side panels: display RGB, truth and predicted polygons rasterised."""
    from spectraseg.data.geometry import rasterize_classes
    from spectraseg.report import SceneView, to_display

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
    from spectraseg import CLASS_NAMES

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
