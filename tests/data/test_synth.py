"""Tests of the synthetic DSTL-format generator (``spectraseg.data.synth``, CLI ``synth``)."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import re
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import shapely
import tifffile

from spectraseg import NUM_CLASSES
from spectraseg.cli import main
from spectraseg.data.dstl import open_dataset, read_wkt_rows
from spectraseg.data.geometry import rasterize, rasterize_classes
from spectraseg.data.synth import (
    MIN_SIZE,
    SHIFT_JITTER,
    SHIFT_LIMITS,
    ground_sample_distance,
    make_region,
    make_scene,
    product_shape,
    synthesize,
)
from spectraseg.errors import ConfigError

SIZE = (256, 288)
SCENES = 6


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A small two-region dataset with all products, shared by the read-only tests."""
    out = tmp_path_factory.mktemp("synth") / "data"
    ids = synthesize(out, SCENES, SIZE, seed=3, regions=2, progress=False)
    return out, ids


def _shifts(path: Path) -> dict[tuple[str, str], tuple[float, float]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {(r["image_id"], r["product"]): (float(r["dx"]), float(r["dy"])) for r in rows}


def _unshift(image: np.ndarray, shift: tuple[float, float], size: tuple[int, int]) -> np.ndarray:
    """A product band (h, w) moved back by its shift and resampled onto the RGB grid."""
    warp = np.array([[1, 0, -shift[0]], [0, 1, -shift[1]]], dtype=np.float64)
    h, w = image.shape
    back = cv2.warpAffine(
        image.astype(np.float32),
        warp,
        (w, h),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT,
    )
    return cv2.resize(back, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def _ecc(template: np.ndarray, image: np.ndarray) -> tuple[float, float]:
    """Translation t with image(x + t) ~ template(x), by OpenCV ECC."""
    warp = np.eye(2, 3, dtype=np.float32)
    crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 200, 1e-6)
    _, warp = cv2.findTransformECC(
        template.astype(np.float32),
        image.astype(np.float32),
        warp,
        cv2.MOTION_TRANSLATION,
        crit,
        None,
        1,
    )
    return float(warp[0, 2]), float(warp[1, 2])


# --------------------------------------------------------------------------- layout, formats


def test_layout_dtypes_shapes_and_bit_depths(dataset) -> None:
    root, ids = dataset
    assert ids == sorted(ids) and len(ids) == SCENES
    assert all(re.fullmatch(r"60[0-9]0_[0-4]_[0-4]", i) for i in ids)
    assert {i[:4] for i in ids} == {"6010", "6020"}
    ds = open_dataset(root)
    assert ds.image_ids == ids
    sizes = set()
    for scene in ds.scenes():
        rgb = scene.info("RGB")
        h, w = rgb.height, rgb.width
        sizes.add((h, w))
        assert abs(h - SIZE[0]) <= 2 and abs(w - SIZE[1]) <= 3
        assert scene.info("P").shape == (1, h, w)
        assert scene.info("M").shape == (8, round(h / 4), round(w / 4))
        assert scene.info("A").shape == (8, round(h / 24), round(w / 24))
        for name, bits in (("RGB", 11), ("P", 11), ("M", 11), ("A", 14)):
            assert scene.info(name).dtype == np.uint16
            pixels = scene.read(name)
            assert pixels.max() < 2**bits and pixels.min() >= 0
            assert np.unique(pixels).size > 50  # an image, not a constant
        # A really uses its 14 bits; the 11-bit products stay below 2048.
        assert scene.read("A").max() > 2047
        xmax, ymin = ds.grid_sizes[scene.image_id]
        assert 0.0091 < xmax < 0.0093 and -0.0091 < ymin < -0.0090
    assert len(sizes) > 1  # sizes vary between scenes, as in the real data


def test_files_are_planar_tiffs_as_in_the_competition(dataset) -> None:
    root, ids = dataset
    with tifffile.TiffFile(root / "three_band" / f"{ids[0]}.tif") as tif:
        assert tif.series[0].shape[0] == 3 and tif.pages[0].planarconfig == 2
    assert tifffile.imread(root / "sixteen_band" / f"{ids[0]}_P.tif").ndim == 2
    assert tifffile.imread(root / "sixteen_band" / f"{ids[0]}_M.tif").shape[0] == 8


def test_csv_files_follow_the_grid_order(dataset) -> None:
    root, ids = dataset
    ds = open_dataset(root)
    assert list(ds.grid_sizes) == ids
    expected = [(i, c) for i in ids for c in range(1, NUM_CLASSES + 1)]
    assert ds.sample_order() == expected
    rows = read_wkt_rows(root / "train_wkt_v4.csv")
    assert [(i, c) for i, c, _ in rows] == expected
    for _, _, text in rows:
        assert text == "MULTIPOLYGON EMPTY" or text.startswith("MULTIPOLYGON (((")
    header = (root / "grid_sizes.csv").read_text().splitlines()[0]
    assert header == ",Xmax,Ymin"
    # The placeholder of the sample submission covers the whole extent, like the real one.
    for image_id, _, text in read_wkt_rows(root / "sample_submission.csv")[::NUM_CLASSES]:
        xmax, ymin = ds.grid_sizes[image_id]
        assert shapely.from_wkt(text).area == pytest.approx(xmax * -ymin, rel=1e-9)


def test_labels_are_valid_multipolygons_inside_the_grid(dataset) -> None:
    root, ids = dataset
    ds = open_dataset(root)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a repaired polygon would warn
        labels = ds.labels
    for image_id in ids:
        xmax, ymin = ds.grid_sizes[image_id]
        for cls in range(1, NUM_CLASSES + 1):
            geom = labels[image_id][cls]
            assert geom.geom_type == "MultiPolygon" and geom.is_valid
            if not geom.is_empty:
                x0, y0, x1, y1 = geom.bounds
                assert x0 >= 0 and x1 <= xmax and y0 >= ymin and y1 <= 0


def test_every_class_appears_in_every_region(dataset) -> None:
    root, ids = dataset
    ds = open_dataset(root)
    for region in ("6010", "6020"):
        first = next(i for i in ids if i.startswith(region))
        areas = [ds.scene_labels(first)[c].area for c in range(1, NUM_CLASSES + 1)]
        assert all(a > 0 for a in areas), (first, areas)


@pytest.mark.parametrize("seed", range(4))
def test_all_classes_even_in_the_smallest_scene(seed: int) -> None:
    scene = make_scene("6010_1_1", MIN_SIZE, MIN_SIZE, seed, all_classes=True)
    masks = rasterize_classes(scene.labels, scene.width, scene.height, scene.xmax, scene.ymin)
    assert all(masks[c].sum() > 0 for c in range(NUM_CLASSES)), masks.sum(axis=(1, 2))


def test_class_shares_are_plausible(dataset) -> None:
    root, ids = dataset
    ds = open_dataset(root)
    total = sum(ds.grid_sizes[i][0] * -ds.grid_sizes[i][1] for i in ids)
    share = {
        c: sum(ds.scene_labels(i)[c].area for i in ids) / total for c in range(1, NUM_CLASSES + 1)
    }
    # Fields and trees cover most labelled ground; vehicles are tiny; nothing is absurd.
    assert share[6] > 0.08 and share[5] > 0.03
    assert share[6] > share[1] > share[9]
    assert share[10] < 0.01 and share[9] < 0.01
    assert sum(share.values()) < 0.9


# --------------------------------------------------------------------------- rendering


@pytest.fixture(scope="module")
def scene960():
    return make_scene("6010_2_2", 960, 960, 5, all_classes=True)


def _visible_masks(scene) -> np.ndarray:
    """(10, H, W) bool: pixels whose topmost class is c, eroded away from class edges."""
    masks = rasterize_classes(scene.labels, scene.width, scene.height, scene.xmax, scene.ymin)
    order = (6, 5, 8, 7, 4, 3, 1, 2, 9, 10)
    top = np.zeros(masks.shape[1:], np.int8)
    for c in order:
        top[masks[c - 1] > 0] = c
    kernel = np.ones((5, 5), np.uint8)
    return np.stack(
        [cv2.erode((top == c).astype(np.uint8), kernel) > 0 for c in range(1, NUM_CLASSES + 1)]
    )


def test_spectra_agree_with_labels(scene960) -> None:
    s = scene960
    vis = _visible_masks(s)
    size = (s.height, s.width)
    m = s.products["M"]
    nir = _unshift(m[6], s.shifts["M"], size)
    red = _unshift(m[4], s.shifts["M"], size)
    ndvi = (nir - red) / (nir + red)

    def mean(img: np.ndarray, cls: int) -> float:
        assert vis[cls - 1].sum() > 20, f"class {cls} too small to measure"
        return float(img[vis[cls - 1]].mean())

    # Vegetation is bright in NIR, water is dark there.
    assert mean(nir, 5) > 1.8 * mean(nir, 7) and mean(nir, 5) > 1.8 * mean(nir, 8)
    assert mean(ndvi, 5) > mean(ndvi, 3) + 0.2 and mean(ndvi, 5) > mean(ndvi, 1) + 0.2
    assert mean(nir, 5) > mean(nir, 3)  # trees brighter than asphalt in NIR
    # Tracks (dirt) are brighter than roads (asphalt) in the visible.
    rgb = s.products["RGB"].astype(np.float32).mean(0)
    assert mean(rgb, 4) > mean(rgb, 3)

    # Water is dark in every SWIR band: regressing A pixels on their water fraction (where
    # water lies in A, i.e. shifted by the true shift) predicts a wet pixel darker than
    # almost every dry one.
    a = s.products["A"]
    ah, aw = a.shape[1:]
    water = [rasterize(s.labels[c], s.width, s.height, s.xmax, s.ymin) for c in (7, 8)]
    frac = cv2.resize(
        (water[0] | water[1]).astype(np.float32), (aw, ah), interpolation=cv2.INTER_AREA
    )
    warp = np.array([[1, 0, s.shifts["A"][0]], [0, 1, s.shifts["A"][1]]])
    frac = cv2.warpAffine(frac, warp, (aw, ah), flags=cv2.INTER_LINEAR).ravel()
    assert (frac > 0.3).sum() >= 10
    for band in range(8):
        swir = a[band].astype(float).ravel()
        slope, intercept = np.polyfit(frac, swir, 1)
        assert np.corrcoef(frac, swir)[0, 1] < -0.3
        assert intercept + slope < np.percentile(swir[frac == 0], 5)


def test_region_gains_and_offsets_set_the_digital_numbers() -> None:
    """Same ground under another acquisition: DN - offset scales with the region's gain."""
    one = make_region("6010", 1)
    other = make_region("6020", 2)
    assert np.abs(other.gain / one.gain - 1).max() > 0.02  # regions differ in illumination
    two = dataclasses.replace(one, gain=other.gain, offset=other.offset)
    a = make_scene("6010_0_0", 240, 240, 1, one, products=("M", "A"), noise=0)
    b = make_scene("6010_0_0", 240, 240, 1, two, products=("M", "A"), noise=0)
    for name, first in (("M", 0), ("A", 8)):
        for band in range(8):
            k = first + band
            ra = a.products[name][band].astype(float) - one.offset[k]
            rb = b.products[name][band].astype(float) - other.offset[k]
            ratio = rb.mean() / ra.mean()
            assert ratio == pytest.approx(other.gain[k] / one.gain[k], rel=0.01)
    # The default region depends on the region's name, not only on the seed.
    c = make_scene("6010_0_0", 240, 240, 1, noise=0, products=("A",))
    d = make_scene("6020_0_0", 240, 240, 1, noise=0, products=("A",))
    assert not np.array_equal(c.products["A"], d.products["A"])


# --------------------------------------------------------------------------- shifts


def test_shifts_within_bounds_and_shared_by_a_region(dataset) -> None:
    root, ids = dataset
    shifts = _shifts(root / "shifts.csv")
    assert set(shifts) == {(i, p) for i in ids for p in ("P", "M", "A")}
    for (_, product), (dx, dy) in shifts.items():
        assert abs(dx) <= SHIFT_LIMITS[product] and abs(dy) <= SHIFT_LIMITS[product]
    for region in ("6010", "6020"):
        for product in ("P", "M", "A"):
            xy = np.array([v for (i, p), v in shifts.items() if p == product and i[:4] == region])
            assert len(xy) >= 2
            assert np.ptp(xy, axis=0).max() <= 2 * SHIFT_JITTER + 1e-9
            assert np.ptp(xy, axis=0).max() > 0  # a per-scene jitter exists


def test_shift_sign_exactly_as_documented() -> None:
    """A ground feature at product pixel (u, v) of a registered product is at (u+dx, v+dy)."""
    zero = {"P": (0, 0), "M": (0, 0), "A": (0, 0)}
    moved = {"P": (1, -1), "M": (2, 1), "A": (-1, 2)}
    a = make_scene("6010_1_2", 240, 264, 11, shifts=zero, noise=0)
    b = make_scene("6010_1_2", 240, 264, 11, shifts=moved, noise=0)
    assert b.shifts == {k: (float(x), float(y)) for k, (x, y) in moved.items()}
    np.testing.assert_array_equal(a.products["RGB"], b.products["RGB"])
    for product, (dx, dy) in moved.items():
        reg, mov = a.products[product], b.products[product]
        if reg.ndim == 2:
            reg, mov = reg[None], mov[None]
        h, w = reg.shape[1:]
        k = 3  # away from the reflected borders
        np.testing.assert_array_equal(
            reg[:, k : h - k, k : w - k], mov[:, k + dy : h - k + dy, k + dx : w - k + dx]
        )


def test_registration_recovers_the_recorded_shift() -> None:
    # Pin ECC's convention first: content moved by +2 columns and +1 row gives (+2, +1).
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.random((64, 64)).astype(np.float32), (0, 0), 2)
    assert _ecc(base, np.roll(base, (1, 2), axis=(0, 1))) == pytest.approx((2, 1), abs=1e-3)
    s = make_scene("6010_1_2", 512, 512, 3, all_classes=True)
    rgb = s.products["RGB"].astype(np.float32)
    m_red = s.products["M"][4]
    template = cv2.resize(rgb[0], m_red.shape[::-1], interpolation=cv2.INTER_AREA)
    assert _ecc(template, m_red) == pytest.approx(s.shifts["M"], abs=0.15)
    pan = s.products["P"]
    assert _ecc(rgb.mean(0), pan) == pytest.approx(s.shifts["P"], abs=0.15)


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path) -> None:
    kw = {"scenes": 2, "size": (200, 216), "progress": False}
    a = synthesize(tmp_path / "a", seed=9, **kw)
    b = synthesize(tmp_path / "b", seed=9, **kw)
    c = synthesize(tmp_path / "c", seed=10, **kw)
    assert a == b
    files = sorted(
        p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file()
    )
    assert len(files) == 2 * 4 + 5
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    rgb_a = (tmp_path / "a" / "three_band" / f"{a[0]}.tif").read_bytes()
    rgb_c = (tmp_path / "c" / "three_band" / f"{c[0]}.tif").read_bytes()
    assert rgb_a != rgb_c
    labels_a = (tmp_path / "a" / "train_wkt_v4.csv").read_text()
    assert labels_a != (tmp_path / "c" / "train_wkt_v4.csv").read_text()


