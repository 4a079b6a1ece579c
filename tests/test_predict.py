"""Tiled whole-scene inference, thresholds and the predict stage."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import shapely
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spectraseg.evaluation.levels import level_of, quantize, threshold_masks
from spectraseg.evaluation.thresholds import (
    DEFAULT_GRID,
    class_histograms,
    jaccard_curves,
    tune_details,
)
from spectraseg.features.windows import DIHEDRAL, dihedral, dihedral_inverse, reflect_index
from spectraseg.inference.outputs import scene_paths
from spectraseg.inference.pipeline import plan_workers, predict_run
from spectraseg.inference.scene import PredictOptions
from spectraseg.inference.tiling import _fill_tile, predict_probs, tile_layout

torch.set_num_threads(1)

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA")


class Constant(torch.nn.Module):
    """Logits equal to a fixed value per class, whatever the input."""

    def __init__(self, logits: list[float]):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor(logits).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        return self.logits.expand(n, -1, h, w).clone()


def pixelwise(in_channels: int) -> torch.nn.Conv2d:
    """A 1x1 convolution with known weights: logits are a fixed linear map of each pixel."""
    conv = torch.nn.Conv2d(in_channels, 10, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(10 * in_channels, dtype=torch.float32).view(10, -1, 1, 1))
        conv.weight.mul_(0.01).sub_(0.2)
        conv.bias.copy_(torch.linspace(-1, 1, 10))
    return conv


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def test_reflect_index_matches_numpy_pad() -> None:
    for n in (1, 2, 3, 7):
        for pad in (0, 1, 5, 20):
            got = reflect_index(-pad, n + 2 * pad, n)
            want = np.pad(np.arange(n), pad, mode="reflect") if n > 1 else np.zeros(n + 2 * pad)
            np.testing.assert_array_equal(got, want)


@given(
    length=st.integers(1, 700),
    tile=st.sampled_from([32, 64, 256]),
    margin=st.integers(0, 8),
    multiple=st.sampled_from([None, 1, 8, 16]),
)
def test_tile_centres_cover_every_pixel_once(
    length: int, tile: int, margin: int, multiple: int | None
) -> None:
    step = tile - 2 * margin
    layout = tile_layout(length, tile, margin, multiple)
    covered = np.zeros(length, dtype=int)
    for start, size in layout:
        assert 0 <= start < length and size <= tile
        if multiple:
            assert size % multiple == 0
        kept = min(step, size - 2 * margin, length - start)
        assert kept > 0
        covered[start : start + kept] += 1
    assert (covered == 1).all()
    assert len(layout) == -(-length // step)
    assert all(size == tile for _, size in layout[:-1])


def test_edge_tiles_shrink_to_what_is_left() -> None:
    # 3392 = 15 * 224 + 32: the last column of tiles needs 32 + 2 * 16 = 64 pixels.
    assert tile_layout(3392, 256, 16, 16)[-1] == (3360, 64)
    assert tile_layout(3392, 256, 16)[-1] == (3360, 256)
    assert tile_layout(3348, 1024, 16, 16)[-1] == (2976, 416)
    assert tile_layout(448, 256, 16, 16) == [(0, 256), (224, 256)]


@pytest.mark.parametrize("shape", [(4, 37, 53), (4, 300, 261), (4, 1, 1), (4, 64, 64)])
def test_constant_model_stitches_exactly(shape: tuple[int, int, int]) -> None:
    logits = [float(v) for v in np.linspace(-3, 3, 10)]
    image = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    probs = predict_probs(Constant(logits), image, tile=64, margin=8, batch=3)
    assert probs.shape == (10, *shape[1:]) and probs.dtype == np.float32
    want = sigmoid(np.array(logits, dtype=np.float32))
    # Every pixel, borders included, holds exactly the model's value: no seams, no gaps.
    for c in range(10):
        assert np.all(probs[c] == np.float32(torch.sigmoid(torch.tensor(logits[c])).item()))
        assert probs[c, 0, 0] == pytest.approx(want[c], abs=1e-6)


@pytest.mark.parametrize("multiple", [None, 8])
def test_constant_model_stitches_exactly_with_shrunken_edge_tiles(multiple) -> None:
    image = np.zeros((2, 150, 203), np.float32)
    probs = predict_probs(Constant([0.3] * 10), image, tile=64, margin=8, multiple=multiple)
    assert np.all(probs == np.float32(torch.sigmoid(torch.tensor(0.3)).item()))


def test_pixelwise_model_reproduces_known_function() -> None:
    rng = np.random.default_rng(1)
    image = rng.normal(size=(3, 131, 97)).astype(np.float32)
    conv = pixelwise(3)
    w = conv.weight.detach().numpy()[:, :, 0, 0]
    b = conv.bias.detach().numpy()
    want = sigmoid(np.einsum("kc,chw->khw", w, image) + b[:, None, None])
    for tta in (False, True):
        got = predict_probs(conv, image, tile=48, margin=8, batch=5, tta=tta)
        np.testing.assert_allclose(got, want, atol=2e-6)


def test_amp_is_ignored_on_cpu() -> None:
    image = np.random.default_rng(3).normal(size=(3, 70, 50)).astype(np.float32)
    conv = pixelwise(3)
    np.testing.assert_array_equal(
        predict_probs(conv, image, tile=32, margin=4, device="cpu", amp=True),
        predict_probs(conv, image, tile=32, margin=4, device="cpu"),
    )


@needs_cuda
@pytest.mark.parametrize("tta", [False, True])
def test_cuda_matches_cpu(tta: bool) -> None:
    """The same network on the GPU (float32, and float16 autocast) as on the CPU."""
    from spectraseg.models.unet import UNet

    torch.manual_seed(0)
    net = UNet(5, 10, width=8, depth=2).eval()
    image = np.random.default_rng(4).normal(size=(5, 150, 130)).astype(np.float32)
    want = predict_probs(net, image, tile=64, margin=8, batch=3, tta=tta, device="cpu")
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # TF32 convolutions round to 10-bit mantissas
    try:
        got = predict_probs(net.cuda(), image, tile=64, margin=8, batch=3, tta=tta)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4)
    half = predict_probs(net, image, tile=64, margin=8, batch=3, tta=tta, amp=True)
    np.testing.assert_allclose(half, want, atol=5e-3)
    assert not np.array_equal(half, got)  # autocast did run in float16


def test_workers_default_to_this_process_on_cuda() -> None:
    assert plan_workers(None, None, 5, gpu=True) == 0
    assert plan_workers(3, None, 5, gpu=True) == 3
    assert plan_workers(None, None, 1) == 0
    assert plan_workers(None, "tcp://x:1", 5, gpu=True) == 0


def test_read_only_and_integer_inputs(tmp_path) -> None:
    image = np.random.default_rng(7).normal(size=(2, 40, 30)).astype(np.float32)
    np.save(tmp_path / "scene.npy", image)
    ro = np.load(tmp_path / "scene.npy", mmap_mode="r")
    conv = pixelwise(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = predict_probs(conv, ro, tile=16, margin=2)
    np.testing.assert_array_equal(got, predict_probs(conv, image, tile=16, margin=2))
    ints = (np.arange(2 * 40 * 30).reshape(2, 40, 30) % 7).astype(np.uint16)
    np.testing.assert_allclose(
        predict_probs(conv, ints, tile=16, margin=2),
        predict_probs(conv, ints.astype(np.float32), tile=16, margin=2),
    )


def test_tiles_equal_whole_scene_inference_within_margin() -> None:
    """With context >= the receptive field, tiling is invisible: same as one big forward."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 10, 3, padding=1)
    )
    image = np.random.default_rng(2).normal(size=(3, 90, 71)).astype(np.float32)
    got = predict_probs(net, image, tile=32, margin=4, batch=4)
    shrunk = predict_probs(net, image, tile=32, margin=4, batch=4, multiple=4, tta=False)
    padded = np.pad(image, ((0, 0), (4, 4), (4, 4)), mode="reflect")
    with torch.no_grad():
        whole = torch.sigmoid(net(torch.from_numpy(padded)[None]))[0, :, 4:-4, 4:-4].numpy()
    np.testing.assert_allclose(got, whole, atol=1e-6)
    np.testing.assert_allclose(shrunk, whole, atol=1e-6)


