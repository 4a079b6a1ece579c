"""Training data: label masks, validation split, random patches and whole scenes.

- **Masks** are rasterised once per scene on the cache's grid from the labels and stored
  as ``CACHE/masks/{id}.npy``, (K, H, W) uint8 {0, 1} for the K classes of the cache's
  schema (:func:`build_masks`).
- **Validation split** (:func:`split_scenes`) is by whole scenes: an explicit list, or a
  share of scenes chosen by *region group*, so near-duplicate tiles never straddle train
  and validation. Regions 6110 and 6140 overlap on the ground (dstl-lite's README: two
  near-duplicate pairs), so by default they form one group (:data:`DEFAULT_GROUPS`).
- **Patches** (:class:`PatchDataset`): a map-style ``torch.utils.data.Dataset`` of virtual
  length (patches per epoch) whose item ``i`` is a deterministic function of
  ``(seed, rank, epoch, i)``: identical for any number of DataLoader workers, distinct per
  distributed rank and per epoch (:meth:`PatchDataset.set_epoch`). A ``rare_share`` of the
  patches contains a pixel of a rare class (by default structures, waterway, standing water
  and both vehicle classes): a class is drawn uniformly among the rare classes present in
  the training scenes, then a scene containing it, then a pixel of it; the window is placed
  around that pixel (up to ``jitter * size`` pixels off centre). Other windows are centred
  on a uniformly random pixel of a scene drawn by area. Windows may extend past a scene's
  edge: the scene is mirrored there (``numpy.pad`` "reflect" mode). One of the 8 symmetries
  of the square is applied identically to image and mask.
- **Whole scenes** (:func:`load_scene`): a normalised (C, H, W) float32 stack for
  validation and prediction, with the same channels as the patches.

Image channels are the normalised cache channels (:mod:`spectraseg.features.normalization`),
followed by the requested spectral indices (:mod:`spectraseg.features.indices`, computed from the
physical digital numbers before normalisation, in [-1, 1]). Memory does not grow with the
number of scenes beyond memory maps opened lazily in each process and a few small arrays
per scene (coarse positions of rare-class pixels).
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from spectraseg import RARE_CLASSES
from spectraseg.align.cache import Cache, CacheLike, cache_root, open_cache_dir, scale_offset
from spectraseg.align.masks import build_masks, open_mask
from spectraseg.errors import ConfigError, DataError, SpectrasegWarning
from spectraseg.features.indices import IndexPlan, compute_plans, resolve_indices
from spectraseg.features.normalization import normalize
from spectraseg.features.stats import Stats
from spectraseg.features.windows import dihedral, read_window, resize_window

CELL = 16
"""Side (pixels) of the coarse cells in which rare-class positions are remembered."""

UNIFORM_EPOCH = 2**31 - 1
"""The epoch number of :meth:`PatchDataset.uniform_view`'s stream, beyond any training epoch."""


# --------------------------------------------------------------------------- masks


# --------------------------------------------------------------------------- split


# --------------------------------------------------------------------------- windows


# --------------------------------------------------------------------------- patches


@dataclass(frozen=True)
class PatchPlan:
    """Where and how one patch is cut (everything drawn from the random stream)."""

    scene: int
    """Position of the scene in :attr:`PatchDataset.image_ids`."""
    row0: int
    """Top row of the window on the scene grid (may be negative: mirrored)."""
    col0: int
    """Left column of the window (may be negative)."""
    transform: int
    """Dihedral symmetry 0..7 (:func:`dihedral`)."""
    cls: int | None
    """The rare class the window was placed on (1-based), None for a uniform window."""
    pixel: tuple[int, int] | None
    """``(row, col)`` of that class's pixel on the scene grid, None for a uniform window."""
    gains: tuple[float, ...] | None = None
    """Photometric gain of each cache channel (physical values are multiplied by it before
    normalisation and indices), None for none."""
    window: int | None = None
    """Side of the window on the scene grid when it differs from the patch side (random
    zoom: resampled to the patch side), None for the patch side."""