# The random draw order is part of the format: the same arguments must give the same bytes
# across refactors. Regenerate these digests only for a deliberate change of the output.
GOLDEN_SCENE = "5824fc6f3115b3438ff369c5e66d87acd2c20e0fa2c9c82bd995e8e4847d7c36"
GOLDEN_FILES = {
    "grid_sizes.csv": "bde868ae96185ee5f51cdfc74f6a7c247dd48a0c4d0b0a3b8d36b942d1dca817",
    "sample_submission.csv": "fa2f75da7f926ac51e4886fd185648bdd81433dd6bd3bad20b71ce483d463db8",
    "shifts.csv": "065c107d80163a9fe03820cce9797ffdd3048e904fc94d3d843492c238faf952",
    "6010_0_4_A.tif": "25907995f21ba8c217fcdaadb5a489be604c10a296aa6c59dc3e3a94a7ab7631",
    "6010_0_4_M.tif": "b6e0109fb70d4c8608f95d3de272704b4a44a7ba8ffd8d30482935790f1833c6",
    "6010_0_4_P.tif": "186651bc1b24cf210ebb8cb1028ac0ef4ad621409b438d3ab15b0000339623eb",
    "6010_3_2_A.tif": "f86c253755e085ad617fe0bf5c2f21ed05a448bd38a226a190a9dca90997632e",
    "6010_3_2_M.tif": "a805d5848364518964df83742060ebee9d5a57ed67754abf43e216d2d22485b9",
    "6010_3_2_P.tif": "ed43f160c3f4c835d3c7f32ce0f461b4ee06a9ade81e2ef2e6d721df1218c918",
    "synth.json": "0ff2ceeee1c666d79337591f2ff5d72f3a559f09e8fd1f0d59c13458062378a1",
    "6010_0_4.tif": "213adab41960d8c0bb437b415d71e45c789c289253b7a228c8156916ceafd511",
    "6010_3_2.tif": "433104fba770bdc6cc8c62401553ddb9bd7541101d48c1e2b5bbab3ee6ec4533",
    "train_wkt_v4.csv": "8a6b4806ae7476534a2b209ac722d154609bddb23f199604bf5c38adc59566d6",
}


