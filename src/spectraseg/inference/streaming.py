"""Streaming prediction of a georeferenced scene: memory holds one strip of rows, never the
scene, so a 30-50k pixel WorldView-3 strip predicts on a laptop.

Two passes over the strips of :func:`spectraseg.inference.tiling.plan_strips`:

1. **Model** (:func:`predict_strips`): per strip, the rows its tiles read are normalised
   from the cache (:func:`spectraseg.features.patches.load_scene` with ``rows``), the tiles
   run (and the per-pixel model, blended), and the strip's probability levels and class
   values are written as two small GeoTIFFs under ``PRED/{id}/.strips/``
   (:mod:`spectraseg.inference.georaster`). A strip too wide for :data:`STRIP_BYTES` is
   predicted in cells of whole tile columns (``cols`` as well), each written into its
   window of the strip's files as it comes, so memory holds one cell whatever the scene's
   width. A cell whose input is all nodata is written without
   running a model. A killed prediction resumes after the last whole strip; the strips of
   one scene can run on different Dask workers.
2. **Vectors and COGs** (:func:`finish_scene`): the strips are read back in order,
   thresholded and traced per class with :class:`spectraseg.vectorize.StripTracer` (an
   object crossing seams is one polygon, exactly as from the whole mask), the polygons
   appended to ``polygons.gpkg``; then ``classes.tif`` and ``probs.tif`` are written as
   COGs from VRT mosaics of the strips, and the strips are removed.

Every output appears under its final name only when complete. The strips record the request
they belong to (``.strips/request.json``: checkpoint times, thresholds, blend, tiling,
normalisation); a different request starts the scene afresh.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import shapely
import torch
from affine import Affine
from rasterio.windows import Window
from tqdm import tqdm

from spectraseg.align.cache import open_cache
from spectraseg.data.classes import ClassSchema
from spectraseg.data.files import write_text_atomic
from spectraseg.data.georef import prediction_gpkg
from spectraseg.evaluation.levels import blend_levels, quantize, threshold_masks
from spectraseg.features.patches import load_scene, scene_channels
from spectraseg.features.stats import Stats
from spectraseg.inference.georaster import (
    CLASS_BITS_NODATA,
    CLASS_NODATA,
    class_bit_tags,
    class_bits,
    class_colormap,
    class_raster,
    class_tags,
    strip_bands,
    strip_writer,
    strips_vrt,
    write_category_names,
    write_cog,
)
from spectraseg.inference.loaded import cached_model, cached_pixel_model, set_threads
from spectraseg.inference.outputs import GpkgWriter, write_geojson_4326
from spectraseg.inference.scene import PredictOptions, class_vector_settings, resolve_options
from spectraseg.inference.tiling import Strip, plan_strips, predict_probs
from spectraseg.models.pixel import HALO
from spectraseg.parallel import Runner, describe
from spectraseg.runs import model_mtime_ns, pixel_mtime_ns
from spectraseg.runtime import release_memory
from spectraseg.vectorize import MAX_COMPONENTS, StripTracer, check_north_up, ragged_to_map

STRIP_BYTES = 256 * 2**20
"""Budget of one cell's normalised float32 input window (C x rows x columns x 4 bytes): a
strip holds as many whole tile rows as fit across the scene's width, at least one; where
one tile row is too wide, each strip is predicted in cells of as many whole tile columns
as fit. The window is a cell's largest array; its probabilities (K x rows x columns
float32) and the model's activations come next. Measured on one 448-row strip of a 32768
px wide scene predicted whole: 480 MB of window and 560 MB of probabilities, a peak of
1551 MB (629 MB at 4096 px): cells keep that flat."""


@dataclass(frozen=True)
class SceneRequest:
    """What to predict for one georeferenced cached scene, and where (picklable: sent to
    Dask workers with each strip)."""

    run_dir: str
    cache_dir: str
    image_id: str
    out_dir: str
    thresholds: Mapping[int, float]
    min_area: Mapping[int, float]
    options: PredictOptions
    """Resolved (tile, margin, batch, tta set)."""
    schema: ClassSchema
    stats: Stats
    blend: Mapping[int, float] | None = None
    probs: bool = True
    """Keep ``probs.tif`` (the strips are written either way: resuming needs them)."""
    channels: int = 0
    """Input channels of the model (sizes the strips)."""
    rows: int = field(default=0)
    """Kept rows per strip (0: from :data:`STRIP_BYTES`)."""
    shape: tuple[int, int, int] = (0, 0, 0)
    """``(C, H, W)`` of the cached scene: set by :func:`laid_out`."""
    strips: tuple[Strip, ...] = ()
    """The scene's strips, top to bottom: set by :func:`laid_out`."""
    bands: tuple[Strip, ...] = ()
    """The bands of columns each strip is predicted in (one when a strip fits whole), left
    to right: set by :func:`laid_out`."""

    @property
    def scene_dir(self) -> Path:
        return prediction_gpkg(self.out_dir, self.image_id).parent

    @property
    def strips_dir(self) -> Path:
        return self.scene_dir / ".strips"


