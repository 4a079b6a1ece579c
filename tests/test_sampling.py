from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import MultiPolygon, box

from spectraseg.align.masks import build_masks
from spectraseg.data.dstl import write_grid_sizes, write_wkt_csv
from spectraseg.data.geometry import rasterize_classes
from spectraseg.errors import ConfigError, DataError, SpectrasegWarning
from spectraseg.features.indices import compute_indices
from spectraseg.features.normalization import compute_stats, normalize
from spectraseg.features.patches import PatchDataset, load_scene
from spectraseg.features.split import split_scenes
from spectraseg.features.stats import Stats, StatsEntry
from spectraseg.features.windows import dihedral, read_window, reflect_index

torch.set_num_threads(1)

CHANNELS = ["R", "G", "B", "A1", "A2", "A3", "A6"]


def write_cache(root: Path, scenes: dict, masks: dict | None = None) -> Path:
    """A cache in the documented format (``{id}.npy`` + manifest.json, optional masks)."""
    (root / "masks").mkdir(parents=True, exist_ok=True)
    manifest = {"format": "spectraseg-cache", "version": 1, "dtype": "uint16", "scale": 1.0}
    manifest["offset"] = 0.0
    manifest["scenes"] = {}
    for image_id, arr in scenes.items():
        np.save(root / f"{image_id}.npy", arr.astype(np.uint16))
        h, w = arr.shape[1:]
        manifest["scenes"][image_id] = {
            "channels": CHANNELS[: arr.shape[0]],
            "height": h,
            "width": w,
            "products": ["RGB", "A"],
            "valid": {"RGB": [0, h, 0, w], "A": [0, h, 0, w]},
        }
        if masks is not None:
            np.save(root / "masks" / f"{image_id}.npy", masks[image_id].astype(np.uint8))
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def identity_stats(n: int = 7) -> Stats:
    """Statistics that leave values unchanged (mean 0, std 1)."""
    return Stats("dataset", tuple(CHANNELS[:n]), StatsEntry((0.0,) * n, (1.0,) * n, 1))


@pytest.fixture
def coord_cache(tmp_path):
    """Scenes whose channels 0/1 hold each pixel's row/col, with random masks.

    Rare classes: class 9 is a single pixel in scene a, class 2 a 3 x 3 block in scene b.
    """
    rng = np.random.default_rng(0)
    scenes, masks = {}, {}
    for image_id, (h, w) in {"6010_0_0": (50, 70), "6040_1_1": (64, 40)}.items():
        arr = rng.integers(100, 5000, (len(CHANNELS), h, w)).astype(np.uint16)
        arr[0] = np.arange(h)[:, None]
        arr[1] = np.arange(w)[None, :]
        m = np.zeros((10, h, w), dtype=np.uint8)
        m[[0, 4, 5]] = rng.integers(0, 2, (3, h, w))
        scenes[image_id], masks[image_id] = arr, m
    masks["6010_0_0"][8, 10, 60] = 1
    masks["6040_1_1"][1, 30:33, 5:8] = 1
    return write_cache(tmp_path / "cache", scenes, masks), scenes, masks


# --------------------------------------------------------------------------- windows


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 12), st.integers(-30, 30), st.integers(1, 30))
def test_reflect_index_matches_numpy_pad(n, start, size):
    pad = 70
    ref = np.pad(np.arange(n), pad, mode="reflect") if n > 1 else np.zeros(n + 2 * pad, int)
    assert reflect_index(start, size, n).tolist() == ref[start + pad : start + pad + size].tolist()


@settings(max_examples=60, deadline=None)
@given(st.integers(-20, 30), st.integers(-20, 30), st.integers(1, 24))
def test_read_window_is_reflect_padding(row0, col0, size):
    arr = np.arange(2 * 9 * 13, dtype=np.uint16).reshape(2, 9, 13)
    p = 64  # wider than any window reaches
    padded = np.pad(arr, ((0, 0), (p, p), (p, p)), mode="reflect")
    want = padded[:, row0 + p : row0 + p + size, col0 + p : col0 + p + size]
    got = read_window(arr, row0, col0, size)
    assert got.dtype == arr.dtype and np.array_equal(got, want)


def test_dihedral_gives_the_eight_symmetries():
    x = np.arange(9).reshape(1, 3, 3)
    outs = {dihedral(x, k).tobytes() for k in range(8)}
    assert len(outs) == 8
    assert np.array_equal(dihedral(x, 0), x)
    assert np.array_equal(dihedral(x, 4)[0], x[0].T)
    with pytest.raises(ValueError):
        dihedral(x, 8)


