"""The ``predict`` stage: a trained run and a dataset in, a prediction directory out.

:func:`predict_run` plans (checks the request, decides where thresholds come from and
where scenes run: :func:`plan_prediction`), aligns the scenes into a cache, completes the
run's normalisation statistics for regions it never saw, tunes thresholds where needed
(:mod:`spectraseg.inference.tuning`), then predicts every scene
(:func:`spectraseg.inference.tasks.predict_scene_task`) in this process or on Dask, and
writes ``PRED/predictions.csv`` and ``PRED/predict.json``.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from spectraseg.align.cache import open_cache
from spectraseg.align.fusion import align_dataset
from spectraseg.config import Config
from spectraseg.data.classes import DSTL_SCHEMA, ClassSchema
from spectraseg.data.files import remove_temporaries, write_text_atomic
from spectraseg.data.georef import GeoDataset, prediction_gpkg
from spectraseg.data.sources import Source, open_source
from spectraseg.errors import ConfigError, DataError, SpectrasegWarning
from spectraseg.features.normalization import complete_stats
from spectraseg.features.stats import Stats, save_stats
from spectraseg.inference.georaster import MAX_BIT_CLASSES
from spectraseg.inference.loaded import cached_model, check_channels
from spectraseg.inference.outputs import write_predictions_csv
from spectraseg.inference.scene import PredictOptions, resolve_options
from spectraseg.inference.streaming import (
    SceneRequest,
    laid_out,
    predict_scenes,
    request_channels,
)
from spectraseg.inference.tasks import predict_scene_task
from spectraseg.inference.tuning import ThresholdPlan, plan_thresholds, tune_run
from spectraseg.parallel import Job, Runner, check_workers, describe, open_runner
from spectraseg.runs import (
    RunDir,
    TunedThresholds,
    training_resolution,
    write_thresholds,
)

IN_PROCESS_MPX = 8.0
"""Requests of fewer megapixels (all scenes together) are predicted in this process by
default. A local worker starts in 4-5 s (torch, the models) before its first scene, while
this process predicts a 538 x 538 dstl-lite scene in 1.2-1.3 s with a 4-fold ensemble: five
such scenes took 17.6 s on 2 workers and 8.6 s here, two 12.3 s and 5.0 s. A full-size
DSTL scene is 11.4 Mpx."""


def plan_workers(
    workers: int | None,
    scheduler: str | None,
    jobs: int,
    gpu: bool = False,
    megapixels: float = math.inf,
) -> int:
    """Local worker processes to start: 0 runs in this process.

    ``workers`` None (the default) starts a local cluster of ``min(jobs, cpu_count)``
    single-threaded workers when there is more than one scene and the request holds at
    least :data:`IN_PROCESS_MPX` megapixels, else runs in-process; with ``gpu`` (the
    scenes are predicted on CUDA) it runs in-process, so that one process feeds the GPU
    instead of one CUDA context per core.
    """
    check_workers(workers, scheduler)
    if scheduler is not None:
        return 0
    if workers is None:
        if gpu or megapixels < IN_PROCESS_MPX:
            return 0
        n = min(jobs, os.cpu_count() or 1)
        return n if n > 1 else 0
    return workers


@dataclass
class PredictReport:
    """What :func:`predict_run` did."""

    out_dir: Path
    predictions: Path | None = None
    scenes: list[dict[str, Any]] = field(default_factory=list)
    """Per requested scene: ``image_id``, ``status`` (``ok``/``failed``), ``reason``,
    ``seconds``."""
    thresholds: dict[int, float] = field(default_factory=dict)
    threshold_source: str = ""
    min_area: dict[int, float] = field(default_factory=dict)
    tuning: TunedThresholds | None = None
    normalization: dict[str, Any] = field(default_factory=dict)
    """``mode`` (the run's scope), ``computed`` (per new image or region entry, the scenes
    of this request it was computed from) and ``stats`` (the file holding what was used)."""
    blend: dict[int, float] | None = None
    """Per-class U-Net weight of the blend with the run's pixel model (None: U-Net alone)."""
    options: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    classes: list[str] = field(default_factory=list)
    """The run's class names, in output-channel order (class ``c`` is ``classes[c - 1]``)."""
    geopackages: list[Path] = field(default_factory=list)
    """``PRED/{id}/polygons.gpkg`` of the georeferenced scenes predicted."""

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [s for s in self.scenes if s["status"] != "ok"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "predictions": str(self.predictions) if self.predictions else None,
            "geopackages": [str(p) for p in self.geopackages],
            "classes": self.classes,
            "thresholds": {str(k): v for k, v in self.thresholds.items()},
            "threshold_source": self.threshold_source,
            "blend": {str(k): v for k, v in self.blend.items()} if self.blend else None,
            "min_area_px": {str(k): v for k, v in self.min_area.items()},
            "options": self.options,
            "normalization": self.normalization,
            "seconds": self.seconds,
            "scenes": self.scenes,
            "tuning": self.tuning.to_json() if self.tuning is not None else None,
        }


