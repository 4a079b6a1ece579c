"""Work on one scene as a Dask worker (or this process) runs it: predict and write it, or
count its probability levels against its labels for threshold tuning.

A worker loads the run's model and pixel model once and keeps them (:func:`cached_model`,
:func:`cached_pixel_model`), keyed by file and modification time, so the tasks of many
scenes share one load.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from affine import Affine
from torch import nn

from spectraseg.align.cache import open_cache
from spectraseg.align.masks import open_mask
from spectraseg.config import Config
from spectraseg.data.classes import DSTL_SCHEMA, ClassSchema
from spectraseg.errors import DataError
from spectraseg.evaluation.levels import blend_levels, quantize
from spectraseg.evaluation.thresholds import BLEND_GRID, class_histograms
from spectraseg.features.patches import load_scene
from spectraseg.features.stats import Stats
from spectraseg.inference.outputs import (
    save_levels,
    scene_paths,
    write_georef_outputs,
    write_scene_outputs,
)
from spectraseg.inference.scene import (
    PredictOptions,
    levels_to_polygons,
    resolve_options,
    scene_levels,
)
from spectraseg.runs import load_model, load_pixel_model, members, model_mtime_ns, mtime_ns
from spectraseg.runtime import resolve_device

if TYPE_CHECKING:
    from spectraseg.models.pixel import PixelEnsemble, PixelModel

    PixelLike = PixelModel | PixelEnsemble


_MODELS: dict[tuple[str, str, str, int | None], tuple[nn.Module, Config, Stats | None]] = {}
_PIXEL: dict[tuple[str, tuple[int | None, ...]], PixelLike | None] = {}


def cached_model(
    run_dir: str | os.PathLike[str], which: str, device: str
) -> tuple[nn.Module, Config, Stats | None]:
    """``load_model(run_dir, which, device)``, loaded once per process (per Dask worker).

    ``device`` as :attr:`PredictOptions.device` (``auto`` resolved here). Keyed by the
    checkpoints' modification time (every fold's, for a cross-validated run), so a
    rewritten checkpoint is reloaded; only the last model is kept.
    """
    device = str(resolve_device(device, what="--device"))
    key = (str(Path(run_dir).resolve()), which, device, model_mtime_ns(run_dir, which))
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = load_model(run_dir, which=which, device=device)
    return _MODELS[key]


def cached_pixel_model(run_dir: str | os.PathLike[str]) -> PixelLike | None:
    """The run's pixel model loaded once per process, or None when the run has none."""
    times = tuple(mtime_ns(m.pixel_model) for m in members(run_dir))
    key = (str(Path(run_dir).resolve()), times)
    if key not in _PIXEL:
        _PIXEL.clear()
        _PIXEL[key] = load_pixel_model(run_dir)
    return _PIXEL[key]


def run_levels(
    run_dir: str, model: nn.Module, image: np.ndarray, opts: PredictOptions
) -> tuple[np.ndarray, np.ndarray | None]:
    """U-Net levels of a scene and, when the run has a pixel model, its levels too."""
    levels = scene_levels(model, image, opts)
    pixel = cached_pixel_model(run_dir)
    if pixel is None:
        return levels, None
    return levels, quantize(pixel.predict_proba(image))


def _set_threads(threads: int | None) -> None:
    if threads is not None and threads > 0:
        torch.set_num_threads(threads)


def _load_input(
    cache_dir: str | os.PathLike[str],
    image_id: str,
    model: nn.Module,
    config: Config,
    stats: Stats | None,
) -> np.ndarray:
    """The scene normalised as the model's training scenes were; DataError if it cannot be."""
    if stats is None:
        raise DataError("the run has no stats.json: its scenes cannot be normalised")
    image = load_scene(cache_dir, image_id, stats, config.data.indices)
    expected = getattr(model, "in_channels", image.shape[0])
    if image.shape[0] != expected:
        have = open_cache(cache_dir).channels(image_id)
        missing = [c for c in stats.channels if c not in have]
        lacks = f"lacks {', '.join(missing)}" if missing else "lacks a product the run used"
        raise DataError(
            f"scene {image_id} gives {image.shape[0]} input channels but the model was "
            f"trained on {expected}: it {lacks} (it has {', '.join(have)})"
        )
    return image


