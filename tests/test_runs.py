"""The run directory (``spectraseg.runs``): paths, checkpoint format, split and thresholds."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from spectraseg.config import Config, to_toml
from spectraseg.errors import ConfigError, DataError
from spectraseg.runs import (
    Checkpoint,
    RunDir,
    Split,
    TunedThresholds,
    load_checkpoint,
    read_split,
    read_thresholds,
    save_checkpoint,
    write_split,
    write_thresholds,
)

CLASSES = range(1, 11)

STATE_KEYS = [
    "format", "version", "step", "epoch", "model", "optimizer", "scaler", "in_channels",
    "config", "rng", "elapsed", "best", "epoch_acc", "history",
]  # fmt: skip

THRESHOLDS_KEYS = [
    "format", "version", "thresholds", "jaccard", "tuned", "mean_jaccard", "blend",
    "jaccard_unet", "thresholds_unet", "thresholds_pixel", "pixel_model_mtime_ns",
    "jaccard_config", "mean_jaccard_config", "grid", "scenes", "checkpoint",
    "checkpoint_mtime_ns", "tta", "tile", "margin", "metric",
]  # fmt: skip


def invalid(path: Path, what: str, reason: str) -> str:
    """The pattern of the DataError a malformed run document raises."""
    return re.escape(f"{path} is not a valid {what} file ({reason})")


# --------------------------------------------------------------------------- paths


def test_run_dir_paths(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    assert run.config == tmp_path / "config.toml"
    assert run.stats == tmp_path / "stats.json"
    assert run.split == tmp_path / "split.json"
    assert run.latest == tmp_path / "checkpoints" / "latest.pt"
    assert run.best == tmp_path / "checkpoints" / "best.pt"
    assert run.metrics_csv == tmp_path / "metrics.csv"
    assert run.metrics_json == tmp_path / "metrics.json"
    assert run.pixel_model == tmp_path / "pixelmodel.pkl"
    assert run.thresholds == tmp_path / "thresholds.json"
    assert RunDir.of(str(tmp_path)) == run
    assert RunDir.of(run) is run


def test_best_falls_back_to_latest_until_a_validation_chose_one(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    assert run.checkpoint("latest") == tmp_path / "checkpoints" / "latest.pt"
    assert run.checkpoint("best") == tmp_path / "checkpoints" / "latest.pt"
    run.best.parent.mkdir()
    run.best.write_bytes(b"")
    assert run.checkpoint("best") == tmp_path / "checkpoints" / "best.pt"
    assert run.checkpoint("latest") == tmp_path / "checkpoints" / "latest.pt"
    with pytest.raises(ConfigError, match=r"^checkpoint 'final' must be 'best' or 'latest'$"):
        run.checkpoint("final")


# --------------------------------------------------------------------------- checkpoints


def make_checkpoint(ema: bool) -> Checkpoint:
    return Checkpoint(
        step=7,
        epoch=2,
        model={"w": torch.arange(4.0), "n": torch.tensor(3)},
        optimizer={"state": {}, "param_groups": [{"lr": 0.01, "params": [0]}]},
        scaler={"scale": 1024.0},
        in_channels=3,
        config=to_toml(Config()),
        rng=[{"torch": torch.tensor([1, 2, 3], dtype=torch.uint8)}],
        elapsed=12.5,
        best={"score": 0.25, "step": 6, "epoch": 2},
        epoch_acc={"loss": 1.5, "samples": 8.0},
        history=[{"epoch": 1, "step": 3, "train_loss": 0.75}],
        ema={"w": torch.full((4,), 0.5), "n": torch.tensor(3)} if ema else None,
        ema_count=7 if ema else 0,
    )


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("ema", [False, True], ids=["raw", "ema"])
def test_checkpoint_state_round_trip(tmp_path: Path, ema: bool) -> None:
    ckpt = make_checkpoint(ema)
    state = ckpt.to_state()
    assert list(state) == STATE_KEYS + (["ema", "ema_count"] if ema else [])
    assert state["format"] == "spectraseg-checkpoint" and state["version"] == 1
    path = tmp_path / "c.pt"
    save_checkpoint(path, ckpt)
    # What is on disk loads with weights_only=True: tensors and primitives only.
    assert list(torch.load(path, weights_only=True)) == list(state)
    for back in (Checkpoint.from_state(state, "memory"), load_checkpoint(path)):
        assert (back.step, back.epoch, back.in_channels, back.elapsed) == (7, 2, 3, 12.5)
        assert back.config == ckpt.config and back.parsed_config() == Config()
        assert back.optimizer == {"state": {}, "param_groups": [{"lr": 0.01, "params": [0]}]}
        assert back.scaler == {"scale": 1024.0}
        assert back.best == {"score": 0.25, "step": 6, "epoch": 2}
        assert back.epoch_acc == {"loss": 1.5, "samples": 8.0}
        assert back.history == [{"epoch": 1, "step": 3, "train_loss": 0.75}]
        assert len(back.rng) == 1
        assert_same_tensors(back.rng[0], ckpt.rng[0])
        assert_same_tensors(back.model, ckpt.model)
        assert back.ema_count == (7 if ema else 0)
        if ema:
            assert back.ema is not None
            assert_same_tensors(back.ema, ckpt.ema)
            assert back.weights is back.ema  # the weight average is the run's model
        else:
            assert back.ema is None and back.weights is back.model


def test_foreign_and_broken_checkpoints_are_data_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pt"
    with pytest.raises(DataError, match=re.escape(f"checkpoint {missing} does not exist")):
        load_checkpoint(missing)
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {"w": torch.ones(2)}}, foreign)
    with pytest.raises(DataError, match=re.escape(f"{foreign} is not a spectraseg checkpoint")):
        load_checkpoint(foreign)
    text = tmp_path / "text.pt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(DataError, match=re.escape(f"checkpoint {text} cannot be loaded (")):
        load_checkpoint(text)
    with pytest.raises(DataError, match=r"^x\.pt is not a spectraseg checkpoint$"):
        Checkpoint.from_state([1, 2], "x.pt")
    state = make_checkpoint(ema=False).to_state()
    del state["rng"]
    with pytest.raises(DataError, match=r"^x\.pt lacks checkpoint field 'rng'$"):
        Checkpoint.from_state(state, "x.pt")
    broken = make_checkpoint(ema=False)
    broken.config = "[model\nwidth = 4"
    with pytest.raises(DataError, match=r"^the checkpoint holds no valid config \("):
        broken.parsed_config()


# --------------------------------------------------------------------------- split


def test_split_round_trip(tmp_path: Path) -> None:
    assert read_split(tmp_path) is None  # a run written before split.json existed
    split = Split(("6010_1_2", "6040_1_0", "6170_2_4"), ("6110_1_2",))
    write_split(tmp_path, split)
    assert json.loads((tmp_path / "split.json").read_text()) == {
        "format": "spectraseg-split",
        "version": 1,
        "train": ["6010_1_2", "6040_1_0", "6170_2_4"],
        "validation": ["6110_1_2"],
    }
    assert read_split(tmp_path) == split
    assert read_split(RunDir(tmp_path)) == split


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (
            '{"format": "spectraseg-split", "train": ["6010_1_2", 6040], "validation": []}',
            "scene ids must be strings",
        ),
        ('{"format": "spectraseg-split", "train": ["6010_1_2"]}', "'validation'"),
        ('{"format": "spectraseg-thresholds", "train": [], "validation": []}', "not a split file"),
        ('["6010_1_2"]', "'list' object has no attribute 'get'"),
        (
            '{"format": "spectraseg-split", "train": [',
            "Expecting value: line 1 column 42 (char 41)",
        ),
    ],
    ids=["number-id", "no-validation", "other-format", "not-an-object", "truncated"],
)
def test_malformed_split_is_a_data_error_naming_the_file(
    tmp_path: Path, text: str, reason: str
) -> None:
    path = tmp_path / "split.json"
    path.write_text(text)
    with pytest.raises(DataError, match=invalid(path, "split", reason)):
        read_split(tmp_path)


# --------------------------------------------------------------------------- thresholds


def make_thresholds(pixel: bool) -> TunedThresholds:
    return TunedThresholds(
        thresholds={c: c / 20 for c in CLASSES},
        jaccard={c: c / 16 for c in CLASSES},
        tuned={c: c != 7 for c in CLASSES},
        mean_jaccard=0.34375,
        jaccard_unet={c: c / 32 for c in CLASSES},
        thresholds_unet={c: 0.5 for c in CLASSES},
        jaccard_config={c: 0.25 for c in CLASSES},
        mean_jaccard_config=0.25,
        grid=[0.05, 0.1, 0.5],
        scenes=["6010_1_2", "6110_1_2"],
        checkpoint="/runs/a/checkpoints/best.pt",
        checkpoint_mtime_ns=1_700_000_000_123_456_789,
        tta=True,
        tile=256,
        margin=16,
        blend={c: 0.75 for c in CLASSES} if pixel else None,
        thresholds_pixel={c: 0.4 for c in CLASSES} if pixel else None,
        pixel_model_mtime_ns=1_700_000_001_000_000_000 if pixel else None,
    )


@pytest.mark.parametrize("pixel", [False, True], ids=["unet", "unet+pixel"])
def test_thresholds_json_round_trip(tmp_path: Path, pixel: bool) -> None:
    tuned = make_thresholds(pixel)
    doc = tuned.to_json()
    assert list(doc) == THRESHOLDS_KEYS
    assert doc["format"] == "spectraseg-thresholds" and doc["version"] == 1
    # String class keys in JSON, in class order.
    assert list(doc["thresholds"]) == ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"]
    assert doc["thresholds"]["3"] == 3 / 20 and doc["tuned"]["7"] is False
    assert doc["blend"] == ({str(c): 0.75 for c in CLASSES} if pixel else None)
    back = TunedThresholds.from_json(json.loads(json.dumps(doc)))
    assert back == tuned
    assert list(back.thresholds) == list(CLASSES)  # int class keys in memory
    assert back.blend is None or list(back.blend) == list(CLASSES)

    assert read_thresholds(tmp_path) is None
    path = write_thresholds(tmp_path, tuned)
    assert path == tmp_path / "thresholds.json"
    written = json.loads(path.read_text())
    assert written == doc and list(written) == THRESHOLDS_KEYS
    assert read_thresholds(tmp_path) == tuned


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"drop": "5"}, "thresholds must give classes 1..K a value in [0, 1]"),
        ({"set": ("4", 1.5)}, "thresholds must give classes 1..K a value in [0, 1]"),
        ({"set": ("12", 0.5)}, "thresholds must give classes 1..K a value in [0, 1]"),
        ({"set": ("x", 0.5)}, "invalid literal for int() with base 10: 'x'"),
    ],
    ids=["class-5-missing", "above-1", "class-12-after-a-gap", "not-a-class"],
)
def test_thresholds_file_missing_a_class_is_a_data_error(
    tmp_path: Path, change: dict, reason: str
) -> None:
    doc = make_thresholds(pixel=False).to_json()
    if "drop" in change:
        del doc["thresholds"][change["drop"]]
    else:
        key, value = change["set"]
        doc["thresholds"][key] = value
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=invalid(path, "thresholds", reason)):
        read_thresholds(tmp_path)


def test_thresholds_of_another_class_count_are_refused_at_prediction(tmp_path: Path) -> None:
    """A document holds one threshold per class of its run (1..K): a consistent document for
    another K is valid as a file but refused by a prediction with a K-class model."""
    from spectraseg.config import Config
    from spectraseg.inference.scene import PredictOptions
    from spectraseg.inference.tuning import plan_thresholds

    doc = make_thresholds(pixel=False).to_json()
    for c in range(2, 11):
        del doc["thresholds"][str(c)]
    (tmp_path / "thresholds.json").write_text(json.dumps(doc))
    assert list(read_thresholds(tmp_path).thresholds) == [1]
    with pytest.raises(
        DataError, match="gives thresholds for 1 classes, but the run's model predicts 10"
    ):
        plan_thresholds(RunDir(tmp_path), Config(), PredictOptions(), "auto", 10)
