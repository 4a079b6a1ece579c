from __future__ import annotations

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import GeometryCollection, LineString, MultiPolygon, Point, Polygon, box

from spectraseg.data.dstl import open_dataset
from spectraseg.data.geometry import (
    geom_grid_to_pixel,
    geom_pixel_to_grid,
    grid_to_pixel,
    pixel_scale,
    pixel_to_grid,
    rasterize,
    rasterize_classes,
    repair,
    to_multipolygon,
)

sizes = st.integers(min_value=1, max_value=5000)
xmaxes = st.floats(min_value=1e-4, max_value=1.0)
ymins = st.floats(min_value=-1.0, max_value=-1e-4)


def test_pixel_scale_matches_competition_formula() -> None:
    # W' = W^2 / (W + 1): for W = 3403, Xmax = 0.009188 (values of a real scene)
    sx, sy = pixel_scale(3403, 3348, 0.009188, -0.00904)
    assert sx == pytest.approx(3403 * 3403 / 3404 / 0.009188, rel=1e-15)
    assert sy == pytest.approx(3348 * 3348 / 3349 / -0.00904, rel=1e-15)
    assert sy < 0


def test_grid_corner_maps_just_inside_last_pixel() -> None:
    w, h, xmax, ymin = 100, 50, 0.009, -0.0045
    px = grid_to_pixel(np.array([[xmax, ymin], [0.0, 0.0]]), w, h, xmax, ymin)
    np.testing.assert_allclose(px[0], [w * w / (w + 1), h * h / (h + 1)])
    np.testing.assert_array_equal(px[1], [0.0, 0.0])


@settings(max_examples=200, deadline=None)
@given(
    w=sizes,
    h=sizes,
    xmax=xmaxes,
    ymin=ymins,
    u=st.floats(0, 1),
    v=st.floats(0, 1),
)
def test_grid_pixel_grid_roundtrip(w, h, xmax, ymin, u, v) -> None:
    xy = np.array([u * xmax, v * ymin])
    back = pixel_to_grid(grid_to_pixel(xy, w, h, xmax, ymin), w, h, xmax, ymin)
    np.testing.assert_allclose(back, xy, atol=1e-9, rtol=0)


@settings(max_examples=50, deadline=None)
@given(w=st.integers(20, 800), h=st.integers(20, 800), xmax=xmaxes, ymin=ymins)
def test_geometry_roundtrip(w, h, xmax, ymin) -> None:
    poly = box(0.1 * xmax, 0.7 * ymin, 0.6 * xmax, 0.2 * ymin)
    back = geom_pixel_to_grid(geom_grid_to_pixel(poly, w, h, xmax, ymin), w, h, xmax, ymin)
    assert shapely.equals_exact(back, poly, tolerance=1e-12)


@st.composite
def polygons_px(draw):
    """Random star-shaped polygons (sometimes with a hole), over 100 px across, in 500 x 500.

    Centre sampling errs by up to half a pixel along an axis-aligned edge, so the 1% bound
    needs area/perimeter >= ~25 px: every vertex is at least 100 px from the centre.
    """
    cx, cy = draw(st.floats(200, 300)), draw(st.floats(200, 300))
    n = draw(st.integers(3, 12))
    radii = draw(st.lists(st.floats(100, 180), min_size=n, max_size=n))
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    shell = [(cx + r * np.cos(a), cy + r * np.sin(a)) for r, a in zip(radii, angles, strict=True)]
    poly = Polygon(shell)
    if draw(st.booleans()):
        hole = Point(cx, cy).buffer(min(radii) / 2.5)
        poly = poly.difference(hole)
    return poly


@settings(max_examples=60, deadline=None)
@given(poly=polygons_px())
def test_rasterized_area_matches_polygon_area(poly) -> None:
    w = h = 500
    xmax, ymin = 0.009, -0.0091
    grid = geom_pixel_to_grid(poly, w, h, xmax, ymin)
    mask = rasterize(grid, w, h, xmax, ymin)
    assert abs(int(mask.sum()) - poly.area) <= 0.01 * poly.area


def test_rasterize_clears_holes_exactly() -> None:
    w = h = 40
    xmax, ymin = 0.004, -0.004
    ring = box(5, 5, 35, 35).difference(box(15, 15, 25, 25))
    mask = rasterize(geom_pixel_to_grid(ring, w, h, xmax, ymin), w, h, xmax, ymin)
    # Pixel centres sit at k + 0.5: the box covers pixels 5..34, the hole 15..24.
    expected = np.zeros((h, w), np.uint8)
    expected[5:35, 5:35] = 1
    expected[15:25, 15:25] = 0
    np.testing.assert_array_equal(mask, expected)


def test_rasterize_classes_stacks_in_class_order() -> None:
    w, h, xmax, ymin = 20, 10, 0.002, -0.001
    a = geom_pixel_to_grid(box(0, 0, 5, 5), w, h, xmax, ymin)
    b = geom_pixel_to_grid(box(10, 0, 20, 10), w, h, xmax, ymin)
    masks = rasterize_classes({1: a, 10: b}, w, h, xmax, ymin)
    assert masks.shape == (10, h, w) and masks.dtype == np.uint8
    assert masks[0].sum() == 25 and masks[9].sum() == 100
    assert masks[1:9].sum() == 0
    with pytest.raises(ValueError, match="class 11"):
        rasterize_classes({11: a}, w, h, xmax, ymin)


def test_to_multipolygon_normalises_every_kind() -> None:
    p = box(0, 0, 1, 1)
    assert to_multipolygon(p).geom_type == "MultiPolygon"
    assert to_multipolygon(None).is_empty
    gc = GeometryCollection([p, LineString([(0, 0), (2, 2)]), Point(5, 5), box(3, 3, 4, 4)])
    out = to_multipolygon(gc)
    assert isinstance(out, MultiPolygon) and len(out.geoms) == 2 and out.area == 2


def test_repair_keeps_both_halves_of_a_bowtie() -> None:
    bowtie = Polygon([(0, 0), (2, 2), (2, 0), (0, 2)])
    assert not bowtie.is_valid
    fixed = repair(bowtie)
    assert fixed.is_valid and isinstance(fixed, MultiPolygon)
    assert fixed.area == pytest.approx(2.0)  # buffer(0) would keep only one triangle (1.0)


def test_real_labels_agree_between_rgb_and_a_grids(dstl_lite) -> None:
    ds = open_dataset(dstl_lite)
    for scene in ds.scenes():
        labels = ds.scene_labels(scene.image_id)
        fracs = {}
        for name in ("RGB", "A"):
            info = scene.info(name)
            masks = rasterize_classes(labels, info.width, info.height, scene.xmax, scene.ymin)
            fracs[name] = masks.reshape(10, -1).mean(axis=1)
        diff = np.abs(fracs["RGB"] - fracs["A"])
        assert diff.max() <= 0.02, (scene.image_id, diff)