def _megapixels(ds: Source, ids: Sequence[str]) -> float:
    """Megapixels of the scenes' reference grids (read from the file headers)."""
    grids = (ds.scene(i).reference for i in ids)
    return sum(g.height * g.width for g in grids) / 1e6


@dataclass
class PredictPlan:
    """A checked prediction request: what runs where, decided before any scene runs."""

    run: RunDir
    config: Config
    dataset: Source
    ids: list[str]
    out: Path
    cache_dir: Path
    options: PredictOptions
    thresholds: ThresholdPlan
    min_area: dict[int, float]
    workers: int
    scheduler: str | None
    run_stats: Stats | None
    schema: ClassSchema
    """The run's classes, in output-channel order."""

    def grid(self, image_id: str) -> tuple[float, float]:
        """A DSTL scene's grid extent ``(xmax, ymin)``; ``(0, 0)`` for a georeferenced scene,
        whose transform the cache holds."""
        if isinstance(self.dataset, GeoDataset):
            return (0.0, 0.0)
        return self.dataset.grid_sizes[image_id]


def _checked_options(
    run: RunDir, options: PredictOptions, scheduler: str | None
) -> tuple[PredictOptions, Config, Stats | None, ClassSchema]:
    """Options completed from the run's config, and the classes of the run's model;
    ConfigError for a tile the model cannot take."""
    model, config, run_stats = cached_model(run.root, options.checkpoint, "cpu")
    # Local workers resolve the device as this process does; a scheduler's workers their own.
    options = resolve_options(options, config, here=scheduler is None)
    assert options.tile is not None and options.margin is not None
    multiple = int(getattr(model, "multiple", 1))
    if options.tile % multiple or options.tile <= 2 * options.margin:
        raise ConfigError(
            f"tile {options.tile} must be a multiple of the model's 2**depth ({multiple}) "
            f"and larger than twice the margin {options.margin}"
        )
    schema = getattr(model, "schema", None)
    return options, config, run_stats, DSTL_SCHEMA if schema is None else schema


def _cache_for(
    config: Config, ds: Source, out: Path, cache_dir: str | os.PathLike[str] | None
) -> Path:
    """The run's cache when the dataset is the run's own, else ``PRED/cache``."""
    if cache_dir is not None:
        return Path(cache_dir)
    d = config.data
    same = d.root and d.cache and Path(d.root).resolve() == ds.root.resolve()
    return Path(d.cache) if same else out / "cache"


