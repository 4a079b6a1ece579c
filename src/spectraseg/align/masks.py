"""Label masks on the cache's grid: CACHE/masks/{id}.npy, one per labelled scene."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from spectraseg import NUM_CLASSES
from spectraseg.align.cache import Cache, CacheLike, cache_root, open_cache_dir
from spectraseg.data.dstl import check_image_id, open_dataset
from spectraseg.data.files import atomic_output
from spectraseg.data.geometry import rasterize_classes
from spectraseg.errors import DataError


def mask_path(cache: CacheLike, image_id: str) -> Path:
    """``CACHE/masks/{id}.npy``."""
    return cache_root(cache) / "masks" / f"{check_image_id(image_id)}.npy"


def build_masks(
    cache: CacheLike,
    data_root: str | os.PathLike[str],
    image_ids: Sequence[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> list[Path]:
    """Rasterise the labels of cached scenes into ``CACHE/masks/{id}.npy`` (once per scene).

    Each mask is (10, H, W) uint8 {0, 1} on the cache's grid (the scene's RGB grid), from
    the dataset's label file and ``grid_sizes.csv``; channel ``c - 1`` holds class ``c``.
    Existing masks of the right shape are kept unless ``overwrite``. Files are written
    atomically. A scene without labels raises DataError.

    Returns the mask paths, in ``image_ids`` order.
    """
    cache = open_cache_dir(cache)
    ids = list(cache.image_ids) if image_ids is None else list(image_ids)
    paths = [mask_path(cache, i) for i in ids]
    todo = [
        (i, p)
        for i, p in zip(ids, paths, strict=True)
        if overwrite or not mask_ok(p, cache.load(i).shape[1:])
    ]
    if not todo:
        return paths
    ds = open_dataset(data_root)
    labelled = set(ds.labels)
    for image_id, path in tqdm(todo, desc="masks", unit="scene", disable=not progress):
        if image_id not in labelled:
            where = ds.label_path or ds.root / "train_wkt_v4.csv"
            raise DataError(f"scene {image_id} has no labels in {where}")
        if image_id not in ds.grid_sizes:
            raise DataError(f"scene {image_id} is not in {ds.grid_path}")
        _, h, w = cache.load(image_id).shape
        ref = ds.scene(image_id).reference
        if (ref.height, ref.width) != (h, w):
            raise DataError(
                f"cached scene {image_id} is {h} x {w} but its {ref.name} product in "
                f"{ds.root} is {ref.height} x {ref.width}: the cache is from another dataset"
            )
        xmax, ymin = ds.grid_sizes[image_id]
        mask = rasterize_classes(ds.scene_labels(image_id), w, h, xmax, ymin)
        with atomic_output(path) as tmp, open(tmp, "wb") as f:
            np.save(f, mask)
    return paths


def mask_ok(path: Path, hw: tuple[int, ...]) -> bool:
    if not path.is_file():
        return False
    try:
        m = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return m.shape == (NUM_CLASSES, *hw) and m.dtype == np.uint8


def has_mask(cache: Cache, image_id: str) -> bool:
    """Whether a cached scene has a readable label mask of the right shape and dtype."""
    return mask_ok(mask_path(cache, image_id), cache.load(image_id).shape[1:])


def open_mask(cache: CacheLike, image_id: str, hw: tuple[int, int]) -> np.ndarray:
    path = mask_path(cache, image_id)
    if not path.is_file():
        raise DataError(
            f"{path} does not exist: build the label masks first "
            "(spectraseg.align.masks.build_masks, or pass data_root)"
        )
    try:
        m = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} cannot be read as a .npy array ({exc})") from None
    if m.shape != (NUM_CLASSES, *hw) or m.dtype != np.uint8:
        raise DataError(
            f"{path} has shape {m.shape} {m.dtype}, expected ({NUM_CLASSES}, {hw[0]}, {hw[1]}) "
            "uint8"
        )
    return m


def labelled_scenes(cache: Any, root: str, progress: bool = False) -> list[str]:
    """Cached scenes with label masks, building missing masks from ``root`` when given.

    When every cached scene has a mask, all of them; otherwise, with a dataset ``root``,
    the cached scenes that have labels there (their masks rasterised into the cache where
    missing); without ``root``, the scenes whose masks exist.
    """

    ids = list(cache.image_ids)
    have = [i for i in ids if has_mask(cache, i)]
    if len(have) == len(ids) or not root:
        return have
    labelled = set(open_dataset(root).labels)
    usable = [i for i in ids if i in labelled]
    build_masks(cache, root, usable, progress=progress)
    return usable