def test_dihedral_transforms_invert_and_are_distinct() -> None:
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    seen = set()
    for k in range(len(DIHEDRAL)):
        y = dihedral(x, k)
        assert torch.equal(dihedral_inverse(y, k), x)
        seen.add(tuple(y[0, 0].flatten().tolist()))
    assert len(seen) == 8


def test_tta_is_identity_for_an_equivariant_model() -> None:
    # A 3x3 kernel symmetric under the dihedral group commutes with all 8 transforms.
    conv = torch.nn.Conv2d(2, 10, 3, padding=1)
    with torch.no_grad():
        k = torch.tensor([[0.1, 0.2, 0.1], [0.2, -0.5, 0.2], [0.1, 0.2, 0.1]])
        conv.weight.copy_(k.expand(10, 2, 3, 3) * torch.linspace(0.5, 2, 10).view(10, 1, 1, 1))
    image = np.random.default_rng(3).normal(size=(2, 70, 45)).astype(np.float32)
    plain = predict_probs(conv, image, tile=32, margin=4)
    tta = predict_probs(conv, image, tile=32, margin=4, tta=True)
    np.testing.assert_allclose(tta, plain, atol=1e-6)


def test_tta_averages_the_transformed_predictions() -> None:
    """A position-dependent model: TTA output is the mean of the 8 inverse-mapped maps."""

    class Ramp(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n, _, h, w = x.shape
            ramp = torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w) / (h * w)
            return (ramp + 0 * x[:, :1]).expand(n, 10, h, w)

    image = np.zeros((1, 16, 16), dtype=np.float32)
    got = predict_probs(Ramp(), image, tile=16, margin=0, tta=True)
    ramp = torch.arange(256, dtype=torch.float32).view(1, 1, 16, 16) / 256
    maps = [dihedral_inverse(torch.sigmoid(ramp), k) for k in range(len(DIHEDRAL))]
    want = torch.stack(maps).mean(0)[0, 0].numpy()
    np.testing.assert_allclose(got[0], want, atol=1e-6)


