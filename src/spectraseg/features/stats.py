"""The normalisation statistics document: typed in memory (:class:`Stats`), JSON on disk.

::

    {"mode": "region", "channels": ["R", ...],
     "dataset": {"mean": [...], "std": [...], "count": N, "counts": [...]},
     "region": {"6010": {...}, ...}, "image": {"6010_1_2": {...}, ...}}

Means and standard deviations are per channel, in physical units (float64 in JSON);
``count`` is the number of grid pixels an entry was computed over and ``counts`` the
number of non-fill pixels per channel (the ones the moments use). ``mode`` is the scope
:meth:`Stats.lookup` uses: the scene's own entry (``image``), its 5 x 5 tile group's
(``region``, the seed team's best) or the dataset's. Computing them is
:mod:`spectraseg.features.normalization`'s job; this module holds the document, its
checks and its files.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from spectraseg.data.dstl import region_of
from spectraseg.data.files import write_text_atomic
from spectraseg.errors import ConfigError, DataError, SpectrasegWarning

MODES: tuple[str, ...] = ("image", "dataset", "region")
"""The three normalisation scopes."""

MIN_STD = 1e-6
"""A channel with a smaller standard deviation (physical units) is constant: std becomes 1."""


@dataclass(frozen=True)
class StatsEntry:
    """Per-channel ``mean`` and ``std`` (physical units) of one scope's pixels."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    count: int = 0
    """Grid pixels the entry was computed over."""
    counts: tuple[int, ...] = ()
    """Non-fill pixels per channel (the moments' pixels); empty when not recorded."""

    def to_json(self) -> dict[str, Any]:
        return {
            "mean": list(self.mean),
            "std": list(self.std),
            "count": self.count,
            "counts": list(self.counts),
        }

    @classmethod
    def from_json(cls, doc: Any, n: int, where: str) -> StatsEntry:
        """An entry of ``n`` channels from JSON; DataError naming ``where`` if malformed."""
        if not isinstance(doc, dict) or not {"mean", "std"} <= set(doc):
            raise DataError(f"{where} needs 'mean' and 'std' lists")
        for key in ("mean", "std"):
            v = doc[key]
            if not isinstance(v, list) or len(v) != n:
                raise DataError(f"{where} '{key}' must be a list of {n} numbers")
            if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in v):
                raise DataError(f"{where} '{key}' holds a non-finite or non-numeric value")
        counts = doc.get("counts", [])
        return cls(
            tuple(float(x) for x in doc["mean"]),
            tuple(float(x) for x in doc["std"]),
            int(doc.get("count", 0)),
            tuple(int(x) for x in counts) if isinstance(counts, list) else (),
        )


@dataclass(frozen=True)
class Stats:
    """Normalisation statistics in all three scopes, and the scope in use (``mode``)."""

    mode: str
    channels: tuple[str, ...]
    dataset: StatsEntry
    region: Mapping[str, StatsEntry] = field(default_factory=dict)
    image: Mapping[str, StatsEntry] = field(default_factory=dict)

    def scope(self, mode: str) -> Mapping[str, StatsEntry]:
        """The entries of the ``image`` or ``region`` scope (empty for ``dataset``)."""
        return self.image if mode == "image" else self.region if mode == "region" else {}

    def with_mode(self, mode: str) -> Stats:
        """The same statistics, looked up in the ``mode`` scope (all scopes are stored)."""
        if mode not in MODES:
            raise ConfigError(f"normalisation mode {mode!r} is not one of {', '.join(MODES)}")
        return replace(self, mode=mode)

    def lookup(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        """A scene's ``(mean, std)``, float32 ``(C,)`` in :attr:`channels` order.

        The scene's entry in :attr:`mode`'s scope; a missing image or region entry falls
        back to the dataset entry with a :class:`~spectraseg.errors.SpectrasegWarning`
        (prediction never relies on it: it completes the statistics of new regions first,
        :func:`~spectraseg.features.normalization.complete_stats`). The std is always
        finite and >= :data:`MIN_STD` (constant channels get 1).
        """
        entry = self.dataset
        key = scope_key(self.mode, image_id)
        if key is not None:
            got = self.scope(self.mode).get(key)
            if got is None:
                warnings.warn(
                    f"no {self.mode} statistics for {key!r}; scene {image_id} is normalised "
                    "with the dataset statistics",
                    SpectrasegWarning,
                    stacklevel=2,
                )
            else:
                entry = got
        mean = np.asarray(entry.mean, dtype=np.float64)
        std = np.asarray(entry.std, dtype=np.float64)
        std = np.where(np.isfinite(std) & (std >= MIN_STD), std, 1.0)
        return mean.astype(np.float32), std.astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        """The JSON document (module docstring)."""
        return {
            "mode": self.mode,
            "channels": list(self.channels),
            "dataset": self.dataset.to_json(),
            "region": {k: e.to_json() for k, e in self.region.items()},
            "image": {k: e.to_json() for k, e in self.image.items()},
        }

    @classmethod
    def from_json(cls, doc: Any, source: str = "statistics") -> Stats:
        """Statistics from their JSON document; DataError naming ``source`` if malformed."""
        if not isinstance(doc, dict):
            raise DataError(f"{source} is not a JSON object")
        if doc.get("mode") not in MODES:
            raise DataError(f"{source} has mode {doc.get('mode')!r}, expected one of {MODES}")
        channels = doc.get("channels")
        if not isinstance(channels, list) or not channels:
            raise DataError(f"{source} has no 'channels' list")
        n = len(channels)
        scopes: dict[str, dict[str, StatsEntry]] = {}
        for scope in ("region", "image"):
            entries = doc.get(scope, {})
            if not isinstance(entries, dict):
                raise DataError(f"{source} '{scope}' must be an object")
            scopes[scope] = {
                k: StatsEntry.from_json(e, n, f"{source} {scope} {k!r}") for k, e in entries.items()
            }
        dataset = StatsEntry.from_json(doc.get("dataset"), n, f"{source} 'dataset'")
        return cls(doc["mode"], tuple(channels), dataset, scopes["region"], scopes["image"])


def scope_key(mode: str, image_id: str) -> str | None:
    """The key of a scene's entry in the ``mode`` scope: its id, its region, or None (dataset)."""
    if mode == "image":
        return image_id
    if mode == "region":
        return region_of(image_id)
    return None


def save_stats(stats: Stats, path: str | os.PathLike[str]) -> None:
    """Write statistics as JSON, atomically."""
    write_text_atomic(path, json.dumps(stats.to_json(), indent=1) + "\n")


def load_stats(path: str | os.PathLike[str]) -> Stats:
    """Read and check a statistics JSON file written by :func:`save_stats`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"statistics file {path} does not exist")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} cannot be read as JSON ({exc})") from None
    return Stats.from_json(doc, str(path))
