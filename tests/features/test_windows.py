"""Reflect padding and the eight symmetries (``spectraseg.features.windows``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spectraseg.features.windows import (
    DIHEDRAL,
    dihedral,
    dihedral_inverse,
    read_window,
    reflect_index,
    resize_window,
)


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 12), st.integers(-30, 30), st.integers(1, 30))
def test_reflect_index_matches_numpy_pad(n, start, size):
    pad = 70
    ref = np.pad(np.arange(n), pad, mode="reflect") if n > 1 else np.zeros(n + 2 * pad, int)
    assert reflect_index(start, size, n).tolist() == ref[start + pad : start + pad + size].tolist()


@settings(max_examples=60, deadline=None)
@given(st.integers(-20, 30), st.integers(-20, 30), st.integers(1, 24))
def test_read_window_is_reflect_padding(row0, col0, size):
    arr = np.arange(2 * 9 * 13, dtype=np.uint16).reshape(2, 9, 13)
    p = 64  # wider than any window reaches
    padded = np.pad(arr, ((0, 0), (p, p), (p, p)), mode="reflect")
    want = padded[:, row0 + p : row0 + p + size, col0 + p : col0 + p + size]
    got = read_window(arr, row0, col0, size)
    assert got.dtype == arr.dtype and np.array_equal(got, want)


def test_dihedral_gives_the_eight_symmetries():
    x = np.arange(9).reshape(1, 3, 3)
    outs = {dihedral(x, k).tobytes() for k in range(8)}
    assert len(outs) == 8
    assert np.array_equal(dihedral(x, 0), x)
    assert np.array_equal(dihedral(x, 4)[0], x[0].T)
    with pytest.raises(ValueError):
        dihedral(x, 8)


def test_reflect_index_pads_whole_ranges_like_numpy() -> None:
    for n in (1, 2, 3, 7):
        for pad in (0, 1, 5, 20):
            got = reflect_index(-pad, n + 2 * pad, n)
            want = np.pad(np.arange(n), pad, mode="reflect") if n > 1 else np.zeros(n + 2 * pad)
            np.testing.assert_array_equal(got, want)


def test_dihedral_transforms_invert_and_are_distinct() -> None:
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    seen = set()
    for k in range(len(DIHEDRAL)):
        y = dihedral(x, k)
        assert torch.equal(dihedral_inverse(y, k), x)
        seen.add(tuple(y[0, 0].flatten().tolist()))
    assert len(seen) == 8


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(1, 20), st.integers(1, 3))
def test_resize_window_nearest_repeats_labels_at_whole_factors(c, side, factor):
    rng = np.random.default_rng(side)
    lab = rng.integers(0, 2, (c, side, side)).astype(np.uint8)
    up = resize_window(lab, side * factor, nearest=True)
    assert up.dtype == np.uint8 and up.shape == (c, side * factor, side * factor)
    assert np.array_equal(up, lab.repeat(factor, axis=1).repeat(factor, axis=2))
    # And back: every factor-th pixel, the one whose centre is nearest the coarse centre.
    assert np.array_equal(resize_window(up, side, nearest=True), lab)


@settings(max_examples=40, deadline=None)
@given(st.integers(4, 40), st.integers(4, 40))
def test_resize_window_bilinear_keeps_affine_ramps(side, size):
    """Pixel centres map to pixel centres: a ramp of the source index becomes the source
    position of each output centre, ``(i + 0.5) * side / size - 0.5``, wherever that lies
    between the first and last source centres."""
    ramp = np.broadcast_to(np.arange(side, dtype=np.float32)[:, None], (side, side))
    img = np.stack([ramp, ramp.T, np.full((side, side), 7.0, np.float32)])
    out = resize_window(img, size)
    assert out.dtype == np.float32 and out.shape == (3, size, size)
    pos = (np.arange(size) + 0.5) * side / size - 0.5
    inside = (pos >= 0) & (pos <= side - 1)
    np.testing.assert_allclose(out[0, inside, 0], pos[inside], atol=2e-2)
    np.testing.assert_allclose(out[1, 0, inside], pos[inside], atol=2e-2)
    assert np.allclose(out[2], 7.0)
