from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spectraseg.align.cache import open_cache_dir
from spectraseg.cli import main
from spectraseg.errors import ConfigError, DataError, SpectrasegWarning
from spectraseg.features.normalization import (
    Moments,
    complete_stats,
    compute_stats,
    extend_stats,
    normalize,
    scene_moments,
)
from spectraseg.features.stats import MIN_STD, Stats, load_stats, save_stats

RGBA = ["R", "G", "B", "A1", "A2"]


def write_cache(root: Path, scenes: dict, scale: float = 1.0, offset: float = 0.0) -> Path:
    """A cache in the documented format: ``{id}.npy`` (C, H, W) uint16 + manifest.json.

    ``scenes`` maps id -> (array, channels, valid) with ``valid`` {product: [r0, r1, c0, c1]}.
    """
    root.mkdir(parents=True, exist_ok=True)
    manifest = {
        "format": "spectraseg-cache",
        "version": 1,
        "dtype": "uint16",
        "scale": scale,
        "offset": offset,
        "scenes": {},
    }
    for image_id, (arr, channels, valid) in scenes.items():
        np.save(root / f"{image_id}.npy", arr.astype(np.uint16))
        manifest["scenes"][image_id] = {
            "channels": channels,
            "height": arr.shape[1],
            "width": arr.shape[2],
            "products": sorted(valid),
            "valid": valid,
        }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


FILL = 60000  # far from the data, so any fill pixel counted would show


def make_scene(rng, h, w, a_box):
    """RGB + 2 A channels; A outside ``a_box`` holds the fill value."""
    arr = np.empty((5, h, w), dtype=np.uint16)
    arr[:3] = rng.integers(0, 2048, (3, h, w))
    arr[3:] = FILL
    r0, r1, c0, c1 = a_box
    arr[3:, r0:r1, c0:c1] = rng.integers(0, 16384, (2, r1 - r0, c1 - c0))
    return arr, RGBA, {"RGB": [0, h, 0, w], "A": list(a_box)}


@pytest.fixture
def cache(tmp_path):
    rng = np.random.default_rng(1)
    scenes = {
        "6010_0_0": make_scene(rng, 30, 41, (2, 30, 0, 37)),
        "6010_1_4": make_scene(rng, 33, 29, (0, 31, 3, 29)),
        "6040_2_2": make_scene(rng, 40, 40, (0, 40, 0, 40)),
        "6110_3_1": make_scene(rng, 17, 52, (1, 16, 2, 50)),
    }
    return write_cache(tmp_path / "cache", scenes), scenes


def valid_pixels(scenes, ids):
    """Per channel, all non-fill values of the scenes ``ids`` concatenated (numpy reference)."""
    out = [[] for _ in RGBA]
    for i in ids:
        arr, _, valid = scenes[i]
        for c in range(5):
            r0, r1, c0, c1 = valid["RGB" if c < 3 else "A"]
            out[c].append(arr[c, r0:r1, c0:c1].ravel())
    return [np.concatenate(v).astype(np.float64) for v in out]


def check_entry(entry, pixels):
    np.testing.assert_allclose(entry.mean, [p.mean() for p in pixels], rtol=1e-12)
    np.testing.assert_allclose(entry.std, [p.std() for p in pixels], rtol=1e-10)
    assert entry.counts == tuple(p.size for p in pixels)


def test_stats_equal_numpy_in_every_scope(cache):
    root, scenes = cache
    stats = compute_stats(root, mode="region", progress=False)
    assert list(stats.channels) == RGBA
    assert stats.mode == "region"
    check_entry(stats.dataset, valid_pixels(scenes, scenes))
    assert sorted(stats.region) == ["6010", "6040", "6110"]
    check_entry(stats.region["6010"], valid_pixels(scenes, ["6010_0_0", "6010_1_4"]))
    check_entry(stats.region["6110"], valid_pixels(scenes, ["6110_3_1"]))
    for i in scenes:
        check_entry(stats.image[i], valid_pixels(scenes, [i]))
    assert stats.dataset.count == sum(a.shape[1] * a.shape[2] for a, _, _ in scenes.values())
    # No fill value reached the statistics.
    assert max(stats.dataset.mean) < 16384