def test_model_mode_is_restored_and_output_shape_checked() -> None:
    conv = pixelwise(2)
    conv.train()
    predict_probs(conv, np.zeros((2, 10, 10), np.float32), tile=16, margin=2)
    assert conv.training
    bad = torch.nn.Conv2d(2, 3, 1)
    with pytest.raises(ValueError, match="model returned shape"):
        predict_probs(bad, np.zeros((2, 10, 10), np.float32), tile=16, margin=2)
    with pytest.raises(ValueError, match="must exceed twice the margin"):
        predict_probs(conv, np.zeros((2, 10, 10), np.float32), tile=16, margin=8)


@settings(max_examples=15, deadline=None)
@given(
    h=st.integers(1, 80),
    w=st.integers(1, 80),
    margin=st.integers(0, 6),
    batch=st.integers(1, 5),
)
def test_pixelwise_model_any_size(h: int, w: int, margin: int, batch: int) -> None:
    image = np.random.default_rng(h * 100 + w).normal(size=(2, h, w)).astype(np.float32)
    conv = pixelwise(2)
    got = predict_probs(conv, image, tile=16, margin=margin, batch=batch)
    w_ = conv.weight.detach().numpy()[:, :, 0, 0]
    want = sigmoid(np.einsum("kc,chw->khw", w_, image) + conv.bias.detach().numpy()[:, None, None])
    np.testing.assert_allclose(got, want, atol=2e-6)


