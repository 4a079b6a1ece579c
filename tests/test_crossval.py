"""Cross-validated training: folds, out-of-fold predictions, decisions, nested scores, the
final model trained on every scene, and prediction with it or with the fold models' average."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from spectraseg.align.cache import open_cache
from spectraseg.align.fusion import align_dataset
from spectraseg.config import Config
from spectraseg.crossval import nested_scores, oof_paths, scene_histograms, train_folds
from spectraseg.data.dstl import region_of
from spectraseg.data.synth import synthesize
from spectraseg.errors import ConfigError, DataError
from spectraseg.evaluation.metrics import pixel_areas
from spectraseg.evaluation.thresholds import counts_at, tune_blend
from spectraseg.inference.outputs import scene_paths
from spectraseg.inference.pipeline import predict_run
from spectraseg.models.ensemble import ProbabilityMean
from spectraseg.models.unet import UNet
from spectraseg.runs import (
    RunDir,
    load_checkpoint,
    load_model,
    load_pixel_model,
    read_cv,
    read_stats,
    read_thresholds,
)
from tiny import tiny_config

torch.set_num_threads(1)


def tiny(base: Path, pixel: bool) -> Config:
    switch = "true" if pixel else "false"
    return tiny_config(base, f"pixel.enabled={switch}", "pixel.samples=200", "pixel.max_iter=5")


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory) -> dict[str, Path]:
    """Seven synthetic scenes in four regions: three in the cache (folds of one region
    group each over six scenes), one region left out for prediction."""
    base = tmp_path_factory.mktemp("cv")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ids = synthesize(
            base / "data", scenes=8, size=(192, 192), seed=5, regions=4, progress=False
        )
        regions = sorted({region_of(i) for i in ids})
        seen = [i for i in ids if region_of(i) != regions[-1]]
        align_dataset(base / "data", base / "cache", image_ids=seen, progress=False)
        result = train_folds(tiny(base, pixel=True), base / "run", folds=3, progress=False)
    return {"base": base, "result": result, "seen": seen, "new": [i for i in ids if i not in seen]}


def test_every_scene_is_predicted_out_of_fold_once(cv_run) -> None:
    result, run = cv_run["result"], RunDir.of(cv_run["base"] / "run")
    held_out = [i for f in result.folds for i in f]
    assert sorted(held_out) == sorted(cv_run["seen"]) and len(result.folds) == 3
    for k, fold in enumerate(result.folds):
        # Whole regions per fold; the fold's model never saw them.
        assert len({region_of(i) for i in fold}) == 1
        split = json.loads((run.root / "folds" / str(k + 1) / "split.json").read_text())
        assert set(split["train"]).isdisjoint(fold) and split["validation"] == []
        assert sorted(split["train"] + fold) == sorted(cv_run["seen"])
    for i in held_out:
        for path in oof_paths(run, i).values():
            levels = np.load(path)
            assert levels.dtype == np.uint8 and levels.shape[0] == 10
    cv = read_cv(run)
    assert cv is not None and cv.members == ("folds/1", "folds/2", "folds/3")
    assert cv.scores["nested"]["mean"] == result.nested.mean


def test_the_final_model_trains_on_every_scene_with_a_folds_budget(cv_run) -> None:
    result, run = cv_run["result"], RunDir.of(cv_run["base"] / "run")
    cv = read_cv(run)
    assert cv is not None and cv.final == "final" and cv.shipped == ("final",)
    assert result.final == run.root / "final"
    split = json.loads((run.root / "final" / "split.json").read_text())
    assert sorted(split["train"]) == sorted(cv_run["seen"]) and split["validation"] == []
    # Three folds and the final model, each the config's two steps.
    assert result.steps == [2, 2, 2, 2] and cv.scores["steps"] == [2, 2, 2, 2]
    final = load_checkpoint(run.root / "final" / "checkpoints" / "best.pt")
    assert final.step == 2 and (run.root / "final" / "pixelmodel.pkl").is_file()


def test_decisions_and_scores_come_from_the_out_of_fold_histograms(cv_run) -> None:
    result, base = cv_run["result"], cv_run["base"]
    run, cache = RunDir.of(base / "run"), open_cache(base / "cache")
    scenes = [i for f in result.folds for i in f]
    areas = pixel_areas(cache, base / "data", scenes)
    hist = {i: scene_histograms(run, cache, i, areas[i], pixel=True) for i in scenes}
    pos = sum(h[0] for h in hist.values())
    neg = sum(h[1] for h in hist.values())
    decided = tune_blend(pos, neg, "average")
    doc = read_thresholds(run)
    assert doc is not None and doc.thresholds == decided["thresholds"]
    assert doc.blend == decided["blend"] == dict.fromkeys(range(1, 11), 0.5)
    # Plain: every scene at the decisions fitted on all of them.
    plain = sum(counts_at(*hist[i], decided["thresholds"], decided["blend"]) for i in scenes)
    np.testing.assert_allclose(result.plain.totals, plain)
    np.testing.assert_allclose(result.plain.jaccard, [decided["jaccard"][c] for c in range(1, 11)])
    # Nested: fold 1 scored with the decisions of folds 2 and 3.
    others = [i for f in result.folds[1:] for i in f]
    d1 = tune_blend(sum(hist[i][0] for i in others), sum(hist[i][1] for i in others), "average")
    want = sum(counts_at(*hist[i], d1["thresholds"], d1["blend"]) for i in result.folds[0])
    got = result.nested.subset(result.folds[0]).totals
    np.testing.assert_allclose(got, want)
    assert set(result.models) == {"unet", "pixel"}


def test_predict_uses_the_final_model_on_a_new_region(cv_run, tmp_path) -> None:
    base, new = cv_run["base"], cv_run["new"]
    run = RunDir.of(base / "run")
    model, _, stats = load_model(run, "best")
    assert isinstance(model, UNet) and stats is not None and stats == read_stats(run)
    final = load_checkpoint(run.root / "final" / "checkpoints" / "best.pt")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, final.model[key], rtol=0, atol=0)
    pixel = load_pixel_model(run)
    assert pixel is not None and not hasattr(pixel, "members")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = predict_run(run.root, base / "data", tmp_path / "pred", image_ids=new,
                             workers=0, progress=False)  # fmt: skip
    assert not report.failed and report.threshold_source.endswith("(out-of-fold)")
    doc = read_thresholds(run)
    assert doc is not None and report.thresholds == doc.thresholds and report.blend == doc.blend
    assert report.normalization["computed"] == {region_of(new[0]): new}
    for i in new:
        assert np.load(scene_paths(tmp_path / "pred", i)["probs"]).shape[0] == 10
    with pytest.raises(ConfigError, match="is cross-validated"):
        predict_run(run.root, base / "data", tmp_path / "p2", image_ids=new, workers=0,
                    thresholds="retune", progress=False)  # fmt: skip


def test_resume_keeps_finished_folds_and_refuses_a_second_setup(cv_run) -> None:
    base = cv_run["base"]
    run = RunDir.of(base / "run")
    before = {p: p.stat().st_mtime_ns for p in run.root.rglob("latest.pt")}
    assert len(before) == 4
    again = train_folds(None, run.root, resume=True, progress=False)
    after = {p: p.stat().st_mtime_ns for p in run.root.rglob("latest.pt")}
    assert before == after and again.nested.mean == cv_run["result"].nested.mean
    # A run stopped before its final model's first checkpoint cannot predict yet.
    checkpoints = run.root / "final" / "checkpoints"
    checkpoints.rename(run.root / "saved")
    with pytest.raises(DataError, match="unfinished cross-validated run; finish it with"):
        load_model(run, "best")
    (run.root / "saved").rename(checkpoints)
    # A final model stopped after its last step (before best.pt) is finished on resume.
    best = run.root / "final" / "checkpoints" / "best.pt"
    best.unlink()
    train_folds(None, run.root, resume=True, progress=False)
    assert best.read_bytes() == (best.parent / "latest.pt").read_bytes()
    with pytest.raises(ConfigError, match="already holds a run"):
        train_folds(tiny(base, pixel=True), run.root, folds=3, progress=False)
    with pytest.raises(ConfigError, match="must be at least 2"):
        train_folds(tiny(base, pixel=True), base / "other", folds=1, progress=False)


def test_cli_cross_validates_and_prints_both_scores(cv_run, tmp_path, capsys) -> None:
    from spectraseg.bundle import export_bundle, unpack_bundle
    from spectraseg.cli import main
    from spectraseg.config import to_toml

    config = tmp_path / "run.toml"
    config.write_text(to_toml(tiny(cv_run["base"], pixel=False)))
    args = ["train", "--config", str(config), "--no-progress"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*args, "--out", str(tmp_path / "run"), "--folds", "3"]) == 0
    out = capsys.readouterr().out
    assert "3 folds" in out and "nested" in out and "plain" in out and "final" in out
    cv = read_cv(tmp_path / "run")
    assert cv is not None and cv.final == "final"
    assert f"{cv.scores['nested']['mean']:8.4f}" in out.splitlines()[-3]
    assert not (tmp_path / "run" / "oof" / f"{cv.folds[0][0]}.pixel.npy").exists()
    # One bundle file holds the final model alone and unpacks to a run that loads it.
    bundle = export_bundle(tmp_path / "run", tmp_path / "model.spectraseg")
    unpacked = unpack_bundle(bundle, tmp_path / "unpacked")
    assert [p.parent.parent.name for p in unpacked.root.rglob("best.pt")] == ["final"]
    a, b = (load_model(r, "best")[0] for r in (tmp_path / "run", unpacked.root))
    assert isinstance(a, UNet)
    x = torch.randn(1, a.in_channels, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)

    def error(extra: list[str], message: str) -> None:
        assert main(extra) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err

    error([*args, "--out", str(tmp_path / "r2"), "--folds", "1"], "--folds must be at least 2")
    error(["train", "--resume", str(tmp_path / "run"), "--folds", "3"], "--folds sets up a new run")
    error([*args, "--out", str(tmp_path / "r3"), "--ensemble"], "give --folds K with it")


def test_an_ensemble_run_averages_the_fold_models(cv_run, tmp_path, capsys) -> None:
    from spectraseg.cli import main
    from spectraseg.config import to_toml

    config = tmp_path / "run.toml"
    config.write_text(to_toml(tiny(cv_run["base"], pixel=False)))
    argv = ["train", "--config", str(config), "--no-progress", "--out", str(tmp_path / "run")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*argv, "--folds", "3", "--ensemble"]) == 0
    assert "the fold models' average" in capsys.readouterr().out
    cv = read_cv(tmp_path / "run")
    assert cv is not None and cv.final is None and cv.shipped == cv.members
    assert not (tmp_path / "run" / "final").exists()
    model, _, _ = load_model(tmp_path / "run", "best")
    assert isinstance(model, ProbabilityMean) and len(model.members) == 3
    x = torch.randn(1, model.in_channels, 32, 32)
    want = torch.stack([torch.sigmoid(m(x)) for m in model.members]).mean(0)
    with torch.no_grad():
        torch.testing.assert_close(torch.sigmoid(model(x)), want, atol=1e-5, rtol=0)


def test_nested_scores_can_fit_decisions_on_other_predictions() -> None:
    """``decide_on``: each fold scored on ``hist`` at decisions fitted on the other folds of
    other histograms of the same scenes (e.g. with test-time augmentation)."""
    rng = np.random.default_rng(3)

    def hists() -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {
            i: (rng.integers(0, 50, (1, 10, 256)).astype(float),
                rng.integers(0, 500, (1, 10, 256)).astype(float))
            for i in "abcdef"
        }  # fmt: skip

    hist, other = hists(), hists()
    folds = [["a", "b"], ["c", "d"], ["e", "f"]]
    same, d_same = nested_scores(hist, folds, "average", decide_on=hist)
    plain, d_plain = nested_scores(hist, folds, "average")
    assert d_same == d_plain and np.array_equal(same.totals, plain.totals)
    got, decisions = nested_scores(hist, folds, "average", decide_on=other)
    assert decisions == nested_scores(other, folds, "average")[1]
    for fold, decided in zip(folds, decisions, strict=True):
        rest = [i for f in folds if f is not fold for i in f]
        pos, neg = sum(other[i][0] for i in rest), sum(other[i][1] for i in rest)
        d1 = tune_blend(np.asarray(pos), np.asarray(neg), "average")
        assert d1["thresholds"] == decided["thresholds"]
        want = sum(counts_at(*hist[i], d1["thresholds"], d1["blend"]) for i in fold)
        np.testing.assert_allclose(got.subset(fold).totals, want)
    assert not np.array_equal(got.totals, plain.totals)