def strip_rows(width: int, channels: int, tile: int, margin: int) -> int:
    """Kept rows (or columns) of a band: whole tile rows (``tile - 2 margin`` each) whose
    input window, ``C`` float32 channels ``width`` long across with ``margin`` rows of
    context on each side, fits in :data:`STRIP_BYTES`; at least one tile row."""
    step = tile - 2 * margin
    fit = STRIP_BYTES // max(1, width * channels * 4) - 2 * margin
    return max(step, fit // step * step)


def laid_out(req: SceneRequest) -> SceneRequest:
    """The request with its scene's shape (the cache file's header), strips and bands of
    columns filled in, once, so that no strip job re-reads them. A strip is one band wide
    unless its input window would exceed :data:`STRIP_BYTES`."""
    o = req.options
    assert o.tile is not None and o.margin is not None
    c, h, w = (int(n) for n in open_cache(req.cache_dir).load(req.image_id).shape)
    channels = max(req.channels, 1)
    rows = req.rows or strip_rows(w, channels, o.tile, o.margin)
    step = o.tile - 2 * o.margin
    tall = min(rows, -(-h // step) * step) + 2 * o.margin  # rows a strip's window reads
    cols = -(-w // step) * step  # one band, where a strip's window fits whole
    if channels * tall * w * 4 > STRIP_BYTES:
        cols = strip_rows(tall, channels, o.tile, o.margin)
    multiple = int(getattr(cached_model(req.run_dir, o.checkpoint, o.device)[0], "multiple", 1))
    strips = plan_strips(h, o.tile, o.margin, rows, multiple)
    bands = plan_strips(w, o.tile, o.margin, cols, multiple)
    return replace(req, shape=(c, h, w), strips=tuple(strips), bands=tuple(bands))


def _laid(req: SceneRequest) -> SceneRequest:
    if not req.strips:
        raise ValueError(f"request for {req.image_id} has no strips: lay it out first (laid_out)")
    return req


def strip_path(req: SceneRequest, kind: str, k: int) -> Path:
    """``PRED/{id}/.strips/{kind}_{k:05d}.tif`` (kind ``probs`` or ``classes``)."""
    return req.strips_dir / f"{kind}_{k:05d}.tif"


def _fingerprint(req: SceneRequest) -> dict[str, Any]:
    """What the strips of a request depend on: a strip written for another is not reused."""
    mean, std = req.stats.lookup(req.image_id)
    o = req.options
    norm = hashlib.sha256(np.asarray(mean).tobytes() + np.asarray(std).tobytes()).hexdigest()
    return {
        "checkpoint": [o.checkpoint, model_mtime_ns(req.run_dir, o.checkpoint)],
        "pixel": pixel_mtime_ns(req.run_dir) if req.blend is not None else None,
        "thresholds": {str(k): float(v) for k, v in sorted(req.thresholds.items())},
        "blend": {str(k): float(v) for k, v in sorted(req.blend.items())} if req.blend else None,
        "tiling": [o.tile, o.margin, bool(o.tta), bool(o.amp), o.device],
        "class_bits": bool(o.class_bits),
        "strips": [[s.top, s.bottom] for s in req.strips],
        "bands": [[b.top, b.bottom] for b in req.bands],
        "normalisation": norm,
    }


def prepare(req: SceneRequest) -> list[int]:
    """Check the strips already under ``PRED/{id}/.strips`` against this request (starting
    afresh where they belong to another); the indices of the strips still to predict."""
    doc = json.loads(json.dumps(_fingerprint(_laid(req))))
    record = req.strips_dir / "request.json"
    if record.is_file() and json.loads(record.read_text(encoding="utf-8")) != doc:
        shutil.rmtree(req.strips_dir)
    if not record.is_file():
        req.strips_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(record, json.dumps(doc, indent=1) + "\n")
    return [
        k
        for k in range(len(req.strips))
        if not (strip_path(req, "probs", k).is_file() and strip_path(req, "classes", k).is_file())
    ]


def _write_cells(
    req: SceneRequest, k: int, strip: Strip, model: torch.nn.Module, nodata: np.ndarray | None,
    transform: Affine, crs: str,
) -> int:  # fmt: skip
    """Predict strip ``k`` cell by cell (:attr:`SceneRequest.bands`), writing each cell's
    probability levels (blended when asked) and classes into the strip's two files as it
    comes, so memory holds one cell, not the strip (its uint8 levels alone are 147 MB for 448
    rows of a 32768 px scene); how many cells ran the model. A cell whose pixels are all
    nodata (``nodata``: the strip's ``(rows, W)`` mask) is written as zeros (levels) and
    nodata (classes) without running it. The heap's free pages are given back after each
    cell: cells of different widths otherwise fragment it (a 4096 x 32768 scene, two cells
    a strip: peak RSS 1415 MB, 1189 MB with the release; one-cell 4096 px scenes: 1151)."""
    rows, width, k_ = strip.bottom - strip.top, req.shape[2], len(req.schema)
    bits = bool(req.options.class_bits)
    to_classes, dtype = (class_bits, "uint16") if bits else (class_raster, "uint8")
    ran = 0
    with (
        strip_writer(strip_path(req, "probs", k), k_, rows, width, transform, crs, strip.top)
        as probs,
        strip_writer(
            strip_path(req, "classes", k), 1, rows, width, transform, crs, strip.top, dtype
        ) as classes,
    ):  # fmt: skip
        for band in req.bands:
            nd = None if nodata is None else nodata[:, band.top : band.bottom]
            if nd is not None and nd.all():
                levels = np.zeros((k_, rows, band.bottom - band.top), np.uint8)
            else:
                levels = _cell_levels(req, strip, band, model)
                ran += 1
            if nd is not None:
                levels[:, nd] = 0  # no class where the input has no data
            window = Window(band.top, 0, band.bottom - band.top, rows)
            probs.write(levels, window=window)
            classes.write(to_classes(levels, req.thresholds, nd)[None], window=window)
            del levels
            release_memory()
    return ran


def _around(band: Strip, context: int) -> tuple[int, int]:
    """What a band reads: its tiles' input, and ``context`` pixels around its kept part."""
    return (
        min(band.read[0], max(band.top - context, 0)),
        max(band.read[1], min(band.bottom + context, band.height)),
    )


def _cell_levels(
    req: SceneRequest, strip: Strip, band: Strip, model: torch.nn.Module
) -> np.ndarray:
    """uint8 ``(K, rows, columns)`` probability levels of one cell: a strip's rows within a
    band of columns (blended with the per-pixel model when asked)."""
    o = req.options
    assert o.tile is not None and o.margin is not None and o.batch is not None
    pixel = cached_pixel_model(req.run_dir) if req.blend is not None else None
    # The tiles' input, and around the kept pixels the per-pixel features' context.
    rows, cols = (_around(strip, HALO), _around(band, HALO)) if pixel else (strip.read, band.read)
    window = load_scene(req.cache_dir, req.image_id, req.stats, _indices(req), rows=rows, cols=cols)
    a, c = rows[0], cols[0]
    tiles = window[:, strip.read[0] - a : strip.read[1] - a, band.read[0] - c : band.read[1] - c]
    probs = predict_probs(
        model, tiles, tile=o.tile, margin=o.margin, batch=o.batch, tta=bool(o.tta),
        device=o.device, amp=bool(o.amp), strip=strip, cols=band, num_classes=len(req.schema),
    )  # fmt: skip
    levels = quantize(probs)
    if pixel is not None and req.blend is not None:
        p = pixel.predict_proba(window)
        p = p[:, strip.top - a : strip.bottom - a, band.top - c : band.bottom - c]
        levels = blend_levels(levels, quantize(p), req.blend)
    return levels


def _indices(req: SceneRequest) -> list[str]:
    return list(
        cached_model(req.run_dir, req.options.checkpoint, req.options.device)[1].data.indices
    )


def predict_strips(req: SceneRequest, todo: list[int]) -> tuple[int, int, float]:
    """Predict strips ``todo`` of the scene and write their files (a Dask task, or run in
    this process); how many strips and cells ran the model (the others were all nodata)
    and the seconds."""
    t0 = time.perf_counter()
    set_threads(req.options.threads)
    model, config, _ = cached_model(req.run_dir, req.options.checkpoint, req.options.device)
    req = replace(req, options=resolve_options(req.options, config))  # device, on this host
    cache = open_cache(req.cache_dir)
    entry = cache.entry(req.image_id)
    transform, crs = Affine(*entry["transform"]), str(entry["crs"])
    nodata = cache.nodata(req.image_id)
    strips, ran, cells = _laid(req).strips, 0, 0
    for k in todo:
        s = strips[k]
        nd = None if nodata is None else np.asarray(nodata[s.top : s.bottom])
        n = _write_cells(req, k, s, model, nd, transform, crs)
        ran, cells = ran + (n > 0), cells + n
        release_memory()
    return ran, cells, time.perf_counter() - t0


def vectorize_strips(req: SceneRequest, transform: Affine, crs: str) -> dict[str, Any]:
    """Trace the scene's masks strip by strip into ``polygons.gpkg`` (atomically); per
    class the total area (squared map units) and polygon count."""
    t0 = time.perf_counter()
    check_north_up(transform)
    k_ = len(req.schema)
    w = _laid(req).shape[2]
    tolerance, min_area = class_vector_settings(transform, req.min_area, req.options, req.schema)
    tracers = {c: StripTracer(w, MAX_COMPONENTS, f"class {c}") for c in range(1, k_ + 1)}
    area = dict.fromkeys(range(1, k_ + 1), 0.0)
    parts = dict.fromkeys(range(1, k_ + 1), 0)
    writer = GpkgWriter(prediction_gpkg(req.out_dir, req.image_id), crs, req.schema.names)
    try:
        for k, s in enumerate(_laid(req).strips):
            last = s.bottom == req.strips[-1].bottom
            bands = strip_bands(strip_path(req, "probs", k))
            for (c, tracer), levels in zip(tracers.items(), bands, strict=True):
                # One class at a time: a 32768 px strip's K levels and masks are 147 MB each.
                mask = threshold_masks(levels[None], req.thresholds.get(c, 0.5))[0]
                rag = tracer.add(mask, last=last)
                mp = ragged_to_map(
                    rag, transform, tolerance.get(c, 0.0), min_area.get(c, 0.0),
                    req.options.decimals,
                )  # fmt: skip
                if not mp.is_empty:
                    polys = shapely.get_parts(mp)
                    writer.add(c, polys)
                    area[c] += float(shapely.area(polys).sum())
                    parts[c] += len(polys)
            release_memory()
    except BaseException:
        writer.close(ok=False)
        raise
    writer.close()
    seam = sum(t.seam_seconds for t in tracers.values())
    return {
        "area": area,
        "parts": parts,
        "vectorize_seconds": time.perf_counter() - t0,
        "seam_seconds": seam,
    }


def _write_cog(req: SceneRequest, kind: str, transform: Affine, crs: str) -> None:
    """``classes.tif`` (argmax with a colour table and category names, or a bit per class)
    or ``probs.tif`` (a band per class, no overviews) from a VRT mosaic of the strips."""
    _, h, w = _laid(req).shape
    vrt, target = req.strips_dir / f"{kind}.vrt", req.scene_dir / f"{kind}.tif"
    files = [(strip_path(req, kind, k), s.top, s.bottom - s.top) for k, s in enumerate(req.strips)]
    threads = req.options.threads
    if kind == "probs":
        tags = {f"BAND_{c.index}": c.name for c in req.schema.classes}
        strips_vrt(vrt, files, w, h, len(req.schema), transform, crs, tags=tags)
        write_cog(vrt, target, overviews=False, threads=threads)
    elif req.options.class_bits:
        strips_vrt(
            vrt, files, w, h, 1, transform, crs, CLASS_BITS_NODATA,
            tags=class_bit_tags(req.schema), dtype="UInt16",
        )  # fmt: skip
        write_cog(vrt, target, threads=threads)
        target.with_name(target.name + ".aux.xml").unlink(missing_ok=True)  # no categories
    else:
        strips_vrt(
            vrt, files, w, h, 1, transform, crs, CLASS_NODATA,
            class_colormap(req.schema), class_tags(req.schema),
        )  # fmt: skip
        write_cog(vrt, target, threads=threads)
        write_category_names(target, req.schema)


def finish_scene(req: SceneRequest) -> dict[str, Any]:
    """Polygons and COGs of a scene whose strips are all written (a Dask task, or run in
    this process); the strips are removed."""
    t0 = time.perf_counter()
    cache = open_cache(req.cache_dir)
    entry = cache.entry(req.image_id)
    transform, crs = Affine(*entry["transform"]), str(entry["crs"])
    _, h, w = _laid(req).shape
    summary = vectorize_strips(req, transform, crs)  # gives its memory back strip by strip
    if req.options.geojson:
        gpkg = prediction_gpkg(req.out_dir, req.image_id)
        write_geojson_4326(gpkg, gpkg.with_suffix(".geojson"))
    strips = req.strips
    for kind in ("classes", "probs") if req.probs else ("classes",):
        _write_cog(req, kind, transform, crs)
    if not req.probs:
        (req.scene_dir / "probs.tif").unlink(missing_ok=True)
    shutil.rmtree(req.strips_dir)
    seconds = time.perf_counter() - t0
    return {
        "height": h, "width": w, **summary, "strips": len(strips), "bands": len(req.bands),
        "finish_seconds": seconds,
    }  # fmt: skip


def predict_scenes(
    runner: Runner, requests: Mapping[str, SceneRequest], progress: bool = False
) -> dict[str, dict[str, Any]]:
    """Predict georeferenced scenes: every strip still to do of every scene is one job on
    ``runner`` (so one large scene spreads over all workers), then each scene whose strips
    all succeeded is finished as one job. Per scene its summary (``status`` ``ok``) or
    ``status`` ``failed`` and the first ``reason``."""
    todo = {i: prepare(req) for i, req in requests.items()}
    jobs = [(f"{i}/{k}", (req, [k])) for i, req in requests.items() for k in todo[i]]
    failed: dict[str, str] = {}
    ran = dict.fromkeys(requests, 0)
    cells = dict.fromkeys(requests, 0)
    seconds = dict.fromkeys(requests, 0.0)
    with tqdm(total=len(jobs), desc="predict", unit="strip", disable=not progress) as bar:
        for key, result, exc in runner.run(predict_strips, jobs):
            bar.update()
            i = key.rsplit("/", 1)[0]
            if exc is not None:
                failed.setdefault(i, describe(exc))
            else:
                ran[i] += result[0]
                cells[i] += result[1]
                seconds[i] += result[2]
    out: dict[str, dict[str, Any]] = {
        i: {"image_id": i, "status": "failed", "reason": r} for i, r in failed.items()
    }
    finish = [(i, (req,)) for i, req in requests.items() if i not in failed]
    with tqdm(total=len(finish), desc="vectorize", unit="scene", disable=not progress) as bar:
        for i, result, exc in runner.run(finish_scene, finish):
            bar.update()
            if exc is not None:
                out[i] = {"image_id": i, "status": "failed", "reason": describe(exc)}
                continue
            strips = {
                "total": result.pop("strips"), "predicted": len(todo[i]), "model": ran[i],
                "model_cells": cells[i],
            }  # fmt: skip
            out[i] = {"image_id": i, **result, "strips": strips, "model_seconds": seconds[i],
                      "seconds": seconds[i] + result["finish_seconds"], "status": "ok"}  # fmt: skip
    return out


def request_channels(req: SceneRequest) -> int:
    """Input channels the scene gives the model (its cache channels and the run's indices)."""
    return len(scene_channels(open_cache(req.cache_dir), req.image_id, _indices(req)))
