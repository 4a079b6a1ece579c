"""The training loop (``spectraseg.training.loop``): schedule, accumulation equivalence,
run directory and checkpoints, best-model selection, weight averaging, time budget.

Uses the tiny synthetic in-memory problem of ``toy.py`` so every test runs in seconds.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from toy import CHANNELS, assert_same_weights, tiny_config, toy_data, weights

from spectraseg.config import Config, load_config
from spectraseg.errors import ConfigError, DataError
from spectraseg.runs import load_checkpoint, load_model
from spectraseg.training.loop import lr_factor, train


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """float32 convolutions and matrix products in full precision on CUDA (TF32 is on by
    default there and rounds their inputs to 10-bit mantissas); no effect on CPU."""
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul


def test_training_loop_accumulation_matches_a_big_batch(tmp_path: Path) -> None:
    """The loop with accumulate=3, batch 4 sees the same 12 patches per step as batch 12."""
    common = ["model.norm=group", "model.groups=2", "loss.jaccard_mode=sample", "train.amp=false"]
    small = tiny_config(steps=3, accumulate=3, batch_size=4).replace(common)
    big = tiny_config(steps=3, accumulate=1, batch_size=12).replace(common)
    with no_tf32():
        ra = train(small, tmp_path / "a", progress=False, data=toy_data(small))
        rb = train(big, tmp_path / "b", progress=False, data=toy_data(big))
    assert ra.model is not None and rb.model is not None
    sa, sb = ra.model.state_dict(), rb.model.state_dict()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-5, msg=k)
    assert ra.history[-1]["train_loss"] == pytest.approx(rb.history[-1]["train_loss"], rel=1e-6)
    assert ra.history[-1]["train_loss"] > 0


def test_lr_schedule() -> None:
    c = Config().replace(["train.steps=100", "train.warmup_steps=10", "train.min_lr_ratio=0.1"])
    assert lr_factor(c, 0) == pytest.approx(0.1)
    assert lr_factor(c, 9) == pytest.approx(1.0)
    assert lr_factor(c, 10) == pytest.approx(1.0)
    assert lr_factor(c, 55) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
    assert lr_factor(c, 100) == pytest.approx(0.1)
    # A time budget moves the schedule on when time runs out before the steps do.
    assert lr_factor(c, 10, time_fraction=0.5) == pytest.approx(0.55)
    assert lr_factor(c, 10, time_fraction=1.0) == pytest.approx(0.1)
    const = c.replace(["train.schedule=constant"])
    assert lr_factor(const, 50) == 1.0


def test_run_directory_and_checkpoints(tmp_path: Path) -> None:
    config = tiny_config()
    run = tmp_path / "run"
    steps_seen: list[int] = []
    result = train(
        config,
        run,
        progress=False,
        data=toy_data(config),
        callback=lambda step, info: steps_seen.append(step),
    )
    assert steps_seen == [1, 2, 3, 4, 5, 6]
    assert (result.steps, result.epochs, result.interrupted) == (6, 2, False)
    assert result.best_score is not None and 0.0 <= result.best_score <= 1.0
    for name in ("config.toml", "stats.json", "metrics.csv", "metrics.json"):
        assert (run / name).is_file(), name
    assert load_config(run / "config.toml") == config
    # Checkpoints hold tensors and primitives only.
    for which in ("latest", "best"):
        ckpt = torch.load(run / "checkpoints" / f"{which}.pt", weights_only=True)
        assert ckpt["in_channels"] == CHANNELS
    latest = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert latest.step == 6 and latest.epoch == 2
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert [int(r["step"]) for r in rows] == [3, 6]
    assert all(float(r["patches_per_s"]) > 0 for r in rows)
    assert all(r["val_mean"] and r["val_jaccard_10"] for r in rows)
    doc = json.loads((run / "metrics.json").read_text())
    assert len(doc["epochs"]) == 2 and len(doc["epochs"][0]["val_jaccard"]) == 10
    # Classes 3, 4, 6..10 are empty in the toy truth; a net that predicts none of them
    # has an empty union there, reported as such.
    assert doc["best"]["score"] == max(r["val_mean"] for r in doc["epochs"])
    model, cfg, stats = load_model(run, "best")
    assert cfg == config and stats is not None and stats.channels == ("a", "b", "c")
    with torch.no_grad():
        out = model(torch.zeros(1, CHANNELS, 16, 16))
    assert out.shape == (1, 10, 16, 16)


def test_training_learns_the_toy_classes(tmp_path: Path) -> None:
    # In float32 on the CPU, where the scores below were measured: reduced-precision steps
    # take another path through this tiny problem (class 5: 0.57 in float16 on an H200,
    # 0.54 in bfloat16 on the 2-core machine).
    config = tiny_config(epochs=4, steps_per_epoch=50, lr=0.02, device="cpu", amp=False)
    config = config.replace(["loss.jaccard_mode=present"])
    result = train(config, tmp_path / "run", progress=False, data=toy_data(config))
    first, last = result.history[0], result.history[-1]
    assert last["train_loss"] < first["train_loss"]
    # Classes 1 and 5 are thresholds of smoothed channels: learnt well on held-out scenes
    # (predicting everything would give about 0.3 and 0.5).
    best = max(result.history, key=lambda r: r["val_mean"])
    assert best["val_jaccard"][0] > 0.8
    assert best["val_jaccard"][4] > 0.6
    assert result.best_score == best["val_mean"]


def test_best_checkpoint_is_chosen_on_the_selected_score(tmp_path: Path) -> None:
    config = tiny_config(epochs=4, select="val_mean_tuned")
    result = train(config, tmp_path / "run", progress=False, data=toy_data(config))
    scores = [row["val_mean_tuned"] for row in result.history]
    first_best = scores.index(max(scores))
    assert result.best_score == max(scores)
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert saved.step == result.history[first_best]["step"]
    with pytest.raises(ConfigError, match=r"'train\.select' must be one of val_mean"):
        tiny_config(select="val_loss")


def test_new_run_refuses_an_existing_run(tmp_path: Path) -> None:
    config = tiny_config(steps=1)
    run = tmp_path / "run"
    train(config, run, progress=False, data=toy_data(config))
    with pytest.raises(ConfigError, match="already holds a run; resume it with --resume"):
        train(config, run, progress=False, data=toy_data(config))
    with pytest.raises(DataError, match=r"checkpoint .*latest\.pt does not exist"):
        train(config, tmp_path / "nothing", resume=True, progress=False, data=toy_data(config))
    other = config.replace(["model.width=8"])
    with pytest.raises(ConfigError, match="a resumed run keeps its model"):
        train(other, run, resume=True, progress=False, data=toy_data(config))


def test_weight_average_follows_the_ema_recurrence(tmp_path: Path) -> None:
    decay = 0.6
    config = tiny_config(ema=decay, checkpoint_every=1)
    run = tmp_path / "run"
    seen: list[tuple[dict, dict, int]] = []

    def record(step: int, info: dict) -> None:
        ckpt = load_checkpoint(run / "checkpoints" / "latest.pt")
        assert ckpt.step == step
        seen.append((ckpt.model, ckpt.ema, ckpt.ema_count))

    result = train(config, run, progress=False, data=toy_data(config), callback=record)
    assert [count for _, _, count in seen] == [1, 2, 3, 4, 5, 6]
    floats = [k for k, v in seen[0][0].items() if v.is_floating_point()]
    assert any("running_mean" in k for k in floats)  # BatchNorm statistics are averaged too
    assert_same_weights({k: seen[0][0][k] for k in floats}, {k: seen[0][1][k] for k in floats})
    for (_, prev, _), (raw, avg, _) in itertools.pairwise(seen):
        for k in floats:
            torch.testing.assert_close(avg[k], decay * prev[k] + (1 - decay) * raw[k])
    assert not torch.equal(seen[-1][0][floats[0]], seen[-1][1][floats[0]])
    # The average is the run's model: what load_model gives and what training returns.
    model, _, _ = load_model(run, "latest")
    assert_same_weights(model.state_dict(), seen[-1][1])
    assert_same_weights(result.model.state_dict(), seen[-1][1])
    # best.pt holds the average of its step, chosen by validating the average.
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert_same_weights(best.ema, seen[best.step - 1][1])


def test_time_budget_stops_and_validates(tmp_path: Path) -> None:
    config = tiny_config(epochs=100, minutes=0.0005)  # 30 ms
    result = train(config, tmp_path / "run", progress=False, data=toy_data(config))
    assert 1 <= result.steps < 300 and not result.interrupted
    assert result.history[-1]["step"] == result.steps
    assert "val_mean" in result.history[-1]


def test_no_validation_makes_best_the_final_model(tmp_path: Path) -> None:
    config = tiny_config(steps=2)
    data = toy_data(config)
    data.val_scenes = ()
    run = tmp_path / "run"
    result = train(config, run, progress=False, data=data)
    assert result.best_score is None
    assert_same_weights(weights(run, "best"), weights(run, "latest"))


def test_progress_follows_the_budget_that_stops_the_run() -> None:
    from spectraseg.training.loop import progress_bar
    from spectraseg.training.state import LoopState

    timed = progress_bar(tiny_config(epochs=100, minutes=5.0), LoopState(elapsed=90.0), True)
    assert (timed.total, timed.n, timed.unit) == (300.0, 90.0, "s")
    stepped = progress_bar(tiny_config(epochs=4), LoopState(step=5), True)
    assert (stepped.total, stepped.n, stepped.unit) == (12, 5, "step")
    # A resumed run whose budget is spent starts full, not past the end.
    spent = progress_bar(tiny_config(minutes=1.0), LoopState(elapsed=75.0), True)
    assert spent.n == 60.0
    for bar in (timed, stepped, spent):
        bar.close()


def test_out_that_is_a_file_is_one_clear_error(tmp_path: Path, capsys) -> None:
    from spectraseg.cli import main

    (tmp_path / "afile").write_text("x")
    config = tmp_path / "run.toml"
    config.write_text("")
    rc = main(["train", "--config", str(config), "--out", str(tmp_path / "afile")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "afile exists and is not a directory" in err[0], err
