"""Training patches and whole scenes from the fused cache (``spectraseg.features.patches``)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from fused_cache import CHANNELS, identity_stats, write_cache
from spectraseg.errors import ConfigError, DataError, SpectrasegWarning
from spectraseg.features.indices import compute_indices
from spectraseg.features.normalization import compute_stats, normalize
from spectraseg.features.patches import PatchDataset, load_scene
from spectraseg.features.windows import dihedral, read_window, reflect_index

torch.set_num_threads(1)


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


def test_zoom_resamples_image_and_mask_together(coord_cache):
    """With a random magnification, every output pixel's mask is the truth at the scene
    pixel nearest the position its image (channels 0/1: row, col) was interpolated from."""
    root, scenes, masks = coord_cache
    kw = {"size": 16, "length": 300, "rare_share": 0.5}
    ds = PatchDataset(root, sorted(scenes), identity_stats(), zoom=0.5, **kw)
    sides, checked = set(), 0
    for i in range(len(ds)):
        plan = ds.plan(i)
        side = plan.window or 16
        sides.add(side)
        h, w = masks[ds.image_ids[plan.scene]].shape[1:]
        inside = 0 <= plan.row0 <= h - side and 0 <= plan.col0 <= w - side
        if not inside:
            continue  # mirrored windows fold the coordinate ramps
        item = ds[i]
        img, mask = item["image"].numpy(), item["mask"].numpy()
        assert img.shape == (len(CHANNELS), 16, 16) and mask.shape == (10, 16, 16)
        rows = np.floor(img[0] + 0.5).astype(int)
        cols = np.floor(img[1] + 0.5).astype(int)
        assert np.array_equal(mask, masks[ds.image_ids[plan.scene]][:, rows, cols])
        checked += 1
    assert checked > 50
    # Sides from 16 / e^0.5 to 16 * e^0.5, both ways of 16.
    assert min(sides) >= 10 and max(sides) <= 26 and min(sides) < 14 and max(sides) > 19
    # Without zoom the stream is the one before zoom existed: windows of the patch side.
    plain = PatchDataset(root, sorted(scenes), identity_stats(), **kw)
    assert all(plain.plan(i).window is None for i in range(50))
    assert ds.uniform_view().zoom == 0.0 and ds.zoom == 0.5


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
    h = arr.shape[1]
    for r0, r1 in [(0, h), (3, 11), (h - 5, h), (0, 1)]:
        part = load_scene(root, image_id, stats, indices=["NBR2"], block_rows=4, rows=(r0, r1))
        np.testing.assert_array_equal(part, whole[:, r0:r1])
    w = arr.shape[2]
    for (r0, r1), (c0, c1) in [((0, h), (0, w)), ((3, 11), (2, 9)), ((h - 5, h), (w - 1, w))]:
        part = load_scene(
            root, image_id, stats, indices=["NBR2"], block_rows=4, rows=(r0, r1), cols=(c0, c1)
        )
        np.testing.assert_array_equal(part, whole[:, r0:r1, c0:c1])
    with pytest.raises(ValueError, match="not inside"):
        load_scene(root, image_id, stats, rows=(5, h + 1))
    with pytest.raises(ValueError, match="columns"):
        load_scene(root, image_id, stats, cols=(3, 3))


def test_bad_settings_raise_config_errors(coord_cache):
    root, scenes, _ = coord_cache
    ids = sorted(scenes)
    with pytest.raises(ConfigError, match=r"rare-class share 1\.5"):
        PatchDataset(root, ids, identity_stats(), rare_share=1.5)
    with pytest.raises(ConfigError, match=r"photometric augmentation 1\.5"):
        PatchDataset(root, ids, identity_stats(), photometric=1.5)
    with pytest.raises(ConfigError, match=r"zoom augmentation -0\.1"):
        PatchDataset(root, ids, identity_stats(), zoom=-0.1)
    with pytest.raises(ConfigError, match=r"rare classes \[2, 11\] go beyond the data's 10"):
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


def test_uniform_view_draws_uniformly_from_its_own_stream(coord_cache):
    root, scenes, _ = coord_cache
    ds = PatchDataset(
        root, sorted(scenes), identity_stats(), size=16, length=400, rare_share=1.0,
        photometric=0.1, rank=1, epoch=3,
    )  # fmt: skip
    view = ds.uniform_view(1000)
    assert len(view) == 1000 and len(ds.uniform_view()) == 400
    plans = [view.plan(i) for i in range(400)]
    view.plan(999)  # beyond the training dataset's length
    assert all(p.cls is None and p.gains is None for p in plans)
    # Scenes in proportion to their area (3500 and 2560 pixels).
    share_a = sum(ds.image_ids[p.scene] == "6010_0_0" for p in plans) / 400
    assert abs(share_a - 3500 / 6060) < 4 * np.sqrt(0.25 / 400)
    # The same stream on every rank and in every epoch of the training dataset, not the
    # training stream; the training dataset itself is unchanged.
    other = PatchDataset(root, sorted(scenes), identity_stats(), size=16, length=400, rank=0)
    assert [other.uniform_view().plan(i) for i in range(20)] == plans[:20]
    assert (ds.rare_share, ds.photometric, ds.rank, ds.epoch) == (1.0, 0.1, 1, 3)
    assert all(ds.plan(i).cls is not None for i in range(20))
    assert torch.equal(view[5]["image"], view.uniform_view()[5]["image"])


def test_index_channels_normalised_when_the_statistics_hold_them(coord_cache):
    root, scenes, _ = coord_cache
    names = ["NBR2", "ND:A1:A2"]
    stats = compute_stats(root, mode="region", progress=False, indices=names)
    image_id = "6040_1_1"
    arr = scenes[image_id]
    whole = load_scene(root, image_id, stats, indices=names, block_rows=7)
    mean, std = stats.lookup(image_id)
    n = len(CHANNELS)
    np.testing.assert_array_equal(whole[:n], normalize(arr, mean[:n], std[:n]))
    raw = compute_indices(arr, CHANNELS, names)
    np.testing.assert_array_equal(whole[n:], normalize(raw, mean[n:], std[n:]))
    # Over the scene (its region's only one) each index has mean 0 and sd 1.
    np.testing.assert_allclose(whole[n:].mean(axis=(1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(whole[n:].std(axis=(1, 2)), 1, rtol=1e-4)
    ds = PatchDataset(root, [image_id], stats, size=16, length=8, augment=False, indices=names)
    for i in range(8):
        plan = ds.plan(i)
        rows = reflect_index(plan.row0, 16, arr.shape[1])
        cols = reflect_index(plan.col0, 16, arr.shape[2])
        np.testing.assert_array_equal(ds[i]["image"].numpy(), whole[:, rows[:, None], cols])
    with pytest.raises(ConfigError, match="hold spectral indices NBR2 but not ND:A2:A3"):
        load_scene(root, image_id, stats, indices=["NBR2", "ND:A2:A3"])
    # Statistics without index entries leave the indices as computed.
    plain = compute_stats(root, mode="region", progress=False)
    np.testing.assert_array_equal(load_scene(root, image_id, plain, indices=names)[n:], raw)
