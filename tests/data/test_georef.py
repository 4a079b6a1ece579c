"""Georeferenced scenes from a dataset description, on the real SpaceNet files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import rasterio.features
import shapely
from affine import Affine
from rasterio.warp import Resampling, reproject

from spectraseg.align.cache import open_cache
from spectraseg.align.fusion import align_dataset
from spectraseg.align.georef import estimate_georef, fuse_window, grid_shifts
from spectraseg.align.registration import ShiftRow, resolve_shifts
from spectraseg.data import georef
from spectraseg.data.description import read_description
from spectraseg.data.inspection import summarize
from spectraseg.errors import DataError
from spectraseg.evaluation.levels import threshold_masks

MINIMAL = """
[classes]
building = {{ value = 1, color = "#e41a1c" }}
[[scenes]]
id = "sample"
bands = {{ pan = "{raster}" }}
labels = "{labels}"   # every feature is class 1 when no attribute is named
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def sample(spacenet: Path, tmp_path: Path) -> Path:
    """The issue's minimal description of the SpaceNet sample, paths relative to it."""
    for name in ("sample_geotiff.tif", "geotiff_labels.geojson"):
        (tmp_path / name).symlink_to(spacenet / name)
    text = MINIMAL.format(raster="sample_geotiff.tif", labels="geotiff_labels.geojson")
    return _write(tmp_path / "sample.toml", text)


def _two(pan: Path, ms: Path, image_id: str = "pair1") -> str:
    """A one-class description of a pan file and a 4-band MS file."""
    return f"""
[classes]
building = {{ value = 1 }}
[[scenes]]
id = "{image_id}"
[scenes.bands]
pan = "{pan}"
ms = {{ file = "{ms}", names = ["B", "G", "R", "N"] }}
"""


def _pair(spacenet: Path, tmp_path: Path, ms: Path | None = None) -> Path:
    text = _two(spacenet / "pan1.tif", ms or spacenet / "ms1.tif")
    return _write(tmp_path / "pair.toml", text)


TINY = (
    "train.epochs=0",
    "model.width=8",
    "model.depth=2",
    "train.patch_size=64",
    "predict.tile=128",
)
"""A model and tiles small enough for a training test."""


def _train(run: Path, cache: Path, steps: int, *sets: str, cli: tuple[str, ...] = ()) -> int:
    """``spectraseg train`` of a tiny model on ``cache`` for ``steps`` steps (one epoch),
    with the config overrides ``sets`` and the extra arguments ``cli``; its exit status."""
    from spectraseg.cli import main

    every = [f'data.cache="{cache}"', f"train.steps={steps}", f"train.steps_per_epoch={steps}"]
    overrides = [a for s in (*every, *TINY, *sets) for a in ("--set", s)]
    return main(["train", *cli, "--out", str(run), "--quiet", *overrides])


def _scene(path: Path) -> georef.GeoScene:
    ds = georef.GeoDataset(path)
    return ds.scene(ds.image_ids[0])


def _shift(scene: georef.GeoScene) -> ShiftRow:
    (row,) = resolve_shifts(estimate_georef(scene))
    return row


def test_sample_labels_rasterise_like_rasterio(sample: Path, spacenet: Path) -> None:
    desc = read_description(sample)
    grid = _scene(sample).grid
    with rasterio.open(spacenet / "sample_geotiff.tif") as src:
        assert grid.crs == src.crs and grid.transform == src.transform
        assert grid.shape == src.shape
        transform, shape = src.transform, src.shape
    labels = georef.scene_labels(desc, desc.scenes[0], grid.crs)
    assert list(labels) == [1] and len(labels[1]) == 43
    mask = georef.rasterize_labels(labels, grid, 1)
    _, _, wkb, _ = pyogrio.raw.read(spacenet / "geotiff_labels.geojson")
    expected = rasterio.features.rasterize(
        [(g, 1) for g in shapely.from_wkb(wkb)], out_shape=shape, transform=transform
    )
    assert mask.shape == (1, *shape) and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask[0], expected)
    assert 30_000 < int(mask.sum()) < 40_000
    # Strip by strip (STRtree per strip) gives the same pixels whatever the strip height.
    for rows in (1, 7, 128, 899):
        np.testing.assert_array_equal(georef.rasterize_labels(labels, grid, 1, rows=rows), mask)


def test_labels_in_another_crs_rasterise_to_the_same_mask(
    sample: Path, spacenet: Path, tmp_path: Path
) -> None:
    """Labels written in EPSG:4326 are reprojected to the raster's UTM grid on read."""
    _, _, wkb, _ = pyogrio.raw.read(spacenet / "geotiff_labels.geojson")
    geoms = shapely.from_wkb(wkb)
    with rasterio.open(spacenet / "sample_geotiff.tif") as src:
        crs = src.crs
    moved = rasterio.warp.transform_geom(crs, "EPSG:4326", list(geoms))
    feats = [{"type": "Feature", "properties": {}, "geometry": g} for g in moved]
    wgs = tmp_path / "labels_4326.geojson"
    wgs.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    desc = read_description(sample)
    grid = _scene(sample).grid
    same = georef.rasterize_labels(georef.scene_labels(desc, desc.scenes[0], grid.crs), grid, 1)
    source = georef.LabelSource(wgs)
    other = georef.rasterize_labels(
        georef.read_labels(source, desc.classes, None, grid.crs), grid, 1
    )
    differ = same[0] != other[0]
    # Only boundary pixels may differ (the round trip moves vertices by micrometres).
    edges = rasterio.features.rasterize(
        [(g.boundary.buffer(0.5), 1) for g in geoms], out_shape=grid.shape,
        transform=grid.transform, all_touched=True,
    )  # fmt: skip
    assert not np.any(differ & (edges == 0))
    assert differ.sum() < 0.001 * same.sum()


