"""Models loaded once per process (per Dask worker): the run's U-Net(s) and per-pixel
model, keyed by file and modification time, so the tasks of many scenes (or of the strips
of one) share one load; and the check that a scene gives the model its input channels.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from spectraseg.align.cache import open_cache
from spectraseg.config import Config
from spectraseg.errors import DataError
from spectraseg.features.stats import Stats
from spectraseg.runs import load_model, load_pixel_model, members, model_mtime_ns, mtime_ns
from spectraseg.runtime import resolve_device

if TYPE_CHECKING:
    from spectraseg.models.pixel import PixelEnsemble, PixelModel

    PixelLike = PixelModel | PixelEnsemble


_MODELS: dict[tuple[str, str, str, int | None], tuple[nn.Module, Config, Stats | None]] = {}
_PIXEL: dict[tuple[str, tuple[int | None, ...]], PixelLike | None] = {}


def cached_model(
    run_dir: str | os.PathLike[str], which: str, device: str
) -> tuple[nn.Module, Config, Stats | None]:
    """``load_model(run_dir, which, device)``, loaded once per process (per Dask worker).

    ``device`` as :attr:`PredictOptions.device` (``auto`` resolved here). Keyed by the
    checkpoints' modification time (every fold's, for a cross-validated run), so a
    rewritten checkpoint is reloaded; only the last model is kept.
    """
    device = str(resolve_device(device, what="--device"))
    key = (str(Path(run_dir).resolve()), which, device, model_mtime_ns(run_dir, which))
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = load_model(run_dir, which=which, device=device)
    return _MODELS[key]


def cached_pixel_model(run_dir: str | os.PathLike[str]) -> PixelLike | None:
    """The run's pixel model loaded once per process, or None when the run has none."""
    times = tuple(mtime_ns(m.pixel_model) for m in members(run_dir))
    key = (str(Path(run_dir).resolve()), times)
    if key not in _PIXEL:
        _PIXEL.clear()
        _PIXEL[key] = load_pixel_model(run_dir)
    return _PIXEL[key]


def set_threads(threads: int | None) -> None:
    """torch's threads in this process, when given (a task's share of the cores)."""
    if threads is not None and threads > 0:
        torch.set_num_threads(threads)


def check_channels(
    cache_dir: str | os.PathLike[str], image_id: str, model: nn.Module, n: int, stats: Stats
) -> None:
    """DataError naming what a scene lacks when it gives ``n`` input channels and the model
    takes another number."""
    expected = getattr(model, "in_channels", n)
    if n == expected:
        return
    have = open_cache(cache_dir).channels(image_id)
    missing = [c for c in stats.channels if c not in have]
    lacks = f"lacks {', '.join(missing)}" if missing else "lacks a product the run used"
    raise DataError(
        f"scene {image_id} gives {n} input channels but the model was "
        f"trained on {expected}: it {lacks} (it has {', '.join(have)})"
    )
