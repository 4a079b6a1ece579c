"""The cache of fused scenes: one reader and writer of its arrays, manifest and shifts."""

from __future__ import annotations

import csv
import io as _io
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spectraseg.align.registration import (
    ShiftRow,
)
from spectraseg.data.classes import DSTL_SCHEMA, ClassSchema
from spectraseg.data.dstl import (
    CHANNELS,
    PRODUCTS,
    Scene,
    check_image_id,
)
from spectraseg.data.files import atomic_output, write_text_atomic
from spectraseg.data.georef import GeoScene
from spectraseg.errors import DataError

CACHE_FORMAT = "spectraseg-cache"


CACHE_VERSION = 1


MANIFEST = "manifest.json"


SHIFTS = "shifts.csv"


SHIFT_COLUMNS: tuple[str, ...] = ("image_id", "product", "dx", "dy", "corr", "method", "reason")
"""Columns of the cache's ``shifts.csv`` (the first four are those of the synthetic truth)."""


def npy_header(path: str | os.PathLike[str]) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """``(shape, dtype, fortran_order, data_offset)`` of a ``.npy`` file, reading only its header.

    Raises DataError if the file is not a readable ``.npy`` file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            offset = f.tell()
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not a readable .npy file ({exc})") from None
    return tuple(shape), np.dtype(dtype), bool(fortran), offset


def entry_complete(
    cache_dir: str | os.PathLike[str],
    image_id: str,
    entry: Mapping[str, Any] | None,
    scene: Scene | GeoScene | None = None,
) -> bool:
    """Whether ``{id}.npy`` exists and agrees with its manifest entry (and the scene's files).

    Checks the entry's channels and size against the file's shape and dtype header and its
    byte length; with ``scene``, also that the products and reference size are unchanged.
    """
    if not entry:
        return False
    try:
        channels = list(entry["channels"])
        shape = (len(channels), int(entry["height"]), int(entry["width"]))
        products = list(entry["products"])
    except (KeyError, TypeError, ValueError):
        return False
    if scene is not None:
        ref = scene.reference
        if products != [p for p in PRODUCTS if scene.has(p)] or shape[1:] != (
            ref.height,
            ref.width,
        ):
            return False
        if channels != scene.channels:
            return False
    path = Path(cache_dir) / f"{image_id}.npy"
    if not path.is_file():
        return False
    try:
        got, dtype, fortran, offset = npy_header(path)
    except DataError:
        return False
    if got != shape or dtype != np.dtype(np.uint16) or fortran:
        return False
    return path.stat().st_size == offset + math.prod(shape) * 2


def empty_manifest() -> dict[str, Any]:
    """A manifest with no scenes."""
    return {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "dtype": "uint16",
        "scale": 1.0,
        "offset": 0.0,
        "scenes": {},
    }


def manifest_schema(manifest: Mapping[str, Any], cache_dir: str | os.PathLike[str]) -> ClassSchema:
    """The classes of a cache's labels: the manifest's ``classes`` (written when the cache
    was aligned from a dataset description), else the DSTL ten."""
    doc = manifest.get("classes")
    if doc is None:
        return DSTL_SCHEMA
    return ClassSchema.from_json(doc, str(Path(cache_dir) / MANIFEST))


def read_manifest(cache_dir: str | os.PathLike[str], missing_ok: bool = False) -> dict[str, Any]:
    """The cache's ``manifest.json``; an empty manifest if absent and ``missing_ok``.

    Raises DataError if it is absent (unless ``missing_ok``), unreadable, or not a
    spectraseg cache manifest of a supported version.
    """
    path = Path(cache_dir) / MANIFEST
    if not path.is_file():
        if missing_ok:
            return empty_manifest()
        raise DataError(f"{path} does not exist: {cache_dir} is not a spectraseg cache")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} cannot be read as JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
        raise DataError(f"{path} is not a spectraseg cache manifest")
    if manifest.get("version") != CACHE_VERSION:
        raise DataError(
            f"{path} has cache version {manifest.get('version')!r}, expected {CACHE_VERSION}"
        )
    if manifest.get("dtype") != "uint16" or not isinstance(manifest.get("scenes"), dict):
        raise DataError(f"{path} has no 'scenes' mapping or a dtype other than uint16")
    return manifest


def write_manifest(cache_dir: str | os.PathLike[str], manifest: Mapping[str, Any]) -> None:
    """Write ``manifest.json`` atomically: scenes sorted by id, one line per scene."""
    head = {k: v for k, v in manifest.items() if k != "scenes"}
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
    scenes = sorted(manifest["scenes"].items())
    body = ",\n".join(f"    {json.dumps(k)}: {json.dumps(v)}" for k, v in scenes)
    text = "{\n" + "\n".join(lines) + '\n  "scenes": {' + ("\n" + body + "\n  " if body else "")
    write_text_atomic(Path(cache_dir) / MANIFEST, text + "}\n}\n")


def _fmt(x: float, digits: int = 4) -> str:
    return "" if not math.isfinite(x) else f"{x:.{digits}f}"


def write_shifts(path: str | os.PathLike[str], rows: Iterable[ShiftRow]) -> None:
    """Write ``shifts.csv`` atomically (``SHIFT_COLUMNS``; empty ``corr`` where none)."""
    order = {p: i for i, p in enumerate(PRODUCTS)}
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SHIFT_COLUMNS)
    for r in sorted(rows, key=lambda r: (r.image_id, order.get(r.product, 9))):
        w.writerow(
            [r.image_id, r.product, _fmt(r.dx), _fmt(r.dy), _fmt(r.corr), r.method, r.reason]
        )
    write_text_atomic(path, buf.getvalue())


def read_shifts(path: str | os.PathLike[str]) -> list[ShiftRow]:
    """Read a ``shifts.csv``: the cache's (with corr, method) or a truth file (4 columns).

    Rows without a ``method`` column get method ``truth``.
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
            header = rows[0].keys() if rows else []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path} cannot be read as CSV ({exc})") from None
    missing = [c for c in SHIFT_COLUMNS[:4] if rows and c not in header]
    if missing:
        raise DataError(f"{path} lacks the column(s) {', '.join(missing)}")
    out: list[ShiftRow] = []
    for n, row in enumerate(rows, start=2):
        try:
            corr = row.get("corr") or "nan"
            out.append(
                ShiftRow(
                    row["image_id"],
                    row["product"],
                    float(row["dx"]),
                    float(row["dy"]),
                    float(corr),
                    row.get("method") or "truth",
                    row.get("reason") or "",
                )
            )
        except (TypeError, ValueError):
            raise DataError(f"{path} line {n} has a non-numeric dx, dy or corr") from None
    return out


