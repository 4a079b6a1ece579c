"""Fusion of all products onto the RGB grid, and the on-disk cache of fused scenes.

A fused scene is a ``(C, H, W)`` uint16 stack on the reference grid (RGB; the finest
product when RGB is absent), in raw digital numbers: every product resampled with cubic
interpolation in a single ``cv2.warpAffine`` that folds its scale and its estimated shift
together, rounded and clipped to ``[0, 65535]``. Pixels a product does not cover (after
shifting) are filled with that channel's mean over the pixels it covers. Channel order is
R, G, B, P, M1..M8, A1..A8, restricted to the products present.

The cache (``spectraseg align DATA --cache DIR``, format in ``docs/architecture.md``)::

    DIR/{id}.npy        (C, H, W) uint16, numpy.load(mmap_mode="r")
    DIR/manifest.json   format, version, dtype, scale, offset and per scene its channels,
                        height, width, products and valid boxes
    DIR/shifts.csv      image_id,product,dx,dy,corr,method,reason

:func:`align_dataset` runs in two phases so that fallbacks can use region neighbours:
estimate the shifts of all scenes (cheap, small results), resolve fallbacks across scenes
(:func:`spectraseg.align.registration.resolve_shifts`), then fuse and write each scene. Scenes
run serially in-process, on a Dask ``LocalCluster`` (``workers``) or on an existing Dask
cluster (``scheduler``); the task functions of this module are what the workers run. Each
scene's array is written by the worker that builds it, channel by channel into a temporary
file renamed into place when complete; only small records travel to the client, so memory
stays bounded whatever the number of scenes.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
from tqdm import tqdm

from spectraseg.align.cache import (
    MANIFEST,
    SHIFTS,
    entry_complete,
    manifest_schema,
    read_manifest,
    read_shifts,
    write_manifest,
    write_shifts,
)
from spectraseg.align.estimators import DEFAULT_CONFIG, RegistrationConfig
from spectraseg.align.georef import estimate_georef, write_georef
from spectraseg.align.registration import (
    ProductEstimate,
    ShiftRow,
    estimate_products,
    resolve_shifts,
)
from spectraseg.data.classes import DSTL_SCHEMA
from spectraseg.data.dstl import PRODUCTS, Scene, channels_of, check_image_id
from spectraseg.data.files import atomic_output
from spectraseg.data.georef import GeoDataset, GeoScene
from spectraseg.data.sources import Source, open_source
from spectraseg.errors import DataError, SpectrasegError
from spectraseg.parallel import Runner, describe, open_runner

ASPECT_TOLERANCE = 0.03
"""Largest relative difference between a product's x and y scale to the reference grid."""

Box = tuple[int, int, int, int]
"""``(row0, row1, col0, col1)``: a half-open box of reference-grid pixels."""


# --------------------------------------------------------------------------- resampling


def warp_matrix(
    src_shape: tuple[int, int], dst_shape: tuple[int, int], dx: float, dy: float
) -> np.ndarray:
    """The ``(2, 3)`` float64 map from destination pixel indices to source pixel indices.

    ``src_shape``/``dst_shape``: ``(h, w)``/``(H, W)`` of the product and the reference grid;
    ``(dx, dy)``: the product's shift in its own pixels. Pixel edges of both grids cover the
    same ground, so a destination pixel centre ``X + 0.5`` lies at source coordinate
    ``(X + 0.5) * w / W``, and the shifted content is read ``(dx, dy)`` further on. Use with
    ``cv2.WARP_INVERSE_MAP``.
    """
    (h, w), (hh, ww) = src_shape, dst_shape
    sx, sy = w / ww, h / hh
    return np.array(
        [[sx, 0.0, 0.5 * sx - 0.5 + dx], [0.0, sy, 0.5 * sy - 0.5 + dy]], dtype=np.float64
    )


