"""The predict stage: a trained run's scenes to probabilities, thresholds and polygons
(``spectraseg.inference.pipeline``)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import shapely
import torch

from spectraseg.evaluation.levels import threshold_masks
from spectraseg.evaluation.thresholds import DEFAULT_GRID
from spectraseg.inference.outputs import scene_paths
from spectraseg.inference.pipeline import plan_workers, predict_run
from spectraseg.inference.scene import PredictOptions
from tiny import tiny_config

torch.set_num_threads(1)

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA")


def test_workers_default_to_this_process_on_cuda() -> None:
    assert plan_workers(None, None, 5, gpu=True) == 0
    assert plan_workers(3, None, 5, gpu=True) == 3
    assert plan_workers(None, None, 1) == 0
    assert plan_workers(None, "tcp://x:1", 5, gpu=True) == 0


def test_small_requests_are_predicted_in_this_process() -> None:
    # Below IN_PROCESS_MPX a local worker's start costs more than the scenes it predicts.
    from spectraseg.inference.pipeline import IN_PROCESS_MPX

    assert plan_workers(None, None, 5, megapixels=5 * 0.29) == 0  # five dstl-lite scenes
    assert plan_workers(None, None, 3, megapixels=IN_PROCESS_MPX) == min(3, os.cpu_count() or 1)
    assert plan_workers(2, None, 5, megapixels=0.3) == 2  # asked for: as asked
    assert plan_workers(None, None, 3) == min(3, os.cpu_count() or 1)  # size unknown


def train_tiny_run(base: Path, val_fraction: float, *extra: str) -> None:
    """Train a tiny run on ``base/data`` and ``base/cache`` into ``base/run`` (about 3 s)."""
    from spectraseg.training.loop import train

    cfg = tiny_config(base, f"data.val_fraction={val_fraction}", *extra)
    train(cfg, base / "run", progress=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A synthetic dataset, its cache and a tiny trained run (about 3 s)."""
    from spectraseg.align.fusion import align_dataset
    from spectraseg.data.synth import synthesize

    base = tmp_path_factory.mktemp("predict")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        synthesize(base / "data", scenes=4, size=(192, 192), seed=0, regions=2, progress=False)
        align_dataset(base / "data", base / "cache", progress=False)
        train_tiny_run(base, val_fraction=0.5)
    return {"data": base / "data", "cache": base / "cache", "run": base / "run", "base": base}


