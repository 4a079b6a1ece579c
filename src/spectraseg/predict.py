"""Tiled whole-scene inference, per-class thresholds and the ``predict`` stage.

The core, :func:`predict_probs`, turns one normalised scene ``(C, H, W)`` into class
probabilities ``(10, H, W)`` with a fully convolutional model:

- The scene is cut into tiles of ``tile`` pixels whose centres, ``tile - 2 * margin``
  pixels wide, tile the scene without gaps or overlap (:func:`tile_layout`). Only a tile's
  centre is kept: its ``margin`` pixels of context on each side are seen by the model but
  never written, so predictions near tile edges (where a convolution sees zero padding)
  never reach the output, and no blending is needed: every output pixel comes from exactly
  one tile. When the model's size divisor is known, the last row and column of tiles
  shrink to what is left of the scene, so the work wasted past the edge stays small.
- Context beyond the scene borders is the scene mirrored at its edge (``numpy`` "reflect"
  mode). Tiles are gathered one at a time from index maps, so the padded scene is never
  materialised: memory is the input, the output and one batch of tiles.
- Tiles run in batches; with ``tta=True`` every batch also runs through the 7 other
  symmetries of the square (flips, transpose, rotations) and the 8 probability maps,
  mapped back, are averaged.

The :func:`predict_run` pipeline (cache -> probabilities -> thresholds -> polygons) and
:func:`tune_thresholds` build on it; ``spectraseg predict`` is the CLI over them.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import shapely
import torch
from shapely.geometry import MultiPolygon

from spectraseg import CLASS_NAMES, NUM_CLASSES
from spectraseg.errors import ConfigError, DataError, SpectrasegWarning
from spectraseg.geometry import EMPTY
from spectraseg.io import atomic_output, check_image_id, write_text_atomic, write_wkt_csv
from spectraseg.parallel import Job, Runner, describe, open_runner
from spectraseg.runtime import resolve_device
from spectraseg.vectorize import DEFAULT_DECIMALS, DEFAULT_TOLERANCE, masks_to_polygons

# --------------------------------------------------------------------------- tiling


def reflect_index(n: int, start: int, stop: int) -> np.ndarray:
    """Source indices in ``[0, n)`` of padded positions ``start..stop-1`` (reflect mode).

    Position ``p`` of a scene of length ``n`` mirrored at its edges without repeating the
    edge sample (``numpy.pad(mode="reflect")``): ``-1 -> 1``, ``n -> n - 2``. Works for any
    distance from the scene, reflecting as often as needed; ``n == 1`` maps everything to 0.
    Returns int64 ``(stop - start,)``.
    """
    p = np.arange(start, stop, dtype=np.int64)
    if n == 1:
        return np.zeros_like(p)
    period = 2 * (n - 1)
    p = np.mod(p, period)
    return np.where(p < n, p, period - p)


def tile_layout(
    length: int, tile: int, margin: int, multiple: int | None = None
) -> list[tuple[int, int]]:
    """``(start, size)`` of each tile along one axis: where its kept centre starts (scene
    pixels) and the tile's input length.

    Centres are ``tile - 2 * margin`` long and start at multiples of that step, tiling
    ``[0, length)`` without gaps or overlap. Full tiles are ``tile`` long. The last tile only
    has to cover what is left: with ``multiple`` (the model's size divisor) it shrinks to the
    smallest multiple that holds the rest plus both margins, so little is computed past the
    scene; without it, it stays ``tile`` long and its centre is cropped.
    """
    step = tile - 2 * margin
    if step <= 0:
        raise ValueError(f"tile {tile} must exceed twice the margin {margin}")
    n_full, rest = divmod(length, step)
    out = [(i * step, tile) for i in range(n_full)]
    if rest:
        size = tile
        if multiple:
            size = min(tile, -(-(rest + 2 * margin) // multiple) * multiple)
        out.append((n_full * step, size))
    return out


def _gather_tile(
    image: np.ndarray, ry: np.ndarray, rx: np.ndarray, y0: int, x0: int, th: int, tw: int
) -> np.ndarray:
    """One (C, th, tw) float32 tile whose top-left padded position is ``(y0, x0)``.

    ``ry``/``rx`` map padded positions (offset by the margin) to scene indices. Tiles fully
    inside the scene are a plain slice (a view); border tiles go through the reflect maps.
    """
    h, w = image.shape[1:]
    iy = ry[y0 : y0 + th]
    ix = rx[x0 : x0 + tw]
    if iy[0] + th - 1 == iy[-1] and ix[0] + tw - 1 == ix[-1] and iy[-1] < h and ix[-1] < w:
        # Contiguous and increasing: no reflection inside this tile.
        sub = image[:, iy[0] : iy[0] + th, ix[0] : ix[0] + tw]
    else:
        sub = image[:, iy[:, None], ix[None, :]]
    return np.asarray(sub, dtype=np.float32)


def _mirror(a: np.ndarray, axis: int, before: int, after: int) -> None:
    """Fill the first ``before`` and last ``after`` entries of ``a`` along ``axis``, in place,
    by mirroring the entries between them at their edges (``numpy.pad`` "reflect" mode:
    the edge itself is not repeated). Needs ``max(before, after) < a.shape[axis] - before
    - after``, i.e. a single reflection."""

    def at(index: slice) -> tuple[slice, ...]:
        return (slice(None),) * axis + (index,)

    n = a.shape[axis]
    if before:
        a[at(slice(0, before))] = a[at(slice(2 * before, before, -1))]
    if after:
        end = n - after  # first padded entry; the last real one is end - 1
        stop = end - 2 - after
        a[at(slice(end, n))] = a[at(slice(end - 2, stop if stop >= 0 else None, -1))]


def _fill_tile(
    image: np.ndarray,
    dst: np.ndarray,
    y: int,
    x: int,
    margin: int,
    ry: np.ndarray,
    rx: np.ndarray,
    channels_last: bool,
) -> None:
    """Write the tile whose kept centre starts at scene pixel ``(y, x)`` into ``dst``.

    The tile starts ``margin`` pixels before: at scene position ``(y - margin, x - margin)``,
    which may lie outside the scene (mirrored at its edges). ``dst`` is float32
    ``(th, tw, C)`` when ``channels_last`` (interleaved by OpenCV, 7x faster than a strided
    copy), else ``(C, th, tw)``. The part of the tile inside the scene is copied once,
    straight from the scene; what lies beyond an edge is then mirrored inside ``dst`` (one
    reflection), so border tiles cost no more than inner ones (gathering them through index
    maps cost 3-5x more). Tiles that need several reflections (a scene shorter than the
    tile's reach past its edge) are gathered through the reflect maps ``ry``/``rx``.
    """
    _, h, w = image.shape
    th, tw = dst.shape[:2] if channels_last else dst.shape[1:]
    top, left = y - margin, x - margin
    y0, y1 = max(top, 0), min(top + th, h)
    x0, x1 = max(left, 0), min(left + tw, w)
    pt, pb, pl, pr = y0 - top, top + th - y1, x0 - left, left + tw - x1
    if max(pt, pb) >= y1 - y0 or max(pl, pr) >= x1 - x0:
        tile = _gather_tile(image, ry, rx, y, x, th, tw)
        if channels_last:
            cv2.merge(list(tile), dst=dst)
        else:
            dst[...] = tile
        return
    inner = np.asarray(image[:, y0:y1, x0:x1], dtype=np.float32)
    if channels_last:
        cv2.merge(list(inner), dst=dst[pt : th - pb, pl : tw - pr])
        _mirror(dst, 0, pt, pb)
        _mirror(dst, 1, pl, pr)
    else:
        dst[:, pt : th - pb, pl : tw - pr] = inner
        _mirror(dst, 1, pt, pb)
        _mirror(dst, 2, pl, pr)


# The 8 symmetries of the square as (number of quarter turns, transpose first). Each maps a
# (N, C, S, S) batch; inverses undo the rotation, then the transpose.
DIHEDRAL: tuple[tuple[int, bool], ...] = tuple((k, t) for t in (False, True) for k in range(4))


def _dihedral(x: torch.Tensor, k: int, transpose: bool) -> torch.Tensor:
    if transpose:
        x = x.transpose(-1, -2)
    return torch.rot90(x, k, dims=(-2, -1)) if k else x


def _dihedral_inverse(x: torch.Tensor, k: int, transpose: bool) -> torch.Tensor:
    if k:
        x = torch.rot90(x, -k, dims=(-2, -1))
    return x.transpose(-1, -2) if transpose else x


def _batches(items: list[tuple[int, int]], size: int) -> Iterator[list[tuple[int, int]]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def predict_probs(
    model: torch.nn.Module,
    image: np.ndarray,
    tile: int = 256,
    margin: int = 16,
    batch: int = 8,
    tta: bool = False,
    device: torch.device | str | None = None,
    num_classes: int = NUM_CLASSES,
    progress: bool = False,
    channels_last: bool = True,
    multiple: int | None = None,
    amp: bool = False,
) -> np.ndarray:
    """Class probabilities of a whole scene by tiled inference.

    Args:
        model: fully convolutional; maps float32 ``(N, C, h, w)`` to logits
            ``(N, num_classes, h, w)``. Put in eval mode for the call (its previous
            mode is restored) and run under ``torch.inference_mode``.
        image: the normalised scene, ``(C, H, W)``, any real dtype (tiles are cast to
            float32 as they are read, so a memory-mapped array is read lazily).
        tile: input tile side in pixels; must suit the model (e.g. a multiple of 16 for a
            U-Net of depth 4). Larger tiles waste less on overlap (``(tile - 2 margin)^2 /
            tile^2`` of each tile is kept).
        margin: context pixels on each side of a tile that are computed but not kept.
        batch: tiles per forward pass.
        tta: average the 8 dihedral transforms (8x the compute).
        device: where the model runs; default the device of the model's parameters.
        num_classes: channels of the model output.
        progress: show a tqdm bar (stderr) over tiles.
        channels_last: feed tiles in channels-last memory format (same values; on CPU
            convolutions then run about 2x faster, and the model needs no conversion).
        multiple: the model's input size divisor; default ``model.multiple`` if it has one.
            When known, the last row and column of tiles shrink to what the scene needs.
        amp: on CUDA, run the model under float16 autocast (as training does with
            ``train.amp``); the sigmoid and the blending stay float32. Ignored on CPU.

    Returns:
        float32 ``(num_classes, H, W)``: sigmoid of the logits, in [0, 1].
    """
    if image.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {image.shape}")
    if margin < 0 or batch < 1:
        raise ValueError(f"margin must be >= 0 and batch >= 1, got {margin}, {batch}")
    _, h, w = image.shape
    step = tile - 2 * margin
    if multiple is None:
        multiple = getattr(model, "multiple", None)
    ys = tile_layout(h, tile, margin, multiple)
    xs = tile_layout(w, tile, margin, multiple)
    # Padded position q covers scene pixel q - margin; a tile whose centre starts at y reads
    # padded rows y .. y + size. The index maps cover every padded position any tile reads.
    ry = reflect_index(h, -margin, max(y + s for y, s in ys) - margin)
    rx = reflect_index(w, -margin, max(x + s for x, s in xs) - margin)
    dev = torch.device(device) if device is not None else _model_device(model)

    out = np.empty((num_classes, h, w), dtype=np.float32)
    # Tiles of one shape are batched together (at most 4 shapes: full and edge sizes).
    by_shape: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for y, th in ys:
        for x, tw in xs:
            by_shape.setdefault((th, tw), []).append((y, x))
    transforms = DIHEDRAL if tta else DIHEDRAL[:1]
    # On CPU without TTA, logits go straight to the output and the sigmoid runs there.
    fused = len(transforms) == 1 and dev.type == "cpu"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    autocast = torch.autocast("cuda", dtype=torch.float16, enabled=amp and dev.type == "cuda")
    was_training = model.training
    model.eval()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(ys) * len(xs), desc="tiles", unit="tile", leave=False)
    try:
        with torch.inference_mode(), autocast:
            for (th, tw), positions in by_shape.items():
                # One input buffer per tile shape, reused: a fresh allocation this large
                # is mmap-ed and page-faulted anew on every batch (~15 ms per 40 MB).
                buf = torch.empty((batch, image.shape[0], th, tw), memory_format=fmt)
                # Channels-last memory is (N, h, w, C): interleave the planes with OpenCV,
                # 7x faster than a strided torch copy from the (C, H, W) scene.
                dst = buf.permute(0, 2, 3, 1).numpy() if channels_last else buf.numpy()
                for group in _batches(positions, batch):
                    for i, (y, x) in enumerate(group):
                        _fill_tile(image, dst[i], y, x, margin, ry, rx, channels_last)
                    x_in = buf[: len(group)].to(dev)
                    kh, kw = min(step, th - 2 * margin), min(step, tw - 2 * margin)
                    acc: torch.Tensor | None = None
                    for k, t in transforms:
                        logits = _dihedral_inverse(model(_dihedral(x_in, k, t)), k, t)
                        if logits.shape != (len(group), num_classes, th, tw):
                            raise ValueError(
                                f"model returned shape {tuple(logits.shape)} for input "
                                f"{tuple(x_in.shape)}; expected {(len(group), num_classes)} "
                                "and the input's height and width"
                            )
                        # Only the kept centre is used (never modified in place: a model
                        # may return a view, e.g. an expanded tensor).
                        centre = logits[:, :, margin : margin + kh, margin : margin + kw]
                        if fused:
                            break
                        p = torch.sigmoid(centre.float())
                        acc = p if acc is None else acc.add_(p)
                    if fused:
                        res = centre.numpy()  # logits; the sigmoid runs once at the end
                    else:
                        assert acc is not None
                        res = acc.div_(len(transforms)).cpu().numpy()
                    for (y, x), pr in zip(group, res, strict=True):
                        hh, ww = min(kh, h - y), min(kw, w - x)
                        # numpy's transposing copy from channels-last memory: 3x faster
                        # than torch's copy_ (20x for small tiles).
                        out[:, y : y + hh, x : x + ww] = pr[:, :hh, :ww]
                    if bar is not None:
                        bar.update(len(group))
        if fused:
            # One vectorised pass over the whole output: 3x faster than a sigmoid per
            # batch into a new tensor (and no parallel-region start-up per tile).
            torch.from_numpy(out).sigmoid_()
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    return out


# --------------------------------------------------------------------------- probabilities

PROB_LEVELS = 255
"""Probabilities are stored as uint8 ``round(p * 255)``; thresholds apply to that grid."""

DEFAULT_GRID: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(1, 20))
"""Thresholds tried when tuning: 0.05, 0.10, ..., 0.95."""


def quantize(probs: np.ndarray) -> np.ndarray:
    """float probabilities in [0, 1] -> uint8 ``round(p * 255)`` (same shape)."""
    out = np.empty(probs.shape, dtype=np.uint8)
    for k in range(probs.shape[0]):  # per channel: temporaries stay one channel big
        out[k] = np.rint(np.clip(probs[k], 0.0, 1.0) * PROB_LEVELS)
    return out


def _level(threshold: float) -> int:
    """Smallest stored level counted positive at ``threshold`` (``q >= threshold * 255``)."""
    return int(np.ceil(threshold * PROB_LEVELS - 1e-9))


def threshold_masks(probs: np.ndarray, thresholds: Mapping[int, float] | float) -> np.ndarray:
    """Class probabilities ``(K, H, W)`` -> bool masks ``(K, H, W)``.

    ``probs`` is uint8 (stored levels, see :data:`PROB_LEVELS`) or float in [0, 1] (quantised
    the same way first, so both give identical masks). A pixel is positive when its level is
    ``>= threshold * 255``. ``thresholds`` maps 1-based classes to thresholds in [0, 1]
    (missing: 0.5) or is one value.
    """
    out = np.empty(probs.shape, dtype=bool)
    for k in range(probs.shape[0]):
        t = thresholds.get(k + 1, 0.5) if isinstance(thresholds, Mapping) else thresholds
        level = _level(float(t))
        ch = probs[k]
        if ch.dtype != np.uint8:
            ch = np.rint(np.clip(ch, 0.0, 1.0) * PROB_LEVELS)
        np.greater_equal(ch, level, out=out[k])
    return out


# --------------------------------------------------------------------------- thresholds


def class_histograms(
    probs: np.ndarray, truth: np.ndarray, weight: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class counts of stored probability levels on true and on false pixels.

    Args:
        probs: ``(10, H, W)`` uint8 levels or float probabilities (quantised first).
        truth: ``(10, H, W)`` {0, 1} masks on the same grid.
        weight: multiplies the counts (the pixel area, to sum scenes in grid units).

    Returns:
        ``(pos, neg)``, float64 ``(10, 256)``: weighted pixel counts per level.
    """
    if probs.shape != truth.shape:
        raise ValueError(f"probabilities {probs.shape} and truth {truth.shape} differ in shape")
    k_ = probs.shape[0]
    pos = np.zeros((k_, PROB_LEVELS + 1))
    neg = np.zeros((k_, PROB_LEVELS + 1))
    for k in range(k_):
        q = probs[k]
        if q.dtype != np.uint8:
            q = np.rint(np.clip(q, 0.0, 1.0) * PROB_LEVELS).astype(np.uint8)
        t = truth[k].astype(bool, copy=False)
        allc = np.bincount(q.ravel(), minlength=PROB_LEVELS + 1)
        pos[k] = np.bincount(q[t], minlength=PROB_LEVELS + 1)
        neg[k] = allc - pos[k]
    return pos * weight, neg * weight


def jaccard_curves(
    pos: np.ndarray, neg: np.ndarray, grid: Sequence[float] = DEFAULT_GRID
) -> np.ndarray:
    """Per-class Jaccard at each threshold of ``grid`` from :func:`class_histograms` sums.

    Returns float64 ``(10, len(grid))``; an empty union scores 0 (as in :mod:`metrics`).
    """
    levels = [_level(t) for t in grid]
    # Pixels at level >= L are positive: reverse cumulative sums give TP and FP per level.
    tp_all = pos[:, ::-1].cumsum(1)[:, ::-1]
    fp_all = neg[:, ::-1].cumsum(1)[:, ::-1]
    tp, fp = tp_all[:, levels], fp_all[:, levels]
    fn = pos.sum(1, keepdims=True) - tp
    union = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, 0.0)


def tune_thresholds(
    probs_list: Iterable[np.ndarray],
    truth_masks_list: Iterable[np.ndarray],
    grid: Sequence[float] = DEFAULT_GRID,
    weights: Iterable[float] | None = None,
) -> dict[int, float]:
    """Per-class thresholds maximising each class's Jaccard summed over scenes.

    Args:
        probs_list: per scene ``(10, H, W)`` probabilities (uint8 levels or float); consumed
            one scene at a time, so a generator keeps memory to one scene.
        truth_masks_list: per scene ``(10, H, W)`` {0, 1} truth on the same grid.
        grid: candidate thresholds.
        weights: per scene pixel area (squared grid units); default 1 (pixel counts).

    Returns:
        ``{class: threshold}`` for classes 1..10. Ties go to the lowest threshold, except
        that a class no threshold gets right (Jaccard 0 at every threshold) gets the highest,
        and so does a class with no true pixel in any scene (it cannot be tuned).
    """
    return tune_details(probs_list, truth_masks_list, grid, weights)["thresholds"]


def tune_details(
    probs_list: Iterable[np.ndarray],
    truth_masks_list: Iterable[np.ndarray],
    grid: Sequence[float] = DEFAULT_GRID,
    weights: Iterable[float] | None = None,
) -> dict[str, Any]:
    """:func:`tune_thresholds` with its evidence: ``thresholds``, ``jaccard`` (at the chosen
    thresholds), ``curves`` (10 x len(grid)), ``tuned`` (per class: had true pixels)."""
    pos = neg = None
    ws = iter(weights) if weights is not None else None
    for probs, truth in zip(probs_list, truth_masks_list, strict=True):
        w = next(ws) if ws is not None else 1.0
        p, n = class_histograms(probs, truth, w)
        pos, neg = (p, n) if pos is None else (pos + p, neg + n)
    if pos is None or neg is None:
        raise ValueError("no scene to tune the thresholds on")
    return _choose(pos, neg, grid)


def _choose(pos: np.ndarray, neg: np.ndarray, grid: Sequence[float]) -> dict[str, Any]:
    curves = jaccard_curves(pos, neg, grid)
    tuned = pos.sum(1) > 0
    best = curves.argmax(1)  # first maximum: the lowest threshold among ties
    # A class that no threshold gets right (Jaccard 0 everywhere), or that has no true pixel
    # to calibrate on: the highest threshold, the fewest false positives, not the lowest,
    # which would paint the most. (On dstl-lite's folds an untuned class at 0.5 painted false
    # positives in test scenes without it and never a hit.)
    best[curves.max(1) <= 0.0] = len(grid) - 1
    thresholds = {k + 1: float(grid[best[k]]) for k in range(pos.shape[0])}
    jac = {k + 1: float(curves[k, best[k]]) if tuned[k] else 0.0 for k in range(pos.shape[0])}
    return {
        "thresholds": thresholds,
        "jaccard": jac,
        "curves": curves,
        "tuned": {k + 1: bool(tuned[k]) for k in range(pos.shape[0])},
        "grid": [float(g) for g in grid],
    }


# --------------------------------------------------------------------------- one scene


@dataclass(frozen=True)
class PredictOptions:
    """How scenes are predicted and vectorised (picklable: sent to Dask workers).

    ``None`` for ``tile``, ``margin``, ``batch`` and ``tta`` means the run's
    ``[predict]`` config (:func:`resolve_options`).
    """

    checkpoint: str = "best"
    tile: int | None = None
    margin: int | None = None
    batch: int | None = None
    tta: bool | None = None
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:K``; resolved where the
    scene is predicted (on a Dask worker, that worker's devices)."""
    amp: bool | None = None
    """float16 autocast on CUDA (None: the run's ``train.amp``); ignored on CPU."""
    tolerance: float = DEFAULT_TOLERANCE
    decimals: int = DEFAULT_DECIMALS
    threads: int | None = None
    """torch threads in each process that predicts (None: torch's default)."""
    sources: bool = False
    """With a blended pixel model, also write each model's own levels (``unet``, ``pixel``
    in :func:`scene_paths`), e.g. to compare the two."""


def resolve_options(options: PredictOptions, config: Any, here: bool = True) -> PredictOptions:
    """Fill the ``None`` fields of ``options`` from ``config.predict`` (``amp`` from
    ``config.train``) and, with ``here``, resolve ``device`` on this machine (ConfigError
    for ``cuda`` without CUDA)."""
    p = config.predict
    return replace(
        options,
        tile=p.tile if options.tile is None else options.tile,
        margin=p.margin if options.margin is None else options.margin,
        batch=p.batch if options.batch is None else options.batch,
        tta=p.tta if options.tta is None else options.tta,
        amp=config.train.amp if options.amp is None else options.amp,
        device=str(resolve_device(options.device, what="--device")) if here else options.device,
    )


def scene_levels(model: torch.nn.Module, image: np.ndarray, options: PredictOptions) -> np.ndarray:
    """Probabilities of one normalised scene as uint8 levels ``(10, H, W)``.

    :func:`predict_probs` with the (resolved) ``options``, quantised at once
    (:func:`quantize`: a quarter of the float32 memory).
    """
    assert options.tile is not None and options.margin is not None and options.batch is not None
    probs = predict_probs(
        model,
        image,
        tile=options.tile,
        margin=options.margin,
        batch=options.batch,
        tta=bool(options.tta),
        device=options.device,
        amp=bool(options.amp),
    )
    return quantize(probs)


def levels_to_polygons(
    levels: np.ndarray,
    xmax: float,
    ymin: float,
    thresholds: Mapping[int, float],
    min_area: Mapping[int, float] | float = 0.0,
    options: PredictOptions = PredictOptions(),
) -> dict[int, MultiPolygon]:
    """Probability levels -> per-class thresholds -> ``{class: MultiPolygon}`` (grid units).

    Vectorised by :func:`spectraseg.vectorize.masks_to_polygons` with ``options.tolerance``
    and ``options.decimals``; ``min_area`` in pixels (per class or one value).
    """
    masks = threshold_masks(levels, thresholds)
    return masks_to_polygons(masks, xmax, ymin, options.tolerance, min_area, options.decimals)


def predict_scene(
    model: torch.nn.Module,
    image: np.ndarray,
    xmax: float,
    ymin: float,
    thresholds: Mapping[int, float],
    min_area: Mapping[int, float] | float = 0.0,
    options: PredictOptions = PredictOptions(),
) -> tuple[np.ndarray, dict[int, MultiPolygon]]:
    """One normalised scene -> (uint8 probability levels ``(10, H, W)``, polygons).

    :func:`scene_levels` then :func:`levels_to_polygons`; ``options`` must be resolved
    (:func:`resolve_options`).
    """
    levels = scene_levels(model, image, options)
    return levels, levels_to_polygons(levels, xmax, ymin, thresholds, min_area, options)


def scene_paths(out_dir: str | os.PathLike[str], image_id: str) -> dict[str, Path]:
    """Where the outputs of a scene go under a prediction directory ``PRED``.

    ``probs``: ``PRED/probs/{id}.npy``, uint8 ``(10, H, W)`` levels ``round(p * 255)`` on
    the scene's RGB grid; ``geojson``: ``PRED/polygons/{id}.geojson``; ``wkt``:
    ``PRED/wkt/{id}.csv``, the scene's 10 rows of ``predictions.csv``; ``unet`` and
    ``pixel``: ``PRED/sources/{id}.{unet,pixel}.npy``, each model's own levels (only with
    ``PredictOptions.sources`` and a blended pixel model).
    """
    out = Path(out_dir)
    check_image_id(image_id)
    return {
        "probs": out / "probs" / f"{image_id}.npy",
        "unet": out / "sources" / f"{image_id}.unet.npy",
        "pixel": out / "sources" / f"{image_id}.pixel.npy",
        "geojson": out / "polygons" / f"{image_id}.geojson",
        "wkt": out / "wkt" / f"{image_id}.csv",
    }


def scene_geojson(
    image_id: str,
    polygons: Mapping[int, MultiPolygon],
    xmax: float,
    ymin: float,
    width: int,
    height: int,
    thresholds: Mapping[int, float] | None = None,
) -> dict[str, Any]:
    """A GeoJSON FeatureCollection of a scene's polygons, one Feature per class.

    Coordinates are **DSTL grid units**, not longitude/latitude: x in ``[0, xmax]``, y in
    ``[ymin, 0]`` (``ymin < 0``), the coordinates of the competition's WKT. Foreign members
    record this (``coordinates``), the grid extent and the raster size the polygons were
    traced on. Each Feature has ``class``, ``name``, ``threshold`` and ``area`` (squared
    grid units); empty classes have a MultiPolygon with no coordinates.
    """
    features = []
    for c in sorted(polygons):
        g = polygons[c]
        props: dict[str, Any] = {"class": c, "name": CLASS_NAMES.get(c, str(c)), "area": g.area}
        if thresholds is not None:
            props["threshold"] = float(thresholds.get(c, 0.5))
        geometry = (
            {"type": "MultiPolygon", "coordinates": []}
            if g.is_empty
            else json.loads(shapely.to_geojson(g))
        )
        features.append({"type": "Feature", "properties": props, "geometry": geometry})
    return {
        "type": "FeatureCollection",
        "image_id": image_id,
        "coordinates": "DSTL grid units: x in [0, xmax], y in [ymin, 0]; not longitude/latitude",
        "xmax": xmax,
        "ymin": ymin,
        "width": width,
        "height": height,
        "features": features,
    }


def write_scene_outputs(
    out_dir: str | os.PathLike[str],
    image_id: str,
    levels: np.ndarray,
    polygons: Mapping[int, MultiPolygon],
    xmax: float,
    ymin: float,
    thresholds: Mapping[int, float],
    decimals: int = DEFAULT_DECIMALS,
) -> dict[str, Path]:
    """Write a scene's probabilities, GeoJSON and WKT rows (each atomically)."""
    paths = scene_paths(out_dir, image_id)
    with atomic_output(paths["probs"]) as tmp, open(tmp, "wb") as f:
        np.save(f, levels)
    doc = scene_geojson(
        image_id, polygons, xmax, ymin, levels.shape[2], levels.shape[1], thresholds
    )
    write_text_atomic(paths["geojson"], json.dumps(doc) + "\n")
    rows = [(image_id, c, polygons.get(c, EMPTY)) for c in range(1, NUM_CLASSES + 1)]
    write_wkt_csv(paths["wkt"], rows, decimals=decimals)
    return paths


# --------------------------------------------------------------------------- worker tasks

_MODELS: dict[tuple[str, str, str, int], tuple[Any, Any, Any]] = {}


def _checkpoint_file(run_dir: str | os.PathLike[str], which: str) -> Path:
    ckpt = Path(run_dir) / "checkpoints" / f"{which}.pt"
    if which == "best" and not ckpt.is_file():
        ckpt = Path(run_dir) / "checkpoints" / "latest.pt"
    return ckpt


def cached_model(run_dir: str | os.PathLike[str], which: str, device: str) -> tuple[Any, Any, Any]:
    """``load_model(run_dir, which, device)``, loaded once per process (per Dask worker).

    ``device`` as :attr:`PredictOptions.device` (``auto`` resolved here). Keyed by the
    checkpoint's path and modification time, so a rewritten checkpoint is reloaded; only
    the last model is kept.
    """
    from spectraseg.train import load_model

    device = str(resolve_device(device, what="--device"))
    ckpt = _checkpoint_file(run_dir, which)
    mtime = ckpt.stat().st_mtime_ns if ckpt.is_file() else 0
    key = (str(Path(run_dir).resolve()), which, str(device), mtime)
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = load_model(run_dir, which=which, device=device)
    return _MODELS[key]


_PIXEL: dict[tuple[str, int], Any] = {}

BLEND_GRID: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
"""Candidate U-Net weights of the per-class blend with the pixel model (1: U-Net alone)."""


def pixel_model_file(run_dir: str | os.PathLike[str]) -> Path:
    """``RUN/pixelmodel.pkl`` (present when the run was trained with ``pixel.enabled``)."""
    from spectraseg.pixelmodel import PIXEL_MODEL_FILE

    return Path(run_dir) / PIXEL_MODEL_FILE


def cached_pixel_model(run_dir: str | os.PathLike[str]) -> Any:
    """The run's pixel model loaded once per process, or None when the run has none."""
    from spectraseg.pixelmodel import PixelModel

    path = pixel_model_file(run_dir)
    if not path.is_file():
        return None
    key = (str(path.resolve()), path.stat().st_mtime_ns)
    if key not in _PIXEL:
        _PIXEL.clear()
        _PIXEL[key] = PixelModel.load(path)
    return _PIXEL[key]


def blend_levels(unet: np.ndarray, pixel: np.ndarray, weights: Mapping[int, float]) -> np.ndarray:
    """Per-class convex blend of two uint8 ``(10, H, W)`` level maps.

    Class ``c`` gets ``w_c * unet + (1 - w_c) * pixel`` (``weights[c]`` is the U-Net's
    weight), rounded back to uint8 levels.
    """
    out = np.empty_like(unet)
    for k in range(unet.shape[0]):
        w = float(weights.get(k + 1, 1.0))
        if w >= 1.0:
            out[k] = unet[k]
        elif w <= 0.0:
            out[k] = pixel[k]
        else:
            mix = unet[k].astype(np.float32) * w + pixel[k].astype(np.float32) * (1.0 - w)
            out[k] = np.rint(mix).astype(np.uint8)
    return out


def _scene_levels_of_run(
    run_dir: str, model: Any, image: np.ndarray, opts: PredictOptions
) -> tuple[np.ndarray, np.ndarray | None]:
    """U-Net levels of a scene and, when the run has a pixel model, its levels too."""
    levels = scene_levels(model, image, opts)
    pixel = cached_pixel_model(run_dir)
    if pixel is None:
        return levels, None
    return levels, quantize(pixel.predict_proba(image))


def _set_threads(threads: int | None) -> None:
    if threads is not None and threads > 0:
        torch.set_num_threads(threads)


def _load_input(
    cache_dir: str | os.PathLike[str], image_id: str, model: Any, config: Any, stats: Any
) -> np.ndarray:
    from spectraseg.sampling import load_scene

    if stats is None:
        raise DataError("the run has no stats.json: its scenes cannot be normalised")
    image = load_scene(cache_dir, image_id, stats, config.data.indices)
    expected = getattr(model, "in_channels", image.shape[0])
    if image.shape[0] != expected:
        raise DataError(
            f"scene {image_id} gives {image.shape[0]} input channels but the model was "
            f"trained on {expected}: the cache lacks a product the run used"
        )
    return image


def predict_scene_task(
    run_dir: str,
    cache_dir: str,
    image_id: str,
    xmax: float,
    ymin: float,
    out_dir: str,
    thresholds: Mapping[int, float],
    min_area: Mapping[int, float],
    options: PredictOptions,
    blend: Mapping[int, float] | None = None,
    stats: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Predict one cached scene and write its outputs (run by Dask workers or in-process).

    ``blend`` (per-class U-Net weights) mixes in the run's pixel model, when it has one;
    None uses the U-Net alone. The written probabilities are the blended ones. ``stats``
    normalises the scene (None: the run's ``stats.json``).

    Returns a small summary: ``image_id``, ``height``, ``width``, ``seconds``, ``area``
    (per class, squared grid units) and ``parts`` (per class polygon count).
    """
    t0 = time.perf_counter()
    _set_threads(options.threads)
    model, config, run_stats = cached_model(run_dir, options.checkpoint, options.device)
    opts = resolve_options(options, config)
    image = _load_input(cache_dir, image_id, model, config, run_stats if stats is None else stats)
    if blend is not None:
        levels, pixel = _scene_levels_of_run(run_dir, model, image, opts)
        if pixel is not None:
            if opts.sources:
                paths = scene_paths(out_dir, image_id)
                for name, arr in (("unet", levels), ("pixel", pixel)):
                    with atomic_output(paths[name]) as tmp, open(tmp, "wb") as f:
                        np.save(f, arr)
            levels = blend_levels(levels, pixel, blend)
    else:
        levels = scene_levels(model, image, opts)
    del image  # the float32 scene is the largest array: free it before vectorising
    polygons = levels_to_polygons(levels, xmax, ymin, thresholds, min_area, opts)
    write_scene_outputs(out_dir, image_id, levels, polygons, xmax, ymin, thresholds, opts.decimals)
    return {
        "image_id": image_id,
        "height": int(levels.shape[1]),
        "width": int(levels.shape[2]),
        "seconds": time.perf_counter() - t0,
        "area": {c: float(g.area) for c, g in polygons.items()},
        "parts": {c: len(g.geoms) for c, g in polygons.items()},
    }


def tune_scene_task(
    run_dir: str, cache_dir: str, image_id: str, weight: float, options: PredictOptions
) -> tuple[np.ndarray, np.ndarray]:
    """Probability histograms of a labelled cached scene (:func:`class_histograms`), one
    pair per U-Net weight of :data:`BLEND_GRID` when the run has a pixel model.

    Returns ``(pos, neg)`` float64 ``(B, 10, 256)`` with ``B = len(BLEND_GRID)``, or
    ``B = 1`` (the U-Net alone) without a pixel model.
    """
    from spectraseg.sampling import mask_path

    _set_threads(options.threads)
    model, config, stats = cached_model(run_dir, options.checkpoint, options.device)
    opts = resolve_options(options, config)
    image = _load_input(cache_dir, image_id, model, config, stats)
    levels, pixel = _scene_levels_of_run(run_dir, model, image, opts)
    del image
    truth = np.load(mask_path(cache_dir, image_id), mmap_mode="r")
    if truth.shape != levels.shape:
        raise DataError(f"the label mask of {image_id} is {truth.shape}, expected {levels.shape}")
    if pixel is None:
        pos, neg = class_histograms(levels, truth, weight)
        return pos[None], neg[None]
    pairs = [
        class_histograms(blend_levels(levels, pixel, dict.fromkeys(range(1, 11), w)), truth, weight)
        for w in BLEND_GRID
    ]
    return np.stack([p for p, _ in pairs]), np.stack([n for _, n in pairs])


# --------------------------------------------------------------------------- thresholds file

THRESHOLDS_JSON = "thresholds.json"
THRESHOLDS_FORMAT = "spectraseg-thresholds"


def read_thresholds(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``RUN/thresholds.json`` as a dict (None if absent); DataError if malformed.

    Keys: ``format``, ``version``, ``thresholds`` (``{"1": t, ...}``), ``jaccard`` (tuned
    per-class Jaccard), ``tuned`` (per class: had true pixels), ``mean_jaccard``,
    ``mean_jaccard_config`` (at the config's thresholds), ``grid``, ``scenes``,
    ``checkpoint``, ``checkpoint_mtime_ns``, ``tta``, ``tile``, ``margin``; with a pixel
    model in the run, ``blend`` (per class the U-Net's weight in the blend, chosen with the
    threshold), ``jaccard_unet`` (the U-Net alone), ``thresholds_unet`` and
    ``thresholds_pixel`` (each model alone) and ``pixel_model_mtime_ns``.
    """
    path = Path(run_dir) / THRESHOLDS_JSON
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("format") != THRESHOLDS_FORMAT:
            raise ValueError("not a thresholds file")
        thresholds_of(doc)
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
        raise DataError(f"{path} is not a valid thresholds file ({exc})") from None
    return doc


def thresholds_of(doc: Mapping[str, Any]) -> dict[int, float]:
    """``{class: threshold}`` of a thresholds document (ValueError when incomplete)."""
    raw = doc["thresholds"]
    out = {int(k): float(v) for k, v in raw.items()}
    if sorted(out) != list(range(1, NUM_CLASSES + 1)) or not all(
        0.0 <= v <= 1.0 for v in out.values()
    ):
        raise ValueError("thresholds must give classes 1..10 a value in [0, 1]")
    return out


def write_thresholds(run_dir: str | os.PathLike[str], doc: Mapping[str, Any]) -> Path:
    """Write ``RUN/thresholds.json`` atomically."""
    path = Path(run_dir) / THRESHOLDS_JSON
    write_text_atomic(path, json.dumps(doc, indent=1) + "\n")
    return path


def validation_scenes(config: Any) -> list[str]:
    """The validation scenes of a run, as training chose them.

    ``data.val_scenes`` when set; else the same split as training: the run's scenes
    (``data.scenes``, or the labelled scenes of ``data.cache``) split by
    :func:`spectraseg.sampling.split_scenes` with ``data.val_fraction`` and ``train.seed``.
    """
    from spectraseg.sampling import split_scenes

    d = config.data
    if d.val_scenes:
        return sorted(d.val_scenes)
    if d.val_fraction == 0 or not d.cache:
        return []
    scenes = list(d.scenes)
    if not scenes:
        from spectraseg.fusion import open_cache
        from spectraseg.train import _labelled_scenes

        scenes = _labelled_scenes(open_cache(d.cache), d.root, False)
    if len(scenes) < 2:
        return []
    return split_scenes(scenes, d.val_fraction, seed=config.train.seed)[1]


# --------------------------------------------------------------------------- running many scenes


def plan_workers(workers: int | None, scheduler: str | None, jobs: int, gpu: bool = False) -> int:
    """Local worker processes to start: 0 runs in this process.

    ``workers`` None (the default) starts a local cluster of ``min(jobs, cpu_count)``
    single-threaded workers when there is more than one scene, else runs in-process; with
    ``gpu`` (the scenes are predicted on CUDA) it runs in-process, so that one process
    feeds the GPU instead of one CUDA context per core.
    """
    if workers is not None and scheduler is not None:
        raise ConfigError("give either --workers or --scheduler, not both")
    if workers is not None and workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {workers}")
    if scheduler is not None:
        return 0
    if workers is None:
        if gpu:
            return 0
        n = min(jobs, os.cpu_count() or 1)
        return n if n > 1 else 0
    return workers


@dataclass
class PredictReport:
    """What :func:`predict_run` did."""

    out_dir: Path
    predictions: Path | None = None
    scenes: list[dict[str, Any]] = field(default_factory=list)
    """Per requested scene: ``image_id``, ``status`` (``ok``/``failed``), ``reason``,
    ``seconds``."""
    thresholds: dict[int, float] = field(default_factory=dict)
    threshold_source: str = ""
    min_area: dict[int, float] = field(default_factory=dict)
    tuning: dict[str, Any] | None = None
    normalization: dict[str, Any] = field(default_factory=dict)
    """``mode`` (the run's scope), ``computed`` (per new image or region entry, the scenes
    of this request it was computed from) and ``stats`` (the file holding what was used)."""
    blend: dict[int, float] | None = None
    """Per-class U-Net weight of the blend with the run's pixel model (None: U-Net alone)."""
    options: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [s for s in self.scenes if s["status"] != "ok"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "predictions": str(self.predictions) if self.predictions else None,
            "thresholds": {str(k): v for k, v in self.thresholds.items()},
            "threshold_source": self.threshold_source,
            "blend": {str(k): v for k, v in self.blend.items()} if self.blend else None,
            "min_area_px": {str(k): v for k, v in self.min_area.items()},
            "options": self.options,
            "normalization": self.normalization,
            "seconds": self.seconds,
            "scenes": self.scenes,
            "tuning": self.tuning,
        }


def _config_thresholds(config: Any) -> dict[int, float]:
    return {c: float(t) for c, t in enumerate(config.predict.thresholds, start=1)}


def _tune_run(
    runner: Runner,
    run_dir: Path,
    config: Any,
    options: PredictOptions,
    scenes: Sequence[str],
    progress: bool,
) -> dict[str, Any]:
    """Tune thresholds on the run's validation scenes; returns the thresholds document."""
    from tqdm import tqdm

    from spectraseg.fusion import open_cache
    from spectraseg.metrics import pixel_area
    from spectraseg.sampling import build_masks, mask_path

    d = config.data
    cache = open_cache(d.cache)
    missing = [i for i in scenes if not mask_path(cache, i).is_file()]
    if missing:
        if not d.root:
            raise DataError(
                f"validation scene {missing[0]} has no label mask in {d.cache} and the run's "
                "config has no data.root to rasterise it from"
            )
        build_masks(cache, d.root, missing, progress=progress)
    grid: dict[str, tuple[float, float]] = {}
    if d.root and (Path(d.root) / "grid_sizes.csv").is_file():
        from spectraseg.io import read_grid_sizes

        grid = read_grid_sizes(Path(d.root) / "grid_sizes.csv")
    jobs: list[Job] = []
    for i in scenes:
        h, w = cache.load(i).shape[1:]
        weight = pixel_area(w, h, *grid[i]) if i in grid else 1.0
        opts = replace(options, threads=runner.threads or options.threads)
        jobs.append((i, (str(run_dir), str(cache.root), i, weight, opts)))
    pos = neg = None
    with tqdm(total=len(jobs), desc="tune", unit="scene", disable=not progress) as bar:
        for key, result, exc in runner.run(tune_scene_task, jobs):
            bar.update()
            if exc is not None:
                raise DataError(f"cannot tune thresholds on {key}: {describe(exc)}")
            p, n = result
            pos, neg = (p, n) if pos is None else (pos + p, neg + n)
    assert pos is not None and neg is not None
    blend_grid = BLEND_GRID if pos.shape[0] > 1 else (1.0,)
    per_weight = [_choose(pos[b], neg[b], DEFAULT_GRID) for b in range(len(blend_grid))]
    if len(blend_grid) > 1 and config.pixel.blend == "average":
        # Equal weights: a plain model average, robust where validation scenes are few.
        best_b = dict.fromkeys(range(1, NUM_CLASSES + 1), blend_grid.index(0.5))
    else:
        # Per class, the weight whose best threshold scores highest; ties keep the U-Net.
        best_b = {
            c: max(
                range(len(blend_grid)),
                key=lambda b, c=c: (per_weight[b]["jaccard"][c], blend_grid[b]),
            )
            for c in range(1, NUM_CLASSES + 1)
        }
    chosen = {
        key: {c: per_weight[best_b[c]][key][c] for c in range(1, NUM_CLASSES + 1)}
        for key in ("thresholds", "jaccard", "tuned")
    }
    chosen["grid"] = per_weight[0]["grid"]
    blend = {c: float(blend_grid[best_b[c]]) for c in range(1, NUM_CLASSES + 1)}
    unet_only = per_weight[-1]["jaccard"]
    pos, neg = pos[-1], neg[-1]  # the U-Net alone, for the config-threshold diagnostic
    cfg = _config_thresholds(config)
    at_config = [
        float(jaccard_curves(pos[k : k + 1], neg[k : k + 1], [cfg[k + 1]])[0, 0])
        for k in range(NUM_CLASSES)
    ]
    ckpt = _checkpoint_file(run_dir, options.checkpoint)
    return {
        "format": THRESHOLDS_FORMAT,
        "version": 1,
        "thresholds": {str(k): v for k, v in chosen["thresholds"].items()},
        "jaccard": {str(k): v for k, v in chosen["jaccard"].items()},
        "tuned": {str(k): v for k, v in chosen["tuned"].items()},
        "mean_jaccard": float(np.mean(list(chosen["jaccard"].values()))),
        "blend": {str(k): v for k, v in blend.items()} if len(blend_grid) > 1 else None,
        "jaccard_unet": {str(k): v for k, v in unet_only.items()},
        "thresholds_unet": {str(k): v for k, v in per_weight[-1]["thresholds"].items()},
        "thresholds_pixel": (
            {str(k): v for k, v in per_weight[0]["thresholds"].items()}
            if len(blend_grid) > 1
            else None
        ),
        "pixel_model_mtime_ns": _mtime(pixel_model_file(run_dir)),
        "jaccard_config": {str(k + 1): v for k, v in enumerate(at_config)},
        "mean_jaccard_config": float(np.mean(at_config)),
        "grid": chosen["grid"],
        "scenes": list(scenes),
        "checkpoint": options.checkpoint,
        "checkpoint_mtime_ns": ckpt.stat().st_mtime_ns,
        "tta": bool(options.tta),
        "tile": options.tile,
        "margin": options.margin,
        "metric": "raster (pixels on the RGB grid, weighted by pixel area), summed over scenes",
    }


def _mtime(path: Path) -> int | None:
    return path.stat().st_mtime_ns if path.is_file() else None


def _doc_matches(doc: Mapping[str, Any], run_dir: Path, options: PredictOptions) -> bool:
    ckpt = _checkpoint_file(run_dir, options.checkpoint)
    return (
        doc.get("pixel_model_mtime_ns") == _mtime(pixel_model_file(run_dir))
        and doc.get("checkpoint") == options.checkpoint
        and ckpt.is_file()
        and doc.get("checkpoint_mtime_ns") == ckpt.stat().st_mtime_ns
        and bool(doc.get("tta")) == bool(options.tta)
    )


def predict_run(
    run_dir: str | os.PathLike[str],
    data_root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    image_ids: Sequence[str] | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    options: PredictOptions = PredictOptions(),
    thresholds: str | Mapping[int, float] = "auto",
    min_area: Mapping[int, float] | None = None,
    progress: bool = True,
) -> PredictReport:
    """Predict the scenes of a dataset with a trained run; write ``PRED``.

    Steps: align the scenes into the cache where needed (:func:`spectraseg.fusion.align_dataset`);
    choose per-class thresholds; predict each scene (:func:`predict_scene_task`) in this
    process or on Dask; write ``PRED/predictions.csv`` (all predicted scenes, sorted) and
    ``PRED/predict.json`` (this report).

    Args:
        run_dir: the training run (checkpoints, config.toml, stats.json).
        data_root: DSTL-layout dataset with the scenes to predict (its ``grid_sizes.csv``
            gives the extents).
        out_dir: the prediction directory ``PRED`` (layout: :func:`scene_paths`).
        image_ids: scenes to predict (default: every scene of ``data_root``).
        workers: local Dask worker processes (0: in this process; None: one per core, up
            to the number of scenes, in-process for a single scene or on CUDA).
        scheduler: address of an existing Dask scheduler (its workers must see the same
            paths).
        cache_dir: the fused cache for these scenes (default: the run's ``data.cache`` when
            ``data_root`` is the run's ``data.root``, else ``PRED/cache``).
        options: tiling, TTA, device, vectorisation; None fields come from the run config.
        thresholds: ``"auto"`` (``RUN/thresholds.json`` if it matches the checkpoint and
            TTA, else tuned on the run's validation scenes and saved there, else the config's),
            ``"retune"`` (always tune), ``"config"`` (``predict.thresholds``), or a mapping.
        min_area: per class minimum polygon area in pixels (default: ``predict.min_area``).
        progress: tqdm bars on stderr.
    """

    from spectraseg.fusion import align_dataset
    from spectraseg.io import open_dataset

    t0 = time.perf_counter()
    run = Path(run_dir)
    out = Path(out_dir)
    model, config, run_stats = cached_model(run, options.checkpoint, "cpu")
    # Local workers resolve the device as this process does; a scheduler's workers their own.
    options = resolve_options(options, config, here=scheduler is None)
    assert options.tile is not None and options.margin is not None
    multiple = int(getattr(model, "multiple", 1))
    del model
    if options.tile % multiple or options.tile <= 2 * options.margin:
        raise ConfigError(
            f"tile {options.tile} must be a multiple of the model's 2**depth ({multiple}) "
            f"and larger than twice the margin {options.margin}"
        )
    ds = open_dataset(data_root)
    ids = list(dict.fromkeys(ds.image_ids if image_ids is None else image_ids))
    if not ids:
        raise DataError(f"no scene to predict under {ds.root}")
    known = set(ds.image_ids)
    for i in ids:
        check_image_id(i)
        if i not in known:
            raise DataError(f"image id {i} has no product file under {ds.root}")
        if i not in ds.grid_sizes:
            raise DataError(f"image id {i} is not in {ds.grid_path}")
    if cache_dir is None:
        d = config.data
        same = d.root and d.cache and Path(d.root).resolve() == ds.root.resolve()
        cache_dir = Path(d.cache) if same else out / "cache"
    cache_dir = Path(cache_dir)

    report = PredictReport(out_dir=out)
    report.options = {
        "checkpoint": options.checkpoint,
        "tile": options.tile,
        "margin": options.margin,
        "batch": options.batch,
        "tta": options.tta,
        "device": options.device,
        "tolerance_px": options.tolerance,
        "decimals": options.decimals,
        "cache": str(cache_dir),
    }
    # Thresholds: decide now whether tuning is needed (its scenes share the cluster).
    tune_scenes: list[str] = []
    doc = None
    if isinstance(thresholds, Mapping):
        report.thresholds = {int(k): float(v) for k, v in thresholds.items()}
        report.threshold_source = "given"
    elif thresholds == "config":
        report.thresholds = _config_thresholds(config)
        report.threshold_source = "config predict.thresholds"
    elif thresholds in ("auto", "retune"):
        doc = read_thresholds(run) if thresholds == "auto" else None
        if doc is not None and not _doc_matches(doc, run, options):
            warnings.warn(
                f"{run / THRESHOLDS_JSON} was tuned for another checkpoint or TTA setting; "
                "re-tuning",
                SpectrasegWarning,
                stacklevel=2,
            )
            doc = None
        if doc is None:
            tune_scenes = validation_scenes(config)
            if not tune_scenes:
                if thresholds == "retune":
                    raise ConfigError("the run has no validation scenes to tune thresholds on")
                warnings.warn(
                    "the run has no validation scenes: using the config's predict.thresholds",
                    SpectrasegWarning,
                    stacklevel=2,
                )
                report.thresholds = _config_thresholds(config)
                report.threshold_source = "config predict.thresholds (no validation scenes)"
        else:
            report.thresholds = thresholds_of(doc)
            report.threshold_source = str(run / THRESHOLDS_JSON)
            report.tuning = doc
    else:
        raise ConfigError(f"thresholds {thresholds!r} must be auto, retune, config or a mapping")

    cfg_area = config.predict.min_area
    report.min_area = (
        {int(k): float(v) for k, v in min_area.items()}
        if min_area is not None
        else {c: float(a) for c, a in enumerate(cfg_area, start=1)}
    )

    gpu = options.device.startswith("cuda")
    n_workers = plan_workers(workers, scheduler, len(ids) + len(tune_scenes), gpu)
    align = align_dataset(
        ds.root,
        cache_dir,
        image_ids=ids,
        workers=n_workers or None,
        scheduler=scheduler,
        progress=progress,
    )
    status = {s.image_id: s for s in align.scenes}
    aligned = [i for i in ids if i not in status or status[i].status != "failed"]
    stats = _request_stats(run_stats, cache_dir, aligned, out, report, progress)
    with open_runner(n_workers, scheduler) as runner:
        if tune_scenes:
            doc = _tune_run(runner, run, config, options, tune_scenes, progress)
            write_thresholds(run, doc)
            report.thresholds = thresholds_of(doc)
            report.threshold_source = f"tuned on {len(tune_scenes)} validation scene(s)"
            report.tuning = doc
        from tqdm import tqdm

        if report.tuning and report.tuning.get("blend"):
            report.blend = {int(k): float(v) for k, v in report.tuning["blend"].items()}
        results: dict[str, dict[str, Any]] = {}
        jobs: list[Job] = []
        opts = replace(options, threads=runner.threads or options.threads)
        for i in ids:
            st = status.get(i)
            if st is not None and st.status == "failed":
                results[i] = {"image_id": i, "status": "failed", "reason": f"align: {st.reason}"}
                continue
            xmax, ymin = ds.grid_sizes[i]
            args = (
                str(run),
                str(cache_dir),
                i,
                xmax,
                ymin,
                str(out),
                report.thresholds,
                report.min_area,
                opts,
                report.blend,
                stats,
            )
            jobs.append((i, args))
        with tqdm(total=len(jobs), desc="predict", unit="scene", disable=not progress) as bar:
            for key, result, exc in runner.run(predict_scene_task, jobs):
                bar.update()
                if exc is not None:
                    results[key] = {"image_id": key, "status": "failed", "reason": describe(exc)}
                else:
                    results[key] = {**result, "status": "ok"}
    report.scenes = [results[i] for i in ids]
    ok = sorted(s["image_id"] for s in report.scenes if s["status"] == "ok")
    if ok:
        report.predictions = write_predictions_csv(out, ok)
    report.seconds = time.perf_counter() - t0
    write_text_atomic(out / "predict.json", json.dumps(report.to_dict(), indent=1) + "\n")
    return report


def _request_stats(
    run_stats: Mapping[str, Any] | None,
    cache_dir: Path,
    image_ids: Sequence[str],
    out: Path,
    report: PredictReport,
    progress: bool,
) -> dict[str, Any] | None:
    """The run's statistics completed for the scenes to predict, saved as ``PRED/stats.json``.

    Scenes of a region (or, in ``image`` mode, scenes) the run's statistics lack get an
    entry computed from this request's scenes (:func:`~spectraseg.normalization.complete_stats`),
    so they are normalised in the scope the model was trained in; ``report.normalization``
    records which.
    """
    from spectraseg.normalization import complete_stats, save_stats

    if run_stats is None or not image_ids:
        return None
    stats, computed = complete_stats(run_stats, cache_dir, image_ids, progress=progress)
    save_stats(stats, out / "stats.json")
    report.normalization = {
        "mode": stats.get("mode", "dataset"),
        "computed": computed,
        "stats": str(out / "stats.json"),
    }
    return stats


def write_predictions_csv(out_dir: str | os.PathLike[str], image_ids: Sequence[str]) -> Path:
    """Concatenate the scenes' WKT rows into ``PRED/predictions.csv``, atomically.

    Streams scene by scene, so memory does not grow with the number of scenes.
    """
    from spectraseg.io import WKT_HEADER

    path = Path(out_dir) / "predictions.csv"
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(",".join(WKT_HEADER) + "\n")
        for i in image_ids:
            with open(scene_paths(out_dir, i)["wkt"], encoding="utf-8", newline="") as src:
                src.readline()  # header
                for line in src:
                    f.write(line)
    return path