def valid_box(src_shape: tuple[int, int], dst_shape: tuple[int, int], dx: float, dy: float) -> Box:
    """Reference-grid pixels whose centre falls inside the shifted product's footprint.

    Returns ``(row0, row1, col0, col1)``, half-open, clipped to the grid (possibly empty).
    """
    (h, w), (hh, ww) = src_shape, dst_shape

    def span(n_src: int, n_dst: int, d: float) -> tuple[int, int]:
        k = n_dst / n_src
        # Centre X + 0.5 maps to (X + 0.5) / k + d, which must lie in [0, n_src].
        lo = math.ceil(-d * k - 0.5 - 1e-9)
        hi = math.floor((n_src - d) * k - 0.5 + 1e-9) + 1
        lo, hi = max(0, lo), min(n_dst, hi)
        return lo, max(lo, hi)

    r0, r1 = span(h, hh, dy)
    c0, c1 = span(w, ww, dx)
    return r0, r1, c0, c1


def resample_band(
    band: np.ndarray, dst_shape: tuple[int, int], dx: float, dy: float, out: np.ndarray
) -> Box:
    """Resample one ``(h, w)`` band onto ``out`` (``(H, W)`` uint16), shifted and filled.

    Cubic interpolation; the result is rounded and clipped to ``[0, 65535]``. Pixels outside
    the product's footprint get the mean of the pixels inside it (the mean of the band when
    none is inside). Returns the valid box.
    """
    hh, ww = dst_shape
    h, w = band.shape
    box = valid_box((h, w), dst_shape, dx, dy)
    if (h, w) == (hh, ww) and dx == 0 and dy == 0:
        if band.dtype in (np.uint8, np.uint16):
            out[...] = band
        else:
            np.copyto(out, np.clip(np.rint(band), 0, 65535), casting="unsafe")
        return box
    matrix = warp_matrix((h, w), dst_shape, dx, dy)
    flags = cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP
    # Replicated borders keep the cubic kernel sane at the footprint's edge; what lies
    # outside the footprint is overwritten by the fill below.
    if band.dtype == np.uint16:
        cv2.warpAffine(
            band, matrix, (ww, hh), dst=out, flags=flags, borderMode=cv2.BORDER_REPLICATE
        )
    elif band.dtype == np.uint8:
        tmp = cv2.warpAffine(band, matrix, (ww, hh), flags=flags, borderMode=cv2.BORDER_REPLICATE)
        np.copyto(out, tmp, casting="unsafe")
    else:
        src = np.nan_to_num(band.astype(np.float32), nan=float(np.nanmean(band)))
        tmp = cv2.warpAffine(src, matrix, (ww, hh), flags=flags, borderMode=cv2.BORDER_REPLICATE)
        np.copyto(out, np.clip(np.rint(tmp), 0, 65535), casting="unsafe")
    r0, r1, c0, c1 = box
    if (r0, r1, c0, c1) != (0, hh, 0, ww):
        inside = out[r0:r1, c0:c1]
        mean = float(inside.mean(dtype=np.float64)) if inside.size else float(band.mean())
        fill = np.uint16(min(max(round(mean), 0), 65535))
        out[:r0] = fill
        out[r1:] = fill
        out[r0:r1, :c0] = fill
        out[r0:r1, c1:] = fill
    return box


def fuse_images(
    images: Mapping[str, np.ndarray],
    shifts: Mapping[str, tuple[float, float]],
    reference: str = "RGB",
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, list[str], dict[str, list[int]]]:
    """Stack all products of a scene onto the reference grid.

    ``images``: product -> ``(B, h, w)`` pixels (any numeric dtype); ``shifts``: product ->
    ``(dx, dy)`` in its own pixels (missing products are taken unshifted; the reference is
    never shifted); ``out``: an optional preallocated ``(C, H, W)`` uint16 array (e.g. a
    memory map) to fill channel by channel. Returns ``(stack, channels, valid)`` with
    ``stack`` ``(C, H, W)`` uint16 and ``valid`` product -> ``[row0, row1, col0, col1]``.
    """
    hh, ww = images[reference].shape[-2:]
    channels = channels_of(images)
    shape = (len(channels), hh, ww)
    if out is None:
        out = np.empty(shape, dtype=np.uint16)
    elif out.shape != shape or out.dtype != np.uint16:
        raise ValueError(f"out must be uint16 of shape {shape}, got {out.dtype} {out.shape}")
    valid: dict[str, list[int]] = {}
    c = 0
    for product in [p for p in PRODUCTS if p in images]:
        arr = images[product]
        arr = arr[None] if arr.ndim == 2 else arr
        dx, dy = (0.0, 0.0) if product == reference else shifts.get(product, (0.0, 0.0))
        for band in arr:
            box = resample_band(band, (hh, ww), float(dx), float(dy), out[c])
            c += 1
        valid[product] = list(box)
    return out, channels, valid