def test_pair_is_fused_on_the_pan_grid_where_reproject_puts_ms(
    spacenet: Path, tmp_path: Path
) -> None:
    scene = _scene(_pair(spacenet, tmp_path))
    grid = scene.grid
    with rasterio.open(spacenet / "pan1.tif") as pan:
        assert (grid.transform, grid.shape, grid.crs) == (pan.transform, pan.shape, pan.crs)
    stack, valid = fuse_window(scene, {})
    assert scene.channels == ["P", "M2", "M3", "M5", "M7"]
    assert stack.shape == (5, 600, 600) and stack.dtype == np.float32 and valid.all()
    expected = np.zeros((4, *grid.shape), np.float32)
    with rasterio.open(spacenet / "ms1.tif") as ms:
        reproject(
            rasterio.band(ms, [1, 2, 3, 4]), expected, dst_transform=grid.transform,
            dst_crs=grid.crs, resampling=Resampling.cubic,
        )  # fmt: skip
    np.testing.assert_allclose(stack[1:], expected, rtol=1e-6, atol=1e-3)


def test_registration_recovers_a_shift_injected_into_the_ms_transform(
    spacenet: Path, tmp_path: Path
) -> None:
    scene = _scene(_pair(spacenet, tmp_path))
    before = _shift(scene)
    assert before.product == "M" and before.method == "ecc"
    with rasterio.open(spacenet / "ms1.tif") as src:
        profile, pixels = src.profile, src.read()
    injected = (0.4, -0.3)
    profile["transform"] = profile["transform"] @ Affine.translation(*injected)
    moved = tmp_path / "ms1_shifted.tif"
    with rasterio.open(moved, "w", **profile) as dst:
        dst.write(pixels)
    scene2 = _scene(_pair(spacenet, tmp_path, moved))
    assert scene2.grid == scene.grid
    after = _shift(scene2)
    assert after.dx - before.dx == pytest.approx(injected[0], abs=0.1)
    assert after.dy - before.dy == pytest.approx(injected[1], abs=0.1)
    # Each corrected by its own estimate, both files fuse to the same stack.
    a, _ = fuse_window(scene, grid_shifts([before], scene))
    b, valid = fuse_window(scene2, grid_shifts([after], scene2))
    inner = np.s_[:, 8:-8, 8:-8]
    assert valid[8:-8, 8:-8].all()
    err = np.abs(a[inner] - b[inner]).mean() / np.abs(a[1:]).mean()
    assert err < 0.01


def test_windowed_read_equals_the_same_window_of_a_whole_read(
    spacenet: Path, tmp_path: Path
) -> None:
    scene = _scene(_pair(spacenet, tmp_path))
    whole, _ = fuse_window(scene, {"M": (0.3, -0.2)})
    win = rasterio.windows.Window(col_off=150, row_off=40, width=200, height=310)
    part, _ = fuse_window(scene, {"M": (0.3, -0.2)}, window=win)
    np.testing.assert_allclose(part, whole[:, 40:350, 150:350], atol=1e-3)


def test_align_writes_a_georeferenced_cache(spacenet: Path, tmp_path: Path) -> None:
    desc = _pair(spacenet, tmp_path)
    report = align_dataset(desc, tmp_path / "cache", progress=False)
    assert report.ok and [s.status for s in report.scenes] == ["aligned"]
    (row,) = report.shifts
    assert row.product == "M" and row.method == "ecc"
    assert row.dx == pytest.approx(0.6, abs=0.15) and row.dy == pytest.approx(0.3, abs=0.15)
    cache = open_cache(tmp_path / "cache")
    entry = cache.entry("pair1")
    scene = _scene(desc)
    assert entry["channels"] == ["P", "M2", "M3", "M5", "M7"] and entry["reference"] == "P"
    assert rasterio.crs.CRS.from_wkt(entry["crs"]) == scene.grid.crs
    assert entry["transform"] == list(scene.grid.transform)[:6]
    stack = np.asarray(cache.load("pair1"))
    fused, valid = fuse_window(scene, grid_shifts([row], scene))
    expected = np.clip(np.rint(fused), 0, 65535)
    np.testing.assert_array_equal(stack[:, valid], expected[:, valid])
    # The MS shift pushes the last pan column off the MS footprint: flagged and filled.
    nodata = np.load(tmp_path / "cache" / "nodata" / "pair1.npy")
    np.testing.assert_array_equal(nodata, ~valid)
    assert nodata[:, -1].all() and not nodata[:, :-2].any()
    means = np.rint(stack[:, valid].mean(axis=1))
    np.testing.assert_array_equal(stack[:, nodata][:, 0], means)
    again = align_dataset(desc, tmp_path / "cache", progress=False)
    assert [s.status for s in again.scenes] == ["skipped"]