def _scene_digest(scene) -> str:
    """sha256 over every product's dtype, shape and bytes, the labels' WKT and the shifts."""
    h = hashlib.sha256()
    h.update(repr((scene.image_id, scene.height, scene.width, scene.xmax, scene.ymin)).encode())
    h.update(repr((scene.gsd, sorted(scene.shifts.items()))).encode())
    for name, image in scene.products.items():
        h.update(f"{name} {image.dtype} {image.shape}".encode())
        h.update(np.ascontiguousarray(image).tobytes())
    for cls in range(1, NUM_CLASSES + 1):
        h.update(shapely.to_wkt(scene.labels[cls], rounding_precision=-1).encode())
    return h.hexdigest()


def test_golden_digests_of_a_scene_and_a_dataset(tmp_path: Path) -> None:
    scene = make_scene("6010_1_1", 192, 208, 3, all_classes=True)
    assert _scene_digest(scene) == GOLDEN_SCENE
    out = tmp_path / "d"
    synthesize(out, scenes=2, size=(192, 192), seed=7, progress=False)
    # File names are unique across the dataset's folders (RGB: {id}.tif, others {id}_X.tif).
    digests = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }
    assert len(digests) == len(GOLDEN_FILES) == 2 * 4 + 5
    assert digests == GOLDEN_FILES


