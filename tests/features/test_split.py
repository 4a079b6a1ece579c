"""Scene splits by region group, three-way splits and folds (``spectraseg.features.split``)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from spectraseg.errors import ConfigError, SpectrasegWarning
from spectraseg.features.split import region_folds, split_scenes, split_three

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


def test_split_needs_test_scenes() -> None:
    ids = [f"{r}_0_{j}" for r in (6010, 6020, 6030) for j in range(2)]
    train, val, test = split_three(ids, 0.34, 0.34, seed=0)
    assert len(test) == 2 and len(val) == 2 and len(train) == 2
    with pytest.raises(ConfigError, match="needs held-out test scenes"):
        split_three(ids, 0.0, 0.3, seed=0)


def test_region_folds_partition_whole_groups() -> None:
    ids = [
        f"{r}_{i}_0"
        for r, n in ((6010, 3), (6020, 2), (6030, 2), (6110, 2), (6140, 2))
        for i in range(n)
    ]
    folds = region_folds(ids, 3, seed=0)
    assert sorted(i for f in folds for i in f) == sorted(ids)
    # 6110 and 6140 overlap on the ground: always in the same fold.
    for f in folds:
        groups = {i.split("_")[0] for i in f}
        assert ("6110" in groups) == ("6140" in groups)
    assert sorted(len(f) for f in folds) == [3, 4, 4]
    with pytest.raises(ConfigError, match="5 folds need at least 5 region groups"):
        region_folds(ids[:7], 5, seed=0)
