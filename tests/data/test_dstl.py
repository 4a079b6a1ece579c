from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import tifffile
from shapely.geometry import MultiPolygon, box

from spectraseg.data.dstl import (
    check_image_id,
    format_wkt,
    open_dataset,
    read_grid_sizes,
    read_wkt_csv,
    region_of,
    write_grid_sizes,
    write_wkt_csv,
)
from spectraseg.errors import DataError, SpectrasegWarning


def make_root(tmp_path: Path, ids=("6010_0_0",), products=("RGB", "A")) -> Path:
    """A tiny dataset in the competition layout written by hand (no generator involved)."""
    root = tmp_path / "data"
    (root / "three_band").mkdir(parents=True)
    (root / "sixteen_band").mkdir()
    write_grid_sizes(root / "grid_sizes.csv", {i: (0.009, -0.009) for i in ids})
    rng = np.random.default_rng(0)
    for i in ids:
        if "RGB" in products:
            tifffile.imwrite(
                root / "three_band" / f"{i}.tif",
                rng.integers(0, 2048, (3, 48, 50), dtype=np.uint16),
                planarconfig="separate",
                photometric="rgb",
            )
        if "P" in products:
            tifffile.imwrite(
                root / "sixteen_band" / f"{i}_P.tif", rng.integers(0, 2048, (48, 50), np.uint16)
            )
        if "M" in products:
            tifffile.imwrite(
                root / "sixteen_band" / f"{i}_M.tif",
                rng.integers(0, 2048, (8, 12, 12), np.uint16),
                planarconfig="separate",
                photometric="minisblack",
            )
        if "A" in products:
            tifffile.imwrite(
                root / "sixteen_band" / f"{i}_A.tif",
                rng.integers(0, 16384, (8, 2, 2), np.uint16),
                planarconfig="separate",
                photometric="minisblack",
            )
    rows = [
        (i, c, box(0, -0.001 * c, 0.001 * c, 0) if c < 3 else MultiPolygon())
        for i in ids
        for c in range(1, 11)
    ]
    write_wkt_csv(root / "train_wkt_v4.csv", rows)
    return root


def test_scene_headers_and_reads(tmp_path) -> None:
    root = make_root(tmp_path, products=("RGB", "P", "M", "A"))
    ds = open_dataset(root)
    assert ds.image_ids == ["6010_0_0"]
    scene = ds.scene("6010_0_0")
    assert set(scene.products) == {"RGB", "P", "M", "A"}
    assert scene.info("M").shape == (8, 12, 12)
    assert scene.info("P").shape == (1, 48, 50)
    assert scene.info("RGB").dtype == np.uint16
    assert (scene.xmax, scene.ymin) == (0.009, -0.009)
    full = scene.read("RGB")
    assert full.shape == (3, 48, 50) and full.dtype == np.uint16
    win = scene.read("RGB", (slice(10, 20), slice(5, 9)))
    np.testing.assert_array_equal(win, full[:, 10:20, 5:9])
    assert scene.read("P").shape == (1, 48, 50)
    assert scene.region == "6010"


def test_missing_products_are_fine_until_asked_for(tmp_path) -> None:
    root = make_root(tmp_path, products=("RGB", "A"))
    scene = open_dataset(root).scene("6010_0_0")
    assert scene.has("A") and not scene.has("M")
    with pytest.raises(DataError, match=r"6010_0_0 has no M product .*6010_0_0_M\.tif"):
        scene.read("M")


def test_labels_roundtrip_and_gz(tmp_path) -> None:
    root = make_root(tmp_path)
    labels = open_dataset(root).labels
    assert labels["6010_0_0"][2].area == pytest.approx(0.002 * 0.002)
    assert labels["6010_0_0"][5].is_empty
    gz = tmp_path / "labels.csv.gz"
    write_wkt_csv(gz, [("a_0_0", 1, box(0, -1, 1, 0))])
    with gzip.open(gz, "rt") as f:
        assert f.readline().strip() == "ImageId,ClassType,MultipolygonWKT"
    assert read_wkt_csv(gz)["a_0_0"][1].area == 1.0


def test_invalid_polygons_are_repaired_and_counted(tmp_path) -> None:
    path = tmp_path / "w.csv"
    path.write_text(
        "ImageId,ClassType,MultipolygonWKT\n"
        'x_0_0,1,"MULTIPOLYGON (((0 0, 2 2, 2 0, 0 2, 0 0)))"\n'
        'x_0_0,2,"POLYGON ((0 0, 1 0, 1 1, 0 1, 0 0), '
        '(0.2 0.2, 0.4 0.2, 0.4 0.4, 0.2 0.4, 0.2 0.2))"\n'
        "x_0_0,3,MULTIPOLYGON EMPTY\n"
    )
    with pytest.warns(SpectrasegWarning, match=r"repaired 1 invalid polygon\(s\) of 3"):
        labels = read_wkt_csv(path)
    assert labels["x_0_0"][1].is_valid and labels["x_0_0"][1].area == pytest.approx(2.0)
    holed = labels["x_0_0"][2]
    assert isinstance(holed, MultiPolygon) and len(holed.geoms[0].interiors) == 1
    assert holed.area == pytest.approx(0.96)


def test_real_dstl_lite_opens(dstl_lite) -> None:
    ds = open_dataset(dstl_lite)
    assert len(ds.image_ids) == 20
    for scene in ds.scenes():
        assert set(scene.products) == {"RGB", "A"}
        assert scene.info("RGB").dtype == np.uint8
        assert scene.info("A").dtype == np.uint16
    with pytest.warns(SpectrasegWarning, match="repaired"):
        labels = ds.labels
    assert len(labels) == 20 and all(len(v) == 10 for v in labels.values())
    assert all(g.is_valid for v in labels.values() for g in v.values())
    order = ds.sample_order()
    assert len(order) == 4290 and order[0] == ("6120_2_4", 1)