def test_products_are_independent_of_which_are_rendered() -> None:
    full = make_scene("6010_0_1", 240, 240, 4)
    only_m = make_scene("6010_0_1", 240, 240, 4, products=("M",))
    assert set(only_m.products) == {"M"} and set(only_m.shifts) == {"M"}
    np.testing.assert_array_equal(full.products["M"], only_m.products["M"])
    assert all(full.labels[c].equals(only_m.labels[c]) for c in full.labels)


def test_sizes_and_scale() -> None:
    assert product_shape("A", 3348, 3392) == (8, 140, 141)
    assert product_shape("M", 3348, 3392) == (8, 837, 848)
    assert product_shape("P", 300, 301) == (300, 301)
    assert ground_sample_distance(3348, 3392) == pytest.approx(0.31, abs=0.002)
    assert ground_sample_distance(512, 512) > 0.75  # small scenes cover less ground


# --------------------------------------------------------------------------- writer, CLI


def test_regions_default_and_spread(tmp_path: Path) -> None:
    ids = synthesize(tmp_path / "d", 9, (200, 200), seed=1, products=("A",), progress=False)
    regions = [i[:4] for i in ids]
    assert sorted(set(regions)) == ["6010", "6020", "6030"]  # ceil(9 / 4) regions
    assert [regions.count(r) for r in ("6010", "6020", "6030")] == [3, 3, 3]
    assert len(set(ids)) == 9
    assert not (tmp_path / "d" / "three_band").exists()  # only the requested products
    manifest = json.loads((tmp_path / "d" / "synth.json").read_text())
    assert manifest["regions"] == 3 and manifest["image_ids"] == ids


