"""A tiny synthetic training problem for the training tests and their worker script.

:class:`ToyPatches` is an in-memory dataset whose item ``i`` is a pure function of
``(seed, epoch, i)``; :func:`toy_data` wraps it with two validation scenes, so a run of a
few steps takes about a second. :func:`cache_config` writes a fused cache of toy scenes
and a config that trains on it (the path the CLI takes).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from spectraseg.config import Config
from spectraseg.features.stats import Stats, StatsEntry
from spectraseg.runs import load_checkpoint
from spectraseg.training.data import TrainData

CHANNELS = 3


class ToyPatches(torch.utils.data.Dataset):
    """Patches whose item ``i`` is a pure function of ``(seed, epoch, i)``.

    Classes 1, 2 and 5 are thresholds of the (smoothed) channels, so a small net can learn
    them; the other classes are empty.
    """

    def __init__(self, length: int, size: int = 16, seed: int = 0) -> None:
        self.length, self.size, self.seed, self.epoch = length, size, seed, 0

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        g = np.random.default_rng([self.seed, self.epoch, index])
        return toy_sample(g, self.size, self.size)


def toy_sample(g: np.random.Generator, h: int, w: int) -> dict[str, torch.Tensor]:
    raw = g.standard_normal((CHANNELS, h + 2, w + 2)).astype(np.float32)
    img = (raw[:, :-2, :-2] + raw[:, 2:, 2:] + raw[:, 1:-1, 1:-1]) / np.sqrt(3)
    mask = np.zeros((10, h, w), dtype=np.uint8)
    mask[0] = img[0] > 0.5
    mask[1] = img[1] < -1.0
    mask[4] = img[2] > 0.0
    return {"image": torch.from_numpy(np.ascontiguousarray(img)), "mask": torch.from_numpy(mask)}


def toy_data(config: Config, world: int = 1) -> TrainData:
    t = config.train
    length = t.steps_per_epoch * t.accumulate * t.batch_size * world
    scenes = {f"toy_{k}": toy_sample(np.random.default_rng([99, k]), 32, 48) for k in range(2)}

    def load_val(image_id: str) -> tuple[np.ndarray, np.ndarray]:
        s = scenes[image_id]
        return s["image"].numpy(), s["mask"].numpy()

    return TrainData(
        train=ToyPatches(length, t.patch_size, t.seed),
        in_channels=CHANNELS,
        val_scenes=sorted(scenes),
        load_val=load_val,
        stats=Stats(
            "dataset", ("a", "b", "c"), StatsEntry((0.0,) * CHANNELS, (1.0,) * CHANNELS, 1)
        ),
    )


def tiny_config(**train: object) -> Config:
    overrides = [
        "model.width=4",
        "model.depth=2",
        "train.patch_size=16",
        "train.batch_size=4",
        "train.steps_per_epoch=3",
        "train.epochs=2",
        "train.threads=1",
        "train.checkpoint_every=2",
        "train.lr=0.01",
        "predict.tile=32",
        "predict.margin=4",
    ]
    overrides += [f"train.{k}={json.dumps(v)}" for k, v in train.items()]
    return Config().replace(overrides)


def weights(run: Path, which: str = "latest") -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / f"{which}.pt").model


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k].cpu(), b[k].cpu()), k


CACHE_IDS = ("6010_0_0", "6020_0_0", "6030_0_0")


def write_cache(root: Path, ids: tuple[str, ...] = CACHE_IDS, h: int = 48, w: int = 64) -> Path:
    """A tiny fused cache in the documented format (manifest, uint16 stacks, label masks)."""
    (root / "masks").mkdir(parents=True)
    scenes = {}
    for k, image_id in enumerate(ids):
        sample = toy_sample(np.random.default_rng([7, k]), h, w)
        img = sample["image"].numpy()
        stack = np.concatenate([img, img[:1]]) * (150 + 50 * k) + 1000 + 100 * k
        np.save(root / f"{image_id}.npy", np.clip(stack, 0, 65535).astype(np.uint16))
        np.save(root / "masks" / f"{image_id}.npy", sample["mask"].numpy())
        scenes[image_id] = {
            "channels": ["R", "G", "B", "A1"],
            "height": h,
            "width": w,
            "products": ["RGB", "A"],
            "valid": {"RGB": [0, h, 0, w], "A": [0, h, 0, w]},
        }
    manifest = {
        "format": "spectraseg-cache",
        "version": 1,
        "dtype": "uint16",
        "scale": 1.0,
        "offset": 0.0,
        "scenes": scenes,
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def cache_config(tmp_path: Path) -> Path:
    cache = write_cache(tmp_path / "cache")
    path = tmp_path / "run.toml"
    path.write_text(
        f"""
[data]
cache = "{cache}"
val_scenes = ["6030_0_0"]
indices = []
[model]
width = 4
depth = 2
[train]
patch_size = 16
steps_per_epoch = 3
epochs = 2
threads = 1
lr = 0.01
[predict]
tile = 32
margin = 4
"""
    )
    return path