# --------------------------------------------------------------------------- patches


def test_image_and_mask_stay_aligned_exactly(coord_cache):
    root, scenes, masks = coord_cache
    ds = PatchDataset(root, sorted(scenes), identity_stats(), size=24, length=64, rare_share=0.5)
    seen = set()
    for i in range(len(ds)):
        plan = ds.plan(i)
        seen.add(plan.transform)
        item = ds[i]
        img, mask = item["image"].numpy(), item["mask"].numpy()
        assert img.dtype == np.float32 and img.shape == (len(CHANNELS), 24, 24)
        assert mask.dtype == np.uint8 and mask.shape == (10, 24, 24)
        rows, cols = img[0].astype(int), img[1].astype(int)
        image_id = ds.image_ids[plan.scene]
        # Every output pixel's mask is the truth at the scene pixel its image came from.
        assert np.array_equal(mask, masks[image_id][:, rows, cols])
        assert np.array_equal(img[2:], scenes[image_id][2:, rows, cols])
        # And that pixel is the reflect-padded window pixel under the plan's symmetry.
        want = dihedral(read_window(scenes[image_id][:2], plan.row0, plan.col0, 24), plan.transform)
        assert np.array_equal(img[:2], want)
    assert seen == set(range(8))


def test_same_seed_same_patches_any_worker_count(coord_cache):
    root, scenes, _ = coord_cache
    kw = dict(size=16, length=12, rare_share=0.5, seed=7)
    ds = PatchDataset(root, sorted(scenes), identity_stats(), **kw)
    again = PatchDataset(root, sorted(scenes), identity_stats(), **kw)
    for i in range(len(ds)):
        assert torch.equal(ds[i]["image"], again[i]["image"])
        assert torch.equal(ds[i]["mask"], again[i]["mask"])

    def batches(workers):
        loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=workers)
        return [(b["image"], b["mask"]) for b in loader]

    single, multi = batches(0), batches(2)
    assert len(single) == 3
    for (i0, m0), (i1, m1) in zip(single, multi, strict=True):
        assert torch.equal(i0, i1) and torch.equal(m0, m1)
    # Items (thus workers' shares) differ from one another.
    images = torch.cat([b[0] for b in single])
    assert len({images[k].numpy().tobytes() for k in range(len(images))}) == len(images)


def test_ranks_epochs_and_seeds_give_distinct_streams(coord_cache):
    root, scenes, _ = coord_cache

    def plans(**kw):
        ds = PatchDataset(root, sorted(scenes), identity_stats(), size=16, length=20, **kw)
        return [ds.plan(i) for i in range(len(ds))], ds

    base, ds = plans()
    assert plans(rank=1)[0] != base
    assert plans(seed=1)[0] != base
    ds.set_epoch(1)
    assert [ds.plan(i) for i in range(20)] != base
    ds.set_epoch(0)
    assert [ds.plan(i) for i in range(20)] == base
    # Worker processes reopen memory maps: the pickled dataset holds none.
    ds[0]
    assert ds._arrays and not pickle.loads(pickle.dumps(ds))._arrays


@pytest.mark.parametrize("share", [0.0, 0.3, 1.0])
def test_oversampled_share_follows_the_setting(coord_cache, share):
    root, scenes, masks = coord_cache
    n = 1500
    ds = PatchDataset(root, sorted(scenes), identity_stats(), size=16, length=n, rare_share=share)
    assert ds.rare_present == [2, 9]  # classes 7, 8, 10 are absent and never drawn
    plans = [ds.plan(i) for i in range(n)]
    rare = [p for p in plans if p.cls is not None]
    tol = 4 * np.sqrt(share * (1 - share) / n) + 1e-9
    assert abs(len(rare) / n - share) <= tol
    if share == 0.3:
        # Both present rare classes are drawn, about equally often.
        nine = sum(p.cls == 9 for p in rare)
        assert abs(nine / len(rare) - 0.5) < 0.1
    for p in rare[:200]:
        r, c = p.pixel
        assert masks[ds.image_ids[p.scene]][p.cls - 1, r, c] == 1
        # The rare pixel lies in the window, within the jitter of its centre.
        assert abs(r - (p.row0 + 8)) <= 4 and abs(c - (p.col0 + 8)) <= 4
    for i, p in enumerate(plans[:100]):
        if p.cls is not None:
            assert ds[i]["mask"][p.cls - 1].any()