def _predict(trained, out: Path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return predict_run(trained["run"], trained["data"], out, progress=False, **kw)


def test_predict_run_writes_every_output(trained) -> None:
    from spectraseg.data.dstl import read_grid_sizes, read_wkt_csv, read_wkt_rows
    from spectraseg.data.geometry import rasterize_classes

    out = trained["base"] / "pred"
    opts = PredictOptions(tolerance=0.0)
    report = _predict(trained, out, workers=0, options=opts, thresholds="retune")
    ids = sorted(s["image_id"] for s in report.scenes)
    assert len(ids) == 4 and not report.failed
    assert report.threshold_source == "tuned on 2 validation scene(s)"
    doc = json.loads((trained["run"] / "thresholds.json").read_text())
    assert doc["format"] == "spectraseg-thresholds" and len(doc["scenes"]) == 2
    assert {int(k): v for k, v in doc["thresholds"].items()} == report.thresholds
    assert set(doc["thresholds"].values()) <= {*DEFAULT_GRID, 0.5}
    assert doc["tile"] == 64 and doc["margin"] == 8 and doc["tta"] is False

    rows = read_wkt_rows(out / "predictions.csv")
    assert [(i, c) for i, c, _ in rows] == [(i, c) for i in ids for c in range(1, 11)]
    preds = read_wkt_csv(out / "predictions.csv")
    grid = read_grid_sizes(trained["data"] / "grid_sizes.csv")
    for i in ids:
        paths = scene_paths(out, i)
        levels = np.load(paths["probs"])
        h, w = levels.shape[1:]
        assert levels.dtype == np.uint8 and levels.shape[0] == 10 and 180 < h < 200 < w + 20
        # Polygons are exactly the thresholded probabilities (no simplification here).
        masks = threshold_masks(levels, report.thresholds)
        back = rasterize_classes(preds[i], w, h, *grid[i])
        np.testing.assert_array_equal(back, masks)
        gj = json.loads(paths["geojson"].read_text())
        assert gj["type"] == "FeatureCollection" and gj["image_id"] == i
        assert "DSTL grid units" in gj["coordinates"] and len(gj["features"]) == 10
        xmax, ymin = grid[i]
        for feat in gj["features"]:
            c = feat["properties"]["class"]
            assert feat["properties"]["threshold"] == report.thresholds[c]
            coords = np.array(
                shapely.get_coordinates(shapely.from_geojson(json.dumps(feat["geometry"])))
            )
            if len(coords):
                # The raster's far edge is one pixel past the extent (W' = W^2 / (W + 1)).
                # (+ 1e-8: coordinates are rounded to 8 decimals)
                assert coords[:, 0].min() >= 0 and coords[:, 0].max() <= xmax * (w + 1) / w + 1e-8
                assert coords[:, 1].min() >= ymin * (h + 1) / h - 1e-8 and coords[:, 1].max() <= 0
            assert feat["properties"]["area"] == pytest.approx(preds[i][c].area)
    summary = json.loads((out / "predict.json").read_text())
    assert summary["predictions"] == str(out / "predictions.csv") and len(summary["scenes"]) == 4

    # A second run reuses RUN/thresholds.json.
    again = _predict(trained, trained["base"] / "pred2", workers=0, image_ids=[ids[0]])
    assert again.threshold_source == str(trained["run"] / "thresholds.json")
    assert again.thresholds == report.thresholds


def test_predict_cli_and_errors(trained, capsys) -> None:
    from spectraseg.cli import main

    out = trained["base"] / "pred_cli"
    data, run = str(trained["data"]), str(trained["run"])
    scene = sorted(p.stem for p in (trained["data"] / "three_band").glob("*.tif"))[0]
    thr = ",".join(f"{c}=0.5" for c in range(1, 11))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = ["predict", data, "--run", run, "--out", str(out), "--images", scene]
        assert main([*args, "--workers", "0", "--thresholds", thr, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "predicted 1 of 1 scene(s)" in printed and "thresholds: given" in printed
    assert (out / "predictions.csv").is_file()

    def error(extra: list[str], message: str) -> None:
        assert main(["predict", data, "--run", run, "--out", str(out), *extra]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err

    error(["--images", "9999_9_9", "--workers", "0"], "image id 9999_9_9 has no product file")
    error(["--workers", "2", "--scheduler", "tcp://x:1"], "either --workers or --scheduler")
    error(["--thresholds", "1=0.5"], "must give all 10 classes")
    error(["--tile", "62", "--workers", "0"], "multiple of the model's 2**depth")
    error(["--min-area", "x=3"], "is not CLASS=VALUE")
    error(["--device", "tpu", "--workers", "0"], "--device must be auto, cpu, cuda or cuda:K")
    if not CUDA:
        error(
            ["--device", "cuda", "--workers", "0"], "--device is 'cuda' but CUDA is not available"
        )


def test_predict_on_a_local_dask_cluster_matches_serial(trained) -> None:
    serial = trained["base"] / "pred_serial"
    dask = trained["base"] / "pred_dask"
    thr = {c: 0.5 for c in range(1, 11)}
    _predict(trained, serial, workers=0, thresholds=thr)
    report = _predict(trained, dask, workers=2, thresholds=thr)
    assert not report.failed
    for s in report.scenes:
        i = s["image_id"]
        a = np.load(scene_paths(serial, i)["probs"])
        b = np.load(scene_paths(dask, i)["probs"])
        np.testing.assert_array_equal(a, b)
    assert (serial / "predictions.csv").read_text() == (dask / "predictions.csv").read_text()


@needs_cuda
def test_predict_run_on_cuda_matches_cpu(trained) -> None:
    thr = {c: 0.5 for c in range(1, 11)}
    cpu = _predict(trained, trained["base"] / "pred_cpu", thresholds=thr,
                   options=PredictOptions(device="cpu"))  # fmt: skip
    gpu = _predict(trained, trained["base"] / "pred_gpu", thresholds=thr)
    assert gpu.options["device"] == "cuda:0" and cpu.options["device"] == "cpu"
    assert not gpu.failed and len(gpu.scenes) == 4
    for s in gpu.scenes:
        a = np.load(scene_paths(trained["base"] / "pred_cpu", s["image_id"])["probs"])
        b = np.load(scene_paths(trained["base"] / "pred_gpu", s["image_id"])["probs"])
        # uint8 levels: float16 autocast moves a few by one level at most.
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 2


@pytest.mark.parametrize("mode", ["tuned", "average"])
def test_pixel_model_is_blended_per_class(trained, tmp_path, mode: str) -> None:
    """A run with a pixel model: tuning picks a U-Net weight per class from the blend grid
    (``tuned``) or weighs both equally (``average``), with a threshold per class, and
    prediction writes the blended probabilities."""
    import shutil

    from spectraseg.align.cache import open_cache
    from spectraseg.config import load_config, to_toml
    from spectraseg.evaluation.levels import blend_levels
    from spectraseg.evaluation.thresholds import BLEND_GRID
    from spectraseg.inference.scene import PredictOptions
    from spectraseg.runs import load_model, read_thresholds
    from spectraseg.training.pixel import fit_run

    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    (run / "thresholds.json").unlink(missing_ok=True)
    config = load_config(run / "config.toml").replace([f"pixel.blend={mode}"])
    (run / "config.toml").write_text(to_toml(config), encoding="utf-8")
    model, config, stats = load_model(run)
    scenes = [i for i in open_cache(trained["cache"]).image_ids if i not in config.data.val_scenes]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = config.replace(["pixel.samples=200", "pixel.max_iter=5"])
        fit_run(run, cfg, scenes[:2], stats, progress=False)
        report = predict_run(
            run,
            trained["data"],
            tmp_path / "pred",
            workers=0,
            options=PredictOptions(sources=True),
            progress=False,
        )
    doc = read_thresholds(run)
    assert doc is not None and doc.pixel_model_mtime_ns is not None and doc.blend is not None
    assert set(doc.blend) == set(range(1, 11))
    assert all(v in BLEND_GRID for v in doc.blend.values())
    assert report.blend == doc.blend
    if mode == "tuned":
        # The blended choice is at least as good as the U-Net alone on the tuning scenes.
        for c in range(1, 11):
            assert doc.jaccard[c] >= doc.jaccard_unet[c] - 1e-12
    else:
        assert set(doc.blend.values()) == {0.5}
    # Written probabilities are the blend of the two models' levels.
    from spectraseg.features.patches import load_scene
    from spectraseg.inference.scene import PredictOptions, resolve_options
    from spectraseg.inference.tasks import run_levels

    image_id = report.scenes[0]["image_id"]
    image = load_scene(trained["cache"], image_id, stats, config.data.indices)
    opts = resolve_options(PredictOptions(), config)
    unet, pixel = run_levels(str(run), model.to(opts.device), image, opts)
    assert pixel is not None
    written = np.load(tmp_path / "pred" / "probs" / f"{image_id}.npy")
    np.testing.assert_array_equal(written, blend_levels(unet, pixel, report.blend))
    sources = tmp_path / "pred" / "sources"
    np.testing.assert_array_equal(np.load(sources / f"{image_id}.unet.npy"), unet)
    np.testing.assert_array_equal(np.load(sources / f"{image_id}.pixel.npy"), pixel)


@pytest.mark.parametrize("index_norm", [False, True])
def test_a_new_region_is_normalised_with_its_own_statistics(tmp_path, index_norm) -> None:
    """A scene of a region the run never saw gets region statistics computed from the
    request, not the dataset fallback: the same probabilities as when that region's
    statistics had been in the run beforehand (its index channels' too, when the run
    normalises them)."""
    import shutil

    from spectraseg.align.fusion import align_dataset
    from spectraseg.data.dstl import region_of
    from spectraseg.data.synth import synthesize
    from spectraseg.errors import SpectrasegWarning
    from spectraseg.features.normalization import extend_stats
    from spectraseg.features.stats import load_stats, save_stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ids = synthesize(
            tmp_path / "data", scenes=5, size=(192, 192), seed=3, regions=3, progress=False
        )
        regions = sorted({region_of(i) for i in ids})
        new = [i for i in ids if region_of(i) == regions[-1]]
        seen = [i for i in ids if i not in new]
        align_dataset(tmp_path / "data", tmp_path / "cache", image_ids=seen, progress=False)
        extra = ['data.indices=["ND:R:G", "ND:A1:A8"]', "data.index_norm=true"]
        train_tiny_run(tmp_path, 0, *(extra if index_norm else []))
    run_channels = load_stats(tmp_path / "run" / "stats.json").channels
    assert ("ND:A1:A8" in run_channels) == index_norm
    assert regions[-1] not in load_stats(tmp_path / "run" / "stats.json").region
    thr = {c: 0.5 for c in range(1, 11)}
    data = tmp_path / "data"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SpectrasegWarning)
        report = predict_run(
            tmp_path / "run",
            data,
            tmp_path / "pred",
            image_ids=new,
            workers=0,
            thresholds=thr,
            progress=False,
        )
    assert not report.failed
    # No scene fell back to the dataset statistics.
    assert not [w for w in caught if "statistics" in str(w.message)], caught
    assert report.normalization["mode"] == "region"
    assert report.normalization["computed"] == {regions[-1]: new}
    written = json.loads((tmp_path / "pred" / "predict.json").read_text())
    assert written["normalization"]["computed"] == {regions[-1]: new}
    used = load_stats(tmp_path / "pred" / "stats.json")
    assert regions[-1] in used.region
    assert used.channels == run_channels

    # The same region's statistics computed beforehand, by hand, in a copy of the run.
    shutil.copytree(tmp_path / "run", tmp_path / "run2")
    before = extend_stats(
        load_stats(tmp_path / "run" / "stats.json"), tmp_path / "cache", new, progress=False
    )
    assert before.region[regions[-1]] == used.region[regions[-1]]
    save_stats(before, tmp_path / "run2" / "stats.json")
    again = predict_run(
        tmp_path / "run2",
        data,
        tmp_path / "pred2",
        image_ids=new,
        workers=0,
        thresholds=thr,
        progress=False,
        cache_dir=tmp_path / "cache",
    )
    assert again.normalization["computed"] == {}
    for i in new:
        a = np.load(scene_paths(tmp_path / "pred", i)["probs"])
        b = np.load(scene_paths(tmp_path / "pred2", i)["probs"])
        np.testing.assert_array_equal(a, b)
    # Without the completion the scene would be normalised differently (the old fallback).
    run_stats = load_stats(tmp_path / "run" / "stats.json")
    assert run_stats.dataset.mean != used.region[regions[-1]].mean


def test_validation_tuned_score_is_what_predict_tunes(trained) -> None:
    """Training's val_mean_tuned (the score train.select can pick best.pt by) and predict's
    tuning come from the one tuner: same scenes, same model, same thresholds and score."""
    from spectraseg.runs import read_split

    run = trained["run"]
    metrics = json.loads((run / "metrics.json").read_text())
    row = next(r for r in metrics["epochs"] if r["step"] == metrics["best"]["step"])
    report = _predict(trained, trained["base"] / "pred_tuned", workers=0, thresholds="retune")
    doc = report.tuning
    assert doc is not None
    split = read_split(run)
    assert split is not None and doc.scenes == list(split.validation) != []
    assert doc.mean_jaccard == row["val_mean_tuned"]
    assert [doc.jaccard[c] for c in range(1, 11)] == row["val_jaccard_tuned"]
    assert [doc.thresholds[c] for c in range(1, 11)] == row["val_thresholds_tuned"]
    # At the config's thresholds, validation scores what predict's diagnostic scores.
    assert doc.mean_jaccard_config == pytest.approx(row["val_mean"], abs=1e-12)
