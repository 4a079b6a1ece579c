"""Per-channel normalisation statistics in three scopes: image, dataset and region.

Every channel is normalised to zero mean and unit variance::

    x_norm = (stored * scale + offset - mean) / std        (float32)

where ``stored`` is the cache's uint16 value, ``scale``/``offset`` come from its manifest
and ``mean``/``std`` (physical units) come from one of three scopes:

- ``image``: the scene's own statistics;
- ``dataset``: all scenes the statistics were computed over;
- ``region``: the scene's 5 x 5 tile group ``{region}_*`` (the seed team's best).

Statistics are gathered in one streaming pass over the cache (:func:`compute_stats`): scene
by scene, in row blocks, with float64 moments merged by Chan et al.'s parallel update, so
region and dataset values equal numpy's over the same pixels (to float rounding) without
ever holding more than one block in memory. Fill pixels (outside a product's ``valid``
box, where the cache holds the channel's fill value) are skipped.

The result is a JSON document (``docs/architecture.md``)::

    {"mode": "region", "channels": ["R", ...],
     "dataset": {"mean": [...], "std": [...], "count": N, "counts": [...]},
     "region": {"6010": {...}, ...}, "image": {"6010_1_2": {...}, ...}}

``count`` is the number of grid pixels the entry was computed over and ``counts`` the
number of non-fill pixels per channel (the ones the moments use). A channel whose standard
deviation is below :data:`MIN_STD` (a constant channel) has ``std`` 1.0, so normalising
never divides by zero; a channel without any non-fill pixel in a scope takes the dataset
value. :func:`lookup` gives a scene's ``(mean, std)`` in the statistics' mode, falling back
to the dataset statistics with a :class:`~spectraseg.errors.SpectrasegWarning`.
:func:`extend_stats` adds image and region entries for scenes outside the statistics
(validation or test scenes: normalising needs no labels) without changing the others.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from spectraseg.align.cache import (
    CHANNEL_ORDER,
    Cache,
    channel_valid_boxes,
    open_cache_dir,
    scale_offset,
)
from spectraseg.data.dstl import region_of
from spectraseg.data.files import atomic_output
from spectraseg.errors import ConfigError, DataError, SpectrasegWarning

MODES: tuple[str, ...] = ("image", "dataset", "region")
"""The three normalisation scopes."""

MIN_STD = 1e-6
"""A channel with a smaller standard deviation (physical units) is constant: std becomes 1."""


_BLOCK_VALUES = 1 << 22  # values per streamed block: 32 MiB of float64


# --------------------------------------------------------------------------- cache access


# --------------------------------------------------------------------------- moments


@dataclass
class Moments:
    """Running per-channel moments: count ``n``, ``mean`` and ``m2`` (sum of squared deviations).

    All three are float64 arrays of shape (C,); ``n`` holds integers. Merging two is exact
    in the algebraic sense (Chan et al. 1979), so stats merged over blocks, scenes and
    regions equal the two-pass values over the union of their pixels.
    """

    n: np.ndarray
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def zeros(cls, channels: int) -> Moments:
        """Empty moments for ``channels`` channels."""
        z = np.zeros(channels, dtype=np.float64)
        return cls(z.copy(), z.copy(), z.copy())

    @classmethod
    def of(cls, values: np.ndarray) -> Moments:
        """Moments of (C, N) values (any real dtype), computed two-pass in float64."""
        x = np.asarray(values, dtype=np.float64)
        n = np.full(x.shape[0], float(x.shape[1]))
        if x.shape[1] == 0:
            return cls(n, np.zeros(x.shape[0]), np.zeros(x.shape[0]))
        mean = x.mean(axis=1)
        m2 = np.square(x - mean[:, None]).sum(axis=1)
        return cls(n, mean, m2)

    def merge(self, other: Moments) -> Moments:
        """The moments of the union of both pixel sets."""
        n = self.n + other.n
        safe = np.where(n > 0, n, 1.0)
        delta = other.mean - self.mean
        mean = np.where(n > 0, self.mean + delta * (other.n / safe), 0.0)
        m2 = self.m2 + other.m2 + np.square(delta) * (self.n * other.n / safe)
        return Moments(n, mean, m2)

    def merge_into(self, other: Moments, index: Sequence[int] | slice) -> None:
        """Merge ``other`` (moments of a subset of channels) into channels ``index`` in place."""
        cur = Moments(self.n[index], self.mean[index], self.m2[index])
        new = cur.merge(other)
        self.n[index], self.mean[index], self.m2[index] = new.n, new.mean, new.m2

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation (ddof=0, as numpy's default); 0 where n = 0."""
        return np.sqrt(np.maximum(self.m2, 0.0) / np.where(self.n > 0, self.n, 1.0))