# --------------------------------------------------------------------------- one scene


class AlignedScene(NamedTuple):
    """A fused scene: ``stack`` ``(C, H, W)`` uint16, its channel names, the shift rows used
    and per product the valid box ``[row0, row1, col0, col1]``."""

    stack: np.ndarray
    channels: list[str]
    shifts: list[ShiftRow]
    valid: dict[str, list[int]]


def check_scene(scene: Scene) -> str:
    """Check that a scene's products can be fused; return the reference product's name.

    Raises DataError when a product's shape does not match the reference's aspect ratio.
    """
    ref = scene.reference
    for p in scene.products.values():
        if p.height <= 0 or p.width <= 0:
            raise DataError(f"{p.path} is empty ({p.height} x {p.width} px)")
        sx, sy = p.width / ref.width, p.height / ref.height
        if abs(sx / sy - 1.0) > ASPECT_TOLERANCE:
            raise DataError(
                f"{p.path} is {p.height} x {p.width} px, whose aspect ratio does not match "
                f"the {ref.name} grid of {ref.height} x {ref.width} px of scene {scene.image_id}"
            )
    return ref.name


def read_products(scene: Scene) -> dict[str, np.ndarray]:
    """All products of a scene, ``name -> (B, h, w)`` in the files' dtypes."""
    return {name: scene.read(name) for name in PRODUCTS if scene.has(name)}


def estimate_scene(
    scene: Scene | GeoScene, config: RegistrationConfig = DEFAULT_CONFIG
) -> list[ProductEstimate]:
    """Phase 1 of one scene: read it and estimate the shift of every non-reference product."""
    if isinstance(scene, GeoScene):
        return estimate_georef(scene, config)
    reference = check_scene(scene)
    images = read_products(scene)
    return estimate_products(images, scene.image_id, reference, config)


def align_scene(
    scene: Scene,
    shifts: Sequence[ShiftRow] | None = None,
    config: RegistrationConfig = DEFAULT_CONFIG,
    out: np.ndarray | None = None,
) -> AlignedScene:
    """Register and fuse one scene (the core of ``spectraseg align``, without the cache).

    ``shifts``: the rows to apply (e.g. resolved across a region); None estimates them from
    this scene alone (fallbacks: phase correlation, then identity). ``out``: optional
    preallocated ``(C, H, W)`` uint16 output. Raises DataError for unreadable or
    mismatched products.
    """
    reference = check_scene(scene)
    images = read_products(scene)
    if shifts is None:
        estimates = estimate_products(images, scene.image_id, reference, config)
        rows = resolve_shifts(estimates, config=config)
    else:
        rows = [r for r in shifts if r.image_id == scene.image_id]
    stack, channels, valid = fuse_images(
        images, {r.product: (r.dx, r.dy) for r in rows}, reference, out
    )
    return AlignedScene(stack, channels, rows, valid)


# --------------------------------------------------------------------------- cache files