def test_stats_of_a_subset_of_scenes(cache):
    root, scenes = cache
    ids = ["6010_1_4", "6040_2_2"]
    stats = compute_stats(root, ids, mode="dataset", progress=False)
    assert sorted(stats.image) == ids
    check_entry(stats.dataset, valid_pixels(scenes, ids))


def test_streaming_blocks_match_one_pass(cache):
    root, scenes = cache
    c = open_cache_dir(root)
    for i in scenes:
        small = scene_moments(c, i, block_values=7)  # many tiny row blocks
        whole = scene_moments(c, i, block_values=1 << 30)
        np.testing.assert_allclose(small.mean, whole.mean, rtol=1e-12)
        np.testing.assert_allclose(small.m2, whole.m2, rtol=1e-9)
        assert np.array_equal(small.n, whole.n)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.integers(0, 40), min_size=1, max_size=6),
    st.integers(0, 2**32 - 1),
)
def test_merged_moments_equal_numpy(sizes, seed):
    rng = np.random.default_rng(seed)
    parts = [rng.normal(1000, 300, (3, n)) for n in sizes]
    acc = Moments.zeros(3)
    for p in parts:
        acc = acc.merge(Moments.of(p))
    allv = np.concatenate(parts, axis=1)
    assert np.array_equal(acc.n, np.full(3, allv.shape[1]))
    if allv.shape[1]:
        np.testing.assert_allclose(acc.mean, allv.mean(axis=1), rtol=1e-12)
        np.testing.assert_allclose(acc.std, allv.std(axis=1), rtol=1e-9)


