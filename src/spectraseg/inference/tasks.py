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
from typing import Any

import numpy as np
from torch import nn

from spectraseg.align.cache import open_cache
from spectraseg.align.masks import open_mask
from spectraseg.config import Config
from spectraseg.errors import DataError
from spectraseg.evaluation.levels import blend_levels, quantize
from spectraseg.evaluation.thresholds import BLEND_GRID, class_histograms
from spectraseg.features.patches import load_scene
from spectraseg.features.stats import Stats
from spectraseg.inference.loaded import (
    cached_model,
    cached_pixel_model,
    check_channels,
    set_threads,
)
from spectraseg.inference.outputs import save_levels, scene_paths, write_scene_outputs
from spectraseg.inference.scene import (
    PredictOptions,
    levels_to_polygons,
    resolve_options,
    scene_levels,
)


def run_levels(
    run_dir: str, model: nn.Module, image: np.ndarray, opts: PredictOptions
) -> tuple[np.ndarray, np.ndarray | None]:
    """U-Net levels of a scene and, when the run has a pixel model, its levels too."""
    levels = scene_levels(model, image, opts)
    pixel = cached_pixel_model(run_dir)
    if pixel is None:
        return levels, None
    return levels, quantize(pixel.predict_proba(image))


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
    check_channels(cache_dir, image_id, model, image.shape[0], stats)
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
) -> dict[str, Any]:
    """Predict one cached DSTL scene whole and write its outputs (run by Dask workers or
    in-process); georeferenced scenes are predicted strip by strip
    (:func:`spectraseg.inference.streaming.predict_scenes`).

    ``blend`` (per-class U-Net weights) mixes in the run's pixel model, when it has one;
    None uses the U-Net alone. The written probabilities are the blended ones. ``stats``
    normalises the scene (None: the run's ``stats.json``).

    Returns a small summary: ``image_id``, ``height``, ``width``, ``seconds``, ``area``
    (per class, squared grid or map units) and ``parts`` (per class polygon count).
    """
    t0 = time.perf_counter()
    set_threads(options.threads)
    model, config, run_stats = cached_model(run_dir, options.checkpoint, options.device)
    opts = resolve_options(options, config)
    stats = run_stats if stats is None else stats
    image = _load_input(cache_dir, image_id, model, config, stats)
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
    polygons = levels_to_polygons(levels, xmax, ymin, thresholds, min_area, opts)
    write_scene_outputs(out_dir, image_id, levels, polygons, xmax, ymin, thresholds, opts.decimals)
    return {
        "image_id": image_id,
        "seconds": time.perf_counter() - t0,
        "height": int(levels.shape[1]),
        "width": int(levels.shape[2]),
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
    set_threads(options.threads)
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
