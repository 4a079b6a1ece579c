"""Fitting a run's per-pixel partner model (``pixel.enabled``) after the U-Net."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from spectraseg.align.cache import open_cache
from spectraseg.align.masks import open_mask
from spectraseg.config import Config
from spectraseg.features.patches import load_scene, scene_channels
from spectraseg.features.stats import Stats
from spectraseg.models.pixel import PixelModel
from spectraseg.runs import RunDir


def fit_run(
    run_dir: str | os.PathLike[str] | RunDir,
    config: Config,
    image_ids: Sequence[str],
    stats: Stats,
    progress: bool = True,
) -> Path:
    """Fit the pixel model of a run on its training scenes; write ``RUN/pixelmodel.pkl``.

    Scenes are read from the run's cache (``data.cache``), normalised with the run's
    statistics exactly as the U-Net sees them, with their cached label masks.
    """
    cache = open_cache(config.data.cache)
    indices = list(config.data.indices)
    channels = scene_channels(cache, image_ids[0], indices)

    def scenes() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for image_id in tqdm(image_ids, desc="pixel model", unit="scene", disable=not progress):
            image = load_scene(cache, image_id, stats, indices)
            yield image, open_mask(cache, image_id, image.shape[1:])

    model = PixelModel(channels).fit(
        scenes(),
        per_scene=config.pixel.samples,
        max_iter=config.pixel.max_iter,
        seed=config.train.seed,
    )
    path = RunDir.of(run_dir).pixel_model
    model.save(path)
    return path
