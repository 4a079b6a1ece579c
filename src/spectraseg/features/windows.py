"""Windows of scenes: reflect-mode indices past a scene's edge, windowed reads and the 8
symmetries of the square."""

from __future__ import annotations

from typing import TypeVar

import cv2
import numpy as np
import torch


def reflect_index(start: int, size: int, n: int) -> np.ndarray:
    """Source indices in ``[0, n)`` for positions ``start .. start + size - 1`` (int64).

    The scene is mirrored at its edges without repeating the edge sample (``numpy.pad``
    "reflect" mode): ``-1 -> 1`` and ``n -> n - 2``, reflecting as often as needed;
    ``n == 1`` maps everything to 0.
    """
    p = np.arange(start, start + size, dtype=np.int64)
    if n == 1:
        return np.zeros_like(p)
    period = 2 * (n - 1)
    p = np.mod(p, period)
    return np.where(p < n, p, period - p)


def read_window(arr: np.ndarray, row0: int, col0: int, size: int) -> np.ndarray:
    """A (C, size, size) window of a (C, H, W) array (memmap) with top-left ``(row0, col0)``.

    Positions outside the array are mirrored (reflect mode). Only the rows and columns the
    window needs are read; the result is a new array in ``arr``'s dtype.
    """
    _, h, w = arr.shape
    if 0 <= row0 and row0 + size <= h and 0 <= col0 and col0 + size <= w:
        return np.array(arr[:, row0 : row0 + size, col0 : col0 + size])
    ri = reflect_index(row0, size, h)
    ci = reflect_index(col0, size, w)
    r_lo, r_hi, c_lo, c_hi = ri.min(), ri.max() + 1, ci.min(), ci.max() + 1
    slab = np.asarray(arr[:, r_lo:r_hi, c_lo:c_hi])
    return slab[:, (ri - r_lo)[:, None], (ci - c_lo)[None, :]]


def resize_window(arr: np.ndarray, size: int, *, nearest: bool = False) -> np.ndarray:
    """A (C, h, w) window resampled to (C, size, size), same dtype.

    Bilinear for images, nearest neighbour for labels (``nearest``; OpenCV's
    ``INTER_NEAREST_EXACT``, which samples at pixel centres as the bilinear mode does, so
    that labels stay on their pixels).
    """
    c = arr.shape[0]
    mode = cv2.INTER_NEAREST_EXACT if nearest else cv2.INTER_LINEAR
    hwc = np.ascontiguousarray(np.moveaxis(arr, 0, -1))
    out = cv2.resize(hwc, (size, size), interpolation=mode).reshape(size, size, c)
    return np.ascontiguousarray(np.moveaxis(out, -1, 0))


DIHEDRAL: tuple[tuple[int, bool], ...] = tuple((k, t) for t in (False, True) for k in range(4))
"""The 8 symmetries of the square by index: ``(quarter turns, transpose first)``. Index ``k``
in 0..3 rotates by ``k`` quarter turns; 4..7 transpose first, then rotate by ``k - 4``; 0 is
the identity. Training's augmentation and prediction's test-time augmentation use these."""

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def _check(k: int) -> tuple[int, bool]:
    if not 0 <= k < len(DIHEDRAL):
        raise ValueError(f"dihedral transform {k} is not in 0..7")
    return DIHEDRAL[k]


def _transpose(x: Array) -> Array:
    return x.transpose(-1, -2) if isinstance(x, torch.Tensor) else np.swapaxes(x, -1, -2)


def _rotate(x: Array, turns: int) -> Array:
    if isinstance(x, torch.Tensor):
        return torch.rot90(x, turns, dims=(-2, -1)) if turns else x
    return np.rot90(x, turns, axes=(-2, -1))


def dihedral(x: Array, k: int) -> Array:
    """Symmetry ``k`` (0..7, :data:`DIHEDRAL`) of the square on the last two axes of ``x``.

    ``x`` is a numpy array (the result is a view) or a torch tensor (a view or, for
    rotations, a new tensor). Apply the same ``k`` to image and mask.
    """
    turns, transpose = _check(k)
    return _rotate(_transpose(x) if transpose else x, turns)


def dihedral_inverse(x: Array, k: int) -> Array:
    """Undo :func:`dihedral` ``k``: ``dihedral_inverse(dihedral(x, k), k)`` equals ``x``."""
    turns, transpose = _check(k)
    x = _rotate(x, -turns % 4)
    return _transpose(x) if transpose else x