def predict_run(
    run_dir: str | os.PathLike[str],
    data_root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    image_ids: Sequence[str] | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    options: PredictOptions = PredictOptions(),
    thresholds: str | Mapping[int, float] = "auto",
    min_area: Mapping[int, float] | None = None,
    progress: bool = True,
) -> PredictReport:
    """Predict the scenes of a dataset with a trained run; write ``PRED``.

    Steps: align the scenes into the cache where needed
    (:func:`spectraseg.align.fusion.align_dataset`); complete the normalisation statistics;
    choose per-class thresholds; predict each scene in this process or on Dask; write
    ``PRED/predictions.csv`` (all predicted scenes, sorted) and ``PRED/predict.json`` (this
    report).

    Args:
        run_dir: the training run (checkpoints, config.toml, stats.json, split.json).
        data_root: DSTL-layout dataset with the scenes to predict (its ``grid_sizes.csv``
            gives the extents), or a dataset description (``.toml``), whose scenes are
            written as GeoPackages in their CRS (:mod:`spectraseg.inference.outputs`).
        out_dir: the prediction directory ``PRED`` (:mod:`spectraseg.inference.outputs`).
        image_ids: scenes to predict (default: every scene of ``data_root``).
        workers: local Dask worker processes (0: in this process; None: one per core, up
            to the number of scenes, in-process for a single scene or on CUDA).
        scheduler: address of an existing Dask scheduler (its workers must see the same
            paths).
        cache_dir: the fused cache for these scenes (default: the run's ``data.cache`` when
            ``data_root`` is the run's ``data.root``, else ``PRED/cache``).
        options: tiling, TTA, device, vectorisation; None fields come from the run config.
        thresholds: ``"auto"`` (``RUN/thresholds.json`` if it matches the checkpoint and
            TTA, else tuned on the run's validation scenes and saved there, else the config's),
            ``"retune"`` (always tune), ``"config"`` (``predict.thresholds``), or a mapping.
        min_area: per class minimum polygon area in pixels (default: ``predict.min_area``).
        progress: tqdm bars on stderr.
    """
    t0 = time.perf_counter()
    run, out = RunDir.of(run_dir), Path(out_dir)
    options, config, run_stats, schema = _checked_options(run, options, scheduler)
    ds = open_source(data_root)
    ids = _select(ds, image_ids)
    tp = plan_thresholds(run, config, options, thresholds, len(schema))
    areas = min_area if min_area is not None else dict(enumerate(config.predict.min_area, 1))
    jobs = len(ids) + len(tp.tune_scenes or ())
    plan = PredictPlan(
        run, config, ds, ids, out, _cache_for(config, ds, out, cache_dir), options, tp,
        {int(k): float(v) for k, v in areas.items()},
        plan_workers(
            workers, scheduler, jobs, options.device.startswith("cuda"), _megapixels(ds, ids)
        ),
        scheduler, run_stats, schema,
    )  # fmt: skip
    report = PredictReport(
        out_dir=plan.out,
        min_area=plan.min_area,
        options=_options_doc(plan),
        classes=plan.schema.names,
    )
    remove_temporaries(plan.out, recursive=True)  # a killed earlier prediction's
    align = align_dataset(
        plan.dataset.root,
        plan.cache_dir,
        image_ids=plan.ids,
        workers=plan.workers or None,
        scheduler=plan.scheduler,
        progress=progress,
    )
    failed = {s.image_id: s.reason for s in align.scenes if s.status == "failed"}
    aligned = [i for i in plan.ids if i not in failed]
    _check_resolution(plan, aligned)
    stats = _request_stats(plan.run_stats, plan.cache_dir, aligned, plan.out, report, progress)
    with open_runner(plan.workers or None, plan.scheduler) as runner:
        _settle_thresholds(runner, plan, report, progress)
        results = _predict_scenes(runner, plan, report, stats, failed, progress)
    report.scenes = [results[i] for i in plan.ids]
    ok = sorted(s["image_id"] for s in report.scenes if s["status"] == "ok")
    if ok and isinstance(ds, GeoDataset):
        report.geopackages = [prediction_gpkg(plan.out, i) for i in ok]
    elif ok:
        report.predictions = write_predictions_csv(plan.out, ok)
    report.seconds = time.perf_counter() - t0
    write_text_atomic(plan.out / "predict.json", json.dumps(report.to_dict(), indent=1) + "\n")
    return report


RESOLUTION_TOLERANCE = 1.5
"""A scene whose pixels are this many times larger or smaller than the training scenes'
is predicted with a warning: objects appear at another scale than the model learnt."""


def _check_resolution(plan: PredictPlan, image_ids: Sequence[str]) -> None:
    """Warn for each georeferenced scene far from the run's training resolution."""
    trained = training_resolution(plan.run)
    if trained is None:
        return
    cache = open_cache(plan.cache_dir)
    for image_id in image_ids:
        transform = cache.entry(image_id).get("transform")
        if transform is None:
            continue
        res = abs(float(transform[0]))
        if not 1 / RESOLUTION_TOLERANCE <= res / trained <= RESOLUTION_TOLERANCE:
            warnings.warn(
                f"scene {image_id} has {res:g}-unit pixels but the model was trained on "
                f"{trained:g}: resample it (resolution = {trained:g} in its description)",
                SpectrasegWarning,
                stacklevel=3,
            )


def _select(ds: Source, image_ids: Sequence[str] | None) -> list[str]:
    if isinstance(ds, GeoDataset):
        return ds.select(image_ids, "predict")
    return ds.select(image_ids, "predict", gridded=True)


def _options_doc(plan: PredictPlan) -> dict[str, Any]:
    o = plan.options
    return {
        "checkpoint": o.checkpoint,
        "tile": o.tile,
        "margin": o.margin,
        "batch": o.batch,
        "tta": o.tta,
        "device": o.device,
        "tolerance_px": o.tolerance,
        "decimals": o.decimals,
        "probs": o.probs,
        "geojson": o.geojson,
        "class_bits": o.class_bits,
        "strip_rows": o.strip_rows,
        "cache": str(plan.cache_dir),
    }