def _check_args(
    size: int,
    length: int,
    rare_share: float,
    jitter: float,
    photometric: float,
    zoom: float,
    rare_classes: Sequence[int],
    seed: int,
    rank: int,
) -> None:
    """ConfigError naming the first patch-sampling setting out of range."""
    checks = (
        (size >= 1, f"patch size {size} must be positive"),
        (length >= 0, f"patches per epoch {length} must not be negative"),
        (0.0 <= rare_share <= 1.0, f"rare-class share {rare_share} must be in [0, 1]"),
        (0.0 <= jitter < 0.5, f"rare-pixel jitter {jitter} must be in [0, 0.5)"),
        (0.0 <= photometric <= 1.0, f"photometric augmentation {photometric} must be in [0, 1]"),
        (0.0 <= zoom <= 1.0, f"zoom augmentation {zoom} must be in [0, 1]"),
    )
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    for c in rare_classes:
        if int(c) < 1:
            raise ConfigError(f"rare class {c} is not a class number (from 1)")
    if seed < 0 or rank < 0:
        raise ConfigError(f"seed {seed} and rank {rank} must not be negative")


def _common_channels(cache: Cache, image_ids: Sequence[str]) -> list[str]:
    """The one channel set of the training scenes; an error naming a scene that differs."""
    known = set(cache.image_ids)
    for i in image_ids:
        if i not in known:
            raise ConfigError(f"training scene {i} is not in the cache {cache.root}")
    first = cache.channels(image_ids[0])
    for i in image_ids[1:]:
        if cache.channels(i) != first:
            raise DataError(
                f"scene {i} has channels {','.join(cache.channels(i))} but scene "
                f"{image_ids[0]} has {','.join(first)}: a patch dataset needs one channel set"
            )
    return first


def select_channels(
    available: Sequence[str], channels: Sequence[str] | None, where: str
) -> list[str]:
    """The cache channels to use: ``channels`` in that order (all of ``available`` when None);
    ConfigError naming a channel ``where`` (e.g. "the cache") lacks."""
    use = list(available) if channels is None else list(channels)
    for ch in use:
        if ch not in available:
            raise ConfigError(f"channel {ch!r} is not in {where} (it has {','.join(available)})")
    return use


