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

The result is a :class:`~spectraseg.features.stats.Stats` (its JSON document:
``docs/architecture.md``). A channel whose standard deviation is below
:data:`~spectraseg.features.stats.MIN_STD` (a constant channel) has ``std`` 1.0, so
normalising never divides by zero; a channel without any non-fill pixel in a scope takes
the dataset value. :func:`extend_stats` adds image and region entries for scenes outside
the statistics (validation or test scenes: normalising needs no labels) without changing
the others; :func:`complete_stats` does it for exactly the scenes whose scope entry is
missing, as prediction needs for a region the run never saw.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from tqdm import tqdm

from spectraseg.align.cache import (
    Cache,
    channel_valid_boxes,
    open_cache_dir,
    scale_offset,
)
from spectraseg.data.dstl import CHANNEL_ORDER, region_of
from spectraseg.errors import ConfigError, DataError, SpectrasegWarning
from spectraseg.features.indices import IndexPlan, compute_plans, is_index_name, resolve_indices
from spectraseg.features.stats import MIN_STD, MODES, Stats, StatsEntry, scope_key

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
    """Moments of one cached scene's channels over their non-fill pixels (inside each
    product's valid box and, for a georeferenced scene, outside its nodata mask), in stored
    units.

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
    nodata = cache.nodata(image_id)
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
            rows = slice(r, min(r + step, r1))
            values = np.asarray(arr[c0:c1, rows, q0:q1]).reshape(c1 - c0, -1)
            if nodata is not None:
                values = values[:, ~np.asarray(nodata[rows, q0:q1]).ravel()]
            acc.merge_into(Moments.of(values), slice(c0, c1))
    return acc


# --------------------------------------------------------------------------- statistics


def _common_box(boxes: Sequence[tuple[int, int, int, int]]) -> tuple[int, int, int, int]:
    """The intersection of ``(row0, row1, col0, col1)`` boxes (empty when ``row0 >= row1``
    or ``col0 >= col1``)."""
    r0, r1, c0, c1 = zip(*boxes, strict=True)
    return max(r0), min(r1), max(c0), min(c1)


def index_moments(
    cache: Cache, image_id: str, plans: Sequence[IndexPlan], block_values: int = _BLOCK_VALUES
) -> Moments:
    """Moments of spectral indices (:mod:`spectraseg.features.indices`) over one cached scene,
    in index units (each in [-1, 1]), one channel per plan.

    An index counts the pixels where every band it reads is non-fill (inside each band's
    product's valid box, outside the scene's nodata mask). Streamed in row blocks of about
    ``block_values`` values, as :func:`scene_moments`.
    """
    arr = cache.load(image_id)
    _, h, w = arr.shape
    boxes = channel_valid_boxes(cache, image_id, arr.shape)
    common = [_common_box([boxes[b] for b in p.bands]) for p in plans]
    nodata = cache.nodata(image_id)
    scale, offset = scale_offset(cache)
    acc = Moments.zeros(len(plans))
    step = max(1, block_values // max(1, arr.shape[0] * w))
    for r in range(0, h, step):
        raw = np.asarray(arr[:, r : r + step])
        values = compute_plans(raw, plans, scale, offset)  # as load_scene computes them
        ok = None if nodata is None else ~np.asarray(nodata[r : r + step])
        for k, (r0, r1, c0, c1) in enumerate(common):
            rows = slice(max(r0 - r, 0), max(min(r1 - r, raw.shape[1]), 0))
            v = values[k, rows, c0:c1]
            v = v[ok[rows, c0:c1]] if ok is not None else v.ravel()
            acc.merge_into(Moments.of(v[None]), slice(k, k + 1))
    return acc


def _scene_in(
    cache: Cache, image_id: str, index: Mapping[str, int], indices: Sequence[str] = ()
) -> tuple[Moments, int]:
    """A scene's moments laid out on the channels ``index`` (name -> position), and its pixels.

    Scene channels outside ``index`` are dropped; channels of ``index`` the scene lacks get
    count 0. ``indices`` (names in ``index``) are spectral indices of the scene's channels.
    """
    m = scene_moments(cache, image_id)
    full = Moments.zeros(len(index))
    names = cache.channels(image_id)
    keep = [k for k, c in enumerate(names) if c in index]
    full.merge_into(Moments(m.n[keep], m.mean[keep], m.m2[keep]), [index[names[k]] for k in keep])
    if indices:
        plans = resolve_indices(list(indices), names)
        full.merge_into(index_moments(cache, image_id, plans), [index[i] for i in indices])
    _, h, w = cache.load(image_id).shape
    return full, h * w


def index_channels(stats: Stats) -> list[str]:
    """The spectral indices the statistics hold entries for (after the band channels)."""
    return [c for c in stats.channels if is_index_name(c)]


def _order_channels(names: Iterable[str]) -> list[str]:
    rank = {c: i for i, c in enumerate(CHANNEL_ORDER)}
    return sorted(set(names), key=lambda c: (rank.get(c, len(rank)), c))


def _units(channels: Sequence[str], scale: float, offset: float) -> tuple[np.ndarray, np.ndarray]:
    """Per channel the ``(scale, offset)`` from moment units to physical ones: the cache's
    for bands (stored values), 1 and 0 for spectral indices (computed in their own units)."""
    idx = np.array([is_index_name(c) for c in channels], dtype=bool)
    return np.where(idx, 1.0, scale), np.where(idx, 0.0, offset)


def _entry(
    m: Moments,
    pixels: int,
    scale: float | np.ndarray,
    offset: float | np.ndarray,
    fallback: StatsEntry | None,
) -> StatsEntry:
    """One entry in physical units, with constant and empty channels made safe."""
    mean = m.mean * scale + offset
    std = m.std * np.abs(scale)
    std = np.where(np.isfinite(std) & (std >= MIN_STD), std, 1.0)
    empty = m.n == 0
    if empty.any():
        if fallback is not None:
            mean = np.where(empty, np.asarray(fallback.mean), mean)
            std = np.where(empty, np.asarray(fallback.std), std)
        else:
            mean = np.where(empty, 0.0, mean)
            std = np.where(empty, 1.0, std)
    return StatsEntry(
        tuple(float(v) for v in mean),
        tuple(float(v) for v in std),
        int(pixels),
        tuple(int(v) for v in m.n),
    )


def compute_stats(
    cache: str | os.PathLike[str] | Cache,
    image_ids: Sequence[str] | None = None,
    mode: str = "region",
    progress: bool = True,
    indices: Sequence[str] = (),
) -> Stats:
    """Normalisation statistics of cached scenes in all three scopes, in one streaming pass.

    Args:
        cache: the cache directory (or an opened cache).
        image_ids: scenes to use (normally the training scenes); None uses every cached scene.
        mode: the scope :meth:`Stats.lookup` uses: ``image``, ``dataset`` or ``region``.
        progress: show a tqdm bar on stderr.
        indices: spectral indices to hold statistics for too (channels after the bands, in
            this order, in index units), so that they are normalised like the bands
            (``data.index_norm``); none by default (indices then enter as computed).

    Returns:
        :class:`~spectraseg.features.stats.Stats` with ``dataset``, ``region`` (keyed by
        :func:`~spectraseg.data.dstl.region_of`) and ``image`` entries; means and stds in
        physical units.
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
    resolve_indices(list(indices), channels)  # a bad name fails before the pass, not in it
    channels += list(indices)
    index = {c: k for k, c in enumerate(channels)}
    scale, offset = _units(channels, *scale_offset(cache))

    per_image: dict[str, tuple[Moments, int]] = {}
    for image_id in tqdm(ids, desc="stats", unit="scene", disable=not progress, leave=False):
        per_image[image_id] = _scene_in(cache, image_id, index, indices)

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
    return Stats(
        mode,
        tuple(channels),
        ds_entry,
        {k: _entry(m, p, scale, offset, ds_entry) for k, (m, p) in sorted(regions.items())},
        {k: _entry(m, p, scale, offset, ds_entry) for k, (m, p) in per_image.items()},
    )


