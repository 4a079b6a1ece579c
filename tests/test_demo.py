"""The whole pipeline on a tiny synthetic dataset (seconds): every stage's output exists
and has the right form. Accuracy is the demo's own business (see the README figures)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from spectraseg.cli import main
from spectraseg.data.dstl import read_sample_order, read_wkt_rows
from spectraseg.demo import DemoResult, DemoSettings, run_demo
from spectraseg.runs import RunDir
from tiny import TINY_RUN

TINY = (*TINY_RUN, "train.steps_per_epoch=3")
STEPS = 6


def tiny_demo(out: Path) -> DemoResult:
    """The demo on 6 synthetic scenes of 192 px in 3 regions, :data:`STEPS` tiny steps."""
    settings = DemoSettings(
        out=out, scenes=6, size=(192, 192), regions=3, steps=STEPS, overrides=TINY,
        progress=False,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_demo(settings)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> DemoResult:
    return tiny_demo(tmp_path_factory.mktemp("demo"))


def test_every_stage_leaves_its_output(demo) -> None:
    out = demo.out
    for path in (
        "data/train_wkt_v4.csv",
        "cache/manifest.json",
        "cache/shifts.csv",
        "run/config.toml",
        "run/stats.json",
        "run/checkpoints/best.pt",
        "run/thresholds.json",
        "pred/predictions.csv",
        "submission.csv",
        "report/report.html",
        "report/report.json",
        "report/jaccard.png",
        "demo.json",
    ):
        assert (out / path).is_file(), path
    split = demo.split
    assert json.loads((out / "demo.json").read_text())["split"] == split
    assert sum(len(v) for v in split.values()) == 6
    regions = {k: {i.split("_")[0] for i in v} for k, v in split.items()}
    assert not (regions["train"] & regions["test"]) and not (
        regions["validation"] & regions["test"]
    )
    for image_id in split["test"]:
        assert (out / "report" / f"scene_{image_id}.png").is_file()


def test_report_json_is_the_evaluate_schema(demo) -> None:
    doc = json.loads((demo.out / "report" / "report.json").read_text())
    assert [c["class"] for c in doc["classes"]] == list(range(1, 11))
    for c in doc["classes"]:
        assert {"class", "name", "jaccard", "tp", "fp", "fn"} <= set(c)
        assert 0.0 <= c["jaccard"] <= 1.0
    assert doc["mean"] == pytest.approx(sum(c["jaccard"] for c in doc["classes"]) / 10)
    assert doc["images"] == demo.split["test"]


def test_submission_follows_the_sample(demo) -> None:
    sample = read_sample_order(demo.out / "data" / "sample_submission.csv")
    rows = read_wkt_rows(demo.out / "submission.csv")
    assert [(i, c) for i, c, _ in rows] == sample
    test = set(demo.split["test"])
    assert all(w == "MULTIPOLYGON EMPTY" for i, _, w in rows if i not in test)


def test_run_is_usable_by_predict(demo, tmp_path, capsys) -> None:
    image_id = demo.split["test"][0]
    rc = main(
        [
            "predict",
            str(demo.out / "data"),
            "--run",
            str(demo.out / "run"),
            "--out",
            str(tmp_path / "pred"),
            "--images",
            image_id,
            "--workers",
            "0",
        ]
    )
    assert rc == 0
    assert (tmp_path / "pred" / "predictions.csv").is_file()


def test_cli_refuses_too_few_scenes(tmp_path, capsys) -> None:
    assert main(["demo", "--out", str(tmp_path), "--scenes", "2"]) == 1
    assert "--scenes 2 is too few" in capsys.readouterr().err


def test_fold_means_score_absent_classes_both_ways() -> None:
    import numpy as np

    from spectraseg.demo import fold_means
    from spectraseg.evaluation.metrics import Evaluation

    counts = np.zeros((3, 10, 3))
    counts[0, 0] = (1.0, 1.0, 0.0)  # scene a, class 1: J = 1/2
    counts[1, 0] = (3.0, 0.0, 1.0)  # scene b, class 1: J = 3/4
    counts[2, 1] = (1.0, 0.0, 0.0)  # scene c, class 2: J = 1
    ev = Evaluation(("a", "b", "c"), counts, "raster")
    got = fold_means(ev, [["a", "b"], ["c"]])
    # Fold 1: class 1 pooled 4 / 6, classes 2-10 absent. Fold 2: class 2 only.
    assert got["absent 0"] == [round(4 / 6 / 10, 4), 0.1]
    assert got["absent 1"] == [round((4 / 6 + 9) / 10, 4), 1.0]
    assert got["mean, absent 0"] == round((4 / 60 + 0.1) / 2, 4)
    assert got["mean, absent 1"] == round(((4 / 6 + 9) / 10 + 1.0) / 2, 4)


def test_cross_validated_demo_scores_every_scene_out_of_fold(tmp_path) -> None:
    """With --folds, the demo is spectraseg train --folds: every scene is a test scene,
    predicted by a fold model that never saw its region at its fold's nested decisions; the
    budget is shared by the folds and the final model the run ships."""
    from spectraseg.crossval import oof_levels
    from spectraseg.evaluation.levels import threshold_masks
    from spectraseg.runs import read_cv

    extra = (*TINY, "pixel.enabled=true", "pixel.samples=200", "pixel.max_iter=5")
    settings = DemoSettings(
        out=tmp_path, scenes=6, size=(192, 192), regions=3, folds=3, steps=4 * STEPS,
        overrides=extra, progress=False,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_demo(settings)
    cv = read_cv(tmp_path / "run")
    assert cv is not None and len(cv.folds) == 3 and cv.final == "final"
    assert cv.scores["steps"] == [STEPS] * 4
    assert sorted(result.split["test"]) == sorted(i for f in cv.folds for i in f)
    doc = json.loads((tmp_path / "demo.json").read_text())
    assert doc["cross_validation"]["cross-validation (raster, pooled)"]["nested mean"] == round(
        cv.scores["nested"]["mean"], 4
    )
    assert set(doc["models"]) == {"unet", "pixel", "blend"}
    assert doc["models"]["blend"]["mean"] == pytest.approx(cv.scores["nested"]["mean"])
    # The written probabilities are the out-of-fold blend the polygons were traced from.
    image_id = cv.folds[0][0]
    levels = np.load(tmp_path / "pred" / "probs" / f"{image_id}.npy")
    np.testing.assert_array_equal(
        levels, oof_levels(RunDir.of(tmp_path / "run"), image_id, dict.fromkeys(range(1, 11), 0.5))
    )
    assert threshold_masks(levels, 0.5).shape == levels.shape
    assert (tmp_path / "submission.csv").is_file() and (tmp_path / "pred/predictions.csv").is_file()


def test_the_same_demo_trains_the_same_weights(demo, tmp_path) -> None:
    """A fixed step budget (the default on synthetic data) makes the demo reproducible: the
    same settings train the same weights, bit for bit, however long the steps take."""
    import torch

    from spectraseg.runs import load_checkpoint

    tiny_demo(tmp_path)
    a, b = (load_checkpoint(d / "run/checkpoints/latest.pt") for d in (demo.out, tmp_path))
    assert a.step == b.step == STEPS
    assert a.model.keys() == b.model.keys()
    for key, value in a.model.items():
        torch.testing.assert_close(b.model[key], value, rtol=0, atol=0)


def test_steps_and_minutes_are_exclusive_and_checked(capsys) -> None:
    assert main(["demo", "--steps", "0"]) == 1
    assert "--steps must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--steps", "5", "--minutes", "1"])