def test_index_channels_and_channel_selection(coord_cache):
    root, scenes, _ = coord_cache
    stats = compute_stats(root, mode="image", progress=False)
    ds = PatchDataset(
        root,
        sorted(scenes),
        stats,
        size=16,
        length=4,
        augment=False,
        channels=["A1", "R"],
        indices=["NBR2", "ND:A1:A2"],
    )
    assert ds.channel_names == ["A1", "R", "NBR2", "ND:A1:A2"] and ds.in_channels == 4
    for i in range(4):
        plan = ds.plan(i)
        image_id = ds.image_ids[plan.scene]
        raw = read_window(scenes[image_id], plan.row0, plan.col0, 16)
        mean, std = stats.lookup(image_id)
        img = ds[i]["image"].numpy()
        want = normalize(raw[[3, 0]], mean[[3, 0]], std[[3, 0]])
        np.testing.assert_allclose(img[:2], want, rtol=1e-6, atol=1e-6)
        want_idx = compute_indices(raw, CHANNELS, ["NBR2", "ND:A1:A2"])
        np.testing.assert_array_equal(img[2:], want_idx)


def test_photometric_gains_act_on_physical_values(coord_cache):
    root, scenes, _ = coord_cache
    stats = compute_stats(root, mode="image", progress=False)
    kw = dict(size=16, length=400, augment=False, indices=["NBR2", "ND:A1:A2"])
    plain = PatchDataset(root, sorted(scenes), stats, **kw)
    ds = PatchDataset(root, sorted(scenes), stats, photometric=0.2, **kw)
    assert plain.plan(3).gains is None
    logs = []
    for i in range(400):
        plan = ds.plan(i)
        assert plan.gains is not None and len(plan.gains) == len(CHANNELS)
        logs.append(np.log(plan.gains))
        p0 = plain.plan(i)  # same window and symmetry: the gains are drawn last
        assert (p0.scene, p0.row0, p0.col0, p0.transform) == (
            plan.scene,
            plan.row0,
            plan.col0,
            plan.transform,
        )
        if i < 6:
            image_id = ds.image_ids[plan.scene]
            phys = read_window(scenes[image_id], plan.row0, plan.col0, 16).astype(np.float32)
            phys *= np.asarray(plan.gains, np.float32)[:, None, None]
            mean, std = stats.lookup(image_id)
            img = ds[i]["image"].numpy()
            np.testing.assert_allclose(img[:7], normalize(phys, mean, std), rtol=1e-5, atol=1e-5)
            want_idx = compute_indices(phys, CHANNELS, ["NBR2", "ND:A1:A2"])
            np.testing.assert_allclose(img[7:], want_idx, rtol=1e-5, atol=1e-6)
    logs = np.array(logs)
    # Log-gains: mean 0, std 0.2 per band, correlation 0.5 between bands (half shared).
    assert np.abs(logs.mean(axis=0)).max() < 0.04
    np.testing.assert_allclose(logs.std(axis=0), 0.2, rtol=0.15)
    corr = np.corrcoef(logs.T)[np.triu_indices(len(CHANNELS), 1)]
    assert 0.35 < corr.mean() < 0.65
    # Deterministic per (seed, rank, epoch, index).
    assert ds.plan(5) == PatchDataset(root, sorted(scenes), stats, photometric=0.2, **kw).plan(5)


def test_load_scene_matches_patches(coord_cache):
    root, scenes, _ = coord_cache
    stats = compute_stats(root, mode="region", progress=False)
    image_id = "6040_1_1"
    whole = load_scene(root, image_id, stats, indices=["NBR2"], block_rows=7)
    arr = scenes[image_id]
    assert whole.dtype == np.float32 and whole.shape == (len(CHANNELS) + 1, *arr.shape[1:])
    mean, std = stats.lookup(image_id)
    np.testing.assert_array_equal(whole[:-1], normalize(arr, mean, std))
    np.testing.assert_array_equal(whole[-1], compute_indices(arr, CHANNELS, ["NBR2"])[0])
    ds = PatchDataset(root, [image_id], stats, size=16, length=8, augment=False, indices=["NBR2"])
    for i in range(8):
        plan = ds.plan(i)
        rows = reflect_index(plan.row0, 16, arr.shape[1])
        cols = reflect_index(plan.col0, 16, arr.shape[2])
        np.testing.assert_array_equal(ds[i]["image"].numpy(), whole[:, rows[:, None], cols])
    sub = load_scene(root, image_id, stats, channels=["B", "R"])
    np.testing.assert_array_equal(sub, whole[[2, 0]])