def test_inspect_summarises_a_description(sample: Path) -> None:
    s = summarize(sample)
    (scene,) = s["scenes"]
    assert scene["grid"] == {"crs": "EPSG:32616", "height": 900, "width": 900, "res": [0.5, 0.5]}
    assert scene["products"]["P"]["coverage"] == 1.0
    assert s["labelled"] == 1 and s["class_names"] == {"1": "building"}
    assert 0.03 < s["class_share"]["1"] < 0.06


# --------------------------------------------------------------------------- bad input


def _bad(tmp_path: Path, text: str) -> str:
    path = _write(tmp_path / "bad.toml", text)
    with pytest.raises(DataError) as err:
        desc = read_description(path)
        for spec in desc.scenes:
            infos = georef.open_groups(spec)
            grid = georef.target_grid(infos, desc.crs, desc.resolution)
            georef.scene_labels(desc, spec, grid.crs)
    return str(err.value)


def _ms_only(ms: Path, names: str | None) -> str:
    """A one-class description of one scene holding only an MS file (``names``: TOML list)."""
    group = f'"{ms}"' if names is None else f'{{ file = "{ms}", names = {names} }}'
    return f'[classes]\nb = {{ value = 1 }}\n[[scenes]]\nid = "x"\nbands = {{ ms = {group} }}\n'


def test_band_name_listed_twice(spacenet: Path, tmp_path: Path) -> None:
    msg = _bad(tmp_path, _ms_only(spacenet / "ms1.tif", '["B", "G", "G", "N"]'))
    assert "bad.toml" in msg and "lists band 'G' twice" in msg


def test_fewer_bands_than_described(spacenet: Path, tmp_path: Path) -> None:
    msg = _bad(tmp_path, _ms_only(spacenet / "ms1.tif", '["C", "B", "G", "Y", "R"]'))
    assert "ms1.tif has 4 band(s), fewer than the 5" in msg


def test_group_without_names_needs_the_full_band_count(spacenet: Path, tmp_path: Path) -> None:
    msg = _bad(tmp_path, _ms_only(spacenet / "ms1.tif", None))
    assert "ms1.tif has 4 band(s)" in msg and "names = [...]" in msg


def test_files_that_do_not_overlap(spacenet: Path, tmp_path: Path) -> None:
    msg = _bad(tmp_path, _two(spacenet / "pan1.tif", spacenet / "ms2.tif"))
    assert "ms2.tif does not overlap" in msg and "pan1.tif" in msg


def test_raster_without_crs_mixed_with_georeferenced(spacenet: Path, tmp_path: Path) -> None:
    with rasterio.open(spacenet / "ms1.tif") as src:
        profile, pixels = src.profile, src.read()
    profile.pop("crs")
    bare = tmp_path / "no_crs.tif"
    with rasterio.open(bare, "w", **profile) as dst:
        dst.write(pixels)
    msg = _bad(tmp_path, _two(spacenet / "pan1.tif", bare))
    assert "no_crs.tif has no CRS" in msg


def test_class_value_missing_from_schema(spacenet: Path, tmp_path: Path) -> None:
    msg = _bad(tmp_path, f"""
label_attribute = "building"
[classes]
house = {{ value = "house" }}
[[scenes]]
id = "x"
bands = {{ pan = "{spacenet / "sample_geotiff.tif"}" }}
labels = "{spacenet / "geotiff_labels.geojson"}"
""")  # fmt: skip
    assert "geotiff_labels.geojson: feature 0 has building = 'yes'" in msg
    assert "['house']" in msg


def test_label_crs_that_cannot_be_transformed(spacenet: Path, tmp_path: Path) -> None:
    """A layer in a CRS GDAL can read but not transform (a local engineering CRS)."""
    _, _, wkb, _ = pyogrio.raw.read(spacenet / "geotiff_labels.geojson")
    local = 'LOCAL_CS["site grid",UNIT["metre",1],AXIS["X",EAST],AXIS["Y",NORTH]]'
    labels = tmp_path / "local.gpkg"
    pyogrio.raw.write(
        labels, wkb, geometry_type="Polygon", field_data=[], fields=[], crs=local,
        driver="GPKG",
    )  # fmt: skip
    msg = _bad(tmp_path, f"""
[classes]
b = {{ value = 1 }}
[[scenes]]
id = "x"
bands = {{ pan = "{spacenet / "sample_geotiff.tif"}" }}
labels = "{labels}"
""")  # fmt: skip
    assert "local.gpkg: its CRS" in msg and "cannot be transformed" in msg


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[classes]\n", "[classes] must name at least one class"),
        ("[classes]\na = { value = 2 }\n[[scenes]]\nid='x'\nbands={pan='p.tif'}\n",
         "needs a class with value = 1"),
        ("[classes]\na = { value = 1, colour = 'red' }\n", "classes.a.colour is not a known key"),
        ("[classes]\na = { value = 1 }\n[[scenes]]\nid='x'\nbands={nir='p.tif'}\n",
         "scenes[0].bands.nir is not a band group"),
        ("[classes]\na = { value = 1 }\n[[scenes]]\nid='x'\nbands={pan='missing.tif'}\n",
         "missing.tif, which does not exist"),
        ("[classes]\na = 1 = 2\n", "is not a readable TOML file"),
    ],
)  # fmt: skip
def test_description_errors_name_the_key(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path / "d.toml", text)
    with pytest.raises(DataError, match=None) as err:
        read_description(path)
    assert str(err.value).startswith(str(path)) and expected in str(err.value)


