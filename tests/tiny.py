"""A tiny model and training budget: tests that need a real trained run get one in seconds."""

from __future__ import annotations

from pathlib import Path

from spectraseg.config import Config

TINY_RUN: tuple[str, ...] = (
    "model.width=4",
    "model.depth=2",
    "train.patch_size=32",
    "train.batch_size=2",
    "train.steps_per_epoch=2",
    "train.epochs=1",
    "train.threads=1",
    "predict.tile=64",
    "predict.margin=8",
)
"""Config overrides: width 4, depth 2, two steps of two 32 px patches, 64 px tiles."""


def tiny_config(base: Path, *extra: str) -> Config:
    """:data:`TINY_RUN` on ``base/data`` and ``base/cache``, then ``extra`` overrides."""
    return Config().replace(
        [f"data.root={base / 'data'}", f"data.cache={base / 'cache'}", *TINY_RUN, *extra]
    )


def synth_data(base: Path, scenes: int, size: int, seed: int) -> Path:
    """``scenes`` synthetic ``size`` px scenes in 2 regions under ``base/data`` (warnings
    of the tiny A product's registration silenced); ``base/data``."""
    import warnings

    from spectraseg.data.synth import synthesize

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        synthesize(base / "data", scenes=scenes, size=(size, size), seed=seed, regions=2,
                   progress=False)  # fmt: skip
    return base / "data"