# --------------------------------------------------------------------------- thresholds


def test_quantize_and_threshold_masks_agree_for_float_and_uint8() -> None:
    rng = np.random.default_rng(4)
    probs = rng.random((10, 20, 30)).astype(np.float32)
    probs[0, 0, 0], probs[0, 0, 1] = 0.0, 1.0
    levels = quantize(probs)
    assert levels.dtype == np.uint8 and levels[0, 0, 0] == 0 and levels[0, 0, 1] == 255
    assert np.abs(levels / 255.0 - probs).max() <= 0.5 / 255 + 1e-7
    thr = {c: 0.05 * c for c in range(1, 11)}
    np.testing.assert_array_equal(threshold_masks(probs, thr), threshold_masks(levels, thr))
    # A level exactly at the threshold counts as positive.
    exact = np.full((1, 1, 1), 102, np.uint8)  # 102 / 255 = 0.4
    assert threshold_masks(exact, 0.4)[0, 0, 0] and not threshold_masks(exact, 0.41)[0, 0, 0]


def test_tune_thresholds_finds_the_separating_threshold() -> None:
    rng = np.random.default_rng(5)
    scenes = [rng.random((10, 40, 50)).astype(np.float32) for _ in range(3)]
    truths = []
    for p in scenes:
        t = np.zeros(p.shape, np.uint8)
        t[0] = quantize(p[:1])[0] >= level_of(0.3)  # perfectly separable at 0.3
        t[1] = quantize(p[1:2])[0] >= level_of(0.85)
        t[2] = p[2] > 2  # never true: untunable
        t[3] = rng.random(p[3].shape) < 0.5  # noise: best is to predict everything
        t[4] = quantize(p[4:5])[0] < level_of(0.02)  # true only below every threshold
        truths.append(t)
    details = tune_details(iter(scenes), iter(truths))
    th = details["thresholds"]
    assert th[1] == pytest.approx(0.3) and details["jaccard"][1] == pytest.approx(1.0)
    assert th[2] == pytest.approx(0.85) and details["jaccard"][2] == pytest.approx(1.0)
    assert th[3] == pytest.approx(DEFAULT_GRID[-1]) and not details["tuned"][3]
    assert th[4] == pytest.approx(0.05)
    # No threshold finds a true pixel: the highest one, fewest false positives.
    assert details["jaccard"][5] == 0.0 and details["tuned"][5]
    assert th[5] == pytest.approx(DEFAULT_GRID[-1])
    # Lists and generators, with weights 1, tune alike.
    assert tune_details(scenes, truths, weights=[1.0] * len(scenes))["thresholds"] == th


def test_jaccard_curves_match_the_metric_on_masks() -> None:
    from spectraseg.evaluation.metrics import mask_counts

    rng = np.random.default_rng(6)
    probs = quantize(rng.random((10, 30, 30)))
    truth = (rng.random((10, 30, 30)) < 0.3).astype(np.uint8)
    pos, neg = class_histograms(probs, truth, weight=2.5)
    curves = jaccard_curves(pos, neg, [0.2, 0.6])
    for j, t in enumerate([0.2, 0.6]):
        counts = mask_counts(threshold_masks(probs, t), truth)
        want = counts[:, 0] / counts.sum(1)
        np.testing.assert_allclose(curves[:, j], want)