def test_constant_channel_gets_unit_std(tmp_path):
    arr = np.zeros((5, 20, 20), dtype=np.uint16)
    arr[0] = 700  # constant
    arr[1:] = np.arange(400).reshape(20, 20)
    root = write_cache(
        tmp_path / "c", {"6010_0_0": (arr, RGBA, {"RGB": [0, 20, 0, 20], "A": [0, 20, 0, 20]})}
    )
    stats = compute_stats(root, mode="image", progress=False)
    e = stats.image["6010_0_0"]
    assert e.mean[0] == 700.0 and e.std[0] == 1.0
    mean, std = stats.lookup("6010_0_0")
    x = normalize(arr, mean, std)
    assert np.isfinite(x).all()
    assert np.all(x[0] == 0.0)
    np.testing.assert_allclose(x[1].mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(x[1].std(), 1.0, rtol=1e-5)


def test_lookup_never_returns_zero_std():
    doc = {
        "mode": "dataset",
        "channels": ["R", "G"],
        "dataset": {"mean": [1.0, 2.0], "std": [0.0, 3.0], "count": 4},
    }
    _, std = Stats.from_json(doc).lookup("6010_0_0")
    assert std.dtype == np.float32
    assert std.tolist() == [1.0, 3.0]
    assert (std >= MIN_STD).all()


def test_lookup_scopes_and_fallback_warning(cache):
    root, _ = cache
    stats = compute_stats(root, ["6010_0_0", "6040_2_2"], mode="region", progress=False)
    mean, _ = stats.lookup("6010_3_3")  # an unseen tile of a known region: no warning
    assert mean.tolist() == np.float32(stats.region["6010"].mean).tolist()
    with pytest.warns(SpectrasegWarning, match="no region statistics for '6170'"):
        mean, std = stats.lookup("6170_0_0")
    assert mean.tolist() == np.float32(stats.dataset.mean).tolist()
    assert std.tolist() == np.float32(stats.dataset.std).tolist()

    image = stats.with_mode("image")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mean, _ = image.lookup("6040_2_2")
    assert mean.tolist() == np.float32(stats.image["6040_2_2"].mean).tolist()
    with pytest.warns(SpectrasegWarning, match="no image statistics for '6010_3_3'"):
        image.lookup("6010_3_3")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mean, _ = stats.with_mode("dataset").lookup("6170_0_0")
    assert mean.tolist() == np.float32(stats.dataset.mean).tolist()


def test_extend_stats_adds_new_scenes_only(cache):
    root, scenes = cache
    train = ["6010_0_0", "6040_2_2"]
    stats = compute_stats(root, train, mode="image", progress=False)
    more = extend_stats(stats, root, ["6010_1_4", "6110_3_1"], progress=False)
    assert more.dataset == stats.dataset
    assert more.region["6010"] == stats.region["6010"]  # existing region kept
    check_entry(more.region["6110"], valid_pixels(scenes, ["6110_3_1"]))
    for i in ("6010_1_4", "6110_3_1"):
        check_entry(more.image[i], valid_pixels(scenes, [i]))
    assert "6010_1_4" not in stats.image  # the input is not modified
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mean, _ = more.lookup("6110_3_1")
    assert mean.tolist() == np.float32(more.image["6110_3_1"].mean).tolist()
    with pytest.raises(ConfigError, match="scene 6999_0_0 is not in the cache"):
        extend_stats(stats, root, ["6999_0_0"], progress=False)


def test_complete_stats_fills_only_missing_scope_entries(cache):
    root, scenes = cache
    region = compute_stats(root, ["6010_0_0", "6040_2_2"], mode="region", progress=False)
    asked = ["6010_1_4", "6110_3_1", "6040_2_2"]
    done, computed = complete_stats(region, root, asked, progress=False)
    # Only the region the statistics lack is computed, from the request's scenes of it.
    assert computed == {"6110": ["6110_3_1"]}
    check_entry(done.region["6110"], valid_pixels(scenes, ["6110_3_1"]))
    assert done.region["6010"] == region.region["6010"]
    assert done.dataset == region.dataset
    image = region.with_mode("image")
    done, computed = complete_stats(image, root, asked, progress=False)
    assert computed == {"6010_1_4": ["6010_1_4"], "6110_3_1": ["6110_3_1"]}
    check_entry(done.image["6010_1_4"], valid_pixels(scenes, ["6010_1_4"]))
    dataset = region.with_mode("dataset")
    assert complete_stats(dataset, root, asked, progress=False) == (dataset, {})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every scene now has its own scope's entry
        for i in asked:
            done.lookup(i)


def test_scale_and_offset_give_physical_statistics(tmp_path):
    rng = np.random.default_rng(3)
    arr, channels, valid = make_scene(rng, 12, 14, (0, 12, 0, 14))
    root = write_cache(tmp_path / "c", {"6010_0_0": (arr, channels, valid)}, scale=0.5, offset=-3)
    stats = compute_stats(root, mode="image", progress=False)
    phys = arr.astype(np.float64) * 0.5 - 3
    np.testing.assert_allclose(stats.dataset.mean, phys.mean(axis=(1, 2)), rtol=1e-12)
    np.testing.assert_allclose(stats.dataset.std, phys.std(axis=(1, 2)), rtol=1e-10)
    mean, std = stats.lookup("6010_0_0")
    x = normalize(arr, mean, std, 0.5, -3)
    np.testing.assert_allclose(x.mean(axis=(1, 2)), 0, atol=1e-4)
    np.testing.assert_allclose(x.std(axis=(1, 2)), 1, rtol=1e-4)


def test_channel_without_valid_pixels_takes_dataset_value(tmp_path):
    rng = np.random.default_rng(4)
    a = make_scene(rng, 10, 10, (0, 10, 0, 10))
    b = make_scene(rng, 10, 10, (0, 0, 0, 0))  # A covers nothing
    root = write_cache(tmp_path / "c", {"6010_0_0": a, "6040_0_0": b})
    stats = compute_stats(root, mode="image", progress=False)
    e, d = stats.image["6040_0_0"], stats.dataset
    assert e.counts[3:] == (0, 0)
    assert e.mean[3:] == d.mean[3:] and e.std[3:] == d.std[3:]
    assert d.counts[3:] == (100, 100)


def test_bad_arguments(cache, tmp_path):
    root, _ = cache
    with pytest.raises(ConfigError, match="mode 'scene'"):
        compute_stats(root, mode="scene", progress=False)
    with pytest.raises(ConfigError, match="scene 6999_0_0 is not in the cache"):
        compute_stats(root, ["6999_0_0"], progress=False)
    with pytest.raises(DataError, match="does not exist"):
        compute_stats(tmp_path / "nope", progress=False)
    (tmp_path / "notcache").mkdir()
    with pytest.raises(DataError, match=r"manifest\.json does not exist"):
        compute_stats(tmp_path / "notcache", progress=False)


def test_save_load_round_trip_and_validation(cache, tmp_path):
    root, _ = cache
    stats = compute_stats(root, progress=False)
    path = tmp_path / "run" / "stats.json"
    save_stats(stats, path)
    assert load_stats(path) == stats
    assert not list(path.parent.glob(".*tmp"))  # atomic write left no temporary
    bad = dict(stats.to_json(), dataset={"mean": [0.0], "std": [1.0]})
    path.write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"stats.json 'dataset' 'mean' must be a list of 5"):
        load_stats(path)
    path.write_text("{not json")
    with pytest.raises(DataError, match="cannot be read as JSON"):
        load_stats(path)


