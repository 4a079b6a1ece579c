"""Thresholds for a run's predictions: where they come from, and tuning them on the scenes
training validated on.

``spectraseg predict`` uses ``RUN/thresholds.json`` while it matches the checkpoint, the
pixel model and the TTA setting; otherwise it tunes on the run's validation scenes
(``RUN/split.json``) with the one tuner (:func:`spectraseg.evaluation.thresholds.tune_blend`)
and saves the document there. Each validation scene is one task
(:func:`spectraseg.inference.tasks.tune_scene_task`) returning its level histograms; only
those small arrays travel back.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from tqdm import tqdm

from spectraseg import NUM_CLASSES
from spectraseg.align.cache import Cache, open_cache
from spectraseg.align.masks import build_masks, has_mask
from spectraseg.config import Config, per_class
from spectraseg.errors import ConfigError, DataError, SpectrasegWarning
from spectraseg.evaluation.metrics import pixel_areas
from spectraseg.evaluation.thresholds import jaccard_curves, tune_blend
from spectraseg.features.split import run_scenes, run_split
from spectraseg.inference.scene import PredictOptions
from spectraseg.inference.tasks import tune_scene_task
from spectraseg.parallel import Job, Runner, describe
from spectraseg.runs import (
    RunDir,
    TunedThresholds,
    model_mtime_ns,
    pixel_mtime_ns,
    read_cv,
    read_split,
    read_thresholds,
)

THRESHOLD_CHOICES = ("auto", "retune", "config")
"""Where thresholds come from, besides a mapping given by the caller."""


def config_thresholds(config: Config, k: int = NUM_CLASSES) -> dict[int, float]:
    """The config's ``predict.thresholds`` for ``k`` classes as ``{class: threshold}``."""
    values = per_class(config.predict.thresholds, k, "predict.thresholds", 0.5)
    return dict(enumerate(values, start=1))


def validation_scenes(run: RunDir, config: Config) -> list[str]:
    """The scenes the run validated on: ``RUN/split.json``; for a run from before that file,
    training's split recomputed from its config (:func:`spectraseg.features.split.run_split`)."""
    split = read_split(run)
    if split is not None:
        return list(split.validation)
    d = config.data
    if not d.cache or (not d.val_scenes and d.val_fraction == 0):
        return []
    scenes = run_scenes(d, open_cache(d.cache))
    if len(scenes) < 2 and not d.val_scenes:
        return []
    return run_split(scenes, d, config.train.seed)[1]


def doc_matches(doc: TunedThresholds, run: RunDir, options: PredictOptions) -> bool:
    """Whether thresholds were tuned for this checkpoint, pixel model and TTA setting."""
    mtime = model_mtime_ns(run, options.checkpoint)
    return (
        doc.pixel_model_mtime_ns == pixel_mtime_ns(run)
        and doc.checkpoint == options.checkpoint
        and mtime is not None
        and doc.checkpoint_mtime_ns == mtime
        and doc.tta == bool(options.tta)
    )


def _cv_thresholds(
    run: RunDir, options: PredictOptions, choice: str | Mapping[int, float]
) -> ThresholdPlan:
    """A cross-validated run's decisions: fitted on its out-of-fold predictions when it was
    trained, so there is nothing to re-tune them on."""
    doc = read_thresholds(run)
    if doc is None or choice == "retune":
        raise ConfigError(
            f"{run.root} is cross-validated: its thresholds come from its out-of-fold "
            "predictions (thresholds.json); finish it with spectraseg train --resume"
        )
    if doc.tta != bool(options.tta):
        warnings.warn(
            f"{run.thresholds} was fitted with tta={doc.tta}; predicting with tta={options.tta}",
            SpectrasegWarning,
            stacklevel=4,
        )
    return ThresholdPlan(doc.thresholds, f"{run.thresholds} (out-of-fold)", doc)


@dataclass
class ThresholdPlan:
    """Thresholds decided before any scene runs: known ones, or the scenes to tune on."""

    thresholds: dict[int, float]
    source: str
    doc: TunedThresholds | None = None
    """The tuned thresholds in use (read or, after tuning, written)."""
    tune_scenes: list[str] | None = None
    """Validation scenes to tune on; None when nothing is to be tuned."""


