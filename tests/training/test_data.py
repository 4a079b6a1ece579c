"""Training on a fused cache through the CLI: statistics, split and patches prepared from the
cache (``spectraseg.training.data``), then resumed and extended."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from toy import cache_config

from spectraseg.cli import main
from spectraseg.runs import load_checkpoint


def test_cli_train_and_resume_on_a_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:

    config = cache_config(tmp_path)
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "6 steps, 2 epoch(s)" in out and "best validation mean Jaccard" in out
    stats = json.loads((run / "stats.json").read_text())
    assert stats["mode"] == "region" and stats["channels"] == ["R", "G", "B", "A1"]
    assert sorted(stats["region"]) == ["6010", "6020", "6030"]  # the held-out region too
    doc = json.loads((run / "metrics.json").read_text())
    assert len(doc["epochs"]) == 2 and doc["best"]["score"] is not None
    # Extending a finished run: two more epochs.
    args = ["train", "--resume", str(run), "--set", "train.epochs=4", "--no-progress"]
    assert main(args) == 0
    assert "12 steps, 4 epoch(s)" in capsys.readouterr().out
    assert load_checkpoint(run / "checkpoints" / "latest.pt").step == 12
    assert main(["train", "--resume", str(run), "--set", "model.width=8", "--no-progress"]) == 1
    assert "a resumed run keeps its model" in capsys.readouterr().err
    assert main(["train", "--config", str(config), "--out", str(run)]) == 1
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nope")]) == 1
    assert "is not a run directory" in capsys.readouterr().err


@pytest.mark.parametrize(("rare", "present"), [((2,), [2]), ((1, 5), [1, 5]), ((3,), [])])
def test_rare_classes_setting_reaches_the_patch_sampler(
    tmp_path: Path, rare: tuple[int, ...], present: list[int]
) -> None:
    from spectraseg.config import load_config
    from spectraseg.runs import RunDir
    from spectraseg.training.data import prepare_data

    config = load_config(cache_config(tmp_path)).replace([f"train.rare_classes={list(rare)}"])
    run = RunDir.of(tmp_path / "run")
    run.root.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # class 3 is absent: "no rare-class pixel"
        data = prepare_data(config, run, progress=False)
    # The toy masks hold classes 1, 2 and 5 (tests/training/toy.py).
    assert data.train.rare_present == present


def test_precise_bn_on_a_cache_uses_as_many_uniform_patches_as_asked(tmp_path: Path) -> None:
    """The uniform patches are not limited to an epoch's length (3 steps x 4 patches here)."""
    import torch

    from spectraseg.config import load_config
    from spectraseg.models.unet import build_model
    from spectraseg.runs import RunDir
    from spectraseg.training.batchnorm import recalibrate
    from spectraseg.training.data import prepare_data
    from spectraseg.training.loop import train

    config = load_config(cache_config(tmp_path)).replace(["train.precise_bn=30"])
    train(config, tmp_path / "run", progress=False)
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
    model = build_model(config, ckpt.in_channels).to(memory_format=torch.channels_last)
    model.load_state_dict(ckpt.model)
    run = RunDir.of(tmp_path / "other")
    run.root.mkdir()
    view = prepare_data(config, run, progress=False).train.uniform_view(30)
    items = [view[i]["image"] for i in range(30)]
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    assert recalibrate(model, [torch.stack(items[i : i + 8]) for i in range(0, 30, 8)],
                       torch.device("cpu")) == 4  # fmt: skip
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, expected[k])  # the checkpoint already holds them


def test_index_norm_statistics_and_a_stats_file_that_disagrees(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from spectraseg.align.cache import open_cache_dir
    from spectraseg.config import load_config
    from spectraseg.features.normalization import compute_stats
    from spectraseg.features.stats import save_stats
    from spectraseg.training.data import config_stats

    path = cache_config(tmp_path)
    config = load_config(path).replace(['data.indices=["ND:R:G"]', "data.index_norm=true"])
    cache = open_cache_dir(config.data.cache)
    stats = config_stats(config, cache, progress=False)
    assert stats.channels == ("R", "G", "B", "A1", "ND:R:G")
    assert config_stats(config.replace(["data.index_norm=false"]), cache, False).channels == (
        "R", "G", "B", "A1",
    )  # fmt: skip
    bands = tmp_path / "bands.json"
    save_stats(compute_stats(cache, progress=False), bands)
    args = ["train", "--config", str(path), "--out", str(tmp_path / "run"), "--no-progress"]
    args += ["--set", f"data.stats={bands}", "--set", 'data.indices=["ND:R:G"]']
    assert main([*args, "--set", "data.index_norm=true"]) == 1
    err = capsys.readouterr().err
    assert f"statistics file {bands} holds spectral indices [] but data.index_norm=true" in err
    assert "needs [ND:R:G]" in err and "Traceback" not in err
    save_stats(stats, tmp_path / "with.json")
    args[args.index(f"data.stats={bands}")] = f"data.stats={tmp_path / 'with.json'}"
    assert main(args) == 1  # index_norm false: the file's index entries are refused too
    assert "holds spectral indices [ND:R:G] but data.index_norm=false" in capsys.readouterr().err
