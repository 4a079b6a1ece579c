"""The competition metric on polygons and on rasters."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from shapely import affinity
from shapely.geometry import MultiPolygon, box

from spectraseg import CLASS_NAMES
from spectraseg.cli import main
from spectraseg.data.dstl import open_dataset, write_wkt_csv
from spectraseg.errors import DataError
from spectraseg.evaluation.metrics import (
    EMPTY_UNION_SCORE,
    evaluate_masks,
    evaluate_polygons,
    format_table,
    mask_counts,
    pixel_area,
    raster_jaccard,
)


def mp(*boxes: tuple[float, float, float, float]) -> MultiPolygon:
    return MultiPolygon([box(*b) for b in boxes])


@pytest.fixture
def hand_made() -> tuple[dict, dict]:
    """Two images with known areas (units: squares of side 1)."""
    truth = {
        "a": {1: mp((0, 0, 2, 2)), 2: mp((0, 0, 1, 1)), 5: mp((0, 0, 4, 1))},
        "b": {1: mp((10, 10, 11, 11)), 2: mp((5, 5, 6, 6), (7, 7, 8, 8))},
    }
    pred = {
        # class 1: a: 2x2 vs 1x2 inside -> tp 2, fp 0, fn 2; b: disjoint 1x1 -> fp 1, fn 1
        # class 2: a: nothing -> fn 1; b: one of two squares + 0.5 outside -> tp 1, fp .5, fn 1
        # class 3: predicted, no truth -> fp 3
        "a": {1: mp((0, 0, 1, 2)), 3: mp((0, 0, 3, 1)), 5: mp((0, 0, 4, 1))},
        "b": {1: mp((20, 20, 21, 21)), 2: mp((5, 5, 6, 6), (9, 9, 9.5, 10))},
    }
    return pred, truth


def test_exact_jaccard_on_hand_made_polygons(hand_made) -> None:
    pred, truth = hand_made
    ev = evaluate_polygons(pred, truth)
    assert ev.image_ids == ("a", "b")
    np.testing.assert_allclose(ev.tp[:5], [2, 1, 0, 0, 4])
    np.testing.assert_allclose(ev.fp[:5], [1, 0.5, 3, 0, 0])
    np.testing.assert_allclose(ev.fn[:5], [3, 2, 0, 0, 0])
    want = np.zeros(10)
    want[0] = 2 / 6
    want[1] = 1 / 3.5
    want[4] = 1.0
    np.testing.assert_allclose(ev.jaccard, want)
    assert ev.mean == pytest.approx(want.sum() / 10)
    # Classes 4 and 6..10 have nothing on either side: empty union, scored 0 and flagged.
    assert list(np.flatnonzero(ev.empty) + 1) == [4, 6, 7, 8, 9, 10]
    assert EMPTY_UNION_SCORE == 0.0
    alt = evaluate_polygons(pred, truth, empty_score=1.0)
    assert alt.mean == pytest.approx((want.sum() + 6) / 10)


def test_per_image_subsets_and_splits(hand_made) -> None:
    pred, truth = hand_made
    ev = evaluate_polygons(pred, truth)
    a = ev.subset(["a"])
    assert a.jaccard[0] == pytest.approx(0.5) and a.jaccard[1] == 0 and not a.empty[1]
    with pytest.raises(DataError, match="image id zz"):
        ev.subset(["zz"])
    data = json.loads(ev.with_splits({"public": ["a"], "private": ["b"]}).to_json())
    assert data["splits"]["public"]["jaccard"][0] == pytest.approx(0.5)
    assert data["splits"]["private"]["images"] == ["b"]


def test_json_schema(hand_made) -> None:
    pred, truth = hand_made
    data = json.loads(evaluate_polygons(pred, truth).to_json())
    assert set(data) >= {"classes", "mean"}
    assert [c["class"] for c in data["classes"]] == list(range(1, 11))
    for c in data["classes"]:
        assert set(c) >= {"class", "name", "jaccard", "tp", "fp", "fn"}
        assert c["name"] == CLASS_NAMES[c["class"]]
        assert all(isinstance(c[k], float) for k in ("jaccard", "tp", "fp", "fn"))
    assert data["classes"][0]["jaccard"] == pytest.approx(1 / 3)
    assert data["mean"] == pytest.approx(sum(c["jaccard"] for c in data["classes"]) / 10)


def test_table_lists_contributions_and_marks_empty_classes(hand_made) -> None:
    pred, truth = hand_made
    ev = evaluate_polygons(pred, truth)
    table = format_table(ev, {"public": ["a"]})
    lines = table.splitlines()
    assert "Jaccard" in lines[0] and "J/10" in lines[0] and "public" in lines[0]
    row1 = next(line for line in lines if line.strip().startswith("1 "))
    assert "Buildings" in row1 and "0.3333" in row1 and "0.03333" in row1
    assert any(line.strip().startswith("4*") for line in lines)
    assert "empty union" in table and "scored 0" in table
    contributions = [ev.jaccard[k] / 10 for k in range(10)]
    assert sum(contributions) == pytest.approx(ev.mean)


def test_missing_predictions_are_empty_and_unknown_ids_are_errors(hand_made) -> None:
    pred, truth = hand_made
    ev = evaluate_polygons({"a": pred["a"]}, truth, image_ids=["a", "b"])
    assert ev.fn[0] == pytest.approx(2 + 1)  # all of b's truth is missed
    with pytest.raises(DataError, match="no ground truth"):
        evaluate_polygons(pred, truth, image_ids=["c"])
    with pytest.raises(DataError, match="no image id in common"):
        evaluate_polygons({"x": {}}, truth)


def test_invalid_prediction_polygons_are_measured() -> None:
    from shapely.geometry import Polygon

    bow = Polygon([(0, 0), (2, 2), (2, 0), (0, 2)])  # self-crossing; two lobes of area 1
    truth = {"a": {1: mp((0, 0, 2, 2))}}
    ev = evaluate_polygons({"a": {1: bow}}, truth)
    # Repaired into its two lobes (area 2 in all, inside the truth): J = 2 / 4.
    assert ev.tp[0] == pytest.approx(2.0) and ev.fp[0] == pytest.approx(0.0)
    assert ev.jaccard[0] == pytest.approx(0.5)


def test_mask_counts_and_pixel_area() -> None:
    p = np.zeros((2, 3, 3), bool)
    g = np.zeros((2, 3, 3), bool)
    p[0, :2] = True  # 6 pixels
    g[0, 1:] = True  # 6 pixels, 3 shared
    g[1, 0, 0] = True
    np.testing.assert_array_equal(mask_counts(p, g), [[3, 3, 3], [0, 0, 1]])
    p10, g10 = np.zeros((10, 3, 3), bool), np.zeros((10, 3, 3), bool)
    p10[:2], g10[:2] = p, g
    ev = evaluate_masks({"a": p10}, {"a": g10})
    assert ev.jaccard[0] == pytest.approx(3 / 9)
    # W' = W^2 / (W + 1): a 4x4 raster over a 1 x 1 grid has 3.2 pixels per unit.
    assert pixel_area(4, 4, 1.0, -1.0) == pytest.approx(1 / 3.2**2)


def test_raster_matches_polygon_on_pixel_aligned_boxes() -> None:
    w = h = 100
    xmax, ymin = 1.0, -1.0
    u = (w + 1) / (w * w)  # one pixel in grid units along x (and along -y)
    truth = {"s": {1: mp((10 * u, -30 * u, 30 * u, -10 * u))}}
    pred = {"s": {1: mp((20 * u, -40 * u, 40 * u, -20 * u))}}
    poly = evaluate_polygons(pred, truth)
    ras = raster_jaccard(pred, truth, {"s": (w, h)}, {"s": (xmax, ymin)})
    assert poly.jaccard[0] == pytest.approx(100 / 700)
    assert ras.jaccard[0] == pytest.approx(100 / 700)
    np.testing.assert_allclose(ras.totals, poly.totals, rtol=1e-6)


@pytest.fixture(scope="module")
def real(dstl_lite):
    """The real dataset with its labels read once (repairs silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = open_dataset(dstl_lite)
        ds.labels  # noqa: B018 - read (and repair) once for the module
    return ds


def test_polygon_and_raster_agree_on_real_labels(real) -> None:
    """Prediction = the real labels shifted by (2, -1) pixels, buffered by 1 pixel."""
    ds = real
    ids = ds.labelled_ids[::3]
    truth = {i: ds.scene_labels(i) for i in ids}
    sizes = {i: (ds.scene(i).reference.width, ds.scene(i).reference.height) for i in ids}
    grid = {i: ds.grid_sizes[i] for i in ids}
    pred = {}
    for i in ids:
        px = grid[i][0] / sizes[i][0]
        pred[i] = {
            c: affinity.translate(g, 2 * px, -1 * px).buffer(px, join_style="mitre")
            for c, g in truth[i].items()
        }
    poly = evaluate_polygons(pred, truth)
    ras = raster_jaccard(pred, truth, sizes, grid)
    assert 0.2 < poly.mean < 0.9
    assert abs(ras.mean - poly.mean) <= 0.01 * poly.mean
    # Per class the areas agree to 1% of the union wherever objects are many pixels wide;
    # vehicles (1-3 pixels at this ~1/6 resolution) are dominated by boundary pixels.
    union_p = poly.totals.sum(1)
    union_r = ras.totals.sum(1)
    for k in range(8):
        if union_p[k] > 0:
            assert abs(ras.jaccard[k] - poly.jaccard[k]) <= 0.01, k + 1
            assert union_r[k] == pytest.approx(union_p[k], rel=0.02)


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def files(tmp_path, hand_made) -> tuple[Path, Path]:
    pred, truth = hand_made
    pred_path, truth_path = tmp_path / "pred.csv", tmp_path / "truth.csv.gz"
    write_wkt_csv(pred_path, [(i, c, g) for i, d in pred.items() for c, g in d.items()])
    write_wkt_csv(truth_path, [(i, c, g) for i, d in truth.items() for c, g in d.items()])
    return pred_path, truth_path


def test_cli_json_is_exact(files, capsys) -> None:
    pred, truth = files
    assert main(["evaluate", str(pred), "--truth", str(truth), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["classes"][0] == {
        "class": 1,
        "name": "Buildings",
        "jaccard": pytest.approx(1 / 3),
        "tp": pytest.approx(2.0),
        "fp": pytest.approx(1.0),
        "fn": pytest.approx(3.0),
        "empty": False,
    }
    assert data["mean"] == pytest.approx((1 / 3 + 1 / 3.5 + 1) / 10)
    assert data["images"] == ["a", "b"] and data["method"] == "polygon"


def test_cli_table_with_splits(files, capsys) -> None:
    pred, truth = files
    args = ["evaluate", str(pred), "--truth", str(truth), "--split", "public=a"]
    assert main([*args, "--split", "private=b"]) == 0
    out = capsys.readouterr().out
    assert "public" in out.splitlines()[0] and "private" in out.splitlines()[0]
    assert "public: 1 image(s)" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--split", "oops"], "is not NAME=ID,ID"),
        (["--split", "x=a", "--split", "x=b"], "given twice"),
        (["--split", "x=zz"], "image id zz has no ground truth"),
        (["--raster"], "--raster needs --data"),
        (["--data", "."], "only used with --raster"),
    ],
)
def test_cli_errors(files, capsys, extra, message) -> None:
    pred, truth = files
    assert main(["evaluate", str(pred), "--truth", str(truth), *extra]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_cli_raster_on_real_scenes(real, dstl_lite, tmp_path, capsys) -> None:
    ds = real
    ids = ["6100_2_2", "6120_2_0"]
    truth = {i: ds.scene_labels(i) for i in ids}
    rows_t, rows_p = [], []
    for i in ids:
        px = ds.grid_sizes[i][0] / ds.scene(i).reference.width
        for c, g in truth[i].items():
            rows_t.append((i, c, g))
            rows_p.append((i, c, affinity.translate(g, 1.5 * px, 0)))
    write_wkt_csv(tmp_path / "t.csv", rows_t)
    write_wkt_csv(tmp_path / "p.csv", rows_p)
    base = ["evaluate", str(tmp_path / "p.csv"), "--truth", str(tmp_path / "t.csv"), "--json"]
    assert main(base) == 0
    poly = json.loads(capsys.readouterr().out)
    assert main([*base, "--raster", "--data", str(dstl_lite)]) == 0
    ras = json.loads(capsys.readouterr().out)
    assert ras["method"] == "raster" and poly["method"] == "polygon"
    assert ras["mean"] == pytest.approx(poly["mean"], rel=0.02)