def test_one_class_schema_aligns_builds_masks_and_trains(
    sample: Path, spacenet: Path, tmp_path: Path
) -> None:
    """The issue's minimal description: align, masks and a few training steps give a model
    with one output channel whose checkpoint carries the schema."""
    from spectraseg.align.masks import build_masks, open_mask
    from spectraseg.cli import main
    from spectraseg.runs import load_checkpoint, load_model

    cache = tmp_path / "cache"
    assert main(["align", str(sample), "--cache", str(cache), "--workers", "0", "--quiet"]) == 0
    opened = open_cache(cache)
    assert opened.schema == read_description(sample).classes and len(opened.schema) == 1
    build_masks(opened, sample, progress=False)
    mask = open_mask(opened, "sample", (900, 900))
    with rasterio.open(spacenet / "sample_geotiff.tif") as src:
        _, _, wkb, _ = pyogrio.raw.read(spacenet / "geotiff_labels.geojson")
        expected = rasterio.features.rasterize(
            [(g, 1) for g in shapely.from_wkb(wkb)], out_shape=src.shape, transform=src.transform
        )
    np.testing.assert_array_equal(mask[0], expected)
    run = tmp_path / "run"
    assert _train(run, cache, 3, f'data.root="{sample}"', "data.val_fraction=0") == 0
    ckpt = load_checkpoint(run / "checkpoints" / "best.pt")
    assert ckpt.schema.names == ["building"] and ckpt.step == 3
    model, _, _ = load_model(run)
    assert model.num_classes == 1
    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert header.endswith(",val_jaccard_1")
    assert json.loads((run / "metrics.json").read_text())["classes"] == ["building"]


