"""The 0.1 module paths keep working for one version, with a DeprecationWarning."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest

OLD = {
    "spectraseg.io": ["open_dataset", "atomic_output", "read_wkt_csv"],
    "spectraseg.geometry": ["rasterize_classes", "pixel_transform"],
    "spectraseg.inspection": ["summarize"],
    "spectraseg.synth": ["synthesize", "make_scene"],
    "spectraseg.registration": ["ecc_shift", "resolve_shifts", "grey", "snr"],
    "spectraseg.fusion": ["align_dataset", "open_cache", "Cache", "read_shifts"],
    "spectraseg.normalization": ["compute_stats", "lookup", "open_cache_dir"],
    "spectraseg.indices": ["compute_indices", "available_indices"],
    "spectraseg.sampling": ["PatchDataset", "load_scene", "split_scenes", "build_masks",
                            "dihedral"],
    "spectraseg.model": ["UNet"],
    "spectraseg.losses": ["BCEJaccardLoss", "build_loss"],
    "spectraseg.pixelmodel": ["PixelModel", "fit_run", "PIXEL_MODEL_FILE"],
    "spectraseg.metrics": ["evaluate_polygons", "Evaluation"],
    "spectraseg.train": ["train", "TrainData", "load_model", "build_model", "labelled_scenes"],
    "spectraseg.predict": ["predict_run", "predict_probs", "PredictOptions", "scene_paths",
                           "quantize", "threshold_masks", "read_thresholds", "tune_thresholds"],
}  # fmt: skip


@pytest.mark.parametrize("old", sorted(OLD))
def test_old_paths_warn_and_resolve(old: str) -> None:
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated"):
        module = importlib.import_module(old)
    for name in OLD[old]:
        assert getattr(module, name) is not None, name
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        module.nope  # noqa: B018


def test_old_signatures_are_kept() -> None:
    sys.modules.pop("spectraseg.predict", None)
    with pytest.warns(DeprecationWarning):
        old = importlib.import_module("spectraseg.predict")
    from spectraseg.features.windows import reflect_index

    # 0.1 order (n, start, stop) against the current (start, size, n).
    assert old.reflect_index(5, -3, 8).tolist() == reflect_index(-3, 11, 5).tolist()
    probs = [np.full((10, 4, 4), 200, dtype=np.uint8)]
    truth = [np.ones((10, 4, 4), dtype=np.uint8)]
    assert old.tune_thresholds(probs, truth) == {c: 0.05 for c in range(1, 11)}


def test_old_checkpoint_functions_take_and_give_dicts(tmp_path) -> None:
    import torch

    from spectraseg.runs import load_checkpoint

    sys.modules.pop("spectraseg.train", None)
    with pytest.warns(DeprecationWarning):
        old = importlib.import_module("spectraseg.train")
    state = {
        "format": "spectraseg-checkpoint", "version": 1, "step": 3, "epoch": 1,
        "model": {"w": torch.ones(2)}, "optimizer": {}, "scaler": {}, "in_channels": 4,
        "config": "", "rng": [], "elapsed": 1.5, "best": {"score": None, "step": 0, "epoch": 0},
        "epoch_acc": {"loss": 0.0}, "history": [],
    }  # fmt: skip
    old.save_checkpoint(tmp_path / "c.pt", state)
    assert load_checkpoint(tmp_path / "c.pt").step == 3
    back = old.load_checkpoint(tmp_path / "c.pt")
    assert back.keys() == state.keys() and back["elapsed"] == 1.5
    assert torch.equal(back["model"]["w"], torch.ones(2))
