"""A fused cache in the documented format, for the tests of label masks and patches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from spectraseg.features.stats import Stats, StatsEntry

CHANNELS = ["R", "G", "B", "A1", "A2", "A3", "A6"]


def write_cache(root: Path, scenes: dict, masks: dict | None = None) -> Path:
    """A cache in the documented format (``{id}.npy`` + manifest.json, optional masks)."""
    (root / "masks").mkdir(parents=True, exist_ok=True)
    manifest = {"format": "spectraseg-cache", "version": 1, "dtype": "uint16", "scale": 1.0}
    manifest["offset"] = 0.0
    manifest["scenes"] = {}
    for image_id, arr in scenes.items():
        np.save(root / f"{image_id}.npy", arr.astype(np.uint16))
        h, w = arr.shape[1:]
        manifest["scenes"][image_id] = {
            "channels": CHANNELS[: arr.shape[0]],
            "height": h,
            "width": w,
            "products": ["RGB", "A"],
            "valid": {"RGB": [0, h, 0, w], "A": [0, h, 0, w]},
        }
        if masks is not None:
            np.save(root / "masks" / f"{image_id}.npy", masks[image_id].astype(np.uint8))
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def identity_stats(n: int = 7) -> Stats:
    """Statistics that leave values unchanged (mean 0, std 1)."""
    return Stats("dataset", tuple(CHANNELS[:n]), StatsEntry((0.0,) * n, (1.0,) * n, 1))
