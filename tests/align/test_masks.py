"""Label masks of the fused cache (``spectraseg.align.masks``)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from shapely.geometry import MultiPolygon, box

from fused_cache import CHANNELS, identity_stats, write_cache
from spectraseg.align.masks import build_masks
from spectraseg.data.dstl import write_grid_sizes, write_wkt_csv
from spectraseg.data.geometry import rasterize_classes
from spectraseg.errors import DataError
from spectraseg.features.normalization import compute_stats
from spectraseg.features.patches import PatchDataset


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