def scene_moments(cache: Cache, image_id: str, block_values: int = _BLOCK_VALUES) -> Moments:
    """Moments of one cached scene's channels over their non-fill pixels, in stored units.

    Streams the scene in row blocks of about ``block_values`` values (float64), so memory
    stays bounded whatever the scene size. Channels of one product share a valid box and
    are read together.
    """
    arr = cache.load(image_id)
    if arr.ndim != 3:
        raise DataError(f"cached scene {image_id} has shape {arr.shape}, expected (C, H, W)")
    channels = cache.channels(image_id)
    if arr.shape[0] != len(channels):
        raise DataError(
            f"cached scene {image_id} has {arr.shape[0]} channels but the manifest lists "
            f"{len(channels)}"
        )
    boxes = channel_valid_boxes(cache, image_id, arr.shape)
    # Consecutive channels with one box (one product) form a group read as one slab.
    groups: list[tuple[int, int, tuple[int, int, int, int]]] = []
    for c, box in enumerate(boxes):
        if groups and groups[-1][2] == box and groups[-1][1] == c:
            groups[-1] = (groups[-1][0], c + 1, box)
        else:
            groups.append((c, c + 1, box))
    acc = Moments.zeros(len(channels))
    for c0, c1, (r0, r1, q0, q1) in groups:
        width = q1 - q0
        if r1 <= r0 or width <= 0:
            continue
        step = max(1, block_values // max(1, (c1 - c0) * width))
        for r in range(r0, r1, step):
            block = np.asarray(arr[c0:c1, r : min(r + step, r1), q0:q1])
            acc.merge_into(Moments.of(block.reshape(c1 - c0, -1)), slice(c0, c1))
    return acc


# --------------------------------------------------------------------------- statistics


def _scene_in(cache: Cache, image_id: str, index: Mapping[str, int]) -> tuple[Moments, int]:
    """A scene's moments laid out on the channels ``index`` (name -> position), and its pixels.

    Scene channels outside ``index`` are dropped; channels of ``index`` the scene lacks get
    count 0.
    """
    m = scene_moments(cache, image_id)
    full = Moments.zeros(len(index))
    names = cache.channels(image_id)
    keep = [k for k, c in enumerate(names) if c in index]
    full.merge_into(Moments(m.n[keep], m.mean[keep], m.m2[keep]), [index[names[k]] for k in keep])
    _, h, w = cache.load(image_id).shape
    return full, h * w


def _order_channels(names: Iterable[str]) -> list[str]:
    rank = {c: i for i, c in enumerate(CHANNEL_ORDER)}
    return sorted(set(names), key=lambda c: (rank.get(c, len(rank)), c))


def _entry(
    m: Moments, pixels: int, scale: float, offset: float, fallback: dict[str, Any] | None
) -> dict[str, Any]:
    """One JSON stats entry in physical units, with constant and empty channels made safe."""
    mean = m.mean * scale + offset
    std = m.std * abs(scale)
    std = np.where(np.isfinite(std) & (std >= MIN_STD), std, 1.0)
    empty = m.n == 0
    if empty.any():
        if fallback is not None:
            mean = np.where(empty, np.asarray(fallback["mean"]), mean)
            std = np.where(empty, np.asarray(fallback["std"]), std)
        else:
            mean = np.where(empty, 0.0, mean)
            std = np.where(empty, 1.0, std)
    return {
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "count": int(pixels),
        "counts": [int(v) for v in m.n],
    }


def compute_stats(
    cache: str | os.PathLike[str] | Cache,
    image_ids: Sequence[str] | None = None,
    mode: str = "region",
    progress: bool = True,
) -> dict[str, Any]:
    """Normalisation statistics of cached scenes in all three scopes, in one streaming pass.

    Args:
        cache: the cache directory (or an opened cache).
        image_ids: scenes to use (normally the training scenes); None uses every cached scene.
        mode: the scope :func:`lookup` uses later: ``image``, ``dataset`` or ``region``.
        progress: show a tqdm bar on stderr.

    Returns:
        The JSON-ready statistics document (module docstring), with ``dataset``, ``region``
        (keyed by :func:`~spectraseg.data.dstl.region_of`) and ``image`` entries; means and stds in
        physical units, float64.
    """
    if mode not in MODES:
        raise ConfigError(f"normalisation mode {mode!r} is not one of {', '.join(MODES)}")
    cache = open_cache_dir(cache)
    ids = list(cache.image_ids) if image_ids is None else list(image_ids)
    known = set(cache.image_ids)
    for i in ids:
        if i not in known:
            raise ConfigError(f"scene {i} is not in the cache")
    if not ids:
        raise ConfigError("no scenes to compute statistics over")
    if len(set(ids)) != len(ids):
        raise ConfigError("the list of scenes for statistics repeats a scene")
    channels = _order_channels(ch for i in ids for ch in cache.channels(i))
    index = {c: k for k, c in enumerate(channels)}
    scale, offset = scale_offset(cache)

    per_image: dict[str, tuple[Moments, int]] = {}
    for image_id in tqdm(ids, desc="stats", unit="scene", disable=not progress, leave=False):
        per_image[image_id] = _scene_in(cache, image_id, index)

    dataset = Moments.zeros(len(channels))
    regions: dict[str, tuple[Moments, int]] = {}
    dataset_pixels = 0
    for image_id, (m, pixels) in per_image.items():
        dataset = dataset.merge(m)
        dataset_pixels += pixels
        key = region_of(image_id)
        rm, rp = regions.get(key, (Moments.zeros(len(channels)), 0))
        regions[key] = (rm.merge(m), rp + pixels)

    ds_entry = _entry(dataset, dataset_pixels, scale, offset, None)
    if np.any(dataset.n == 0):
        missing = [c for c, n in zip(channels, dataset.n, strict=True) if n == 0]
        warnings.warn(
            f"channel(s) {', '.join(missing)} have no non-fill pixel in any scene; "
            "they get mean 0 and std 1",
            SpectrasegWarning,
            stacklevel=2,
        )
    return {
        "mode": mode,
        "channels": channels,
        "dataset": ds_entry,
        "region": {
            k: _entry(m, p, scale, offset, ds_entry) for k, (m, p) in sorted(regions.items())
        },
        "image": {k: _entry(m, p, scale, offset, ds_entry) for k, (m, p) in per_image.items()},
    }


def extend_stats(
    stats: Mapping[str, Any],
    cache: str | os.PathLike[str] | Cache,
    image_ids: Sequence[str],
    progress: bool = True,
) -> dict[str, Any]:
    """A copy of ``stats`` with entries for new scenes (e.g. test scenes at prediction time).

    Adds an ``image`` entry for each scene of ``image_ids``, and a ``region`` entry for each
    region that has none yet, computed from those scenes; existing entries and the dataset
    statistics are unchanged. Normalising a scene by its own statistics (``image`` mode) or
    those of its tile group needs no labels, so doing this for unlabelled scenes is sound.
    Channels are those of ``stats``; one a scene lacks takes the dataset value.
    """
    cache = open_cache_dir(cache)
    known = set(cache.image_ids)
    for i in image_ids:
        if i not in known:
            raise ConfigError(f"scene {i} is not in the cache")
    channels = list(stats["channels"])
    index = {c: k for k, c in enumerate(channels)}
    scale, offset = scale_offset(cache)
    ds_entry = stats["dataset"]
    out = dict(stats)
    out["image"] = dict(stats.get("image", {}))
    out["region"] = dict(stats.get("region", {}))
    new_regions: dict[str, tuple[Moments, int]] = {}
    for image_id in tqdm(image_ids, desc="stats", unit="scene", disable=not progress, leave=False):
        m, pixels = _scene_in(cache, image_id, index)
        out["image"][image_id] = _entry(m, pixels, scale, offset, ds_entry)
        key = region_of(image_id)
        if key not in out["region"]:
            rm, rp = new_regions.get(key, (Moments.zeros(len(channels)), 0))
            new_regions[key] = (rm.merge(m), rp + pixels)
    for key, (m, pixels) in sorted(new_regions.items()):
        out["region"][key] = _entry(m, pixels, scale, offset, ds_entry)
    return out


def scope_key(mode: str, image_id: str) -> str | None:
    """The key of a scene's entry in the ``mode`` scope: its id, its region, or None (dataset)."""
    if mode == "image":
        return image_id
    if mode == "region":
        return region_of(image_id)
    return None


def complete_stats(
    stats: Mapping[str, Any],
    cache: str | os.PathLike[str] | Cache,
    image_ids: Sequence[str],
    progress: bool = True,
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """``stats`` with an entry in its own scope for every scene of ``image_ids``.

    A scene whose image (``image`` mode) or region (``region`` mode) has no entry gets one
    computed from the scenes of ``image_ids`` themselves (:func:`extend_stats`: no labels
    needed): a new region's entry pools every scene of that region in ``image_ids``, as
    training's statistics pooled every cached scene of a region. This is what keeps a
    scene of a region the run never saw from being normalised with the dataset statistics,
    unlike every scene the model was trained and validated on (on five held-out real DSTL
    scenes, two of them from new regions, that fallback cost the shipped model 0.015-0.03
    mean Jaccard). Entries already present are kept unchanged.

    Returns ``(stats, computed)``; ``computed`` maps each new entry's key (image id or
    region) to the scenes it was computed from (empty when nothing was missing).
    """
    mode = stats.get("mode", "dataset")
    missing: dict[str, list[str]] = {}
    for image_id in dict.fromkeys(image_ids):
        key = scope_key(mode, image_id)
        if key is not None and key not in stats.get(mode, {}):
            missing.setdefault(key, []).append(image_id)
    if not missing:
        return dict(stats), {}
    scenes = [i for ids in missing.values() for i in ids]
    return extend_stats(stats, cache, scenes, progress=progress), missing


def with_mode(stats: Mapping[str, Any], mode: str) -> dict[str, Any]:
    """A copy of ``stats`` whose :func:`lookup` scope is ``mode`` (all scopes are stored)."""
    if mode not in MODES:
        raise ConfigError(f"normalisation mode {mode!r} is not one of {', '.join(MODES)}")
    out = dict(stats)
    out["mode"] = mode
    return out


def _check_entry(entry: Any, n: int, where: str) -> None:
    if not isinstance(entry, dict) or not {"mean", "std"} <= set(entry):
        raise DataError(f"{where} needs 'mean' and 'std' lists")
    for key in ("mean", "std"):
        v = entry[key]
        if not isinstance(v, list) or len(v) != n:
            raise DataError(f"{where} '{key}' must be a list of {n} numbers")
        if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in v):
            raise DataError(f"{where} '{key}' holds a non-finite or non-numeric value")


def validate_stats(stats: Any, source: str = "statistics") -> dict[str, Any]:
    """Check a statistics document's structure; DataError naming ``source`` if malformed."""
    if not isinstance(stats, dict):
        raise DataError(f"{source} is not a JSON object")
    if stats.get("mode") not in MODES:
        raise DataError(f"{source} has mode {stats.get('mode')!r}, expected one of {MODES}")
    channels = stats.get("channels")
    if not isinstance(channels, list) or not channels:
        raise DataError(f"{source} has no 'channels' list")
    n = len(channels)
    _check_entry(stats.get("dataset"), n, f"{source} 'dataset'")
    for scope in ("region", "image"):
        entries = stats.get(scope, {})
        if not isinstance(entries, dict):
            raise DataError(f"{source} '{scope}' must be an object")
        for key, entry in entries.items():
            _check_entry(entry, n, f"{source} {scope} {key!r}")
    return stats


def save_stats(stats: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write statistics as JSON, atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(stats, indent=1) + "\n", encoding="utf-8")


def load_stats(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a statistics JSON file written by :func:`save_stats`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"statistics file {path} does not exist")
    try:
        stats = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} cannot be read as JSON ({exc})") from None
    return validate_stats(stats, str(path))