def test_format_wkt() -> None:
    assert format_wkt(MultiPolygon()) == "MULTIPOLYGON EMPTY"
    assert format_wkt(box(0, 0, 1e-9, 1)).startswith("MULTIPOLYGON (((")
    assert format_wkt(box(0.123456789, 0, 1, 1), decimals=3).count("0.123 ") >= 1


def test_region_of() -> None:
    assert region_of("6010_1_2") == "6010"
    assert region_of("a_b_1_2") == "a_b"
    assert region_of("plain") == "plain"


# ------------------------------------------------------------------ bad input, one clear sentence


@pytest.mark.parametrize("bad", ["../x", "a/b", "a\\b", "..", "", "x..y"])
def test_bad_image_ids_are_refused(bad) -> None:
    with pytest.raises(DataError, match="is not valid: ids may not contain path separators"):
        check_image_id(bad)


def test_missing_root_and_grid(tmp_path) -> None:
    with pytest.raises(DataError, match=r"dataset root .*nope does not exist"):
        open_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty/grid_sizes\.csv does not exist"):
        open_dataset(tmp_path / "empty")


def test_id_absent_from_grid_sizes(tmp_path) -> None:
    root = make_root(tmp_path)
    with pytest.raises(DataError, match=r"image id 6010_9_9 is not in .*grid_sizes\.csv"):
        open_dataset(root).scene("6010_9_9")


def test_truncated_tiff(tmp_path) -> None:
    root = make_root(tmp_path)
    path = root / "three_band" / "6010_0_0.tif"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    ds = open_dataset(root)
    with pytest.raises(DataError, match=r"6010_0_0\.tif is unreadable or truncated"):
        ds.scene("6010_0_0").read("RGB")
    path.write_bytes(b"not a tiff at all")
    with pytest.raises(DataError, match=r"6010_0_0\.tif cannot be read as a raster"):
        open_dataset(root).scene("6010_0_0")


def test_band_count_mismatch(tmp_path) -> None:
    root = make_root(tmp_path)
    tifffile.imwrite(
        root / "sixteen_band" / "6010_0_0_A.tif",
        np.zeros((3, 2, 2), np.uint16),
        planarconfig="separate",
        photometric="minisblack",
    )
    with pytest.raises(DataError, match=r"6010_0_0_A\.tif has 3 band\(s\), but a A product has 8"):
        open_dataset(root).scene("6010_0_0")


def test_non_numeric_dtype(tmp_path) -> None:
    root = make_root(tmp_path)
    tifffile.imwrite(
        root / "three_band" / "6010_0_0.tif",
        np.zeros((3, 4, 4), np.complex64),
        planarconfig="separate",
        photometric="minisblack",
    )
    with pytest.raises(DataError, match=r"6010_0_0\.tif has dtype complex64, expected a numeric"):
        open_dataset(root).scene("6010_0_0")


def test_malformed_wkt(tmp_path) -> None:
    path = tmp_path / "w.csv"
    path.write_text('ImageId,ClassType,MultipolygonWKT\nx_0_0,4,"MULTIPOLYGON (((0 0, 1 1"\n')
    with pytest.raises(DataError, match=r"w\.csv: malformed WKT for image x_0_0 class 4"):
        read_wkt_csv(path)


def test_wrong_columns(tmp_path) -> None:
    path = tmp_path / "w.csv"
    path.write_text("Id,Class,Wkt\nx,1,MULTIPOLYGON EMPTY\n")
    with pytest.raises(DataError, match=r"w\.csv has columns \['Id', 'Class', 'Wkt'\], expected"):
        read_wkt_csv(path)
    grid = tmp_path / "grid_sizes.csv"
    grid.write_text("id,xmax,ymin\n")
    with pytest.raises(DataError, match=r"grid_sizes\.csv has columns .* expected ',Xmax,Ymin'"):
        read_grid_sizes(grid)


def test_bad_class_and_grid_values(tmp_path) -> None:
    path = tmp_path / "w.csv"
    path.write_text("ImageId,ClassType,MultipolygonWKT\nx_0_0,11,MULTIPOLYGON EMPTY\n")
    with pytest.raises(DataError, match=r"line 2 has ClassType 11, expected 1\.\.10"):
        read_wkt_csv(path)
    grid = tmp_path / "grid_sizes.csv"
    grid.write_text(",Xmax,Ymin\na_0_0,abc,-0.009\n")
    with pytest.raises(DataError, match=r"line 2 has a non-numeric Xmax or Ymin"):
        read_grid_sizes(grid)
    grid.write_text(",Xmax,Ymin\n../a,0.009,-0.009\n")
    with pytest.raises(DataError, match=r"'\.\./a' is not valid"):
        read_grid_sizes(grid)


def test_labels_for_unknown_scene(tmp_path) -> None:
    root = make_root(tmp_path)
    write_wkt_csv(root / "train_wkt_v4.csv", [("7000_0_0", 1, MultiPolygon())])
    with pytest.raises(DataError, match=r"image id 7000_0_0 is not in .*grid_sizes\.csv"):
        _ = open_dataset(root).labels


def test_non_polygon_wkt(tmp_path) -> None:
    path = tmp_path / "w.csv"
    path.write_text('ImageId,ClassType,MultipolygonWKT\nx_0_0,1,"LINESTRING (0 0, 1 1)"\n')
    with pytest.raises(DataError, match="class 1 is a LineString, expected polygons"):
        read_wkt_csv(path)
