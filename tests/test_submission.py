"""Submission writing and checking."""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import pytest
import shapely
from shapely.geometry import MultiPolygon, Polygon, box

from spectraseg.cli import main
from spectraseg.data.dstl import read_predictions, read_sample_order, read_wkt_rows, write_wkt_csv
from spectraseg.errors import DataError
from spectraseg.submission import check_submission, write_submission

EMPTY_WKT = "MULTIPOLYGON EMPTY"


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    rows = [(i, c, "MULTIPOLYGON EMPTY") for i in ("6120_2_4", "6010_1_2") for c in range(1, 11)]
    path = tmp_path / "sample.csv"
    write_wkt_csv(path, rows)
    return path


def square(x: float, y: float, s: float = 0.001) -> MultiPolygon:
    return MultiPolygon([box(x, y - s, x + s, y)])


def test_rows_follow_the_sample_with_empty_where_not_predicted(sample, tmp_path) -> None:
    pred = {"6010_1_2": {3: square(0.001, -0.001)}, "6120_2_4": {10: square(0.002, -0.002)}}
    summary = write_submission(pred, sample, tmp_path / "sub.csv")
    rows = read_wkt_rows(tmp_path / "sub.csv")
    assert [(i, c) for i, c, _ in rows] == read_sample_order(sample)
    got = {(i, c): w for i, c, w in rows}
    assert got["6010_1_2", 3].startswith("MULTIPOLYGON (((")
    assert got["6120_2_4", 10].startswith("MULTIPOLYGON (((")
    assert sum(w != EMPTY_WKT for w in got.values()) == 2
    assert summary.rows == 20 and summary.nonempty == 2 and summary.scenes_predicted == 2
    assert shapely.from_wkt(got["6010_1_2", 3]).equals(square(0.001, -0.001))
    assert check_submission(tmp_path / "sub.csv", sample) == []


def test_gz_output_and_prediction_directory(sample, tmp_path) -> None:
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    write_wkt_csv(pred_dir / "predictions.csv", [("6010_1_2", 5, square(0.003, -0.003))])
    assert (
        main(
            ["submit", str(pred_dir), "--sample", str(sample), "--out", str(tmp_path / "s.csv.gz")]
        )
        == 0
    )
    with gzip.open(tmp_path / "s.csv.gz", "rt") as f:
        text = f.read()
    assert text.startswith("ImageId,ClassType,MultipolygonWKT\n6120_2_4,1,MULTIPOLYGON EMPTY\n")
    assert '6010_1_2,5,"MULTIPOLYGON (((' in text
    assert main(["submit", "--check", str(tmp_path / "s.csv.gz"), "--sample", str(sample)]) == 0


def test_invalid_predictions_are_repaired_and_extra_scenes_dropped(sample, tmp_path) -> None:
    bow = Polygon([(0, 0), (0.002, -0.002), (0.002, 0), (0, -0.002)])  # self-crossing
    pred = {"6010_1_2": {1: bow}, "9999_0_0": {1: square(0.001, -0.001)}}
    with pytest.warns(UserWarning, match="1 predicted scene"):
        s = write_submission(pred, sample, tmp_path / "sub.csv")
    assert s.repaired == 1 and s.not_in_sample == ("9999_0_0",)
    got = {(i, c): w for i, c, w in read_wkt_rows(tmp_path / "sub.csv")}
    fixed = shapely.from_wkt(got["6010_1_2", 1])
    assert fixed.is_valid and fixed.area == pytest.approx(2 * 0.000001)  # both lobes kept
    assert check_submission(tmp_path / "sub.csv", sample) == []