def test_a_dstl_cache_refuses_a_description(sample: Path, dstl_lite: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    align_dataset(dstl_lite, cache, image_ids=["6010_1_2"], progress=False)
    with pytest.raises(DataError, match=r"holds scenes of the classes \['Buildings'"):
        align_dataset(sample, cache, progress=False)


def test_one_class_run_validates_and_names_its_class(
    spacenet: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Validation of a one-class run: the tiled prediction has the model's one channel and
    the summary names the schema's class."""
    from spectraseg.cli import main

    scenes = "".join(
        f'[[scenes]]\nid = "{i}"\nbands = {{ pan = "{spacenet / "sample_geotiff.tif"}" }}\n'
        f'labels = "{spacenet / "geotiff_labels.geojson"}"\n'
        for i in ("a_0_0", "b_0_0")
    )
    desc = _write(tmp_path / "two.toml", "[classes]\nhouse = { value = 1 }\n" + scenes)
    cache, run = tmp_path / "cache", tmp_path / "run"
    assert main(["align", str(desc), "--cache", str(cache), "--workers", "0", "--quiet"]) == 0
    assert _train(run, cache, 2, f'data.root="{desc}"', 'data.val_scenes=["b_0_0"]') == 0
    row = json.loads((run / "metrics.json").read_text())["epochs"][-1]
    assert len(row["val_jaccard"]) == 1 and len(row["val_thresholds_tuned"]) == 1
    assert 0.0 <= row["val_mean"] <= 1.0

    # Predict the description: a GeoPackage per scene in the raster's CRS, whose exact
    # outlines (tolerance 0) rasterise back to the thresholded probabilities; where the
    # input has no data (a block flagged in b_0_0's cache), nothing is predicted.
    hole = np.zeros((900, 900), dtype=bool)
    hole[100:300, 200:500] = True
    (cache / "nodata").mkdir()
    np.save(cache / "nodata" / "b_0_0.npy", hole)
    pred = tmp_path / "pred"
    args = ["predict", str(desc), "--run", str(run), "--out", str(pred), "--workers", "0"]
    assert main([*args, "--tolerance", "0", "--quiet"]) == 0
    doc = json.loads((pred / "predict.json").read_text())
    assert doc["classes"] == ["house"] and doc["predictions"] is None
    (threshold,) = doc["thresholds"].values()
    with rasterio.open(spacenet / "sample_geotiff.tif") as src:
        crs, transform, shape, bounds = src.crs, src.transform, src.shape, src.bounds
    for image_id in ("a_0_0", "b_0_0"):
        gpkg = pred / image_id / "polygons.gpkg"
        info = pyogrio.read_info(gpkg, layer="polygons")
        assert rasterio.crs.CRS.from_user_input(info["crs"]) == crs
        assert list(info["fields"]) == ["class", "area"]
        _, _, wkb, (names, areas) = pyogrio.raw.read(gpkg, layer="polygons")
        geoms = shapely.from_wkb(wkb)
        assert set(names) <= {"house"} and shapely.is_valid(geoms).all()
        np.testing.assert_allclose(areas, shapely.area(geoms))
        if len(geoms):
            left, bottom, right, top = shapely.total_bounds(geoms)
            assert bounds.left <= left and right <= bounds.right
            assert bounds.bottom <= bottom and top <= bounds.top
        levels = _raster(pred / image_id / "probs.tif", crs, transform)
        mask = threshold_masks(levels, {1: threshold})[0]
        classes = _raster(pred / image_id / "classes.tif", crs, transform)[0]
        np.testing.assert_array_equal(classes == 1, mask)
        drawn = rasterio.features.rasterize(
            [(g, 1) for g in geoms], out_shape=shape, transform=transform
        ) if len(geoms) else np.zeros(shape, np.uint8)  # fmt: skip
        np.testing.assert_array_equal(drawn.astype(bool), mask)
        if image_id == "b_0_0":
            assert not levels[:, hole].any() and not mask[hole].any()
            assert (classes[hole] == 255).all() and (classes[~hole] != 255).all()
        assert not (pred / image_id / ".strips").exists()

    # The run as one bundle file predicts the same probabilities and polygons.
    bundle = tmp_path / "model.spectraseg"
    assert main(["export", str(run), "--out", str(bundle)]) == 0
    again = tmp_path / "again"
    argv = ["predict", str(desc), "--model", str(bundle), "--out", str(again), "--workers", "0"]
    assert main([*argv, "--tolerance", "0", "--quiet"]) == 0
    assert json.loads((again / "predict.json").read_text())["thresholds"] == doc["thresholds"]
    for image_id in ("a_0_0", "b_0_0"):
        name = f"{image_id}/probs.tif"
        np.testing.assert_array_equal(_raster(again / name), _raster(pred / name))
        _, _, wkb_a, _ = pyogrio.raw.read(pred / image_id / "polygons.gpkg")
        _, _, wkb_b, _ = pyogrio.raw.read(again / image_id / "polygons.gpkg")
        assert list(wkb_a) == list(wkb_b)
    # Unpacked once: the same bundle again leaves the unpacked model's files untouched (a
    # killed prediction resumes against unchanged checkpoint times).
    best = again / ".model" / "checkpoints" / "best.pt"
    before = best.stat().st_mtime_ns
    assert main([*argv, "--tolerance", "0", "--quiet", "--images", "a_0_0"]) == 0
    assert best.stat().st_mtime_ns == before
    # A scene resampled to 1 m pixels, twice the training resolution, is predicted with a
    # warning naming both (the bundle keeps the training resolution).
    coarse = _write(tmp_path / "coarse.toml", "resolution = 1.0\n" + desc.read_text())
    argv = ["predict", str(coarse), "--model", str(bundle), "--out", str(tmp_path / "p2")]
    capsys.readouterr()
    assert main([*argv, "--workers", "0", "--images", "a_0_0", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "warning: scene a_0_0 has 1-unit pixels but the model was trained on 0.5" in err
    with pytest.raises(DataError, match="is not a spectraseg model bundle"):
        from spectraseg.bundle import read_bundle

        torch_file = tmp_path / "other.pt"
        import torch

        torch.save({"weights": torch.zeros(1)}, torch_file)
        read_bundle(torch_file)


def _raster(path: Path, crs: object = None, transform: Affine | None = None) -> np.ndarray:
    """A prediction raster's bands, after checking it is a valid COG on the scene's grid."""
    from rio_cogeo.cogeo import cog_validate

    valid, errors, _ = cog_validate(str(path), quiet=True)
    assert valid, errors
    with rasterio.open(path) as src:
        if crs is not None:
            assert src.crs == crs and src.transform.almost_equals(transform)
        return src.read()


def test_evaluate_scores_geopackages_against_vector_truth(
    sample: Path, spacenet: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exact areas in map units: the labels themselves score 1; half of them (the rest
    missed) score area(half) / area(all); the same half written in EPSG:4326 is reprojected
    to the scene's CRS and scores the same within the round trip's error."""
    from spectraseg.evaluation.metrics import evaluate_description
    from spectraseg.inference.outputs import write_gpkg

    _, _, wkb, _ = pyogrio.raw.read(spacenet / "geotiff_labels.geojson")
    geoms = shapely.from_wkb(wkb)
    with rasterio.open(spacenet / "sample_geotiff.tif") as src:
        crs = src.crs
    pred = tmp_path / "pred"
    whole = shapely.union_all(geoms)

    def write(parts: np.ndarray, to: str | None = None) -> None:
        if to is not None:
            parts = np.array([shapely.geometry.shape(g) for g in
                              rasterio.warp.transform_geom(crs, to, list(parts))])  # fmt: skip
        mp = shapely.MultiPolygon(list(shapely.get_parts(parts)))
        write_gpkg(pred / "sample" / "polygons.gpkg", {1: mp}, ["building"], to or crs.to_wkt())

    write(geoms)
    ev = evaluate_description(pred, sample)
    assert ev.names == ("building",) and ev.units == "metre^2" and ev.image_ids == ("sample",)
    assert ev.mean == pytest.approx(1.0, abs=1e-12)
    assert ev.tp[0] == pytest.approx(whole.area)
    half = geoms[::2]
    expected = shapely.union_all(half).area / whole.area
    write(half)
    assert evaluate_description(pred, sample).mean == pytest.approx(expected, rel=1e-9)
    write(half, "EPSG:4326")
    assert evaluate_description(pred, sample).mean == pytest.approx(expected, rel=1e-6)
    from spectraseg.cli import main

    capsys.readouterr()
    assert main(["evaluate", str(pred), "--truth", str(sample), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["classes"][0]["name"] == "building" and doc["units"] == "metre^2"
    assert doc["mean"] == pytest.approx(expected, rel=1e-6)


def test_nodata_pixels_are_flagged_filled_and_left_out_of_statistics(
    spacenet: Path, tmp_path: Path
) -> None:
    """A block of MS nodata: every channel of those pan pixels is flagged in the cache's
    nodata mask, holds the channel's mean, and is left out of the scene's statistics."""
    from spectraseg.features.normalization import compute_stats

    with rasterio.open(spacenet / "ms1.tif") as src:
        profile, pixels = src.profile, src.read()
    pixels[:, 100:150, 60:120] = -1.0
    profile["nodata"] = -1.0
    holed = tmp_path / "ms_holed.tif"
    with rasterio.open(holed, "w", **profile) as dst:
        dst.write(pixels)
    desc = _pair(spacenet, tmp_path, holed)
    report = align_dataset(desc, tmp_path / "cache", progress=False)
    assert report.ok
    cache = open_cache(tmp_path / "cache")
    nodata = cache.nodata("pair1")
    assert nodata is not None
    # The hole, on the pan grid (2 px per MS px), widened by the cubic kernel and the shift;
    # the shift (about +0.6, +0.3 MS px) also pushes the last row and column off the MS file.
    assert nodata[204:296, 124:236].all()
    assert not nodata[:190, :-1].any() and not nodata[310:-1, :-1].any()
    assert not nodata[:-1, :110].any() and nodata[:, -1].all() and nodata[-1].all()
    stack = np.asarray(cache.load("pair1"))
    valid = ~np.asarray(nodata)
    for c in range(stack.shape[0]):
        assert (stack[c][~valid] == np.rint(stack[c][valid].mean())).all()
    entry = compute_stats(cache, mode="image", progress=False).image["pair1"]
    assert set(entry.counts) == {int(valid.sum())}
    np.testing.assert_allclose(entry.mean, stack[:, valid].mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(entry.std, stack[:, valid].std(axis=1), rtol=1e-9)

    # Training patches carry their valid pixels (the loss ignores the others), transformed
    # as the patch is.
    from spectraseg.features.patches import PatchDataset
    from spectraseg.features.windows import dihedral, read_window

    stats = compute_stats(cache, mode="image", progress=False)
    (tmp_path / "cache" / "masks").mkdir()
    np.save(tmp_path / "cache" / "masks" / "pair1.npy", np.zeros((1, 600, 600), np.uint8))
    ds = PatchDataset(cache, ["pair1"], stats, size=64, length=40, rare_classes=(), seed=3)
    assert ds.has_ignored
    seen = 0
    for i in range(40):
        plan = ds.plan(i)
        item = ds[i]
        want = (~read_window(np.asarray(nodata)[None], plan.row0, plan.col0, 64)).astype(np.uint8)
        if plan.transform:
            want = dihedral(want, plan.transform)
        np.testing.assert_array_equal(item["valid"].numpy(), want)
        seen += int((want == 0).any())
    assert seen > 0


def test_cli_bad_description_is_one_line_and_no_output(
    spacenet: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A description error stops the verb with one line naming the file (exit 1); a scene
    whose files cannot be fused fails alone with its reason (exit 3); nothing half-written."""
    from spectraseg.cli import main

    bad = _write(tmp_path / "bad.toml", _two(spacenet / "pan1.tif", spacenet / "ms1.tif").replace(
        '"B", "G", "R", "N"', '"B", "G", "G", "N"'))  # fmt: skip
    cache = tmp_path / "cache"
    assert main(["align", str(bad), "--cache", str(cache), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.toml" in err and "twice" in err
    assert not cache.exists()
    apart = _write(tmp_path / "apart.toml", _two(spacenet / "pan1.tif", spacenet / "ms2.tif"))
    assert main(["align", str(apart), "--cache", str(cache), "--quiet"]) == 3
    out = capsys.readouterr()
    assert "ms2.tif does not overlap" in out.out + out.err and "Traceback" not in out.err
    assert not list(cache.glob("*.npy"))


def test_label_extent_marks_the_rest_unlabelled(
    sample: Path, spacenet: Path, tmp_path: Path
) -> None:
    """Pixels outside ``label_extent`` are flagged when the masks are built, and training
    patches mark them invalid (the loss ignores them)."""
    from spectraseg.align.masks import build_masks
    from spectraseg.features.normalization import compute_stats
    from spectraseg.features.patches import PatchDataset

    with rasterio.open(spacenet / "sample_geotiff.tif") as src:
        left, bottom, _, top = src.bounds
    # The western 300 columns (0.5 m pixels), written in EPSG:4326 to exercise reprojection.
    box = shapely.box(left, bottom, left + 150.0, top)
    (moved,) = rasterio.warp.transform_geom("EPSG:32616", "EPSG:4326", [box])
    extent = tmp_path / "extent.geojson"
    extent.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": moved}]}))  # fmt: skip
    text = sample.read_text() + f'label_extent = "{extent}"\n'
    desc = _write(tmp_path / "extent.toml", text)
    align_dataset(desc, tmp_path / "cache", progress=False)
    cache = open_cache(tmp_path / "cache")
    build_masks(cache, desc, progress=False)
    unlabelled = cache.unlabelled("sample")
    assert unlabelled is not None and cache.nodata("sample") is None
    np.testing.assert_array_equal(cache.ignored("sample"), unlabelled)
    # Reprojection bends the box's edges by well under a pixel: columns 0-298 in, 301+ out.
    assert not unlabelled[:, :299].any() and unlabelled[:, 301:].all()
    stats = compute_stats(cache, mode="image", progress=False)
    ds = PatchDataset(
        cache, ["sample"], stats, size=64, length=16, rare_classes=(), seed=1, augment=False
    )
    assert ds.has_ignored
    checked = 0
    for i in range(16):
        plan, item = ds.plan(i), ds[i]
        assert item["valid"].shape == (1, 64, 64)
        if 0 <= plan.col0 and plan.col0 + 64 <= 900:
            checked += 1
            cols = slice(plan.col0, plan.col0 + 64)
            rows = slice(max(plan.row0, 0), min(plan.row0 + 64, 900))
            got = item["valid"].numpy()[0, rows.start - plan.row0 : rows.stop - plan.row0]
            np.testing.assert_array_equal(got, ~unlabelled[rows, cols])
    assert checked > 0


def test_validation_weights_are_pixel_areas_in_map_units(spacenet: Path, tmp_path: Path) -> None:
    from spectraseg.evaluation.metrics import pixel_areas

    desc = _pair(spacenet, tmp_path)
    align_dataset(desc, tmp_path / "cache", progress=False)
    (area,) = pixel_areas(open_cache(tmp_path / "cache"), str(desc), ["pair1"]).values()
    with rasterio.open(spacenet / "pan1.tif") as src:
        assert area == pytest.approx(abs(src.transform.a * src.transform.e), rel=1e-12)


def test_cross_validation_on_a_description(spacenet: Path, tmp_path: Path) -> None:
    """``train --folds 2`` on two labelled scenes of different regions: one class scored per
    fold, one-class decisions that ``predict`` then uses for the GeoPackages."""
    from spectraseg.cli import main
    from spectraseg.runs import read_cv, read_thresholds

    scenes = "".join(
        f'[[scenes]]\nid = "{i}"\nbands = {{ pan = "{spacenet / "sample_geotiff.tif"}" }}\n'
        f'labels = "{spacenet / "geotiff_labels.geojson"}"\n'
        for i in ("a_0_0", "b_0_0")
    )
    desc = _write(tmp_path / "two.toml", "[classes]\nhouse = { value = 1 }\n" + scenes)
    cache, run, pred = tmp_path / "cache", tmp_path / "run", tmp_path / "pred"
    assert main(["align", str(desc), "--cache", str(cache), "--workers", "0", "--quiet"]) == 0
    assert _train(run, cache, 1, f'data.root="{desc}"', cli=("--folds", "2")) == 0
    cv = read_cv(run)
    assert cv is not None and sorted(map(sorted, cv.folds)) == [["a_0_0"], ["b_0_0"]]
    assert len(cv.scores["nested"]["jaccard"]) == 1
    assert list(read_thresholds(run).thresholds) == [1]
    argv = ["predict", str(desc), "--run", str(run), "--out", str(pred), "--workers", "0"]
    assert main([*argv, "--quiet"]) == 0
    assert (pred / "a_0_0" / "polygons.gpkg").is_file()


def test_plain_directory_of_stacks_needs_no_description(
    spacenet: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each GeoTIFF is a scene, its group from its band count, labelled by the vector layer
    of the same name (one class); a 4-band file is ambiguous and named as such."""
    from spectraseg.align.masks import build_masks, open_mask
    from spectraseg.cli import main

    root = tmp_path / "tiles"
    root.mkdir()
    (root / "site_0_0.tif").symlink_to(spacenet / "sample_geotiff.tif")
    (root / "site_0_0.geojson").symlink_to(spacenet / "geotiff_labels.geojson")
    (root / "site_0_1.tif").symlink_to(spacenet / "pan1.tif")
    assert main(["inspect", str(root)]) == 0
    out = capsys.readouterr().out
    assert "2 scene(s), 1 labelled" in out and "object" in out and "EPSG:32631" in out
    cache = tmp_path / "cache"
    assert main(["align", str(root), "--cache", str(cache), "--workers", "0", "--quiet"]) == 0
    opened = open_cache(cache)
    assert opened.image_ids == ["site_0_0", "site_0_1"] and opened.schema.names == ["object"]
    build_masks(opened, root, ["site_0_0"], progress=False)
    # The same masks as the raster's own rasterisation of its labels.
    with rasterio.open(spacenet / "sample_geotiff.tif") as src:
        _, _, wkb, _ = pyogrio.raw.read(spacenet / "geotiff_labels.geojson")
        polys = [(g, 1) for g in shapely.from_wkb(wkb)]
        expected = rasterio.features.rasterize(polys, out_shape=src.shape, transform=src.transform)
    np.testing.assert_array_equal(open_mask(opened, "site_0_0", (900, 900))[0], expected)
    (root / "site_0_2.tif").symlink_to(spacenet / "ms1.tif")
    with pytest.raises(DataError, match=r"site_0_2\.tif has 4 bands: a plain directory holds"):
        georef.GeoDataset(root)


def test_registration_reads_large_scenes_decimated(spacenet: Path, tmp_path: Path) -> None:
    """Groups are read down so that the coarsest keeps ``max_size`` px (what ECC works on);
    the shift, scaled back to native pixels, agrees with the full-resolution estimate."""
    from spectraseg.align.estimators import RegistrationConfig
    from spectraseg.align.georef import decimation, native_images

    scene = _scene(_pair(spacenet, tmp_path))
    assert decimation(scene) == 1  # 300 px MS: read whole
    small = RegistrationConfig(max_size=100, coarse_size=50, fit_size=64)
    assert decimation(scene, small) == 3
    images = native_images(scene, 3)
    assert images["P"].shape == (1, 200, 200) and images["M"].shape == (4, 100, 100)
    (full,) = resolve_shifts(estimate_georef(scene, RegistrationConfig(max_size=300)))
    (down,) = resolve_shifts(estimate_georef(scene, small))
    assert down.method == "ecc"
    assert down.dx == pytest.approx(full.dx, abs=0.15) and down.dy == pytest.approx(
        full.dy, abs=0.15
    )


def test_predicting_a_scene_without_the_trained_bands_names_them(
    spacenet: Path, sample: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model trained on pan + 4 MS bands, asked to predict a pan-only scene: the scene
    fails with the channels it lacks."""
    from spectraseg.cli import main

    desc = _pair(spacenet, tmp_path)
    cache, run = tmp_path / "cache", tmp_path / "run"
    align_dataset(desc, cache, progress=False)
    (cache / "masks").mkdir()
    np.save(cache / "masks" / "pair1.npy", np.zeros((1, 600, 600), np.uint8))
    assert _train(run, cache, 1, "data.val_fraction=0") == 0
    pred = tmp_path / "pred"
    argv = ["predict", str(sample), "--run", str(run), "--out", str(pred), "--workers", "0"]
    assert main([*argv, "--thresholds", "config", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "failed: sample:" in out and "lacks M2, M3, M5, M7 (it has P)" in out


def test_schema_min_area_and_tolerance_apply_per_class() -> None:
    """A class's ``min_area`` (squared map units) drops smaller polygons; its ``tolerance``
    (pixels; 0: exact outlines) replaces the run's for that class only."""
    from spectraseg.data.classes import ClassSchema, ClassSpec
    from spectraseg.evaluation.levels import threshold_masks
    from spectraseg.inference.scene import PredictOptions, class_vector_settings
    from spectraseg.vectorize import masks_to_map

    levels = np.zeros((2, 40, 40), dtype=np.uint8)
    levels[:, 2:5, 2:5] = 255  # 9 px: 36 m^2 at 2 m pixels
    yy, xx = np.mgrid[:40, :40]
    levels[:, (yy - 25) ** 2 + (xx - 25) ** 2 < 64] = 255  # a disc of ~197 px
    transform = Affine(2.0, 0, 500_000.0, 0, -2.0, 4_000_000.0)
    schema = ClassSchema((ClassSpec("a", 1, 1, min_area=100.0), ClassSpec("b", 2, 2, tolerance=0)))
    tolerance, min_area = class_vector_settings(
        transform, 0.0, PredictOptions(tolerance=1.0), schema
    )
    assert tolerance == {1: 1.0, 2: 0} and min_area == {1: 25.0, 2: 0.0}
    masks = threshold_masks(levels, {1: 0.5, 2: 0.5})
    polys = masks_to_map(masks, transform, tolerance, min_area)
    assert len(polys[1].geoms) == 1 and polys[1].area > 500  # the 36 m^2 square is gone
    assert len(polys[2].geoms) == 2
    disc_b = max(polys[2].geoms, key=lambda g: g.area)
    disc_a = polys[1].geoms[0]
    # Exact outlines: every pixel corner of the staircase; simplified: far fewer vertices.
    assert disc_b.area == pytest.approx(4.0 * int(((yy - 25) ** 2 + (xx - 25) ** 2 < 64).sum()))
    assert len(disc_a.exterior.coords) < len(disc_b.exterior.coords) / 2
