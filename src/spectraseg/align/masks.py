"""Label masks on the cache's grid: CACHE/masks/{id}.npy, one per labelled scene."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from spectraseg.align.cache import (
    UNLABELLED_DIR,
    Cache,
    CacheLike,
    cache_root,
    open_cache_dir,
    write_pixel_mask,
)
from spectraseg.data.dstl import Dataset, check_image_id
from spectraseg.data.files import atomic_output
from spectraseg.data.geometry import rasterize_classes
from spectraseg.data.georef import GeoDataset, rasterize_labels
from spectraseg.data.sources import Source, open_source
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

    Each mask is (K, H, W) uint8 {0, 1} on the cache's grid, K the classes of the cache's
    schema (10 for DSTL); channel ``c - 1`` holds class ``c``. DSTL labels come from the
    label file and ``grid_sizes.csv``, a description's from its scenes' label layers.
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
        if overwrite or not mask_ok(p, cache.load(i).shape[1:], len(cache.schema))
    ]
    if not todo:
        return paths
    ds = open_source(data_root)
    labelled = set(labelled_ids(ds))
    for image_id, path in tqdm(todo, desc="masks", unit="scene", disable=not progress):
        if image_id not in labelled:
            raise DataError(f"scene {image_id} has no labels in {_label_source(ds)}")
        _, h, w = cache.load(image_id).shape
        if isinstance(ds, GeoDataset):
            _write_georef_mask(ds, image_id, (h, w), len(cache.schema), path)
            extent = ds.labelled_area(image_id)
            outside = np.zeros((h, w), bool) if extent is None else ~extent
            write_pixel_mask(cache.root, UNLABELLED_DIR, image_id, outside)
            continue
        mask = _dstl_mask(ds, image_id, (h, w))
        with atomic_output(path) as tmp, open(tmp, "wb") as f:
            np.save(f, mask)
    return paths


def labelled_ids(ds: Source) -> list[str]:
    """Ids of a dataset's scenes that have labels."""
    return ds.labelled_ids if isinstance(ds, GeoDataset) else list(ds.labels)


def _label_source(ds: Source) -> str:
    if isinstance(ds, GeoDataset):
        return f"{ds.root} (it names no label layer)"
    return str(ds.label_path or ds.root / "train_wkt_v4.csv")


def _check_size(image_id: str, hw: tuple[int, int], got: tuple[int, int], what: str) -> None:
    if got != hw:
        raise DataError(
            f"cached scene {image_id} is {hw[0]} x {hw[1]} but its {what} is {got[0]} x "
            f"{got[1]}: the cache is from another dataset"
        )


def _dstl_mask(ds: Dataset, image_id: str, hw: tuple[int, int]) -> np.ndarray:
    if image_id not in ds.grid_sizes:
        raise DataError(f"scene {image_id} is not in {ds.grid_path}")
    ref = ds.scene(image_id).reference
    _check_size(image_id, hw, (ref.height, ref.width), f"{ref.name} product in {ds.root}")
    xmax, ymin = ds.grid_sizes[image_id]
    return rasterize_classes(ds.scene_labels(image_id), hw[1], hw[0], xmax, ymin)


def _write_georef_mask(
    ds: GeoDataset, image_id: str, hw: tuple[int, int], k: int, path: Path
) -> None:
    """Rasterise a georeferenced scene's labels strip by strip straight into its ``.npy``
    (a memory map), atomically: no full-size mask in memory."""
    grid = ds.scene(image_id).grid
    _check_size(image_id, hw, grid.shape, f"grid in {ds.root}")
    labels = ds.labels(image_id)
    with atomic_output(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(k, *hw))
        rasterize_labels(labels, grid, k, out=out)
        out.flush()
        del out


def mask_ok(path: Path, hw: tuple[int, ...], k: int) -> bool:
    if not path.is_file():
        return False
    try:
        m = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return m.shape == (k, *hw) and m.dtype == np.uint8


def has_mask(cache: Cache, image_id: str) -> bool:
    """Whether a cached scene has a readable label mask of the right shape and dtype."""
    shape = cache.load(image_id).shape[1:]
    return mask_ok(mask_path(cache, image_id), shape, len(cache.schema))


def open_mask(cache: CacheLike, image_id: str, hw: tuple[int, int]) -> np.ndarray:
    """A scene's ``(K, H, W)`` uint8 label mask, memory-mapped; DataError when missing or
    not of the cache's class count and the scene's size."""
    cache = open_cache_dir(cache)
    k = len(cache.schema)
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
    if m.shape != (k, *hw) or m.dtype != np.uint8:
        raise DataError(
            f"{path} has shape {m.shape} {m.dtype}, expected ({k}, {hw[0]}, {hw[1]}) uint8"
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
    labelled = set(labelled_ids(open_source(root)))
    usable = [i for i in ids if i in labelled]
    build_masks(cache, root, usable, progress=progress)
    return usable
