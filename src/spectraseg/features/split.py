"""Splitting scenes by whole region groups: a run's scenes and validation split, the demo's
train / validation / test split and cross-validation folds.

Splits are by whole scenes and, unless scenes are listed, by *region group*, so
near-duplicate tiles never straddle training and validation. Regions 6110 and 6140 overlap
on the ground (dstl-lite's README: two near-duplicate pairs), so by default they form one
group (:data:`DEFAULT_GROUPS`).
"""

from __future__ import annotations

import random as _random
import warnings
from collections.abc import Mapping, Sequence

from spectraseg.align.cache import Cache
from spectraseg.align.masks import labelled_scenes
from spectraseg.config import DataConfig
from spectraseg.data.dstl import region_of
from spectraseg.errors import ConfigError, SpectrasegWarning

DEFAULT_GROUPS: dict[str, str] = {"6140": "6110"}
"""Region aliases for the validation split: regions 6110 and 6140 cover the same ground."""


def split_group(image_id: str, groups: Mapping[str, str] | None = None) -> str:
    """The group of a scene for the split: its region, mapped through ``groups`` aliases."""
    region = region_of(image_id)
    aliases = DEFAULT_GROUPS if groups is None else groups
    return aliases.get(region, region)


def split_scenes(
    image_ids: Sequence[str],
    val: Sequence[str] | float = 0.2,
    seed: int = 0,
    groups: Mapping[str, str] | None = None,
) -> tuple[list[str], list[str]]:
    """Split scenes into ``(train, val)``, both sorted, by whole scenes.

    Args:
        image_ids: all usable scenes.
        val: an explicit list of validation scenes, or the share of scenes to hold out,
            chosen as whole region groups (0 gives no validation).
        seed: makes the choice of groups deterministic.
        groups: region aliases (region -> group); None uses :data:`DEFAULT_GROUPS`,
            ``{}`` groups by region only.

    With a share, groups are visited in a seeded random order and each is taken if that
    brings the number of validation scenes closer to ``round(share * n)`` (at least one
    scene, at least one group left for training). An explicit list that puts one group on
    both sides warns (possible leak between near-duplicates).
    """
    ids = sorted(set(image_ids))
    if len(ids) != len(image_ids):
        raise ConfigError("the list of scenes to split repeats a scene")
    if not isinstance(val, (int, float)):
        chosen = list(val)
        unknown = [v for v in chosen if v not in ids]
        if unknown:
            raise ConfigError(f"validation scene {unknown[0]} is not among the scenes")
        val_set = set(chosen)
        train = [i for i in ids if i not in val_set]
        if chosen and not train:
            raise ConfigError("every scene is a validation scene: none is left for training")
        shared = {split_group(i, groups) for i in train} & {split_group(i, groups) for i in val_set}
        if shared:
            warnings.warn(
                f"region group(s) {', '.join(sorted(shared))} have scenes in both training and "
                "validation; near-duplicate tiles may leak",
                SpectrasegWarning,
                stacklevel=2,
            )
        return train, sorted(val_set)
    share = float(val)
    if not 0.0 <= share < 1.0:
        raise ConfigError(f"validation share {val} must be in [0, 1)")
    if share == 0.0:
        return ids, []
    by_group: dict[str, list[str]] = {}
    for i in ids:
        by_group.setdefault(split_group(i, groups), []).append(i)
    if len(by_group) < 2:
        raise ConfigError(
            f"cannot hold out a share of scenes by region: all {len(ids)} scenes are in one "
            "region group; list the validation scenes explicitly"
        )
    target = max(1, round(share * len(ids)))
    order = sorted(by_group)
    _random.Random(seed).shuffle(order)
    picked: list[str] = []
    count = 0
    for g in order:
        if len(picked) == len(by_group) - 1:
            break
        size = len(by_group[g])
        if count == 0 or abs(count + size - target) < abs(count - target):
            picked.append(g)
            count += size
    val_ids = sorted(i for g in picked for i in by_group[g])
    return [i for i in ids if i not in set(val_ids)], val_ids


def run_scenes(data: DataConfig, cache: Cache, progress: bool = False) -> list[str]:
    """The scenes a run trains and validates on: ``data.scenes``, else every labelled cached
    scene (label masks rasterised from ``data.root`` where missing). ConfigError naming the
    key when a listed scene is not cached or no scene is left."""
    scenes = list(data.scenes) or labelled_scenes(cache, data.root, progress)
    known = set(cache.image_ids)
    for i in scenes:
        if i not in known:
            raise ConfigError(f"config key 'data.scenes' lists {i}, which is not in {data.cache}")
    if not scenes:
        raise ConfigError(
            f"no labelled scene in {data.cache}: set data.root to the dataset to rasterise "
            "the labels from"
        )
    return scenes


def run_split(scenes: Sequence[str], data: DataConfig, seed: int) -> tuple[list[str], list[str]]:
    """A run's ``(train, validation)`` scenes: ``data.val_scenes`` when listed, else a
    ``data.val_fraction`` share of whole region groups drawn with ``seed``
    (:func:`split_scenes`)."""
    val: Sequence[str] | float = list(data.val_scenes) if data.val_scenes else data.val_fraction
    return split_scenes(scenes, val, seed=seed)


def split_three(
    ids: Sequence[str],
    test: Sequence[str] | float,
    val: Sequence[str] | float,
    seed: int,
) -> tuple[list[str], list[str], list[str]]:
    """``(train, val, test)`` scenes, each a set of whole region groups (unless listed)."""
    rest, test_ids = split_scenes(list(ids), test if test else 0.0, seed=seed)
    if not test_ids:
        raise ConfigError("the demo needs held-out test scenes: set --test-fraction above 0")
    if not isinstance(val, float):
        val = [v for v in val if v in rest]
    else:
        # The share is of all scenes: rescale it to what is left after the test split.
        val = min(0.5, val * len(ids) / max(len(rest), 1))
    train_ids, val_ids = split_scenes(rest, val, seed=seed + 1)
    return train_ids, val_ids, test_ids


def region_folds(ids: Sequence[str], k: int, seed: int) -> list[list[str]]:
    """Scenes in ``k`` folds of whole region groups, balanced by scene count.

    Groups (:func:`spectraseg.features.split.split_group`, near-duplicate regions together) are
    visited largest first, ties in a seeded order, each into the fold with fewest scenes.
    """
    groups: dict[str, list[str]] = {}
    for i in sorted(ids):
        groups.setdefault(split_group(i), []).append(i)
    if len(groups) < k:
        raise ConfigError(f"{k} folds need at least {k} region groups, the data has {len(groups)}")
    order = sorted(groups)
    _random.Random(seed).shuffle(order)
    order.sort(key=lambda g: -len(groups[g]))
    folds: list[list[str]] = [[] for _ in range(k)]
    for g in order:
        min(folds, key=len).extend(groups[g])
    return [sorted(f) for f in folds]