def extend_stats(
    stats: Stats,
    cache: str | os.PathLike[str] | Cache,
    image_ids: Sequence[str],
    progress: bool = True,
) -> Stats:
    """A copy of ``stats`` with entries for new scenes (e.g. test scenes at prediction time).

    Adds an ``image`` entry for each scene of ``image_ids``, and a ``region`` entry for each
    region that has none yet, computed from those scenes; existing entries and the dataset
    statistics are unchanged. Normalising a scene by its own statistics (``image`` mode) or
    those of its tile group needs no labels, so doing this for unlabelled scenes is sound.
    Channels are those of ``stats`` (spectral indices included); one a scene lacks takes
    the dataset value.
    """
    cache = open_cache_dir(cache)
    known = set(cache.image_ids)
    for i in image_ids:
        if i not in known:
            raise ConfigError(f"scene {i} is not in the cache")
    index = {c: k for k, c in enumerate(stats.channels)}
    scale, offset = _units(stats.channels, *scale_offset(cache))
    indices = index_channels(stats)
    image, region = dict(stats.image), dict(stats.region)
    new_regions: dict[str, tuple[Moments, int]] = {}
    for image_id in tqdm(image_ids, desc="stats", unit="scene", disable=not progress, leave=False):
        m, pixels = _scene_in(cache, image_id, index, indices)
        image[image_id] = _entry(m, pixels, scale, offset, stats.dataset)
        key = region_of(image_id)
        if key not in region:
            rm, rp = new_regions.get(key, (Moments.zeros(len(index)), 0))
            new_regions[key] = (rm.merge(m), rp + pixels)
    for key, (m, pixels) in sorted(new_regions.items()):
        region[key] = _entry(m, pixels, scale, offset, stats.dataset)
    return replace(stats, region=region, image=image)


def complete_stats(
    stats: Stats,
    cache: str | os.PathLike[str] | Cache,
    image_ids: Sequence[str],
    progress: bool = True,
) -> tuple[Stats, dict[str, list[str]]]:
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
    missing: dict[str, list[str]] = {}
    for image_id in dict.fromkeys(image_ids):
        key = scope_key(stats.mode, image_id)
        if key is not None and key not in stats.scope(stats.mode):
            missing.setdefault(key, []).append(image_id)
    if not missing:
        return stats, {}
    scenes = [i for ids in missing.values() for i in ids]
    return extend_stats(stats, cache, scenes, progress=progress), missing


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