def plan_thresholds(
    run: RunDir,
    config: Config,
    options: PredictOptions,
    choice: str | Mapping[int, float],
    k: int = NUM_CLASSES,
) -> ThresholdPlan:
    """Where the thresholds of a prediction come from (``choice`` as ``predict_run``'s
    ``thresholds``): given, the config's, the run's document, or tuning to do, for a model
    of ``k`` classes (DataError when the run's document holds another number)."""
    if isinstance(choice, Mapping):
        return ThresholdPlan({int(c): float(v) for c, v in choice.items()}, "given")
    if choice == "config":
        return ThresholdPlan(config_thresholds(config, k), "config predict.thresholds")
    if choice not in ("auto", "retune"):
        raise ConfigError(f"thresholds {choice!r} must be auto, retune, config or a mapping")
    if read_cv(run) is not None:
        return _cv_thresholds(run, options, choice)
    doc = read_thresholds(run) if choice == "auto" else None
    if doc is not None and len(doc.thresholds) != k:
        raise DataError(
            f"{run.thresholds} gives thresholds for {len(doc.thresholds)} classes, but the "
            f"run's model predicts {k}"
        )
    if doc is not None and not doc_matches(doc, run, options):
        warnings.warn(
            f"{run.thresholds} was tuned for another checkpoint or TTA setting; re-tuning",
            SpectrasegWarning,
            stacklevel=3,
        )
        doc = None
    if doc is not None:
        return ThresholdPlan(doc.thresholds, str(run.thresholds), doc)
    scenes = validation_scenes(run, config)
    if scenes:
        return ThresholdPlan({}, "", tune_scenes=scenes)
    if choice == "retune":
        raise ConfigError("the run has no validation scenes to tune thresholds on")
    warnings.warn(
        "the run has no validation scenes: using the config's predict.thresholds",
        SpectrasegWarning,
        stacklevel=3,
    )
    return ThresholdPlan(
        config_thresholds(config, k), "config predict.thresholds (no validation scenes)"
    )


def _tuning_jobs(
    run: RunDir, cache: Cache, config: Config, options: PredictOptions, scenes: Sequence[str]
) -> list[Job]:
    """One :func:`tune_scene_task` per validation scene, weighted by its pixel area."""
    d = config.data
    areas = pixel_areas(cache, d.root, scenes)
    return [(i, (str(run.root), str(cache.root), i, areas[i], options)) for i in scenes]


def _summed_histograms(
    runner: Runner, jobs: Sequence[Job], progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    """``(pos, neg)`` level histograms ``(B, 10, 256)`` summed over the tuning scenes."""
    pos = neg = None
    with tqdm(total=len(jobs), desc="tune", unit="scene", disable=not progress) as bar:
        for key, result, exc in runner.run(tune_scene_task, jobs):
            bar.update()
            if exc is not None:
                raise DataError(f"cannot tune thresholds on {key}: {describe(exc)}")
            p, n = result
            pos, neg = (p, n) if pos is None else (pos + p, neg + n)
    assert pos is not None and neg is not None
    return pos, neg


def tune_run(
    runner: Runner,
    run: RunDir,
    config: Config,
    options: PredictOptions,
    scenes: Sequence[str],
    progress: bool,
) -> TunedThresholds:
    """Tune thresholds (and blend weights) on the run's validation scenes."""
    d = config.data
    cache = open_cache(d.cache)
    missing = [i for i in scenes if not has_mask(cache, i)]
    if missing:
        if not d.root:
            raise DataError(
                f"validation scene {missing[0]} has no label mask in {d.cache} and the run's "
                "config has no data.root to rasterise it from"
            )
        build_masks(cache, d.root, missing, progress=progress)
    opts = replace(options, threads=runner.threads or options.threads)
    pos, neg = _summed_histograms(runner, _tuning_jobs(run, cache, config, opts, scenes), progress)
    tuned = tune_blend(pos, neg, config.pixel.blend)
    return _thresholds_doc(tuned, pos[-1], neg[-1], run, config, options, scenes)


def _thresholds_doc(
    tuned: Mapping[str, Any],
    pos: np.ndarray,
    neg: np.ndarray,
    run: RunDir,
    config: Config,
    options: PredictOptions,
    scenes: Sequence[str],
) -> TunedThresholds:
    """The record of a tuning; ``pos``/``neg`` are the U-Net's own histograms, for the
    diagnostic of how the config's thresholds would have scored."""
    cfg = config_thresholds(config, len(pos))
    at_config = {
        k + 1: float(jaccard_curves(pos[k : k + 1], neg[k : k + 1], [cfg[k + 1]])[0, 0])
        for k in range(len(pos))
    }
    return TunedThresholds(
        thresholds=tuned["thresholds"],
        jaccard=tuned["jaccard"],
        tuned=tuned["tuned"],
        mean_jaccard=float(np.mean(list(tuned["jaccard"].values()))),
        jaccard_unet=tuned["jaccard_unet"],
        thresholds_unet=tuned["thresholds_unet"],
        jaccard_config=at_config,
        mean_jaccard_config=float(np.mean(list(at_config.values()))),
        grid=tuned["grid"],
        scenes=list(scenes),
        checkpoint=options.checkpoint,
        checkpoint_mtime_ns=model_mtime_ns(run, options.checkpoint),
        tta=bool(options.tta),
        tile=options.tile,
        margin=options.margin,
        blend=tuned["blend"],
        thresholds_pixel=tuned["thresholds_pixel"],
        pixel_model_mtime_ns=pixel_mtime_ns(run),
    )