# --------------------------------------------------------------------------- the predict stage


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A synthetic dataset, its cache and a tiny trained run (about 3 s)."""
    from spectraseg.align.fusion import align_dataset
    from spectraseg.config import Config
    from spectraseg.data.synth import synthesize
    from spectraseg.training.loop import train

    base = tmp_path_factory.mktemp("predict")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        synthesize(base / "data", scenes=4, size=(192, 192), seed=0, regions=2, progress=False)
        align_dataset(base / "data", base / "cache", progress=False)
        cfg = Config().replace(
            [
                f"data.root={base / 'data'}",
                f"data.cache={base / 'cache'}",
                "data.val_fraction=0.5",
                "model.width=4",
                "model.depth=2",
                "train.patch_size=32",
                "train.batch_size=2",
                "train.steps_per_epoch=2",
                "train.epochs=1",
                "train.threads=1",
                "predict.tile=64",
                "predict.margin=8",
            ]
        )
        train(cfg, base / "run", progress=False)
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


def test_blend_levels_mixes_per_class() -> None:
    from spectraseg.evaluation.levels import blend_levels

    unet = np.full((10, 2, 3), 200, np.uint8)
    pixel = np.full((10, 2, 3), 100, np.uint8)
    out = blend_levels(unet, pixel, {1: 1.0, 2: 0.0, 3: 0.25})
    assert out.dtype == np.uint8
    assert (out[0] == 200).all() and (out[1] == 100).all() and (out[2] == 125).all()
    assert (out[3:] == 200).all()  # classes without a weight keep the U-Net


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


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    tile=st.integers(9, 24),
    margin=st.integers(0, 4),
    channels_last=st.booleans(),
)
def test_filled_tiles_equal_reflect_padded_slices(
    h: int, w: int, tile: int, margin: int, channels_last: bool
) -> None:
    """Every tile, border tiles included, is the slice of the reflect-padded scene."""
    image = np.random.default_rng(h * 41 + w).normal(size=(3, h, w)).astype(np.float32)
    ys, xs = tile_layout(h, tile, margin), tile_layout(w, tile, margin)
    reach_y = max(y + s for y, s in ys) - margin
    reach_x = max(x + s for x, s in xs) - margin
    ry = reflect_index(-margin, reach_y + margin, h)
    rx = reflect_index(-margin, reach_x + margin, w)
    for y, th in ys:
        for x, tw in xs:
            want = image[:, ry[y : y + th][:, None], rx[x : x + tw][None, :]]
            dst = np.full((th, tw, 3) if channels_last else (3, th, tw), np.nan, np.float32)
            _fill_tile(image, dst, y, x, margin, ry, rx, channels_last)
            got = dst.transpose(2, 0, 1) if channels_last else dst
            np.testing.assert_array_equal(got, want)


def test_a_new_region_is_normalised_with_its_own_statistics(tmp_path) -> None:
    """A scene of a region the run never saw gets region statistics computed from the
    request, not the dataset fallback: the same probabilities as when that region's
    statistics had been in the run beforehand."""
    import shutil

    from spectraseg.align.fusion import align_dataset
    from spectraseg.config import Config
    from spectraseg.data.dstl import region_of
    from spectraseg.data.synth import synthesize
    from spectraseg.errors import SpectrasegWarning
    from spectraseg.features.normalization import extend_stats
    from spectraseg.features.stats import load_stats, save_stats
    from spectraseg.training.loop import train

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ids = synthesize(
            tmp_path / "data", scenes=5, size=(192, 192), seed=3, regions=3, progress=False
        )
        regions = sorted({region_of(i) for i in ids})
        new = [i for i in ids if region_of(i) == regions[-1]]
        seen = [i for i in ids if i not in new]
        align_dataset(tmp_path / "data", tmp_path / "cache", image_ids=seen, progress=False)
        cfg = Config().replace(
            [
                f"data.root={tmp_path / 'data'}",
                f"data.cache={tmp_path / 'cache'}",
                "data.val_fraction=0",
                "model.width=4",
                "model.depth=2",
                "train.patch_size=32",
                "train.batch_size=2",
                "train.steps_per_epoch=2",
                "train.epochs=1",
                "train.threads=1",
                "predict.tile=64",
                "predict.margin=8",
            ]
        )
        train(cfg, tmp_path / "run", progress=False)
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