def test_bad_prediction_files_get_clear_errors(sample, tmp_path, capsys) -> None:
    out = str(tmp_path / "sub.csv")

    def fails(path: Path, match: str) -> None:
        with pytest.raises(DataError, match=match):
            read_predictions(path)
        assert main(["submit", str(path), "--sample", str(sample), "--out", out]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("spectraseg submit: error: ")
        assert not Path(out).exists()

    fails(tmp_path / "nope.csv", "does not exist")
    (tmp_path / "emptydir").mkdir()
    fails(tmp_path / "emptydir", "has no predictions.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("Image,Class,WKT\n6010_1_2,1,MULTIPOLYGON EMPTY\n")
    fails(bad, "has columns")
    bad.write_text('ImageId,ClassType,MultipolygonWKT\n6010_1_2,1,"POLYGON ((0 0, 1"\n')
    fails(bad, "malformed WKT for image 6010_1_2 class 1")
    bad.write_text("ImageId,ClassType,MultipolygonWKT\n6010_1_2,11,MULTIPOLYGON EMPTY\n")
    fails(bad, "ClassType 11")
    bad.write_text('ImageId,ClassType,MultipolygonWKT\n6010_1_2,2,"LINESTRING (0 0, 1 1)"\n')
    fails(bad, "is a LineString, expected polygons")
    bad.write_text(
        "ImageId,ClassType,MultipolygonWKT\n6010_1_2,2,MULTIPOLYGON EMPTY\n"
        "6010_1_2,2,MULTIPOLYGON EMPTY\n"
    )
    fails(bad, "class 2 appears twice")


def test_failed_write_keeps_the_old_submission(tmp_path, sample) -> None:
    out = tmp_path / "sub.csv"
    out.write_text("old")
    with pytest.raises(DataError):
        write_submission({}, tmp_path / "missing_sample.csv", out)
    assert out.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample.csv", "sub.csv"]


def test_check_lists_every_problem(sample, tmp_path, capsys) -> None:
    order = read_sample_order(sample)
    rows = [[i, str(c), EMPTY_WKT] for i, c in order]
    rows[0], rows[1] = rows[1], rows[0]  # two rows out of order
    rows[2][2] = "POLYGON ((0 0, 1 1, 1 0, 0 1, 0 0))"  # self-intersecting
    rows[3][2] = "POLYGON ((0 0, 1"  # malformed
    rows[4][1] = "12"
    rows[5][2] = "POINT (1 1)"
    del rows[-2:]  # missing at the end
    path = tmp_path / "sub.csv"
    lines = ["ImageId,ClassType,MultipolygonWKT"] + [
        f'{i},{c},"{w}"' if "," in w else f"{i},{c},{w}" for i, c, w in rows
    ]
    path.write_text("\n".join(lines) + "\n")
    problems = check_submission(path, sample)
    text = "\n".join(problems)
    assert f"{path}:2: row is 6120_2_4,2 but the sample has 6120_2_4,1 here" in text
    assert f"{path}:3: row is 6120_2_4,1 but the sample has 6120_2_4,2 here" in text
    assert f"{path}:4: image 6120_2_4 class 3: invalid polygon (Self-intersection" in text
    assert f"{path}:5: image 6120_2_4 class 4: malformed WKT" in text
    assert f"{path}:6: ClassType 12 is outside 1..10" in text
    assert f"{path}:7: image 6120_2_4 class 6: WKT is a Point" in text
    assert "2 row(s) missing at the end, from 6010_1_2,9" in text
    assert main(["submit", "--check", str(path), "--sample", str(sample)]) == 1
    out = capsys.readouterr()
    assert out.out.strip().splitlines() == problems
    assert f"{len(problems)} problem(s)" in out.err


def test_check_header_duplicates_and_extra_rows(sample, tmp_path) -> None:
    order = read_sample_order(sample)
    lines = ["Id,Class,WKT"] + [f"{i},{c},{EMPTY_WKT}" for i, c in order]
    lines.append(f"{order[0][0]},{order[0][1]},{EMPTY_WKT}")
    path = tmp_path / "sub.csv"
    path.write_text("\n".join(lines) + "\n")
    problems = check_submission(path, sample)
    assert problems[0].startswith(f"{path}:1: header is")
    assert any("repeats line 2" in p for p in problems)
    assert any("extra row 6120_2_4,1 beyond the sample" in p for p in problems)
    assert check_submission(tmp_path / "none.csv", sample) == [
        f"{tmp_path / 'none.csv'}: file does not exist"
    ]


def test_cli_argument_errors(sample, capsys) -> None:
    assert main(["submit", "--sample", str(sample)]) == 1
    assert "give PRED and --out" in capsys.readouterr().err
    assert main(["submit", "x", "--check", "y", "--sample", str(sample)]) == 1
    assert "--check takes only FILE" in capsys.readouterr().err


def test_real_sample_order_and_format(dstl_lite, tmp_path) -> None:
    sample = dstl_lite / "sample_submission.csv"
    order = read_sample_order(sample)
    assert len(order) == 4290
    # Predict a square for the first class of three scenes of the sample.
    ids = [order[0][0], order[2000][0], order[-1][0]]
    pred = {i: {1: square(0.001, -0.001), 7: square(0.004, -0.004, 0.0005)} for i in ids}
    out = tmp_path / "submission.csv.gz"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every predicted scene is in the sample
        s = write_submission(pred, sample, out)
    assert s.rows == 4290 and s.nonempty == 6 and s.scenes_predicted == 3
    rows = read_wkt_rows(out)
    assert [(i, c) for i, c, _ in rows] == order
    assert sum(w != EMPTY_WKT for _, _, w in rows) == 6
    with gzip.open(out, "rt") as f:
        header = f.readline()
    assert header == "ImageId,ClassType,MultipolygonWKT\n"
    assert check_submission(out, sample) == []
    # The real sample itself uses POLYGON rows: valid as a submission too.
    assert check_submission(sample, sample) == []