def test_cli_stats_writes_json_and_prints_table(cache, tmp_path, capsys):
    root, scenes = cache
    out = tmp_path / "s.json"
    ids = ["6010_0_0", "6110_3_1"]
    argv = ["stats", str(root), "--mode", "image", "--out", str(out), "--images", *ids]
    assert main([*argv, "--extra", "6040_2_2"]) == 0
    stats = load_stats(out)
    assert list(stats.channels) == RGBA
    assert stats.mode == "image" and sorted(stats.image) == sorted([*ids, "6040_2_2"])
    check_entry(stats.dataset, valid_pixels(scenes, ids))
    check_entry(stats.image["6040_2_2"], valid_pixels(scenes, ["6040_2_2"]))
    text = capsys.readouterr().out
    assert "2 scene(s) in 2 region(s), mode image, with entries for 1 extra" in text
    assert text.count("\n") == 2 + len(RGBA)
    assert text.splitlines()[2].split()[0] == "R"


def test_cli_stats_with_index_entries(cache, tmp_path, capsys):
    root, scenes = cache
    out = tmp_path / "s.json"
    assert main(["stats", str(root), "--out", str(out), "--indices", "ND:A1:A2"]) == 0
    stats = load_stats(out)
    assert list(stats.channels) == [*RGBA, "ND:A1:A2"]
    ref = index_pixels(scenes, scenes)[1]
    assert stats.dataset.mean[-1] == pytest.approx(ref.mean(), rel=1e-6)
    assert capsys.readouterr().out.splitlines()[-1].split()[0] == "ND:A1:A2"
    assert main(["stats", str(root), "--out", str(out), "--indices", "NDVI"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'NDVI' needs channel(s) M7, M5" in err[0]


def test_cli_stats_user_error_is_one_line(tmp_path, capsys):
    rc = main(["stats", str(tmp_path / "missing"), "--out", str(tmp_path / "s.json")])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("spectraseg stats: error: cache directory")
    assert not (tmp_path / "s.json").exists()


def index_pixels(scenes, ids, scale=1.0, offset=0.0):
    """Per index (ND:R:G, ND:A1:A2), its values where every band it reads is non-fill."""
    from spectraseg.features.indices import normalized_difference

    rg, a12 = [], []
    for i in ids:
        arr, _, valid = scenes[i]
        phys = arr.astype(np.float32) * np.float32(scale) + np.float32(offset)
        rg.append(normalized_difference(phys[0], phys[1]).ravel())
        r0, r1, c0, c1 = valid["A"]
        a12.append(normalized_difference(phys[3], phys[4])[r0:r1, c0:c1].ravel())
    return [np.concatenate(v).astype(np.float64) for v in (rg, a12)]


@pytest.mark.parametrize("scale, offset", [(1.0, 0.0), (0.5, -3.0)])
def test_index_statistics_equal_numpy_over_their_bands_valid_pixels(tmp_path, scale, offset):
    rng = np.random.default_rng(7)
    scenes = {
        "6010_0_0": make_scene(rng, 30, 41, (2, 30, 0, 37)),
        "6010_1_4": make_scene(rng, 33, 29, (0, 31, 3, 29)),
        "6110_3_1": make_scene(rng, 17, 52, (1, 16, 2, 50)),
    }
    root = write_cache(tmp_path / "c", scenes, scale=scale, offset=offset)
    names = ["ND:R:G", "ND:A1:A2"]
    stats = compute_stats(root, mode="region", progress=False, indices=names)
    assert list(stats.channels) == [*RGBA, *names]
    bands = compute_stats(root, mode="region", progress=False)
    assert stats.dataset.mean[:5] == bands.dataset.mean  # band entries unchanged
    ref = index_pixels(scenes, scenes, scale, offset)
    np.testing.assert_allclose(stats.dataset.mean[5:], [p.mean() for p in ref], rtol=1e-6)
    np.testing.assert_allclose(stats.dataset.std[5:], [p.std() for p in ref], rtol=1e-6)
    assert stats.dataset.counts[5:] == tuple(p.size for p in ref)
    ref = index_pixels(scenes, ["6010_0_0", "6010_1_4"], scale, offset)
    np.testing.assert_allclose(stats.region["6010"].mean[5:], [p.mean() for p in ref], rtol=1e-6)
    # Streaming in tiny row blocks gives the same moments.
    c = open_cache_dir(root)
    from spectraseg.features.indices import normalized_difference, resolve_indices
    from spectraseg.features.normalization import index_moments

    plans = resolve_indices(names, RGBA)
    small = index_moments(c, "6010_0_0", plans, block_values=7)
    whole = index_moments(c, "6010_0_0", plans, block_values=1 << 30)
    np.testing.assert_allclose(small.mean, whole.mean, rtol=1e-9)
    assert np.array_equal(small.n, whole.n)
    # Nodata pixels of a georeferenced scene are left out too.
    from spectraseg.align.cache import NODATA_DIR, write_pixel_mask

    nodata = np.zeros((30, 41), dtype=bool)
    nodata[5:9, 10:30] = True
    write_pixel_mask(root, NODATA_DIR, "6010_0_0", nodata)
    got = index_moments(open_cache_dir(root), "6010_0_0", plans, block_values=7)
    arr = scenes["6010_0_0"][0].astype(np.float32) * np.float32(scale) + np.float32(offset)
    ref = [normalized_difference(arr[0], arr[1])[~nodata]]
    a_valid = np.zeros_like(nodata)
    a_valid[2:30, 0:37] = True
    ref.append(normalized_difference(arr[3], arr[4])[a_valid & ~nodata])
    assert got.n.tolist() == [r.size for r in ref]
    np.testing.assert_allclose(got.mean, [r.astype(np.float64).mean() for r in ref], rtol=1e-6)


def test_extend_stats_computes_index_entries_of_a_new_region(cache):
    root, scenes = cache
    names = ["ND:A1:A2"]
    stats = compute_stats(root, ["6010_0_0", "6040_2_2"], progress=False, indices=names)
    done, computed = complete_stats(stats, root, ["6110_3_1"], progress=False)
    assert computed == {"6110": ["6110_3_1"]}
    ref = index_pixels(scenes, ["6110_3_1"])[1]
    assert done.region["6110"].mean[5] == pytest.approx(ref.mean(), rel=1e-6)
    assert done.region["6110"].std[5] == pytest.approx(ref.std(), rel=1e-6)
