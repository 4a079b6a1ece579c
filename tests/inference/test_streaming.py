"""Streaming prediction of a georeferenced scene (``spectraseg.inference.streaming``): strips
of any height give the same COGs and polygons, outputs are valid GIS files, all-nodata strips
skip the model, and a prediction killed with SIGKILL resumes to the same bytes."""

from __future__ import annotations

import json
import warnings
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyogrio
import pyogrio.raw
import pytest
import rasterio
import shapely
from affine import Affine
from rio_cogeo.cogeo import cog_validate

from spectraseg.cli import main
from spectraseg.data.classes import DSTL_COLORS, rgb
from spectraseg.evaluation.levels import threshold_masks
from spectraseg.inference.georaster import strip_bands
from tiny import TINY_RUN

SCENE = "synth_0_0"
H, W = 400, 360


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A synthetic georeferenced 8-band scene (``synth --georef``), its cache and a tiny run
    trained on it for 30 steps (64 px tiles, 8 px margins: 48 rows per tile row)."""
    base = tmp_path_factory.mktemp("streaming")
    argv = ["synth", "--georef", "--out", str(base / "data"), "--size", str(H), str(W)]
    assert main([*argv, "--seed", "1", "--quiet"]) == 0
    desc = base / "data" / "dataset.toml"
    sets = [
        f'data.root="{desc}"', f'data.cache="{base / "cache"}"', *TINY_RUN,
        "train.steps_per_epoch=30", "data.val_fraction=0",
    ]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["align", str(desc), "--cache", str(base / "cache"), "--quiet"]) == 0
        overrides = [a for s in sets for a in ("--set", s)]
        assert main(["train", "--out", str(base / "run"), "--quiet", *overrides]) == 0
    return base


def predict(base: Path, out: Path, *extra: str) -> list[str]:
    return [
        "predict", str(base / "data" / "dataset.toml"), "--run", str(base / "run"),
        "--out", str(out), "--workers", "0", "--thresholds", "config", "--quiet", *extra,
    ]  # fmt: skip


def outputs(pred: Path) -> dict[str, bytes]:
    scene = pred / SCENE
    return {p.name: p.read_bytes() for p in sorted(scene.iterdir()) if p.is_file()}


def polygons(gpkg: Path) -> list[tuple[str, bytes]]:
    _, _, wkb, (names, _) = pyogrio.raw.read(gpkg, layer="polygons")
    return sorted(zip(names, wkb, strict=True))


def test_strips_of_any_height_give_the_same_outputs(trained: Path, monkeypatch) -> None:
    """9 strips of 48 rows, one of the whole scene, and strips cut into cells of one tile
    (a memory budget too small for one tile row: as a 30k pixel wide scene's): byte-identical
    COGs, the same polygons (objects across seams traced once), no strips left behind."""
    from spectraseg.inference import streaming

    many, one, cells = trained / "many", trained / "one", trained / "cells"
    assert main(predict(trained, many, "--strip-rows", "48")) == 0
    assert main(predict(trained, one, "--strip-rows", "100000")) == 0
    monkeypatch.setattr(streaming, "STRIP_BYTES", 1)
    assert main(predict(trained, cells)) == 0
    a, b, c = outputs(many), outputs(one), outputs(cells)
    assert sorted(a) == ["classes.tif", "classes.tif.aux.xml", "polygons.gpkg", "probs.tif"]
    for name in ("classes.tif", "probs.tif", "classes.tif.aux.xml"):
        assert a[name] == b[name] == c[name], name
    got = polygons(many / SCENE / "polygons.gpkg")
    assert len(got) > 100 and got == polygons(one / SCENE / "polygons.gpkg")
    assert got == polygons(cells / SCENE / "polygons.gpkg")
    for pred, strips, bands in ((cells, 9, 8), (one, 1, 1), (many, 9, 1)):  # cells: 48 px
        (scene,) = json.loads((pred / "predict.json").read_text())["scenes"]
        assert (scene["strips"]["total"], scene["bands"]) == (strips, bands)
    doc = json.loads((many / "predict.json").read_text())
    (scene,) = doc["scenes"]
    assert scene["strips"] == {"total": 9, "predicted": 9, "model": 9, "model_cells": 9}
    assert doc["options"]["strip_rows"] == 48 and not (many / SCENE / ".strips").exists()


def test_outputs_are_valid_gis_files_on_the_scene_grid(trained: Path) -> None:
    """COGs that validate, on the input's CRS and transform; a colour table and category
    names from the schema; classes agree with the probabilities and thresholds; polygons
    valid and rasterising back to the class masks; GeoJSON in longitude/latitude."""
    pred = trained / "gis"
    assert main(predict(trained, pred, "--tolerance", "0", "--geojson")) == 0
    with rasterio.open(trained / "data" / "scene.tif") as src:
        crs, transform = src.crs, src.transform
    rasters = {}
    for name in ("classes.tif", "probs.tif"):
        path = pred / SCENE / name
        valid, errors, _ = cog_validate(str(path), quiet=True)
        assert valid, errors
        with rasterio.open(path) as src:
            assert src.crs == crs and src.transform == transform and src.shape == (H, W)
            assert src.dtypes[0] == "uint8"
            rasters[name] = src.read()
            if name == "classes.tif":
                assert src.nodata == 255
                cmap = src.colormap(1)
                assert cmap[1][:3] == rgb(DSTL_COLORS[0]) and cmap[0][:3] == (0, 0, 0)
                assert src.tags()["CLASS_1"] == "Buildings"
    levels, classes = rasters["probs.tif"], rasters["classes.tif"][0]
    assert levels.shape == (10, H, W)
    above = threshold_masks(levels, dict.fromkeys(range(1, 11), 0.5))
    best = np.where(above, levels.astype(int), -1).argmax(0) + 1
    np.testing.assert_array_equal(classes, np.where(above.any(0), best, 0))
    cats = ET.parse(pred / SCENE / "classes.tif.aux.xml").findall(".//Category")
    names = [c.text or "" for c in cats]
    assert names[:3] == ["none", "Buildings", "Misc. manmade structures"] and names[255] == "nodata"
    _, _, wkb, (cls, area) = pyogrio.raw.read(pred / SCENE / "polygons.gpkg", layer="polygons")
    geoms = shapely.from_wkb(wkb)
    assert shapely.is_valid(geoms).all() and np.allclose(area, shapely.area(geoms))
    for c, name in ((1, "Buildings"), (6, "Crops")):
        drawn = rasterio.features.rasterize(
            geoms[cls == name], out_shape=(H, W), transform=transform
        ).astype(bool)
        np.testing.assert_array_equal(drawn, above[c - 1])
    info = pyogrio.read_info(pred / SCENE / "polygons.geojson")
    assert info["features"] == len(geoms) and "4326" in info["crs"]
    lon, lat = shapely.get_coordinates(
        shapely.from_wkb(pyogrio.raw.read(pred / SCENE / "polygons.geojson")[2][:50])
    ).T
    assert ((14 < lon) & (lon < 16)).all() and ((45 < lat) & (lat < 46)).all()
    assert not (pred / SCENE / ".strips").exists()


def test_no_probs_and_all_nodata_strips(trained: Path, tmp_path: Path) -> None:
    """``--no-probs`` writes no probs.tif; strips whose input is all nodata are written
    without the model (class 255 there, no polygon)."""
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(trained / "cache", cache)
    hole = np.zeros((H, W), dtype=bool)
    hole[48:200] = True  # strips 1-3 of 48 rows wholly, strip 4 in part
    (cache / "nodata").mkdir(exist_ok=True)
    np.save(cache / "nodata" / f"{SCENE}.npy", hole)
    pred = tmp_path / "pred"
    args = predict(trained, pred, "--strip-rows", "48", "--no-probs", "--cache", str(cache))
    assert main(args) == 0
    assert sorted(outputs(pred)) == ["classes.tif", "classes.tif.aux.xml", "polygons.gpkg"]
    (scene,) = json.loads((pred / "predict.json").read_text())["scenes"]
    assert scene["strips"] == {"total": 9, "predicted": 9, "model": 6, "model_cells": 6}
    with rasterio.open(pred / SCENE / "classes.tif") as src:
        classes = src.read(1)
    assert (classes[hole] == 255).all() and (classes[~hole] != 255).all()
    geoms = shapely.from_wkb(pyogrio.raw.read(pred / SCENE / "polygons.gpkg")[2])
    with rasterio.open(trained / "data" / "scene.tif") as src:
        drawn = rasterio.features.rasterize(geoms, out_shape=(H, W), transform=src.transform)
    assert not drawn[hole].any()


def test_class_bits_hold_every_class_above_its_threshold(trained: Path, tmp_path: Path) -> None:
    """``--class-bits``: classes.tif is a uint16 COG whose bit c-1 is set exactly where class
    c's level is at or above its threshold (overlapping classes all kept), 32768 where the
    input has no data; bits named in its tags, no colour table or category sidecar; and the
    argmax layout predicted into the same folder afterwards replaces it whole."""
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(trained / "cache", cache)
    hole = np.zeros((H, W), dtype=bool)
    hole[60:90, 40:300] = True
    (cache / "nodata").mkdir(exist_ok=True)
    np.save(cache / "nodata" / f"{SCENE}.npy", hole)
    pred = tmp_path / "pred"
    args = predict(trained, pred, "--cache", str(cache), "--strip-rows", "48")
    assert main([*args, "--class-bits"]) == 0
    assert sorted(outputs(pred)) == ["classes.tif", "polygons.gpkg", "probs.tif"]
    path = pred / SCENE / "classes.tif"
    valid, errors, _ = cog_validate(str(path), quiet=True)
    assert valid, errors
    with rasterio.open(path) as src, rasterio.open(pred / SCENE / "probs.tif") as p:
        assert src.dtypes[0] == "uint16" and src.nodata == 32768
        tags = src.tags()
        bits, levels = src.read(1), p.read()
    assert tags["BIT_0"] == "Buildings" and tags["BIT_9"] == "Vehicle small"
    above = threshold_masks(levels, dict.fromkeys(range(1, 11), 0.5))
    assert (bits[hole] == 32768).all()
    for c in range(1, 11):
        np.testing.assert_array_equal((bits[~hole] >> (c - 1)) & 1, above[c - 1][~hole])
    assert (above.sum(0)[~hole] > 1).any()  # overlaps exist, and are all kept
    doc = json.loads((pred / "predict.json").read_text())
    assert doc["options"]["class_bits"] is True
    assert main(args) == 0
    with rasterio.open(path) as src:
        assert src.dtypes[0] == "uint8" and src.nodata == 255
    assert (pred / SCENE / "classes.tif.aux.xml").is_file()


def test_class_bits_refuse_more_classes_than_bits(trained: Path, tmp_path: Path, monkeypatch,
                                                   capsys) -> None:  # fmt: skip
    """A schema with more classes than bits is one sentence and exit 1, no output (the
    ten-class run against a limit of five stands in for a sixteen-class schema)."""
    from spectraseg.inference import pipeline
    from spectraseg.inference.georaster import class_bits

    monkeypatch.setattr(pipeline, "MAX_BIT_CLASSES", 5)
    assert main([*predict(trained, tmp_path / "pred"), "--class-bits"]) == 1
    err = capsys.readouterr().err
    assert "--class-bits holds at most 5 classes" in err and "predicts 10" in err
    assert "Traceback" not in err and not (tmp_path / "pred" / SCENE / "classes.tif").exists()
    with pytest.raises(ValueError, match="at most 15 classes"):
        class_bits(np.zeros((16, 2, 2), np.uint8), {}, None)


def test_all_nodata_cells_skip_the_model(trained: Path, tmp_path: Path, monkeypatch) -> None:
    """Strips cut into cells of one tile (48 px): the cells of the two leftmost bands, all
    nodata, are written without the model; the outputs elsewhere are the whole scene's."""
    import shutil

    from spectraseg.inference import streaming

    cache = tmp_path / "cache"
    shutil.copytree(trained / "cache", cache)
    hole = np.zeros((H, W), dtype=bool)
    hole[:, :100] = True  # bands 0-1 (columns 0-95) wholly, band 2 in part
    (cache / "nodata").mkdir(exist_ok=True)
    np.save(cache / "nodata" / f"{SCENE}.npy", hole)
    whole, cells = tmp_path / "whole", tmp_path / "cells"
    assert main(predict(trained, whole, "--cache", str(cache))) == 0
    monkeypatch.setattr(streaming, "STRIP_BYTES", 1)
    assert main(predict(trained, cells, "--cache", str(cache))) == 0
    (scene,) = json.loads((cells / "predict.json").read_text())["scenes"]
    assert scene["strips"] == {"total": 9, "predicted": 9, "model": 9, "model_cells": 9 * 6}
    with (
        rasterio.open(whole / SCENE / "probs.tif") as a,
        rasterio.open(cells / SCENE / "probs.tif") as b,
    ):
        np.testing.assert_array_equal(a.read(), b.read())
    with rasterio.open(cells / SCENE / "classes.tif") as src:
        assert (src.read(1)[hole] == 255).all()


def test_strips_of_another_request_are_not_reused(trained: Path, tmp_path: Path) -> None:
    """Strips left by a request with other thresholds are discarded, not mixed in."""
    pred = tmp_path / "pred"
    assert main(predict(trained, pred, "--strip-rows", "48")) == 0
    strips = pred / SCENE / ".strips"
    strips.mkdir()
    (strips / "request.json").write_text('{"thresholds": {"1": 0.9}}\n')
    (strips / "probs_00000.tif").write_bytes(b"stale")
    (strips / "classes_00000.tif").write_bytes(b"stale")
    assert main(predict(trained, pred, "--strip-rows", "48")) == 0
    (scene,) = json.loads((pred / "predict.json").read_text())["scenes"]
    assert scene["strips"]["predicted"] == 9 and not strips.exists()


def test_predict_killed_between_strips_resumes_to_the_same_bytes(trained: Path) -> None:
    """SIGKILL once three strips are written: no final output exists, the rerun predicts
    only the missing strips and its outputs equal an uninterrupted run's byte for byte."""
    from test_kill import kill_when

    ref, out = trained / "ref", trained / "killed"
    assert main(predict(trained, ref, "--strip-rows", "48")) == 0
    strips = out / SCENE / ".strips"
    kill_when(
        predict(trained, out, "--strip-rows", "48"),
        lambda: len(list(strips.glob("classes_*.tif"))) >= 3,
    )
    assert not (out / SCENE / "classes.tif").exists() and not (out / "predict.json").exists()
    # A strip is done when both its files are in place: they are renamed one after the
    # other, so the kill can fall between the two.
    done = sum((strips / f"probs_{c.name[len('classes_'):]}").is_file()
               for c in strips.glob("classes_*.tif"))  # fmt: skip
    assert main(predict(trained, out, "--strip-rows", "48")) == 0
    (scene,) = json.loads((out / "predict.json").read_text())["scenes"]
    assert scene["strips"]["predicted"] == 9 - done < 9
    assert outputs(out) == outputs(ref)


def test_a_new_region_at_another_gain_predicts_as_the_seen_one(trained: Path, tmp_path: Path):
    """The training scene with every band doubled (another sensor gain), under the id of a
    region the run never saw: its statistics are computed from itself (recorded in
    ``predict.json``, no fallback warning), which makes its normalised input, probabilities
    and polygons those of the seen scene exactly (doubling is exact in floating point)."""
    import shutil

    from spectraseg.errors import SpectrasegWarning

    far = tmp_path / "far"
    shutil.copytree(trained / "data", far)
    with rasterio.open(trained / "data" / "scene.tif") as src:
        profile, image = src.profile, src.read()
    assert image.max() < 2**15
    with rasterio.open(far / "scene.tif", "w", **profile) as dst:
        dst.write(image * 2)
    desc = far / "dataset.toml"
    desc.write_text(desc.read_text().replace(f'"{SCENE}"', '"far_0_0"'))
    argv = predict(trained, tmp_path / "pred_far")
    argv[1] = str(desc)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SpectrasegWarning)
        assert main([*argv, "--cache", str(tmp_path / "cache")]) == 0
    assert not [w for w in caught if "statistics" in str(w.message)]
    doc = json.loads((tmp_path / "pred_far" / "predict.json").read_text())
    assert doc["normalization"]["mode"] == "region"
    assert doc["normalization"]["computed"] == {"far": ["far_0_0"]}
    assert main(predict(trained, tmp_path / "pred_seen")) == 0
    seen, new = tmp_path / "pred_seen" / SCENE, tmp_path / "pred_far" / "far_0_0"
    for name in ("probs.tif", "classes.tif"):
        with rasterio.open(seen / name) as a, rasterio.open(new / name) as b:
            np.testing.assert_array_equal(a.read(), b.read())
    got = polygons(new / "polygons.gpkg")
    assert len(got) > 100 and got == polygons(seen / "polygons.gpkg")