def test_bad_settings_raise_config_errors(coord_cache):
    root, scenes, _ = coord_cache
    ids = sorted(scenes)
    with pytest.raises(ConfigError, match=r"rare-class share 1\.5"):
        PatchDataset(root, ids, identity_stats(), rare_share=1.5)
    with pytest.raises(ConfigError, match=r"photometric augmentation 1\.5"):
        PatchDataset(root, ids, identity_stats(), photometric=1.5)
    with pytest.raises(ConfigError, match="rare class 11"):
        PatchDataset(root, ids, identity_stats(), rare_classes=(2, 11))
    with pytest.raises(ConfigError, match="training scene 6999_0_0 is not in the cache"):
        PatchDataset(root, ["6999_0_0"], identity_stats())
    with pytest.raises(ConfigError, match="unknown spectral index 'FOO'"):
        PatchDataset(root, ids, identity_stats(), indices=["FOO"])
    with pytest.raises(ConfigError, match="'NDVI' needs channel"):
        load_scene(root, ids[0], identity_stats(), indices=["NDVI"])
    with pytest.raises(ConfigError, match="channel 'P' is not in the cache"):
        PatchDataset(root, ids, identity_stats(), channels=["P"])
    with pytest.raises(ConfigError, match=r"statistics have no entry for channel\(s\) A6"):
        PatchDataset(root, ids, identity_stats(n=6))


def test_no_rare_class_warns_and_samples_uniformly(tmp_path):
    arr = np.ones((len(CHANNELS), 20, 20), dtype=np.uint16)
    root = write_cache(tmp_path / "c", {"6010_0_0": arr}, {"6010_0_0": np.zeros((10, 20, 20))})
    with pytest.warns(SpectrasegWarning, match="no rare-class pixel"):
        ds = PatchDataset(root, ["6010_0_0"], identity_stats(), size=8, length=5)
    assert all(ds.plan(i).cls is None for i in range(5))


def test_missing_masks_are_a_data_error(tmp_path):
    arr = np.ones((len(CHANNELS), 20, 20), dtype=np.uint16)
    root = write_cache(tmp_path / "c", {"6010_0_0": arr})
    with pytest.raises(DataError, match=r"masks/6010_0_0.npy does not exist"):
        PatchDataset(root, ["6010_0_0"], identity_stats())


# --------------------------------------------------------------------------- masks


def test_build_masks_rasterizes_labels_once(tmp_path):
    data = tmp_path / "data"
    (data / "three_band").mkdir(parents=True)
    ids = {"6010_0_0": (30, 40), "6040_0_0": (25, 20)}
    write_grid_sizes(data / "grid_sizes.csv", {i: (0.009, -0.009) for i in ids})
    for i, (h, w) in ids.items():
        tifffile.imwrite(
            data / "three_band" / f"{i}.tif",
            np.zeros((3, h, w), np.uint16),
            planarconfig="separate",
            photometric="rgb",
        )
    labels = {
        i: {
            c: box(0, -0.0009 * c, 0.0011 * c, 0) if c in (1, 8) else MultiPolygon()
            for c in range(1, 11)
        }
        for i in ids
    }
    write_wkt_csv(
        data / "train_wkt_v4.csv", [(i, c, g) for i, d in labels.items() for c, g in d.items()]
    )
    root = write_cache(
        tmp_path / "cache", {i: np.zeros((len(CHANNELS), h, w)) for i, (h, w) in ids.items()}
    )
    paths = build_masks(root, data, progress=False)
    for (i, (h, w)), p in zip(sorted(ids.items()), paths, strict=True):
        assert p == root / "masks" / f"{i}.npy"
        m = np.load(p)
        assert m.dtype == np.uint8 and m.shape == (10, h, w)
        assert np.array_equal(m, rasterize_classes(labels[i], w, h, 0.009, -0.009))
        assert m[0].any() and m[7].any() and not m[1].any()
    stamp = paths[0].stat().st_mtime_ns
    build_masks(root, data, progress=False)  # already there: not rewritten
    assert paths[0].stat().st_mtime_ns == stamp
    assert not list((root / "masks").glob(".*"))

    # The dataset builds missing masks itself when given the data root.
    paths[1].unlink()
    PatchDataset(root, sorted(ids), identity_stats(), size=8, length=2, data_root=data)
    assert paths[1].is_file()

    write_wkt_csv(data / "train_wkt_v4.csv", [("6010_0_0", 1, MultiPolygon())])
    paths[1].unlink()
    with pytest.raises(DataError, match="scene 6040_0_0 has no labels in"):
        build_masks(root, data, progress=False)