def write_scene(
    cache_dir: str | os.PathLike[str], scene: Scene | GeoScene, shifts: Sequence[ShiftRow]
) -> dict[str, Any]:
    """Fuse ``scene`` with ``shifts`` into ``cache_dir/{id}.npy``, atomically.

    The stack is written channel by channel to a temporary file that is renamed onto
    ``{id}.npy`` only once complete and synced; only one product and one channel are in
    memory at a time. Returns the scene's manifest entry. A georeferenced scene is written
    by :func:`spectraseg.align.georef.write_georef`.
    """
    if isinstance(scene, GeoScene):
        return write_georef(cache_dir, scene, shifts)
    cache_dir = Path(cache_dir)
    image_id = check_image_id(scene.image_id)
    reference = check_scene(scene)
    ref = scene.reference
    channels = channels_of(scene.products)
    shape = (len(channels), ref.height, ref.width)
    path = cache_dir / f"{image_id}.npy"
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Leftovers of a killed run for this scene (this run owns the scene).
    for stale in cache_dir.glob(f".{image_id}.npy.*.tmp"):
        stale.unlink(missing_ok=True)
    header = {"descr": "<u2", "fortran_order": False, "shape": shape}
    rows = {r.product: (r.dx, r.dy) for r in shifts if r.image_id == image_id}
    valid: dict[str, list[int]] = {}
    buf = np.empty(shape[1:], dtype="<u2")
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        # Channel by channel, in order: one product and one channel buffer in memory.
        for name in [p for p in PRODUCTS if scene.has(p)]:
            arr = scene.read(name)
            dx, dy = (0.0, 0.0) if name == reference else rows.get(name, (0.0, 0.0))
            for band in arr:
                box = resample_band(band, shape[1:], float(dx), float(dy), buf)
                f.write(buf.data)
            valid[name] = list(box)
            del arr
        f.flush()
        # Durable before the rename makes it visible.
        os.fsync(f.fileno())
    return {
        "channels": channels,
        "height": ref.height,
        "width": ref.width,
        "products": [p for p in PRODUCTS if scene.has(p)],
        "reference": reference,
        "valid": valid,
    }


# --------------------------------------------------------------------------- tasks


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        cv2.setNumThreads(int(threads))


def estimate_task(
    root: str, image_id: str, config: RegistrationConfig, threads: int | None = None
) -> tuple[list[ProductEstimate], float] | str:
    """Dask/serial task of phase 1: ``(estimates, seconds)`` of one scene, or why it failed."""
    _set_threads(threads)
    t0 = time.perf_counter()
    try:
        scene = open_source(root).scene(image_id)
        return estimate_scene(scene, config), time.perf_counter() - t0
    except SpectrasegError as exc:
        return str(exc)


def fuse_task(
    root: str,
    cache_dir: str,
    image_id: str,
    shifts: Sequence[ShiftRow],
    threads: int | None = None,
) -> tuple[dict[str, Any], float] | str:
    """Dask/serial task of phase 2: write one scene's ``.npy``; ``(manifest entry, seconds)``
    or why it failed."""
    _set_threads(threads)
    t0 = time.perf_counter()
    try:
        scene = open_source(root).scene(image_id)
        return write_scene(cache_dir, scene, shifts), time.perf_counter() - t0
    except SpectrasegError as exc:
        return str(exc)


# --------------------------------------------------------------------------- dataset


@dataclass
class SceneStatus:
    """The outcome of one scene: ``aligned``, ``skipped`` (already cached) or ``failed``."""

    image_id: str
    status: str
    reason: str = ""
    seconds: float = 0.0