@dataclass
class Cache:
    """Read access to a fused cache directory (see :func:`open_cache`)."""

    root: Path
    manifest: dict[str, Any]

    @property
    def image_ids(self) -> list[str]:
        """Ids of the scenes in the manifest, sorted."""
        return sorted(self.manifest["scenes"])

    def entry(self, image_id: str) -> dict[str, Any]:
        """The manifest entry of a scene; DataError if the scene is not cached."""
        try:
            return self.manifest["scenes"][image_id]
        except KeyError:
            raise DataError(f"scene {image_id} is not in the cache {self.root}") from None

    @property
    def schema(self) -> ClassSchema:
        """The classes of the cache's labels (:func:`manifest_schema`)."""
        return manifest_schema(self.manifest, self.root)

    def channels(self, image_id: str) -> list[str]:
        """Channel names of a cached scene, in stack order."""
        return list(self.entry(image_id)["channels"])

    def valid(self, image_id: str) -> dict[str, list[int]]:
        """Per product the ``[row0, row1, col0, col1]`` box of real (non-fill) pixels."""
        valid = self.entry(image_id).get("valid", {})
        return {k: [int(v) for v in box] for k, box in valid.items()}

    def path(self, image_id: str) -> Path:
        """The ``.npy`` file of a scene."""
        return self.root / f"{check_image_id(image_id)}.npy"

    def load(self, image_id: str) -> np.memmap:
        """The fused scene as a read-only memory map, ``(C, H, W)`` uint16."""
        entry = self.entry(image_id)
        path = self.path(image_id)
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise DataError(f"{path} cannot be read as a .npy array ({exc})") from None
        expected = (len(entry["channels"]), int(entry["height"]), int(entry["width"]))
        if arr.shape != expected or arr.dtype != np.uint16:
            raise DataError(
                f"{path} holds {arr.dtype} {arr.shape}, but the manifest says uint16 {expected}"
            )
        return arr

    def nodata(self, image_id: str) -> np.ndarray | None:
        """A georeferenced scene's ``(H, W)`` bool nodata mask (True: some band group has no
        data there; those pixels hold channel means), memory-mapped; None when it has none."""
        return self._pixel_mask(pixel_mask_path(self.root, NODATA_DIR, image_id), image_id)

    def unlabelled(self, image_id: str) -> np.ndarray | None:
        """``(H, W)`` bool, True outside a scene's labelled extent (its description's
        ``label_extent``), memory-mapped; None when the whole scene is labelled."""
        return self._pixel_mask(pixel_mask_path(self.root, UNLABELLED_DIR, image_id), image_id)

    def ignored(self, image_id: str) -> np.ndarray | None:
        """``(H, W)`` bool, True where labels say nothing (nodata or outside the labelled
        extent): the loss, validation and threshold tuning skip those pixels."""
        masks = [m for m in (self.nodata(image_id), self.unlabelled(image_id)) if m is not None]
        if not masks:
            return None
        return masks[0] if len(masks) == 1 else np.asarray(masks[0]) | np.asarray(masks[1])

    def has_ignored(self, image_id: str) -> bool:
        """Whether a scene has pixels its labels say nothing about (a file check only)."""
        return any(
            pixel_mask_path(self.root, kind, image_id).is_file()
            for kind in (NODATA_DIR, UNLABELLED_DIR)
        )

    def counted(self, image_id: str) -> np.ndarray | None:
        """``(H, W)`` bool, True where the labels count (the complement of :meth:`ignored`),
        in memory; None when they count everywhere. For whole-scene counts: validation,
        threshold tuning, cross-validated decisions."""
        ignored = self.ignored(image_id)
        return None if ignored is None else ~np.asarray(ignored)

    def _pixel_mask(self, path: Path, image_id: str) -> np.ndarray | None:
        if not path.is_file():
            return None
        try:
            mask = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise DataError(f"{path} cannot be read as a .npy array ({exc})") from None
        entry = self.entry(image_id)
        if mask.shape != (int(entry["height"]), int(entry["width"])) or mask.dtype != bool:
            raise DataError(f"{path} is {mask.dtype} {mask.shape}, not the scene's bool mask")
        return mask

    def shifts(self) -> list[ShiftRow]:
        """The rows of the cache's ``shifts.csv`` (empty if absent)."""
        path = self.root / SHIFTS
        return read_shifts(path) if path.is_file() else []