class _BoxPixelModel:
    """A stand-in per-pixel model whose output at a pixel depends on its neighbours up to
    ``HALO - 1`` pixels away (as the real one's texture windows do)."""

    def predict_proba(self, window: np.ndarray) -> np.ndarray:
        import cv2

        from spectraseg.models.pixel import HALO

        k = 2 * HALO - 1
        blurred = cv2.blur(window[0], (k, k), borderType=cv2.BORDER_REFLECT_101)
        p = 1 / (1 + np.exp(-blurred))
        return np.repeat(p[None], 10, axis=0).astype(np.float32)


def test_cells_blend_the_per_pixel_model_with_its_context(trained: Path, monkeypatch) -> None:
    """A strip predicted in cells of one tile, blended with a per-pixel model that reads
    context, writes the levels and classes of the strip predicted whole: each cell reads the
    per-pixel features' context across its sides, and lands in its window of the files."""
    from spectraseg.data.classes import DSTL_SCHEMA
    from spectraseg.features.stats import load_stats
    from spectraseg.inference import streaming
    from spectraseg.inference.loaded import cached_model
    from spectraseg.inference.scene import PredictOptions, resolve_options

    monkeypatch.setattr(streaming, "cached_pixel_model", lambda run: _BoxPixelModel())
    run = trained / "run"
    model, config, _ = cached_model(str(run), "best", "cpu")
    req = streaming.SceneRequest(
        str(run), str(trained / "cache"), SCENE, str(trained / "blend"),
        dict.fromkeys(range(1, 11), 0.5), {}, resolve_options(PredictOptions(), config),
        DSTL_SCHEMA, load_stats(run / "stats.json"), dict.fromkeys(range(1, 11), 0.5),
        channels=int(model.in_channels),
    )  # fmt: skip
    whole = streaming.laid_out(req)
    monkeypatch.setattr(streaming, "STRIP_BYTES", 1)
    cells = streaming.laid_out(req)
    assert len(whole.bands) == 1 and len(cells.bands) == 8
    cells = replace(cells, out_dir=str(trained / "blend-cells"))
    for k in [0, 1, 2, len(cells.strips) - 1]:
        strip = cells.strips[k]
        for req in (whole, cells):
            streaming._write_cells(req, k, strip, model, None, Affine.scale(2, -2), "EPSG:32631")
        for kind in ("probs", "classes"):
            got = np.stack(list(strip_bands(streaming.strip_path(cells, kind, k))))
            want = np.stack(list(strip_bands(streaming.strip_path(whole, kind, k))))
            np.testing.assert_array_equal(got, want)