@dataclass
class AlignReport:
    """What :func:`align_dataset` did, per scene, and the shifts it estimated."""

    cache_dir: Path
    scenes: list[SceneStatus] = field(default_factory=list)
    shifts: list[ShiftRow] = field(default_factory=list)
    seconds: float = 0.0

    def _with(self, status: str) -> list[SceneStatus]:
        return [s for s in self.scenes if s.status == status]

    @property
    def aligned(self) -> list[SceneStatus]:
        """Scenes fused in this run."""
        return self._with("aligned")

    @property
    def skipped(self) -> list[SceneStatus]:
        """Scenes already complete in the cache."""
        return self._with("skipped")

    @property
    def failed(self) -> list[SceneStatus]:
        """Scenes that could not be aligned, with the reason."""
        return self._with("failed")

    @property
    def fallbacks(self) -> list[ShiftRow]:
        """Shift rows of this run that did not come from a plain ECC estimate."""
        return [r for r in self.shifts if r.method != "ecc"]

    @property
    def ok(self) -> bool:
        """True when no scene failed."""
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (NaN correlations become None)."""

        def clean(row: ShiftRow) -> dict[str, Any]:
            d = asdict(row)
            d["corr"] = None if not math.isfinite(row.corr) else row.corr
            return d

        return {
            "cache_dir": str(self.cache_dir),
            "seconds": self.seconds,
            "aligned": len(self.aligned),
            "skipped": len(self.skipped),
            "failed": len(self.failed),
            "scenes": [asdict(s) for s in self.scenes],
            "shifts": [clean(r) for r in self.shifts],
        }


def _bar(total: int, desc: str, progress: bool) -> Any:
    return tqdm(total=total, desc=desc, unit="scene", file=sys.stderr, disable=not progress)


def align_dataset(
    data_root: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    image_ids: Sequence[str] | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool = True,
    force: bool = False,
    config: RegistrationConfig = DEFAULT_CONFIG,
) -> AlignReport:
    """Register and fuse the scenes of a dataset into a cache directory.

    ``data_root``: a DSTL-layout root or a dataset description (``.toml``), whose scenes are
    fused on their target grids (:mod:`spectraseg.align.georef`).
    ``image_ids``: the scenes to align (default: all scenes with a product file); scenes
    already complete in the cache are skipped unless ``force``. ``workers``: run on a Dask
    ``LocalCluster`` of that many single-threaded worker processes; ``scheduler``: run on an
    existing Dask cluster at that address (its workers must see both directories at the
    same paths); neither: run serially in this process. Shifts of all scenes are estimated
    first, fallbacks resolved across each region (including scenes cached earlier), then
    scenes are fused. The manifest and ``shifts.csv`` are merged with those already in the
    cache and rewritten atomically after every scene, so an interrupted run loses at most
    the scenes in flight. Per-scene failures are collected in the report; only user errors
    for the whole run (bad root, bad ids, bad cache) raise.
    """
    t_start = time.perf_counter()
    ds = open_source(data_root)
    root = str(ds.root.resolve())
    cache = Path(cache_dir)
    if cache.exists() and not cache.is_dir():
        raise DataError(f"cache path {cache} exists and is not a directory")
    ids = ds.select(image_ids, "align")
    manifest = read_manifest(cache, missing_ok=True)
    _set_schema(manifest, ds, cache)
    shifts_path = cache / SHIFTS
    old_rows = read_shifts(shifts_path) if shifts_path.is_file() else []

    report = AlignReport(cache_dir=cache)
    status: dict[str, SceneStatus] = {}
    todo = _scenes_to_align(ds, cache, ids, manifest, force, status)
    if todo:
        cache.mkdir(parents=True, exist_ok=True)
        with open_runner(workers, scheduler) as runner:
            run = _Run(runner, root, cache, status, progress)
            estimates, seconds = _estimate_shifts(run, todo, config)
            report.shifts = _resolve_fallbacks(shifts_path, todo, estimates, old_rows, config)
            _fuse_scenes(run, report.shifts, seconds, manifest)
    elif not (cache / MANIFEST).is_file():
        # Nothing to do, but leave a valid (empty) cache behind.
        cache.mkdir(parents=True, exist_ok=True)
        write_manifest(cache, manifest)

    report.scenes = [status[i] for i in ids]
    report.seconds = time.perf_counter() - t_start
    return report


def _set_schema(manifest: dict[str, Any], ds: Source, cache: Path) -> None:
    """Record a description's class schema in the manifest; DataError when the cache
    already holds scenes labelled with another schema."""
    schema = ds.description.classes if isinstance(ds, GeoDataset) else DSTL_SCHEMA
    old = manifest_schema(manifest, cache)
    if manifest["scenes"] and old != schema:
        raise DataError(
            f"cache {cache} holds scenes of the classes {old.names}, not {schema.names} "
            f"of {ds.root}: align into another cache"
        )
    if not schema.is_dstl:
        manifest["classes"] = schema.to_json()


class _Run(NamedTuple):
    """What every phase of one :func:`align_dataset` run shares. ``status``: the outcome of
    each scene so far (``image_id -> SceneStatus``), filled in by the phases."""

    runner: Runner
    root: str
    cache: Path
    status: dict[str, SceneStatus]
    progress: bool


def _scenes_to_align(
    ds: Source,
    cache: Path,
    ids: Sequence[str],
    manifest: dict[str, Any],
    force: bool,
    status: dict[str, SceneStatus],
) -> list[str]:
    """The scenes of ``ids`` to (re)build, in order; the others get their status: ``skipped``
    when complete in the cache (unless ``force``), ``failed`` when their products cannot be
    opened."""
    todo: list[str] = []
    for image_id in ids:
        try:
            scene = ds.scene(image_id)
        except SpectrasegError as exc:
            status[image_id] = SceneStatus(image_id, "failed", str(exc))
            continue
        entry = manifest["scenes"].get(image_id)
        if not force and entry_complete(cache, image_id, entry, scene):
            status[image_id] = SceneStatus(image_id, "skipped")
        else:
            todo.append(image_id)
    return todo


def _estimate_shifts(
    run: _Run, todo: Sequence[str], config: RegistrationConfig
) -> tuple[list[ProductEstimate], dict[str, float]]:
    """Phase 1 over the scenes ``todo``: their estimates and the seconds each scene took,
    both in ``todo`` order; a scene that fails is marked ``failed`` in ``run.status``."""
    estimates: list[ProductEstimate] = []
    seconds: dict[str, float] = {}
    with _bar(len(todo), "align: shifts", run.progress) as bar:
        jobs = [(i, (run.root, i, config, run.runner.threads)) for i in todo]
        for image_id, result, exc in run.runner.run(estimate_task, jobs):
            bar.update()
            if exc is not None or isinstance(result, str):
                reason = describe(exc) if exc is not None else result
                run.status[image_id] = SceneStatus(image_id, "failed", reason)
            else:
                estimates.extend(result[0])
                seconds[image_id] = result[1]
    order = {i: n for n, i in enumerate(todo)}
    estimates.sort(key=lambda e: order[e.image_id])
    return estimates, {i: seconds[i] for i in todo if i in seconds}


def _resolve_fallbacks(
    shifts_path: Path,
    todo: Sequence[str],
    estimates: Sequence[ProductEstimate],
    old_rows: Sequence[ShiftRow],
    config: RegistrationConfig,
) -> list[ShiftRow]:
    """Phase 2: the rows of this run's scenes, resolved with the rows of scenes cached
    earlier as region neighbours; ``shifts.csv`` is rewritten (atomically) with both."""
    # Neighbours cached earlier take part in the region medians.
    redo = set(todo)
    known = [r for r in old_rows if r.image_id not in redo]
    rows = resolve_shifts(estimates, known, config)
    write_shifts(shifts_path, known + rows)
    return rows


def _fuse_scenes(
    run: _Run, rows: Sequence[ShiftRow], seconds: Mapping[str, float], manifest: dict[str, Any]
) -> None:
    """Phase 3: fuse and write every scene whose shifts were estimated (those in
    ``seconds``, in that order); the manifest is merged and rewritten after each scene."""
    by_scene: dict[str, list[ShiftRow]] = {i: [] for i in seconds}
    for r in rows:
        by_scene[r.image_id].append(r)
    with _bar(len(by_scene), "align: fuse", run.progress) as bar:
        jobs = [
            (i, (run.root, str(run.cache), i, by_scene[i], run.runner.threads)) for i in by_scene
        ]
        for image_id, result, exc in run.runner.run(fuse_task, jobs):
            bar.update()
            if exc is not None or isinstance(result, str):
                reason = describe(exc) if exc is not None else result
                run.status[image_id] = SceneStatus(image_id, "failed", reason)
                continue
            entry, fuse_seconds = result
            manifest["scenes"][image_id] = entry
            write_manifest(run.cache, manifest)
            total = seconds[image_id] + fuse_seconds
            run.status[image_id] = SceneStatus(image_id, "aligned", seconds=total)


__all__ = [
    "AlignReport",
    "AlignedScene",
    "SceneStatus",
    "align_dataset",
    "align_scene",
    "check_scene",
    "estimate_scene",
    "fuse_images",
    "resample_band",
    "valid_box",
    "warp_matrix",
    "write_scene",
]