def test_rerun_replaces_its_own_scenes(tmp_path: Path) -> None:
    out = tmp_path / "d"
    synthesize(out, 4, (200, 200), seed=1, progress=False)
    ids = synthesize(out, 2, (200, 200), seed=2, products=("RGB", "A"), progress=False)
    ds = open_dataset(out)
    assert ds.image_ids == ids
    assert all(set(s.products) == {"RGB", "A"} for s in ds.scenes())


def test_refuses_to_mix_with_foreign_scenes(tmp_path: Path) -> None:
    out = tmp_path / "d"
    (out / "three_band").mkdir(parents=True)
    (out / "three_band" / "6999_0_0.tif").write_bytes(b"not ours")
    with pytest.raises(ConfigError, match="already holds scenes this run would not replace"):
        synthesize(out, 1, (200, 200), seed=1, progress=False)
    assert (out / "three_band" / "6999_0_0.tif").read_bytes() == b"not ours"


def test_cli_writes_a_dataset_that_inspect_accepts(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    args = ["synth", "--out", str(out), "--scenes", "3", "--size", "240", "256"]
    assert main([*args, "--seed", "5", "--quiet"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [
        f"synthesized 3 scene(s) in 1 region(s), about 240x256 px, products RGB,P,M,A, "
        f"seed 5: {out}"
    ]
    assert main(["inspect", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert len(summary["scenes"]) == 3 and summary["labelled"] == 3
    assert all(set(s["products"]) == {"RGB", "P", "M", "A"} for s in summary["scenes"])
    assert all(summary["class_share"][str(c)] > 0 for c in range(1, NUM_CLASSES + 1))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--scenes", "0"], "number of scenes 0 is not valid: use 1 or more"),
        (
            ["--size", "100", "512"],
            f"scene height 100 is out of range: use {MIN_SIZE}..4096 pixels",
        ),
        (["--size", "512", "5000"], "scene width 5000 is out of range"),
        (["--products", "RGB,X"], "product 'X' is not one of RGB, P, M, A"),
        (["--products", ","], "no product requested"),
        (["--products", "M,M"], "products M,M name a product twice"),
        (["--scenes", "2", "--regions", "3"], "3 regions cannot be filled by 2 scene(s)"),
        (
            ["--scenes", "60", "--regions", "2"],
            "60 scenes in 2 region(s) exceed 25 tiles per region: use at least 3 regions",
        ),
        (["--seed", "-1"], "seed -1 is not valid: use a non-negative integer"),
    ],
)
def test_cli_refuses_bad_values(tmp_path: Path, capsys, extra: list[str], message: str) -> None:
    out = tmp_path / "bad"
    assert main(["synth", "--out", str(out), "--quiet", *extra]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("spectraseg synth: error: ")
    assert message in err[0]
    assert not (out / "grid_sizes.csv").exists()