UNLABELLED_DIR = "unlabelled"
"""``CACHE/unlabelled/{id}.npy``: ``(H, W)`` bool, True outside a georeferenced scene's
labelled extent (written with its label masks, only when some pixel lies outside it)."""

NODATA_DIR = "nodata"
"""``CACHE/nodata/{id}.npy``: ``(H, W)`` bool, True where some band group of a
georeferenced scene has no data (only for scenes that have such pixels)."""


def pixel_mask_path(cache_dir: str | os.PathLike[str], kind: str, image_id: str) -> Path:
    """``CACHE/{kind}/{id}.npy`` (``kind``: :data:`NODATA_DIR` or :data:`UNLABELLED_DIR`)."""
    return Path(cache_dir) / kind / f"{check_image_id(image_id)}.npy"


def write_pixel_mask(
    cache_dir: str | os.PathLike[str], kind: str, image_id: str, mask: np.ndarray
) -> None:
    """Write a scene's ``(H, W)`` bool ``kind`` mask atomically, or remove it when no pixel
    is True (readers then return None: nothing to skip)."""
    path = pixel_mask_path(cache_dir, kind, image_id)
    if not mask.any():
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(exist_ok=True)
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(mask, dtype=bool))


def open_cache(cache_dir: str | os.PathLike[str]) -> Cache:
    """Open a cache directory written by ``spectraseg align``; DataError if it is not one."""
    root = Path(cache_dir)
    if not root.is_dir():
        raise DataError(f"cache directory {root} does not exist")
    return Cache(root, read_manifest(root))


def product_of(channel: str) -> str:
    """The product a fused channel comes from: ``R``/``G``/``B`` -> RGB, ``M3`` -> M, ..."""
    for product, names in CHANNELS.items():
        if channel in names:
            return product
    raise DataError(f"cache channel {channel!r} belongs to no known product (RGB, P, M, A)")


def open_cache_dir(cache: str | os.PathLike[str] | Cache) -> Cache:
    """The :class:`Cache` of a directory (an opened cache passes through)."""
    if isinstance(cache, (str, os.PathLike)):
        return open_cache(cache)
    return cache


def cache_root(cache: str | os.PathLike[str] | Cache) -> Path:
    """The directory of a cache given as a path or an opened cache."""
    return Path(cache) if isinstance(cache, (str, os.PathLike)) else cache.root


def scale_offset(cache: Cache) -> tuple[float, float]:
    """The manifest's ``(scale, offset)``: physical value = stored * scale + offset."""
    m = cache.manifest
    return float(m.get("scale", 1.0)), float(m.get("offset", 0.0))


def channel_valid_boxes(
    cache: Cache, image_id: str, shape: tuple[int, int, int]
) -> list[tuple[int, int, int, int]]:
    """Per channel the ``(row0, row1, col0, col1)`` box of non-fill pixels, clipped to the scene.

    A product without a ``valid`` entry is taken to cover the whole scene.
    """
    _, h, w = shape
    valid = cache.valid(image_id) or {}
    boxes = []
    for ch in cache.channels(image_id):
        box = valid.get(product_of(ch))
        if box is None:
            boxes.append((0, h, 0, w))
            continue
        r0, r1, c0, c1 = (int(v) for v in box)
        r0, r1 = max(0, min(r0, h)), max(0, min(r1, h))
        c0, c1 = max(0, min(c0, w)), max(0, min(c1, w))
        boxes.append((r0, max(r0, r1), c0, max(c0, c1)))
    return boxes


CacheLike = str | os.PathLike[str] | Cache
"""A cache directory or an opened :class:`~spectraseg.align.cache.Cache`."""