def _settle_thresholds(
    runner: Runner, plan: PredictPlan, report: PredictReport, progress: bool
) -> None:
    """Tune where the plan says so (saving ``RUN/thresholds.json``); fill the report."""
    tp = plan.thresholds
    if tp.tune_scenes:
        tp.doc = tune_run(runner, plan.run, plan.config, plan.options, tp.tune_scenes, progress)
        write_thresholds(plan.run, tp.doc)
        tp.thresholds = tp.doc.thresholds
        tp.source = f"tuned on {len(tp.tune_scenes)} validation scene(s)"
    report.thresholds, report.threshold_source, report.tuning = tp.thresholds, tp.source, tp.doc
    if tp.doc is not None and tp.doc.blend:
        report.blend = dict(tp.doc.blend)


def _predict_scenes(
    runner: Runner,
    plan: PredictPlan,
    report: PredictReport,
    stats: Stats | None,
    failed: Mapping[str, str],
    progress: bool,
) -> dict[str, dict[str, Any]]:
    """Predict every aligned scene: DSTL scenes whole (:func:`predict_scene_task`), georeferenced
    ones strip by strip (:func:`predict_scenes`); per scene its result or failure."""
    results: dict[str, dict[str, Any]] = {
        i: {"image_id": i, "status": "failed", "reason": f"align: {why}"}
        for i, why in failed.items()
    }
    opts = replace(plan.options, threads=runner.threads or plan.options.threads)
    todo = [i for i in plan.ids if i not in failed]
    if isinstance(plan.dataset, GeoDataset):
        if stats is None:
            raise DataError("the run has no stats.json: its scenes cannot be normalised")
        if opts.class_bits and len(plan.schema) > MAX_BIT_CLASSES:
            raise DataError(
                f"--class-bits holds at most {MAX_BIT_CLASSES} classes in classes.tif's 16 "
                f"bits (one marks nodata); the run predicts {len(plan.schema)}"
            )
        requests = _scene_requests(plan, report, stats, opts, todo, results)
        results.update(predict_scenes(runner, requests, progress))
        return results
    jobs: list[Job] = []
    for i in todo:
        xmax, ymin = plan.grid(i)
        args = (
            str(plan.run.root), str(plan.cache_dir), i, xmax, ymin, str(plan.out),
            report.thresholds, report.min_area, opts, report.blend, stats,
        )  # fmt: skip
        jobs.append((i, args))
    with tqdm(total=len(jobs), desc="predict", unit="scene", disable=not progress) as bar:
        for key, result, exc in runner.run(predict_scene_task, jobs):
            bar.update()
            if exc is not None:
                results[key] = {"image_id": key, "status": "failed", "reason": describe(exc)}
            else:
                results[key] = {**result, "status": "ok"}
    return results


def _scene_requests(
    plan: PredictPlan,
    report: PredictReport,
    stats: Stats,
    opts: PredictOptions,
    image_ids: Sequence[str],
    results: dict[str, dict[str, Any]],
) -> dict[str, SceneRequest]:
    """The streaming requests of georeferenced scenes; a scene that cannot give the model its
    input channels is failed in ``results`` instead."""
    model = cached_model(plan.run.root, opts.checkpoint, "cpu")[0]
    requests = {}
    for i in image_ids:
        req = SceneRequest(
            str(plan.run.root), str(plan.cache_dir), i, str(plan.out), report.thresholds,
            report.min_area, opts, plan.schema, stats, report.blend, opts.probs,
            int(getattr(model, "in_channels", 0)), opts.strip_rows or 0,
        )  # fmt: skip
        try:
            check_channels(plan.cache_dir, i, model, request_channels(req), stats)
        except DataError as exc:
            results[i] = {"image_id": i, "status": "failed", "reason": str(exc)}
            continue
        requests[i] = laid_out(req)
    return requests


def _request_stats(
    run_stats: Stats | None,
    cache_dir: Path,
    image_ids: Sequence[str],
    out: Path,
    report: PredictReport,
    progress: bool,
) -> Stats | None:
    """The run's statistics completed for the scenes to predict, saved as ``PRED/stats.json``.

    Scenes of a region (or, in ``image`` mode, scenes) the run's statistics lack get an
    entry computed from this request's scenes
    (:func:`~spectraseg.features.normalization.complete_stats`),
    so they are normalised in the scope the model was trained in; ``report.normalization``
    records which.
    """
    if run_stats is None or not image_ids:
        return None
    stats, computed = complete_stats(run_stats, cache_dir, image_ids, progress=progress)
    save_stats(stats, out / "stats.json")
    report.normalization = {
        "mode": stats.mode,
        "computed": computed,
        "stats": str(out / "stats.json"),
    }
    return stats