def scene_norm(
    stats: Stats, image_id: str, channels: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """A scene's float32 ``(mean, std)`` for ``channels`` (physical units), in the statistics'
    scope (:meth:`~spectraseg.features.stats.Stats.lookup`)."""
    stat_channels = list(stats.channels)
    missing = [c for c in channels if c not in stat_channels]
    if missing:
        raise ConfigError(f"the statistics have no entry for channel(s) {', '.join(missing)}")
    pos = [stat_channels.index(c) for c in channels]
    mean, std = stats.lookup(image_id)
    return mean[pos], std[pos]


def norm_channels(stats: Stats, channels: Sequence[str], plans: Sequence[IndexPlan]) -> list[str]:
    """The channels a scene is normalised on: the cache ``channels``, then the index channels
    when the statistics hold them (``data.index_norm``: every index normalised like the
    bands, in the same scope); otherwise indices enter as computed, in [-1, 1].

    Raises ConfigError when the statistics hold some of the requested indices but not all.
    """
    names = [p.name for p in plans]
    held = [n for n in names if n in stats.channels]
    if held and len(held) < len(names):
        lacking = ", ".join(n for n in names if n not in held)
        raise ConfigError(
            f"the statistics hold spectral indices {', '.join(held)} but not {lacking}; "
            "recompute them with the same indices"
        )
    return [*channels, *(names if held else [])]


def fill_channels(
    out: np.ndarray,
    bands: np.ndarray,
    raw: np.ndarray,
    plans: Sequence[IndexPlan],
    mean: np.ndarray,
    std: np.ndarray,
    scale: float,
    offset: float,
) -> None:
    """Write a window's input channels into ``out`` float32 ``(B + len(plans), ...)``: the
    selected ``bands`` (B, ...) normalised, then the indices of ``raw`` (every cache channel,
    stored values), normalised too when ``mean``/``std`` reach past the bands
    (:func:`norm_channels`). The one rule :class:`PatchDataset` and :func:`load_scene` share.
    """
    n = len(bands)
    normalize(bands, mean[:n], std[:n], scale, offset, out=out[:n])
    if not plans:
        return
    out[n:] = compute_plans(raw, plans, scale, offset)
    if len(mean) > n:
        normalize(out[n:], mean[n:], std[n:], out=out[n:])


class PatchDataset(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Random training patches from cached scenes, deterministic per ``(seed, rank, epoch, i)``.

    Args:
        cache: the cache directory (``spectraseg align``).
        image_ids: training scenes (must have the same channels).
        stats: normalisation statistics (:func:`spectraseg.features.normalization.compute_stats`).
        size: patch side S in pixels.
        length: patches per epoch (the dataset's ``len``).
        seed: random seed.
        rank: distributed rank (each rank draws a distinct stream).
        epoch: initial epoch (see :meth:`set_epoch`).
        rare_classes: 1-based classes to oversample.
        rare_share: share of patches placed on a rare-class pixel, in [0, 1].
        jitter: how far (share of S) the rare pixel may lie from the window centre, [0, 0.5).
        augment: apply a random one of the 8 symmetries of the square.
        photometric: standard deviation of the log of a random gain applied to each band's
            physical values (half shared by all bands, half per band: brightness and colour
            cast of another acquisition); 0: none. Indices see the same gains.
        zoom: half-width of the uniform distribution of the log of a random magnification:
            a window of side ``round(size / z)`` is cut and resampled to ``size`` (bilinear
            image, nearest-neighbour mask); 0: none.
        indices: spectral index channels to append (:mod:`spectraseg.features.indices`).
        channels: cache channels to use, in this order; None uses all.
        data_root: dataset root to rasterise missing masks from; None requires the masks.
        progress: show progress bars while building masks and rare-class positions.

    Items are ``{"image": float32 tensor (C, S, S), "mask": uint8 tensor (K, S, S)}`` with
    ``C = len(channels) + len(indices)``.
    """

    def __init__(
        self,
        cache: CacheLike,
        image_ids: Sequence[str],
        stats: Stats,
        *,
        size: int = 256,
        length: int = 1024,
        seed: int = 0,
        rank: int = 0,
        epoch: int = 0,
        rare_classes: Sequence[int] = RARE_CLASSES,
        rare_share: float = 0.5,
        jitter: float = 0.25,
        augment: bool = True,
        photometric: float = 0.0,
        zoom: float = 0.0,
        indices: Sequence[str] = (),
        channels: Sequence[str] | None = None,
        data_root: str | os.PathLike[str] | None = None,
        progress: bool = False,
    ) -> None:
        _check_args(size, length, rare_share, jitter, photometric, zoom, rare_classes, seed, rank)
        if not image_ids:
            raise ConfigError("no training scenes for the patch dataset")
        opened = open_cache_dir(cache)
        self._cache = opened
        self.root = cache_root(opened)
        self.image_ids = list(image_ids)
        self.size = int(size)
        self.length = int(length)
        self.seed = int(seed)
        self.rank = int(rank)
        self.epoch = int(epoch)
        self.rare_share = float(rare_share)
        self.jitter = float(jitter)
        self.augment = bool(augment)
        self.photometric = float(photometric)
        self.zoom = float(zoom)
        self.scale, self.offset = scale_offset(opened)

        cache_channels = _common_channels(opened, self.image_ids)
        use = select_channels(cache_channels, channels, "the cache")
        self.cache_channels = list(cache_channels)
        self._select = np.array([cache_channels.index(c) for c in use], dtype=np.int64)
        self._plans: list[IndexPlan] = resolve_indices(list(indices), cache_channels)
        self.channel_names = use + [p.name for p in self._plans]
        normed = norm_channels(stats, use, self._plans)
        norms = [scene_norm(stats, i, normed) for i in self.image_ids]
        self._mean = np.stack([m for m, _ in norms])
        self._std = np.stack([sd for _, sd in norms])
        self._shapes = [(int(h), int(w)) for h, w in (opened.load(i).shape[1:] for i in image_ids)]
        area = np.array([h * w for h, w in self._shapes], dtype=np.float64)
        self._area_p = area / area.sum()

        k = len(opened.schema)
        if any(int(c) > k for c in rare_classes):
            raise ConfigError(f"rare classes {list(rare_classes)} go beyond the data's {k} classes")
        if data_root is not None:
            build_masks(opened, data_root, self.image_ids, progress=progress)
        self._ignored: dict[int, np.ndarray | None] = {}
        self.has_ignored = any(opened.has_ignored(i) for i in self.image_ids)
        """Whether items carry ``valid`` masks (some training scene has pixels that labels
        say nothing about: nodata, or outside a labelled extent)."""
        self._rare = self._index_rare(opened, [int(c) for c in rare_classes], progress)
        if self.rare_share > 0 and rare_classes and not self._rare:
            warnings.warn(
                "no rare-class pixel in the training scenes: every patch is drawn uniformly",
                SpectrasegWarning,
                stacklevel=2,
            )
        self._arrays: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    # -- precomputation

    def _index_rare(
        self, cache: Cache, classes: list[int], progress: bool
    ) -> dict[int, list[tuple[int, np.ndarray]]]:
        """Per rare class present: ``[(scene, flat coarse cell ids int32), ...]``.

        Cells are :data:`CELL`-pixel squares holding at least one pixel of the class; one
        pass over each mask, then only these small arrays are kept.
        """
        out: dict[int, list[tuple[int, np.ndarray]]] = {}
        it = enumerate(self.image_ids)
        for s, image_id in tqdm(
            it, desc="rare pixels", total=len(self.image_ids), disable=not progress
        ):
            h, w = self._shapes[s]
            mask = open_mask(cache, image_id, (h, w))
            gh, gw = -(-h // CELL), -(-w // CELL)
            for c in classes:
                m = np.asarray(mask[c - 1])
                if not m.any():
                    continue
                padded = np.zeros((gh * CELL, gw * CELL), dtype=bool)
                padded[:h, :w] = m
                cells = padded.reshape(gh, CELL, gw, CELL).any(axis=(1, 3))
                out.setdefault(c, []).append((s, np.flatnonzero(cells).astype(np.int32)))
        return {c: out[c] for c in sorted(out)}

    @property
    def rare_present(self) -> list[int]:
        """The rare classes with at least one pixel in the training scenes (1-based)."""
        return list(self._rare)

    @property
    def in_channels(self) -> int:
        """Channels of an image patch: selected cache channels plus index channels."""
        return len(self.channel_names)

    # -- torch Dataset protocol

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """Draw the next epoch's patches (call before creating the epoch's DataLoader iterator).

        With ``persistent_workers=True`` the workers keep their copy: leave it False.
        """
        self.epoch = int(epoch)

    def __getstate__(self) -> dict[str, Any]:
        # Memory maps are reopened lazily in each worker process.
        state = self.__dict__.copy()
        state["_arrays"] = {}
        state["_ignored"] = {}
        return state

    def _scene_arrays(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        got = self._arrays.get(s)
        if got is None:
            image_id = self.image_ids[s]
            img = self._cache.load(image_id)
            got = (img, open_mask(self._cache, image_id, self._shapes[s]))
            self._arrays[s] = got
        return got

    def uniform_view(self, length: int | None = None) -> PatchDataset:
        """This dataset drawing every patch uniformly over the scenes' area, from a stream of
        its own: no rare-class centring, no photometric gains, rank 0's stream on every
        rank (symmetries are kept), ``length`` items (None: this dataset's). What a whole
        scene shows the network, for BatchNorm statistics after training
        (:mod:`spectraseg.training.batchnorm`)."""
        view = copy.copy(self)
        view.rare_share, view.photometric, view.zoom = 0.0, 0.0, 0.0
        view.rank, view.epoch = 0, UNIFORM_EPOCH
        view.length = self.length if length is None else int(length)
        return view

    def rng(self, index: int) -> np.random.Generator:
        """The random stream of item ``index`` in the current epoch."""
        return np.random.default_rng([self.seed, self.rank, self.epoch, int(index)])

    def plan(self, index: int) -> PatchPlan:
        """Where item ``index`` of the current epoch is cut, and with which symmetry."""
        if not 0 <= index < self.length:
            raise IndexError(f"patch index {index} out of range 0..{self.length - 1}")
        rng = self.rng(index)
        # Drawn first, and only when asked, so that streams without zoom are unchanged.
        side = self.size
        if self.zoom > 0:
            side = max(1, round(self.size / np.exp(rng.uniform(-self.zoom, self.zoom))))
        half = side // 2
        cls = pixel = None
        if self._rare and rng.random() < self.rare_share:
            s, cls, pixel = self._rare_pixel(rng)
            j = int(self.jitter * side)
            dr, dc = (int(v) for v in rng.integers(-j, j + 1, size=2)) if j else (0, 0)
            row0, col0 = pixel[0] - half + dr, pixel[1] - half + dc
        else:
            s = int(rng.choice(len(self.image_ids), p=self._area_p))
            h, w = self._shapes[s]
            row0 = int(rng.integers(h)) - half
            col0 = int(rng.integers(w)) - half
        transform = int(rng.integers(8)) if self.augment else 0
        gains = None
        if self.photometric > 0:
            z = rng.standard_normal(len(self.cache_channels) + 1)
            log_gain = self.photometric * (z[0] + z[1:]) / np.sqrt(2.0)
            gains = tuple(float(g) for g in np.exp(log_gain))
        window = None if side == self.size else side
        return PatchPlan(s, row0, col0, transform, cls, pixel, gains, window)

    def _rare_pixel(self, rng: np.random.Generator) -> tuple[int, int, tuple[int, int]]:
        """``(scene, class, (row, col))``: a rare class drawn uniformly, then a scene holding
        it, then one of its cells, then one of its pixels in that cell."""
        classes = list(self._rare)
        cls = classes[int(rng.integers(len(classes)))]
        scenes = self._rare[cls]
        s, cells = scenes[int(rng.integers(len(scenes)))]
        h, w = self._shapes[s]
        cell = int(cells[int(rng.integers(len(cells)))])
        gw = -(-w // CELL)
        r0, c0 = (cell // gw) * CELL, (cell % gw) * CELL
        _, mask = self._scene_arrays(s)
        block = np.asarray(mask[cls - 1, r0 : min(r0 + CELL, h), c0 : min(c0 + CELL, w)])
        rr, cc = np.nonzero(block)
        k = int(rng.integers(len(rr)))
        return s, cls, (r0 + int(rr[k]), c0 + int(cc[k]))

    def sample(self, plan: PatchPlan) -> tuple[np.ndarray, np.ndarray]:
        """The (image float32 (C, S, S), mask uint8 (K, S, S)) arrays of a plan."""
        img, mask = self._scene_arrays(plan.scene)
        raw, lab = self._window(img, plan), self._window(mask, plan)
        side = raw.shape[-1]
        out = np.empty((self.in_channels, side, side), dtype=np.float32)
        scale, offset = self.scale, self.offset
        if plan.gains is not None:
            # Gains act on physical values: convert first, then normalise those.
            gains = np.asarray(plan.gains, dtype=np.float32)[:, None, None]
            raw = (raw * np.float32(scale) + np.float32(offset)) * gains
            scale, offset = 1.0, 0.0
        mean, std = self._mean[plan.scene], self._std[plan.scene]
        fill_channels(out, raw[self._select], raw, self._plans, mean, std, scale, offset)
        out, lab = self._to_patch(out), self._to_patch(lab, nearest=True)
        if plan.transform:
            out = dihedral(out, plan.transform)
            lab = dihedral(lab, plan.transform)
        return np.ascontiguousarray(out), np.ascontiguousarray(lab)

    def _window(self, array: np.ndarray, plan: PatchPlan) -> np.ndarray:
        """``array[..., rows, cols]`` (C, W, W) under the plan's window on the scene grid (W:
        ``plan.window``, else the patch side; mirrored past the edges)."""
        return read_window(array, plan.row0, plan.col0, plan.window or self.size)

    def _to_patch(self, window: np.ndarray, nearest: bool = False) -> np.ndarray:
        """A (C, W, W) window resampled to the patch side (bilinear, or nearest-exact for
        labels); returned as is when W already is the patch side."""
        if window.shape[-1] == self.size:
            return window
        return resize_window(window, self.size, nearest=nearest)

    def valid(self, plan: PatchPlan) -> np.ndarray | None:
        """uint8 ``(1, S, S)``: 1 where the patch of ``plan`` has data in every band group,
        0 where labels say nothing (nodata, outside the labelled extent; transformed as the
        patch is); None for a scene without such pixels."""
        if plan.scene not in self._ignored:
            self._ignored[plan.scene] = self._cache.ignored(self.image_ids[plan.scene])
        ignored = self._ignored[plan.scene]
        if ignored is None:
            return None
        valid = (~self._window(ignored[None], plan)).astype(np.uint8)
        valid = self._to_patch(valid, nearest=True)
        return np.ascontiguousarray(dihedral(valid, plan.transform) if plan.transform else valid)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        plan = self.plan(index)
        image, mask = self.sample(plan)
        item = {"image": torch.from_numpy(image), "mask": torch.from_numpy(mask)}
        if self.has_ignored:
            valid = self.valid(plan)
            ones = np.ones((1, self.size, self.size), dtype=np.uint8)
            item["valid"] = torch.from_numpy(ones if valid is None else valid)
        return item


# --------------------------------------------------------------------------- whole scenes


def load_scene(
    cache: CacheLike,
    image_id: str,
    stats: Stats,
    indices: Sequence[str] = (),
    channels: Sequence[str] | None = None,
    block_rows: int = 256,
    rows: tuple[int, int] | None = None,
    cols: tuple[int, int] | None = None,
) -> np.ndarray:
    """A whole normalised scene: float32 (C, H, W), the channels a :class:`PatchDataset` gives.

    ``C = len(channels) + len(indices)``: the cache channels (all, or ``channels`` in that
    order) normalised with :meth:`~spectraseg.features.stats.Stats.lookup` statistics, then the
    spectral indices. Processed in blocks of ``block_rows`` rows, so the only full-size
    array is the result (about 0.9 GB for 20 channels at full DSTL resolution). With
    ``rows`` ``(r0, r1)`` and/or ``cols`` ``(c0, c1)``, only that window: ``(C, r1 - r0,
    c1 - c0)``, equal to that slice of the whole (every step is per pixel).
    """
    opened = open_cache_dir(cache)
    if image_id not in set(opened.image_ids):
        raise ConfigError(f"scene {image_id} is not in the cache")
    cache_channels = opened.channels(image_id)
    use = select_channels(cache_channels, channels, f"cached scene {image_id}")
    plans = resolve_indices(list(indices), cache_channels)
    select = [cache_channels.index(c) for c in use]
    mean, std = scene_norm(stats, image_id, norm_channels(stats, use, plans))
    scale, offset = scale_offset(opened)
    arr = opened.load(image_id)
    _, h, w = arr.shape
    first, end = (0, h) if rows is None else rows
    left, right = (0, w) if cols is None else cols
    if not 0 <= first < end <= h:
        raise ValueError(f"rows {rows} are not inside scene {image_id}'s {h} rows")
    if not 0 <= left < right <= w:
        raise ValueError(f"columns {cols} are not inside scene {image_id}'s {w} columns")
    out = np.empty((len(select) + len(plans), end - first, right - left), dtype=np.float32)
    contiguous = select == list(range(select[0], select[0] + len(select))) if select else True
    for r in range(first, end, max(1, block_rows)):
        r1 = min(r + block_rows, end)
        o0, o1 = r - first, r1 - first
        raw = np.asarray(arr[:, r:r1, left:right])
        src = raw[select[0] : select[0] + len(select)] if contiguous and select else raw[select]
        fill_channels(out[:, o0:o1], src, raw, plans, mean, std, scale, offset)
    return out


def scene_channels(cache: Any, image_id: str, indices: Sequence[str]) -> list[str]:
    """Names of the channels :func:`spectraseg.features.patches.load_scene` returns for a scene."""
    return list(cache.channels(image_id)) + list(indices)