def predict_scene_task(
    run_dir: str,
    cache_dir: str,
    image_id: str,
    xmax: float,
    ymin: float,
    out_dir: str,
    thresholds: Mapping[int, float],
    min_area: Mapping[int, float],
    options: PredictOptions,
    blend: Mapping[int, float] | None = None,
    stats: Stats | None = None,
    schema: ClassSchema = DSTL_SCHEMA,
) -> dict[str, Any]:
    """Predict one cached scene and write its outputs (run by Dask workers or in-process).

    ``blend`` (per-class U-Net weights) mixes in the run's pixel model, when it has one;
    None uses the U-Net alone. The written probabilities are the blended ones. ``stats``
    normalises the scene (None: the run's ``stats.json``). A georeferenced scene (its cache
    entry has a ``transform``) is vectorised in map coordinates and written as a GeoPackage
    whose ``class`` attribute holds the names of ``schema`` (the run's classes, whose
    ``min_area`` and ``tolerance`` apply); ``xmax``/``ymin`` are then unused. Its nodata
    pixels get probability 0 (no polygon covers them).

    Returns a small summary: ``image_id``, ``height``, ``width``, ``seconds``, ``area``
    (per class, squared grid or map units) and ``parts`` (per class polygon count).
    """
    t0 = time.perf_counter()
    _set_threads(options.threads)
    model, config, run_stats = cached_model(run_dir, options.checkpoint, options.device)
    opts = resolve_options(options, config)
    image = _load_input(cache_dir, image_id, model, config, run_stats if stats is None else stats)
    if blend is not None:
        levels, pixel = run_levels(run_dir, model, image, opts)
        if pixel is not None:
            if opts.sources:
                paths = scene_paths(out_dir, image_id)
                save_levels(paths["unet"], levels)
                save_levels(paths["pixel"], pixel)
            levels = blend_levels(levels, pixel, blend)
    else:
        levels = scene_levels(model, image, opts)
    del image  # the float32 scene is the largest array: free it before vectorising
    cache = open_cache(cache_dir)
    entry = cache.entry(image_id)
    if "transform" in entry:
        nodata = cache.nodata(image_id)
        if nodata is not None:  # no class where the input has no data
            levels[:, np.asarray(nodata)] = 0
        transform = Affine(*entry["transform"])
        polygons = levels_to_polygons(levels, 0, 0, thresholds, min_area, opts, transform, schema)
        write_georef_outputs(out_dir, image_id, levels, polygons, schema.names, entry["crs"])
    else:
        polygons = levels_to_polygons(levels, xmax, ymin, thresholds, min_area, opts)
        write_scene_outputs(
            out_dir, image_id, levels, polygons, xmax, ymin, thresholds, opts.decimals
        )
    return {
        "image_id": image_id,
        "height": int(levels.shape[1]),
        "width": int(levels.shape[2]),
        "seconds": time.perf_counter() - t0,
        "area": {c: float(g.area) for c, g in polygons.items()},
        "parts": {c: len(g.geoms) for c, g in polygons.items()},
    }


def tune_scene_task(
    run_dir: str, cache_dir: str, image_id: str, weight: float, options: PredictOptions
) -> tuple[np.ndarray, np.ndarray]:
    """Probability histograms of a labelled cached scene (:func:`class_histograms`), one
    pair per U-Net weight of :data:`BLEND_GRID` when the run has a pixel model.

    Returns ``(pos, neg)`` float64 ``(B, K, 256)`` with ``B = len(BLEND_GRID)``, or
    ``B = 1`` (the U-Net alone) without a pixel model.
    """
    _set_threads(options.threads)
    model, config, stats = cached_model(run_dir, options.checkpoint, options.device)
    opts = resolve_options(options, config)
    image = _load_input(cache_dir, image_id, model, config, stats)
    levels, pixel = run_levels(run_dir, model, image, opts)
    del image
    truth = open_mask(cache_dir, image_id, levels.shape[1:])
    valid = open_cache(cache_dir).counted(image_id)
    if pixel is None:
        pos, neg = class_histograms(levels, truth, weight, valid)
        return pos[None], neg[None]
    classes = range(1, levels.shape[0] + 1)
    pairs = [
        class_histograms(
            blend_levels(levels, pixel, dict.fromkeys(classes, w)), truth, weight, valid
        )
        for w in BLEND_GRID
    ]
    return np.stack([p for p, _ in pairs]), np.stack([n for _, n in pairs])
