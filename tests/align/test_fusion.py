"""Fusion onto the RGB grid, the cache (skip, resume, merge) and ``spectraseg align``."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from shifted_scenes import make_scene

from spectraseg import parallel
from spectraseg.align import fusion
from spectraseg.align.cache import entry_complete, open_cache, read_shifts
from spectraseg.align.estimators import ecc_shift
from spectraseg.align.fusion import (
    align_dataset,
    align_scene,
    fuse_images,
    resample_band,
    valid_box,
    warp_matrix,
)
from spectraseg.align.registration import ShiftRow
from spectraseg.cli import main
from spectraseg.data.dstl import channels_of, open_dataset, product_path, write_grid_sizes
from spectraseg.errors import ConfigError, DataError

# --------------------------------------------------------------------------- fixtures

SIZE = (384, 408)  # RGB grid of the test scenes; M is 1/4, A is 1/12 of it


def write_dataset(root: Path, scenes: dict[str, dict[str, np.ndarray]]) -> Path:
    """Write scenes (``{id: {product: (B, h, w) uint16}}``) in the competition layout."""
    for image_id, images in scenes.items():
        for product, arr in images.items():
            path = product_path(root, image_id, product)
            path.parent.mkdir(parents=True, exist_ok=True)
            data = arr[0] if product == "P" else arr
            tifffile.imwrite(path, data, photometric="minisblack", planarconfig="separate")
    sizes = {i: (0.00917, -0.00904) for i in scenes}
    write_grid_sizes(root / "grid_sizes.csv", sizes)
    return root


def region_truth(k: int) -> dict[str, tuple[float, float]]:
    """Shifts of a region (shared) with a small per-scene jitter."""
    base = {"P": (0.9, -0.6), "M": (-1.8, 1.2), "A": (1.1, -0.7)}
    j = 0.05 * (k - 1)
    return {p: (dx + j, dy - j) for p, (dx, dy) in base.items()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict[str, dict[str, tuple[float, float]]]]:
    """Region 6010 with three scenes (the last featureless in P and M), 6020 with one."""
    root = tmp_path_factory.mktemp("data")
    scenes, truth = {}, {}
    for k in range(3):
        image_id = f"6010_0_{k}"
        truth[image_id] = region_truth(k)
        scenes[image_id] = make_scene(
            truth[image_id], SIZE, seed=20 + k, featureless=("P", "M") if k == 2 else ()
        )
    truth["6020_1_1"] = {"P": (-0.4, 0.3), "M": (0.7, 2.1), "A": (-1.3, 0.2)}
    scenes["6020_1_1"] = make_scene(truth["6020_1_1"], SIZE, seed=30)
    return write_dataset(root, scenes), truth


# --------------------------------------------------------------------------- resampling


def test_warp_matrix_aligns_pixel_edges() -> None:
    m = warp_matrix((100, 50), (400, 200), 0.0, 0.0)
    # Destination pixel 0 (centre 0.5) is source coordinate 0.125, index -0.375.
    assert m[0].tolist() == [0.25, 0.0, -0.375]
    m = warp_matrix((100, 50), (400, 200), 1.5, -2.0)
    assert m[0, 2] == pytest.approx(-0.375 + 1.5) and m[1, 2] == pytest.approx(-0.375 - 2.0)


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(4, 60),
    w=st.integers(4, 60),
    k=st.sampled_from([1, 2, 4, 6]),
    dx=st.floats(-5, 5, allow_nan=False),
    dy=st.floats(-5, 5, allow_nan=False),
)
def test_valid_box_is_where_centres_fall_in_the_footprint(h, w, k, dx, dy) -> None:
    hh, ww = h * k, w * k
    r0, r1, c0, c1 = valid_box((h, w), (hh, ww), dx, dy)
    m = warp_matrix((h, w), (hh, ww), dx, dy)
    cols = np.arange(ww) * m[0, 0] + m[0, 2] + 0.5  # continuous source coordinate of centres
    rows = np.arange(hh) * m[1, 1] + m[1, 2] + 0.5
    inside_c = np.flatnonzero((cols >= -1e-9) & (cols <= w + 1e-9))
    inside_r = np.flatnonzero((rows >= -1e-9) & (rows <= h + 1e-9))
    assert (c0, c1) == ((inside_c[0], inside_c[-1] + 1) if inside_c.size else (c0, c0))
    assert (r0, r1) == ((inside_r[0], inside_r[-1] + 1) if inside_r.size else (r0, r0))


def test_resample_band_fills_uncovered_pixels_with_the_covered_mean() -> None:
    band = (np.arange(20 * 25, dtype=np.uint16).reshape(20, 25) * 3) % 1000
    out = np.zeros((80, 100), np.uint16)
    box = resample_band(band, (80, 100), 2.0, -1.5, out)
    r0, r1, c0, c1 = box
    assert box == (6, 80, 0, 92)  # content moved up by 1.5 px (6 rows), left by 2 px (8 cols)
    inside = out[r0:r1, c0:c1]
    fill = round(float(inside.mean(dtype=np.float64)))
    assert np.all(out[:r0] == fill) and np.all(out[:, c1:] == fill)
    assert not np.all(inside == fill)


def test_resample_band_is_exact_for_constants_and_identity() -> None:
    out = np.zeros((48, 60), np.uint16)
    resample_band(np.full((4, 5), 1234, np.uint16), (48, 60), 0.3, -0.2, out)
    assert np.all(out == 1234)
    band = np.random.default_rng(0).integers(0, 2048, (48, 60)).astype(np.uint16)
    resample_band(band, (48, 60), 0.0, 0.0, out)
    assert np.array_equal(out, band)
    resample_band(band.astype(np.float64) + 0.4, (48, 60), 0.0, 0.0, out)
    assert np.array_equal(out, band)  # floats are rounded, not truncated
    resample_band(np.full((12, 15), -5.0), (48, 60), 0.5, 0.0, out)
    assert np.all(out == 0)  # clipped to the uint16 range


def test_fuse_images_order_dtype_and_subset() -> None:
    images = {
        "A": np.full((8, 4, 5), 9000, np.uint16),
        "RGB": np.full((3, 48, 60), 7, np.uint8),
        "M": np.full((8, 12, 15), 300, np.uint16),
    }
    stack, channels, valid = fuse_images(images, {"M": (0.0, 0.0), "A": (0.2, 0.1)})
    assert channels == [
        "R",
        "G",
        "B",
        *(f"M{i}" for i in range(1, 9)),
        *(f"A{i}" for i in range(1, 9)),
    ]
    assert channels == channels_of(["A", "M", "RGB"])
    assert stack.shape == (19, 48, 60) and stack.dtype == np.uint16
    assert np.all(stack[:3] == 7) and np.all(stack[3:11] == 300) and np.all(stack[11:] == 9000)
    assert valid["RGB"] == [0, 48, 0, 60] and valid["M"] == [0, 48, 0, 60]
    assert valid["A"] == [0, 47, 0, 58]
    with pytest.raises(ValueError, match="out must be uint16"):
        fuse_images(images, {}, out=np.zeros((19, 48, 60), np.float32))


def test_fused_channels_are_registered_to_rgb() -> None:
    truth = {"P": (1.2, -0.8), "M": (-2.0, 1.4), "A": (0.9, 1.1)}
    images = make_scene(truth, (480, 504), seed=40)
    stack, channels, _ = fuse_images(images, truth)
    ref = stack[:3].astype(np.float32).mean(axis=0)
    inner = np.s_[40:-40, 40:-40]  # away from the filled borders
    for name in ("P", "M5", "A4"):
        est = ecc_shift(ref[inner], stack[channels.index(name)][inner].astype(np.float32))
        assert est.ok and math.hypot(est.dx, est.dy) < 0.1 * 4, (name, est)
    # Unshifted fusion is visibly misregistered (M by ~2 M px = ~8 RGB px).
    bad, _, _ = fuse_images(images, {})
    est = ecc_shift(ref[inner], bad[channels.index("M5")][inner].astype(np.float32))
    assert math.hypot(est.dx - (-2.0 * 4), est.dy - (1.4 * 4)) < 0.5


# --------------------------------------------------------------------------- align_scene


def test_align_scene_estimates_and_fuses(dataset) -> None:
    root, truth = dataset
    scene = open_dataset(root).scene("6010_0_0")
    out = align_scene(scene)
    assert out.stack.shape == (20, *SIZE) and out.stack.dtype == np.uint16
    assert out.channels == channels_of(["RGB", "P", "M", "A"])
    assert {r.product: r.method for r in out.shifts} == {"P": "ecc", "M": "ecc", "A": "ecc"}
    for r in out.shifts:
        tx, ty = truth[r.image_id][r.product]
        assert math.hypot(r.dx - tx, r.dy - ty) < 0.1
    # Given shifts are applied as they are.
    again = align_scene(scene, shifts=out.shifts)
    assert np.array_equal(again.stack, out.stack)
    zero = [ShiftRow(r.image_id, r.product, 0.0, 0.0, math.nan, "identity") for r in out.shifts]
    unshifted = align_scene(scene, shifts=zero)
    assert not np.array_equal(unshifted.stack[4:], out.stack[4:])
    assert np.array_equal(unshifted.stack[:3], out.stack[:3])


def test_mismatched_product_is_a_clear_error(tmp_path) -> None:
    images = make_scene({"P": (0, 0), "M": (0, 0), "A": (0, 0)}, (192, 204), seed=3)
    images["M"] = images["M"][:, :, :20]  # 48 x 20 against a 192 x 204 RGB grid
    root = write_dataset(tmp_path, {"6010_0_0": images})
    scene = open_dataset(root).scene("6010_0_0")
    with pytest.raises(DataError, match=r"6010_0_0_M.tif is 48 x 20 px, whose aspect ratio"):
        align_scene(scene)


# --------------------------------------------------------------------------- align_dataset


def test_align_dataset_recovers_truth_with_region_fallback(dataset, tmp_path) -> None:
    root, truth = dataset
    with pytest.warns(Warning, match="fell back to region_median"):
        report = align_dataset(root, tmp_path / "cache", progress=False)
    assert report.ok and len(report.aligned) == 4
    rows = {(r.image_id, r.product): r for r in read_shifts(tmp_path / "cache" / "shifts.csv")}
    assert len(rows) == 12
    errors = []
    for (image_id, product), r in rows.items():
        t = truth[image_id][product]
        err = math.hypot(r.dx - t[0], r.dy - t[1])
        if image_id == "6010_0_2" and product in ("P", "M"):
            assert r.method == "region_median" and "featureless" in r.reason
            assert err <= 0.75
        else:
            assert r.method == "ecc", r
            errors.append(err)
    assert math.sqrt(np.mean(np.square(errors))) <= 0.1, errors

    cache = open_cache(tmp_path / "cache")
    assert cache.image_ids == sorted(truth)
    arr = cache.load("6010_0_0")
    assert isinstance(arr, np.memmap) and arr.shape == (20, *SIZE) and arr.dtype == np.uint16
    direct = np.load(tmp_path / "cache" / "6010_0_0.npy", mmap_mode="r")
    assert np.array_equal(direct, arr)
    assert cache.channels("6010_0_0") == channels_of(["RGB", "P", "M", "A"])
    valid = cache.valid("6010_0_0")
    assert valid["RGB"] == [0, SIZE[0], 0, SIZE[1]]
    assert set(valid) == {"RGB", "P", "M", "A"}
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert {k: manifest[k] for k in ("format", "version", "dtype", "scale", "offset")} == {
        "format": "spectraseg-cache",
        "version": 1,
        "dtype": "uint16",
        "scale": 1.0,
        "offset": 0.0,
    }
    entry = manifest["scenes"]["6010_0_1"]
    assert (entry["height"], entry["width"], entry["products"]) == (*SIZE, ["RGB", "P", "M", "A"])
    # Fill rule in the cache: outside its valid box a channel holds one value.
    r0, r1, c0, c1 = valid["M"]
    m1 = arr[cache.channels("6010_0_0").index("M1")]
    outside = np.concatenate(
        [m1[:r0].ravel(), m1[r1:].ravel(), m1[:, :c0].ravel(), m1[:, c1:].ravel()]
    )
    assert outside.size and np.unique(outside).size == 1
    assert abs(int(outside[0]) - float(m1[r0:r1, c0:c1].mean())) <= 0.5


def test_rerun_skips_complete_entries_and_redoes_broken_ones(dataset, tmp_path) -> None:
    root, _ = dataset
    cache = tmp_path / "cache"
    ids = ["6010_0_0", "6010_0_1"]
    align_dataset(root, cache, ids, progress=False)
    mtime = {i: (cache / f"{i}.npy").stat().st_mtime_ns for i in ids}
    report = align_dataset(root, cache, ids, progress=False)
    assert [s.status for s in report.scenes] == ["skipped", "skipped"]
    assert {i: (cache / f"{i}.npy").stat().st_mtime_ns for i in ids} == mtime

    # A truncated file and a missing file are not complete, whatever the manifest says.
    with open(cache / "6010_0_0.npy", "r+b") as f:
        f.truncate(1000)
    (cache / "6010_0_1.npy").unlink()
    assert not entry_complete(cache, "6010_0_0", open_cache(cache).entry("6010_0_0"))
    report = align_dataset(root, cache, ids, progress=False)
    assert [s.status for s in report.scenes] == ["aligned", "aligned"]
    assert open_cache(cache).load("6010_0_0").shape == (20, *SIZE)

    # A second run over more scenes keeps the earlier entries and rows.
    report = align_dataset(root, cache, ["6020_1_1"], progress=False)
    assert [s.status for s in report.scenes] == ["aligned"]
    assert open_cache(cache).image_ids == ["6010_0_0", "6010_0_1", "6020_1_1"]
    rows = read_shifts(cache / "shifts.csv")
    assert sorted({r.image_id for r in rows}) == ["6010_0_0", "6010_0_1", "6020_1_1"]


def test_interrupted_run_leaves_no_corrupt_entry(dataset, tmp_path, monkeypatch) -> None:
    root, _ = dataset
    cache = tmp_path / "cache"
    real = fusion.resample_band
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 30:  # in the middle of the second scene (20 channels each)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(fusion, "resample_band", dying)
    ids = ["6010_0_0", "6010_0_1", "6020_1_1"]
    with pytest.raises(KeyboardInterrupt):
        align_dataset(root, cache, ids, progress=False)
    monkeypatch.setattr(fusion, "resample_band", real)
    assert sorted(p.name for p in cache.iterdir()) == [
        "6010_0_0.npy",
        "manifest.json",
        "shifts.csv",
    ]
    assert open_cache(cache).image_ids == ["6010_0_0"]
    report = align_dataset(root, cache, ids, progress=False)
    assert [s.status for s in report.scenes] == ["skipped", "aligned", "aligned"]
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]


def test_scenes_with_missing_products_and_per_scene_failures(tmp_path) -> None:
    good = make_scene({"P": (0, 0), "M": (0.5, 0.5), "A": (0.3, -0.2)}, (192, 204), seed=5)
    no_pm = {k: v for k, v in good.items() if k in ("RGB", "A")}
    bad = dict(good)
    bad["A"] = bad["A"][:, :, :4]  # 16 x 4 against 192 x 204
    no_rgb = {k: v for k, v in good.items() if k != "RGB"}
    scenes = {"6010_0_0": no_pm, "6010_0_1": bad, "6020_0_0": no_rgb}
    root = write_dataset(tmp_path / "data", scenes)
    report = align_dataset(root, tmp_path / "cache", progress=False)
    assert [s.status for s in report.scenes] == ["aligned", "failed", "aligned"]
    assert "6010_0_1_A.tif is 16 x 4 px" in report.failed[0].reason
    cache = open_cache(tmp_path / "cache")
    assert cache.channels("6010_0_0") == ["R", "G", "B", *(f"A{i}" for i in range(1, 9))]
    assert cache.manifest["scenes"]["6010_0_0"]["products"] == ["RGB", "A"]
    # Without RGB the finest product (P) is the reference grid.
    entry = cache.manifest["scenes"]["6020_0_0"]
    assert entry["reference"] == "P" and entry["channels"][:2] == ["P", "M1"]
    assert cache.load("6020_0_0").shape == (17, 192, 204)
    rows = [(r.image_id, r.product, r.method) for r in report.shifts]
    assert rows == [("6010_0_0", "A", "ecc"), ("6020_0_0", "M", "ecc"), ("6020_0_0", "A", "ecc")]
    m = report.shifts[1]
    assert math.hypot(m.dx - 0.5, m.dy - 0.5) < 0.1


def test_whole_run_errors_are_data_errors(dataset, tmp_path) -> None:
    root, _ = dataset
    with pytest.raises(DataError, match="image id 6010_9_9 has no product file"):
        align_dataset(root, tmp_path / "c", ["6010_9_9"], progress=False)
    with pytest.raises(DataError, match=r"dataset root .* does not exist"):
        align_dataset(tmp_path / "nowhere", tmp_path / "c", progress=False)
    (tmp_path / "c2").mkdir()
    (tmp_path / "c2" / "manifest.json").write_text('{"format": "other"}')
    with pytest.raises(DataError, match="is not a spectraseg cache manifest"):
        align_dataset(root, tmp_path / "c2", progress=False)
    with pytest.raises(DataError, match="does not exist"):
        open_cache(tmp_path / "empty")
    (tmp_path / "c3").mkdir()
    with pytest.raises(DataError, match=r"manifest\.json does not exist"):
        open_cache(tmp_path / "c3")


# --------------------------------------------------------------------------- CLI and Dask


def test_cli_align_exit_status_and_output(dataset, tmp_path, capsys) -> None:
    root, _ = dataset
    rc = main(
        ["align", str(root), "--cache", str(tmp_path / "c"), "--images", "6020_1_1", "--quiet"]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert out.startswith("aligned 1, skipped 0 (already cached), failed 0 scene(s)")
    assert "6020_1_1     M" in out and " ecc" in out
    rc = main(
        ["align", str(root), "--cache", str(tmp_path / "c"), "--images", "6020_1_1", "--json"]
    )
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["skipped"] == 1 and doc["scenes"][0]["status"] == "skipped"
    rc = main(["align", str(tmp_path / "nowhere"), "--cache", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("spectraseg align: error: dataset root")
    assert "Traceback" not in err
    rc = main(["align", str(root), "--cache", str(tmp_path / "c"), "--workers", "-1"])
    assert rc == 1 and "--workers must be at least 0" in capsys.readouterr().err


def test_cli_exit_status_3_when_a_scene_fails(tmp_path, capsys) -> None:
    images = make_scene({"P": (0, 0), "M": (0, 0), "A": (0, 0)}, (192, 204), seed=6)
    ok = {k: v for k, v in images.items() if k != "P"}
    broken = dict(ok)
    broken["M"] = ok["M"][:, :10]
    root = write_dataset(tmp_path / "d", {"6010_0_0": ok, "6010_0_1": broken})
    rc = main(["align", str(root), "--cache", str(tmp_path / "c"), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 3
    assert "failed 6010_0_1: " in out and "aspect ratio" in out
    assert open_cache(tmp_path / "c").image_ids == ["6010_0_0"]


def test_dask_local_cluster_matches_serial(dataset, tmp_path) -> None:
    root, _ = dataset
    ids = ["6010_0_0", "6020_1_1"]
    serial = align_dataset(root, tmp_path / "s", ids, progress=False)
    parallel = align_dataset(root, tmp_path / "p", ids, workers=2, progress=False)
    assert parallel.ok and [s.status for s in parallel.scenes] == ["aligned", "aligned"]
    assert [(r.image_id, r.product, r.dx, r.dy) for r in parallel.shifts] == [
        (r.image_id, r.product, r.dx, r.dy) for r in serial.shifts
    ]
    for i in ids:
        assert np.array_equal(
            np.load(tmp_path / "s" / f"{i}.npy"), np.load(tmp_path / "p" / f"{i}.npy")
        )
    assert os.listdir(tmp_path / "p").count("manifest.json") == 1


def test_existing_dask_cluster_by_address(dataset, tmp_path, monkeypatch) -> None:
    from distributed import LocalCluster

    root, _ = dataset
    with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster:
        report = align_dataset(
            root,
            tmp_path / "c",
            ["6020_1_1"],
            scheduler=cluster.scheduler_address,
            progress=False,
        )
    assert report.ok and [s.status for s in report.scenes] == ["aligned"]
    assert open_cache(tmp_path / "c").image_ids == ["6020_1_1"]
    monkeypatch.setattr(parallel, "SCHEDULER_TIMEOUT", "1s")
    with pytest.raises(ConfigError, match="cannot connect to the Dask scheduler"):
        align_dataset(
            root, tmp_path / "c", ["6010_0_0"], scheduler="tcp://127.0.0.1:9", progress=False
        )


# --------------------------------------------------------------------------- real data


def test_dstl_lite_a_registers_to_rgb_on_every_scene(dstl_lite, tmp_path) -> None:
    report = align_dataset(dstl_lite, tmp_path / "cache", progress=False)
    assert report.ok and len(report.aligned) == 20
    assert all(r.product == "A" and r.method == "ecc" for r in report.shifts)
    assert min(r.corr for r in report.shifts) > 0.7
    # Real A shifts are a few A pixels at most (GUIDE: 0.3 to 3.1).
    assert max(math.hypot(r.dx, r.dy) for r in report.shifts) < 4.0
    cache = open_cache(tmp_path / "cache")
    assert cache.load("6010_1_2").shape == (11, 538, 545)


# --------------------------------------------------------------------------- synthetic data


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    """Four synthetic scenes of one region (``spectraseg synth``), the last one made
    featureless in P and M (flat digital numbers plus sensor noise)."""
    from spectraseg.data.synth import synthesize

    root = tmp_path_factory.mktemp("synth")
    ids = synthesize(root, scenes=4, size=(1200, 1200), seed=7, regions=1, progress=False)
    rng = np.random.default_rng(0)
    dead = ids[-1]
    for product in ("P", "M"):
        path = product_path(root, dead, product)
        arr = tifffile.imread(path)
        flat = np.full(arr.shape, 400.0) + rng.normal(0, 2.0, arr.shape)
        tifffile.imwrite(
            path,
            flat.astype(np.uint16),
            photometric="minisblack",
            planarconfig="separate" if arr.ndim == 3 else None,
        )
    return root


def test_synthetic_shifts_within_a_tenth_of_a_pixel_and_featureless_fallback(
    synth_root, tmp_path
) -> None:
    with pytest.warns(Warning, match="fell back to region_median"):
        report = align_dataset(synth_root, tmp_path / "cache", progress=False)
    assert report.ok and len(report.aligned) == 4
    truth = {(t.image_id, t.product): t for t in read_shifts(synth_root / "shifts.csv")}
    dead = report.scenes[-1].image_id
    errors = []
    for r in read_shifts(tmp_path / "cache" / "shifts.csv"):
        t = truth[r.image_id, r.product]
        err = math.hypot(r.dx - t.dx, r.dy - t.dy)
        if r.image_id == dead and r.product in ("P", "M"):
            assert r.method == "region_median" and "featureless" in r.reason
            assert err <= 0.75, (r, t)
        else:
            assert r.method == "ecc", r
            errors.append(err)
    assert len(errors) == 10
    # Composed shifts (P in RGB px, M and A in their own px) against the synthetic truth.
    assert math.sqrt(np.mean(np.square(errors))) <= 0.1, errors
