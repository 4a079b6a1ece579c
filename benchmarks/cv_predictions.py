"""A trained cross-validated run opened to predict its scenes again with its fold models.

Shared by the benchmarks that re-score a run (``bench_accuracy.tta_lever``,
``bench_adapt_bn.py``, ``bench_fit_gap.py``): each fold model predicts some scenes (its
held-out ones, or its training ones) and the predictions are kept as per-class histograms
against the truth (:func:`spectraseg.crossval.level_histograms`), the form that
:func:`spectraseg.crossval.nested_scores` and threshold curves read.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

Histograms = dict[str, tuple[np.ndarray, np.ndarray]]
"""Per scene, ``(pos, neg)`` float64 ``(1, 10, 256)``: area-weighted counts per level."""


@dataclass
class CVRun:
    """A finished ``spectraseg train --folds K`` run, ready to predict its cache's scenes."""

    root: Path
    cv: Any
    config: Any
    stats: Any
    cache: Any
    areas: dict[str, float]

    @classmethod
    def open(cls, run: Path) -> CVRun:
        from spectraseg.align.cache import open_cache
        from spectraseg.evaluation.metrics import pixel_areas
        from spectraseg.runs import RunDir, read_config, read_cv, read_stats

        rd = RunDir.of(run)
        cv, config, stats = read_cv(rd), read_config(rd), read_stats(rd)
        if cv is None or stats is None:
            raise SystemExit(f"{run} is not a finished cross-validated run")
        cache = open_cache(config.data.cache)
        areas = pixel_areas(cache, config.data.root, cv.scenes)
        return cls(rd.root, cv, config, stats, cache, areas)

    @property
    def scenes(self) -> list[str]:
        """Every scene of the run, fold by fold."""
        return self.cv.scenes

    def fold_models(self) -> Iterator[tuple[torch.nn.Module, list[str]]]:
        """Each fold's model (on the CPU, eval mode) with the scenes it held out."""
        from spectraseg.runs import load_model

        for member, fold in zip(self.cv.members, self.cv.folds, strict=True):
            model, _, _ = load_model(self.root / member, "latest", "cpu")
            yield model, list(fold)

    def image(self, image_id: str) -> np.ndarray:
        """``(C, H, W)`` float32 network input of a scene, normalised as the run trained."""
        from spectraseg.features.patches import load_scene

        return load_scene(self.cache, image_id, self.stats, self.config.data.indices)

    def histograms(
        self, model: torch.nn.Module, ids: Iterable[str], tta: bool = False
    ) -> Histograms:
        """``model``'s predictions of ``ids`` as per-class histograms against their masks."""
        from spectraseg.crossval import level_histograms
        from spectraseg.inference.scene import PredictOptions, resolve_options, scene_levels

        opts = resolve_options(PredictOptions(tta=tta, device="cpu"), self.config)
        out: Histograms = {}
        for i in ids:
            levels = scene_levels(model, self.image(i), opts)
            out[i] = level_histograms(self.cache, i, levels, self.areas[i])
        return out