@pytest.mark.filterwarnings("ignore:.*repaired.*invalid polygon")
def test_real_scenes_end_to_end(dstl_lite, tmp_path):
    """Real RGB + SWIR aligned into a cache, masks from the real labels, stats, patches."""
    from spectraseg.align.cache import open_cache
    from spectraseg.align.fusion import align_dataset

    ids = ["6110_1_2", "6170_2_4"]
    assert align_dataset(dstl_lite, tmp_path / "cache", ids, progress=False).ok
    cache = open_cache(tmp_path / "cache")
    for i, p in zip(ids, build_masks(cache, dstl_lite, progress=False), strict=True):
        m = np.load(p, mmap_mode="r")
        assert m.shape[1:] == cache.load(i).shape[1:]
        share = m.reshape(10, -1).mean(axis=1)
        assert 0.4 < share[5] < 0.6  # crops: about half of both scenes (label areas)
    stats = compute_stats(cache, mode="region", progress=False)
    # Dataset statistics equal numpy's over the real non-fill pixels.
    a1 = [
        cache.load(i)[cache.channels(i).index("A1"), r0:r1, c0:c1].astype(np.float64).ravel()
        for i in ids
        for r0, r1, c0, c1 in [cache.valid(i)["A"]]
    ]
    k = stats.channels.index("A1")
    np.testing.assert_allclose(stats.dataset.mean[k], np.concatenate(a1).mean(), rtol=1e-12)
    np.testing.assert_allclose(stats.dataset.std[k], np.concatenate(a1).std(), rtol=1e-10)
    ds = PatchDataset(cache, ids, stats, size=64, length=60, rare_share=0.5, indices=["NBR2"])
    assert ds.rare_present == [2, 8, 10]  # structures, standing water, small vehicles
    assert ds.in_channels == 12
    for i in range(len(ds)):
        plan, item = ds.plan(i), ds[i]
        assert torch.isfinite(item["image"]).all()
        if plan.cls is not None:
            assert item["mask"][plan.cls - 1].any()


# --------------------------------------------------------------------------- split

LITE_IDS = [
    "6010_1_2", "6010_4_2", "6010_4_4", "6040_1_0", "6040_1_3", "6040_2_2", "6040_4_4",
    "6060_2_3", "6100_1_3", "6100_2_2", "6110_1_2", "6110_3_1", "6110_4_0", "6120_2_0",
    "6140_1_2", "6140_3_1", "6150_2_3", "6160_2_1", "6170_2_4", "6170_4_1",
]  # fmt: skip


@pytest.mark.parametrize("seed", range(12))
def test_split_by_region_groups(seed):
    train, val = split_scenes(LITE_IDS, 0.2, seed=seed)
    assert sorted(train + val) == LITE_IDS and not set(train) & set(val)
    assert 1 <= len(val) <= 7
    group = lambda i: "6110" if i[:4] == "6140" else i[:4]  # noqa: E731
    assert not {group(i) for i in train} & {group(i) for i in val}
    assert split_scenes(LITE_IDS, 0.2, seed=seed) == (train, val)


def test_split_grouping_override_and_sizes():
    seeds = range(30)
    vals = [set(split_scenes(LITE_IDS, 0.2, seed=s)[1]) for s in seeds]
    assert len({frozenset(v) for v in vals}) > 3  # the seed changes the choice
    mean = np.mean([len(v) for v in vals])
    assert 2.5 <= mean <= 5.5  # close to 20% of 20 scenes on average
    # Without the alias 6110 and 6140 are separate groups and can be split apart.
    apart = [split_scenes(LITE_IDS, 0.2, seed=s, groups={})[1] for s in seeds]
    assert any(
        any(i.startswith("6110") for i in v) != any(i.startswith("6140") for i in v) for v in apart
    )
    assert split_scenes(LITE_IDS, 0.0) == (LITE_IDS, [])


def test_split_explicit_list():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train, val = split_scenes(LITE_IDS, ["6170_2_4", "6170_4_1"])
    assert val == ["6170_2_4", "6170_4_1"] and len(train) == 18
    with pytest.warns(SpectrasegWarning, match="6110 have scenes in both"):
        split_scenes(LITE_IDS, ["6140_1_2"])
    with pytest.raises(ConfigError, match="validation scene 6999_0_0 is not among"):
        split_scenes(LITE_IDS, ["6999_0_0"])
    with pytest.raises(ConfigError, match=r"share 1.0 must be in \[0, 1\)"):
        split_scenes(LITE_IDS, 1.0)
    with pytest.raises(ConfigError, match="all 2 scenes are in one region group"):
        split_scenes(["6010_0_0", "6010_0_1"], 0.5)
