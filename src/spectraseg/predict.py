"""Deprecated since 0.2: the 0.1 path of what is now :mod:`spectraseg.inference` (levels and
tuning: :mod:`spectraseg.evaluation`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from spectraseg._moved import moved
from spectraseg.evaluation import thresholds
from spectraseg.features import windows


def _reflect_index(n: int, start: int, stop: int) -> np.ndarray:
    """0.1 signature ``(n, start, stop)`` of :func:`spectraseg.features.windows.reflect_index`."""
    return windows.reflect_index(start, stop - start, n)


def _tune_thresholds(*args: Any, **kwargs: Any) -> dict[int, float]:
    """0.1 ``tune_thresholds``: the thresholds of ``tune_details`` by 0.1's rule, the best
    threshold (ties: the lowest), not the middle of the plateau."""
    kwargs.setdefault("plateau", 0.0)
    return thresholds.tune_details(*args, **kwargs)["thresholds"]


__getattr__ = moved(
    __name__,
    (
        "spectraseg.inference.pipeline",
        "spectraseg.inference.tiling",
        "spectraseg.inference.scene",
        "spectraseg.inference.tasks",
        "spectraseg.inference.tuning",
        "spectraseg.inference.outputs",
        "spectraseg.evaluation.levels",
        "spectraseg.evaluation.thresholds",
        "spectraseg.features.windows",
        "spectraseg.runs",
    ),
    {
        "reflect_index": _reflect_index,
        "tune_thresholds": _tune_thresholds,
        "THRESHOLDS_JSON": "thresholds.json",
    },
)
