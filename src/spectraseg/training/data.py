"""What the training loop needs from the data pipeline (:class:`TrainData`), and building
it from a run's ``[data]`` config (:func:`prepare_data`): scenes, their split, statistics,
random patches and whole validation scenes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch.distributed as dist

from spectraseg.align.cache import Cache, open_cache_dir
from spectraseg.align.masks import open_mask
from spectraseg.config import Config, rare_classes
from spectraseg.data.classes import DSTL_SCHEMA, ClassSchema
from spectraseg.errors import ConfigError
from spectraseg.evaluation.metrics import pixel_areas
from spectraseg.features.normalization import compute_stats, index_channels
from spectraseg.features.patches import PatchDataset, load_scene
from spectraseg.features.split import run_scenes, run_split
from spectraseg.features.stats import Stats, load_stats
from spectraseg.runs import RunDir, read_stats

T = TypeVar("T")


@dataclass
class TrainData:
    """What the loop needs from the data pipeline.

    Attributes:
        train: a map-style dataset; item ``i`` is ``{"image": float32 (C, S, S),
            "mask": uint8 (K, S, S)}``, a pure function of ``(seed, epoch, i)``. If it has
            ``set_epoch(epoch)`` it is called before each epoch; it must be at least
            ``steps_per_epoch * accumulate * batch_size * world`` long.
        in_channels: ``C``.
        val_scenes: held-out scene ids (may be empty).
        load_val: ``image_id -> (image float32 (C, H, W), truth uint8 (K, H, W))``.
        pixel_area: ``image_id -> area of one pixel in squared grid units`` (metric weights);
            None counts pixels.
        stats: the normalisation statistics (saved as ``stats.json``), or None.
        train_scenes: the scene ids ``train`` draws from (recorded in ``split.json``).
        schema: the classes of the masks (``K`` = ``len(schema)`` output channels).
        counted: ``image_id -> (H, W) bool`` pixels of a validation scene its labels count
            (not nodata, inside the labelled extent), or None where they all count;
            validation leaves the others out of every count.
    """

    train: Any
    in_channels: int
    val_scenes: Sequence[str] = ()
    load_val: Callable[[str], tuple[np.ndarray, np.ndarray]] | None = None
    pixel_area: Callable[[str], float] | None = None
    stats: Stats | None = None
    train_scenes: Sequence[str] = ()
    schema: ClassSchema = DSTL_SCHEMA
    counted: Callable[[str], np.ndarray | None] | None = None


def _from_rank0(value: T, world: int) -> T:
    """``value`` as rank 0 has it, on every rank (no-op without DDP)."""
    if world == 1:
        return value
    box: list[Any] = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _run_stats(config: Config, run: RunDir, cache: Cache, resume: bool, progress: bool) -> Stats:
    """The run's own ``stats.json`` when resuming, else ``data.stats``, else computed over
    every cached scene: statistics describe imagery, not labels, so this gives validation
    and test scenes the entry of their own region, as prediction does for new regions."""
    if resume:
        stats = read_stats(run)
        if stats is not None:
            return stats
    return config_stats(config, cache, progress)


def config_stats(config: Config, cache: Cache, progress: bool) -> Stats:
    """``data.stats`` in the scope of ``data.norm``, else statistics over every cached scene,
    with entries for the spectral indices when ``data.index_norm`` asks for them.

    Raises ConfigError when a ``data.stats`` file's index entries disagree with
    ``data.index_norm`` and ``data.indices``.
    """
    d = config.data
    want = list(d.indices) if d.index_norm else []
    if not d.stats:
        return compute_stats(cache, None, mode=d.norm, progress=progress, indices=want)
    stats = load_stats(d.stats).with_mode(d.norm)
    held = index_channels(stats)
    if held != want:
        raise ConfigError(
            f"statistics file {d.stats} holds spectral indices [{', '.join(held)}] but "
            f"data.index_norm={str(d.index_norm).lower()} with data.indices "
            f"[{', '.join(d.indices)}] needs [{', '.join(want)}]"
        )
    return stats


def prepare_data(
    config: Config,
    run: RunDir,
    resume: bool = False,
    rank: int = 0,
    world: int = 1,
    progress: bool = True,
) -> TrainData:
    """Build :class:`TrainData` from ``config.data``.

    Scenes and split: :func:`spectraseg.features.split.run_scenes` (``data.scenes``, else
    every labelled cached scene) and :func:`~spectraseg.features.split.run_split`
    (``data.val_scenes`` or a ``data.val_fraction`` of whole region groups). Statistics:
    :func:`_run_stats`, in the ``data.norm`` scope. Under DDP rank 0 prepares masks and
    statistics and the others receive them.
    """
    d, t = config.data, config.train
    if not d.cache:
        raise ConfigError(
            "config key 'data.cache' is empty: set it to a cache written by spectraseg align"
        )
    cache = open_cache_dir(d.cache)
    scenes = _from_rank0(run_scenes(d, cache, progress) if rank == 0 else [], world)
    train_ids, val_ids = run_split(scenes, d, t.seed)
    if not train_ids:
        raise ConfigError("no training scene is left after the validation split")
    stats = _from_rank0(
        _run_stats(config, run, cache, resume, progress) if rank == 0 else None, world
    )
    assert stats is not None  # rank 0's, on every rank
    dataset = PatchDataset(
        cache,
        train_ids,
        stats,
        size=t.patch_size,
        length=t.steps_per_epoch * t.accumulate * t.batch_size * world,
        seed=t.seed,
        rank=rank,
        rare_share=t.rare_share,
        rare_classes=rare_classes(config, len(cache.schema), cache.schema.is_dstl),
        augment=t.augment,
        photometric=t.photometric,
        zoom=t.zoom,
        indices=d.indices,
        progress=progress and rank == 0,
    )
    areas = pixel_areas(cache, d.root, val_ids)

    def load_val(image_id: str) -> tuple[np.ndarray, np.ndarray]:
        image = load_scene(cache, image_id, stats, d.indices)
        truth = np.asarray(open_mask(cache, image_id, image.shape[1:]))
        return image, truth

    return TrainData(
        train=dataset,
        in_channels=dataset.in_channels,
        val_scenes=val_ids,
        load_val=load_val,
        pixel_area=areas.__getitem__,
        stats=stats,
        train_scenes=train_ids,
        schema=cache.schema,
        counted=cache.counted,
    )
