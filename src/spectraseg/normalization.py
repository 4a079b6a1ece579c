"""Deprecated since 0.2: the 0.1 path of what is now :mod:`spectraseg.features.normalization`."""

from __future__ import annotations

from typing import Any

import numpy as np

from spectraseg._moved import moved
from spectraseg.features import stats as _stats


def _as_stats(stats: Any) -> _stats.Stats:
    return stats if isinstance(stats, _stats.Stats) else _stats.Stats.from_json(stats)


def _lookup(stats: Any, image_id: str) -> tuple[np.ndarray, np.ndarray]:
    """0.1 ``lookup(stats, image_id)``: :meth:`Stats.lookup` (statistics or their JSON)."""
    return _as_stats(stats).lookup(image_id)


def _with_mode(stats: Any, mode: str) -> _stats.Stats:
    """0.1 ``with_mode(stats, mode)``: :meth:`Stats.with_mode`."""
    return _as_stats(stats).with_mode(mode)


def _validate_stats(doc: Any, source: str = "statistics") -> _stats.Stats:
    """0.1 ``validate_stats``: :meth:`Stats.from_json`."""
    return _stats.Stats.from_json(doc, source)


__getattr__ = moved(
    __name__,
    (
        "spectraseg.features.normalization",
        "spectraseg.features.stats",
        "spectraseg.align.cache",
    ),
    {"lookup": _lookup, "with_mode": _with_mode, "validate_stats": _validate_stats},
)
