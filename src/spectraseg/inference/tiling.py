"""Tiled whole-scene inference: a fully convolutional model and a normalised scene
``(C, H, W)`` -> class probabilities ``(K, H, W)``.

- The scene is cut into tiles of ``tile`` pixels whose centres, ``tile - 2 * margin``
  pixels wide, tile the scene without gaps or overlap (:func:`tile_layout`). Only a tile's
  centre is kept: its ``margin`` pixels of context on each side are seen by the model but
  never written, so predictions near tile edges (where a convolution sees zero padding)
  never reach the output, and no blending is needed: every output pixel comes from exactly
  one tile. When the model's size divisor is known, the last row and column of tiles
  shrink to what is left of the scene, so the work wasted past the edge stays small.
- Context beyond the scene borders is the scene mirrored at its edge (``numpy`` "reflect"
  mode, :func:`spectraseg.features.windows.reflect_index`). Tiles are filled one at a time,
  so the padded scene is never materialised: memory is the input, the output and one batch
  of tiles.
- Tiles run in batches; with ``tta=True`` every batch also runs through the 7 other
  symmetries of the square (:data:`spectraseg.features.windows.DIHEDRAL`) and the 8
  probability maps, mapped back, are averaged.

Pure: a model and an array in, probabilities out; no files, no run directory. Training's
validation and prediction both call :func:`predict_probs`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from spectraseg import NUM_CLASSES
from spectraseg.features.windows import DIHEDRAL, dihedral, dihedral_inverse, reflect_index


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


@dataclass(frozen=True)
class Strip:
    """A band of rows of a scene predicted on its own: the tile rows whose kept centres
    cover scene rows ``[top, bottom)``, and the rows ``read`` (``[a, b)``) those tiles take
    their input and context from. Along the other axis the same record describes a band of
    columns (tile columns, kept columns ``[top, bottom)``, columns read, the scene's width):
    a strip cut into such column bands is predicted cell by cell, so that memory does not
    grow with the scene's width either.

    A strip's tiles are exactly the whole scene's (:func:`tile_layout`) in those rows, and
    its window holds every row they read, so context past a strip's edge is the real scene
    and mirroring happens only at the scene's own edges: a scene predicted strip by strip
    gives the whole scene's probabilities, every tile seeing the same input. They agree to
    float rounding, not bit for bit: tiles are batched per strip, and oneDNN's convolutions
    round differently for another batch size (at most 4e-7 apart in the tests); the same
    strips always give the same bits.
    """

    tiles: tuple[tuple[int, int], ...]
    """``(y, size)`` of each tile row, in scene rows (as :func:`tile_layout` gives them)."""
    top: int
    bottom: int
    read: tuple[int, int]
    """Every scene row the tiles read, mirrored rows past the scene's edges included."""
    height: int
    """The scene's height (where it mirrors)."""


def plan_strips(
    height: int, tile: int, margin: int, rows: int, multiple: int | None = None
) -> list[Strip]:
    """The strips of a scene ``height`` rows tall, each about ``rows`` kept rows (a whole
    number of tile rows, at least one)."""
    layout = tile_layout(height, tile, margin, multiple)
    step = tile - 2 * margin
    per = max(1, rows // step)
    out = []
    for i in range(0, len(layout), per):
        tiles = tuple(layout[i : i + per])
        top = tiles[0][0]
        bottom = min(tiles[-1][0] + step, height)
        reads = np.concatenate([reflect_index(y - margin, s, height) for y, s in tiles])
        read = (int(reads.min()), int(reads.max()) + 1)
        out.append(Strip(tiles, top, bottom, read, height))
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


def _batches(items: list[tuple[int, int]], size: int) -> Iterator[list[tuple[int, int]]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


@dataclass
class _Tiler:
    """One scene's tiled inference: fills tiles, runs the model, writes kept centres."""

    model: torch.nn.Module
    image: np.ndarray
    out: np.ndarray
    """float32 ``(K, H, W)``: probabilities, or logits when ``fused``."""
    margin: int
    ry: np.ndarray
    rx: np.ndarray
    device: torch.device
    transforms: range
    """Dihedral symmetries averaged (TTA: all 8)."""
    fused: bool
    """Write logits; the caller applies the sigmoid to the whole output once."""
    channels_last: bool
    read_row: int = 0
    """Scene row of ``image``'s first row (a strip's window starts there)."""
    write_row: int = 0
    """Scene row of ``out``'s first row."""
    read_col: int = 0
    """Scene column of ``image``'s first column (a cell's window starts there)."""
    write_col: int = 0
    """Scene column of ``out``'s first column."""

    def run(self, th: int, tw: int, positions: list[tuple[int, int]], batch: int, bar: Any) -> None:
        """Every tile of shape ``(th, tw)`` whose kept centre starts at ``positions``."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        # One input buffer per tile shape, reused: a fresh allocation this large is mmap-ed
        # and page-faulted anew on every batch (~15 ms per 40 MB).
        buf = torch.empty((batch, self.image.shape[0], th, tw), memory_format=fmt)
        # Channels-last memory is (N, h, w, C): interleave the planes with OpenCV, 7x faster
        # than a strided torch copy from the (C, H, W) scene.
        dst = buf.permute(0, 2, 3, 1).numpy() if self.channels_last else buf.numpy()
        m = self.margin
        for group in _batches(positions, batch):
            for i, (y, x) in enumerate(group):
                yy, xx = y - self.read_row, x - self.read_col
                _fill_tile(self.image, dst[i], yy, xx, m, self.ry, self.rx, self.channels_last)
            res = self.centres(buf[: len(group)].to(self.device), th, tw)
            self.write(group, res)
            if bar is not None:
                bar.update(len(group))

    def centres(self, x_in: torch.Tensor, th: int, tw: int) -> np.ndarray:
        """The kept centres of a batch of tiles: logits when fused, else mean probabilities."""
        m, n, k_out = self.margin, x_in.shape[0], self.out.shape[0]
        acc: torch.Tensor | None = None
        for k in self.transforms:
            logits = dihedral_inverse(self.model(dihedral(x_in, k)), k)
            if logits.shape != (n, k_out, th, tw):
                raise ValueError(
                    f"model returned shape {tuple(logits.shape)} for input "
                    f"{tuple(x_in.shape)}; expected {(n, k_out)} and the input's height and width"
                )
            # Only the kept centre is used (never modified in place: a model may return a
            # view, e.g. an expanded tensor).
            centre = logits[:, :, m : th - m, m : tw - m]
            if self.fused:
                return centre.numpy()  # logits; the sigmoid runs once at the end
            p = torch.sigmoid(centre.float())
            acc = p if acc is None else acc.add_(p)
        assert acc is not None
        return acc.div_(len(self.transforms)).cpu().numpy()

    def write(self, group: list[tuple[int, int]], res: np.ndarray) -> None:
        """Copy each tile's centre into the output, cropped at the scene's far edges."""
        h, w = self.out.shape[1:]
        kh, kw = res.shape[2:]
        for (y, x), pr in zip(group, res, strict=True):
            y, x = y - self.write_row, x - self.write_col
            hh, ww = min(kh, h - y), min(kw, w - x)
            # numpy's transposing copy from channels-last memory: 3x faster than torch's
            # copy_ (20x for small tiles).
            self.out[:, y : y + hh, x : x + ww] = pr[:, :hh, :ww]


def predict_probs(
    model: torch.nn.Module,
    image: np.ndarray,
    tile: int = 256,
    margin: int = 16,
    batch: int = 8,
    tta: bool = False,
    device: torch.device | str | None = None,
    num_classes: int | None = None,
    progress: bool = False,
    channels_last: bool = True,
    multiple: int | None = None,
    amp: bool = False,
    strip: Strip | None = None,
    cols: Strip | None = None,
) -> np.ndarray:
    """Class probabilities of a whole scene, or of one strip or cell of it, by tiled
    inference.

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
        num_classes: channels of the model output; default ``model.num_classes`` if it
            has one, else 10 (DSTL).
        progress: show a tqdm bar (stderr) over tiles.
        channels_last: feed tiles in channels-last memory format (same values; on CPU
            convolutions then run about 2x faster, and the model needs no conversion).
        multiple: the model's input size divisor; default ``model.multiple`` if it has one.
            When known, the last row and column of tiles shrink to what the scene needs.
        amp: on CUDA, run the model under float16 autocast (as training does with
            ``train.amp``); the sigmoid and the blending stay float32. Ignored on CPU.
        strip: predict only this strip (:func:`plan_strips` of the scene's height with the
            same ``tile``, ``margin`` and ``multiple``); ``image`` is then the scene's rows
            ``strip.read`` only.
        cols: predict only this band of columns (:func:`plan_strips` of the scene's width);
            ``image`` is then the scene's columns ``cols.read`` only.

    Returns:
        float32 ``(num_classes, H, W)``: sigmoid of the logits, in [0, 1]; with ``strip``
        and ``cols``, ``(num_classes, strip.bottom - strip.top, cols.bottom - cols.top)``.
    """
    if image.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {image.shape}")
    if margin < 0 or batch < 1:
        raise ValueError(f"margin must be >= 0 and batch >= 1, got {margin}, {batch}")
    _, h, w = image.shape
    if multiple is None:
        multiple = getattr(model, "multiple", None)
    if strip is None:
        strip = Strip(tuple(tile_layout(h, tile, margin, multiple)), 0, h, (0, h), h)
    elif h != strip.read[1] - strip.read[0]:
        raise ValueError(f"a strip reading scene rows {strip.read} was given {h} rows")
    if cols is None:
        cols = Strip(tuple(tile_layout(w, tile, margin, multiple)), 0, w, (0, w), w)
    elif w != cols.read[1] - cols.read[0]:
        raise ValueError(f"a cell reading scene columns {cols.read} was given {w} columns")
    a, c = strip.read[0], cols.read[0]
    # Padded position q covers pixel q - margin; a tile whose centre starts at y reads padded
    # rows y .. y + size. The index maps (in ``image``'s rows and columns) cover every padded
    # position any tile reads (a strip's rows mirror at the scene's edges: its window holds
    # every row they reach; a cell's columns alike).
    ry = reflect_index(a - margin, max(y - a + s for y, s in strip.tiles), strip.height) - a
    rx = reflect_index(c - margin, max(x - c + s for x, s in cols.tiles), cols.height) - c
    dev = torch.device(device) if device is not None else _model_device(model)
    if num_classes is None:
        num_classes = int(getattr(model, "num_classes", NUM_CLASSES))
    shape = (num_classes, strip.bottom - strip.top, cols.bottom - cols.top)
    out = np.empty(shape, dtype=np.float32)
    # Tiles of one shape are batched together (at most 4 shapes: full and edge sizes).
    by_shape: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for y, th in strip.tiles:
        for x, tw in cols.tiles:
            by_shape.setdefault((th, tw), []).append((y, x))
    transforms = range(len(DIHEDRAL)) if tta else range(1)
    # On CPU without TTA, logits go straight to the output and the sigmoid runs there.
    fused = len(transforms) == 1 and dev.type == "cpu"
    tiler = _Tiler(
        model, image, out, margin, ry, rx, dev, transforms, fused, channels_last,
        a, strip.top, c, cols.top,
    )  # fmt: skip
    autocast = torch.autocast("cuda", dtype=torch.float16, enabled=amp and dev.type == "cuda")
    was_training = model.training
    model.eval()
    bar = None
    if progress:
        total = len(strip.tiles) * len(cols.tiles)
        bar = tqdm(total=total, desc="tiles", unit="tile", leave=False)
    try:
        with torch.inference_mode(), autocast:
            for (th, tw), positions in by_shape.items():
                tiler.run(th, tw, positions, batch, bar)
        if fused:
            # One vectorised pass over the whole output: 3x faster than a sigmoid per
            # batch into a new tensor (and no parallel-region start-up per tile).
            torch.from_numpy(out).sigmoid_()
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    return out