def lookup(stats: Mapping[str, Any], image_id: str) -> tuple[np.ndarray, np.ndarray]:
    """A scene's ``(mean, std)``, float32 (C,) in ``stats["channels"]`` order, physical units.

    Uses the statistics' ``mode``: the scene's own entry (``image``), its region's entry
    (``region``) or the dataset entry. A missing image or region entry falls back to the
    dataset entry with a :class:`~spectraseg.errors.SpectrasegWarning`. The returned std is
    always finite and >= :data:`MIN_STD` (constant channels get 1).
    """
    mode = stats.get("mode", "dataset")
    if mode not in MODES:
        raise ConfigError(f"statistics mode {mode!r} is not one of {', '.join(MODES)}")
    entry = stats["dataset"]
    key = scope_key(mode, image_id)
    if key is not None:
        got = stats.get(mode, {}).get(key)
        if got is None:
            warnings.warn(
                f"no {mode} statistics for {key!r}; scene {image_id} is normalised with "
                "the dataset statistics",
                SpectrasegWarning,
                stacklevel=2,
            )
        else:
            entry = got
    mean = np.asarray(entry["mean"], dtype=np.float64)
    std = np.asarray(entry["std"], dtype=np.float64)
    std = np.where(np.isfinite(std) & (std >= MIN_STD), std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)


def normalize(
    x: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    scale: float = 1.0,
    offset: float = 0.0,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``(x * scale + offset - mean) / std`` per channel: (C, ...) any dtype -> float32 (C, ...).

    ``mean`` and ``std`` are (C,) in physical units; ``x`` holds stored cache values.
    """
    shape = (-1,) + (1,) * (x.ndim - 1)
    # Fold scale/offset into the statistics: one multiply-add per value.
    s = (np.asarray(std, np.float64) / scale).reshape(shape)
    m = ((np.asarray(mean, np.float64) - offset) / scale).reshape(shape)
    if out is None:
        out = np.empty(x.shape, dtype=np.float32)
    np.subtract(x, m.astype(np.float32), out=out, casting="unsafe")
    out *= (1.0 / s).astype(np.float32)
    return out
