"""Deprecated since 0.2: the 0.1 path of what is now :mod:`spectraseg.training` (run directory and
checkpoints: :mod:`spectraseg.runs`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from spectraseg import runs
from spectraseg._moved import moved


def _load_checkpoint(path: str | os.PathLike[str], map_location: str = "cpu") -> dict[str, Any]:
    """0.1 ``load_checkpoint``: the checkpoint as the dict ``torch.save`` wrote."""
    return runs.load_checkpoint(path, map_location).to_state()


def _save_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any]) -> None:
    """0.1 ``save_checkpoint``: a checkpoint from its dict."""
    runs.save_checkpoint(path, runs.Checkpoint.from_state(dict(state), str(path)))


__getattr__ = moved(
    __name__,
    (
        "spectraseg.training.loop",
        "spectraseg.training.data",
        "spectraseg.training.step",
        "spectraseg.training.state",
        "spectraseg.training.validate",
        "spectraseg.runs",
        "spectraseg.models.unet",
        "spectraseg.align.masks",
    ),
    {"load_checkpoint": _load_checkpoint, "save_checkpoint": _save_checkpoint},
)
