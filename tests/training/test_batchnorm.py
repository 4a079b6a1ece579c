"""BatchNorm statistics re-estimated after training (``spectraseg.training.batchnorm`` and
``train.precise_bn`` in the loop)."""

from __future__ import annotations

import copy
import os
import signal
from pathlib import Path

import pytest
import torch
from torch import nn
from toy import assert_same_weights, tiny_config, toy_data

from spectraseg.config import Config
from spectraseg.errors import ConfigError
from spectraseg.runs import load_checkpoint
from spectraseg.training.batchnorm import batchnorm_layers, recalibrate
from spectraseg.training.loop import PRECISE_BN_BATCH, train

torch.set_num_threads(1)
CPU = torch.device("cpu")


def _batches(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 2, 5, 7, generator=g) * (k + 1) + k for k in range(n)]


def test_statistics_are_the_average_of_the_batches_statistics() -> None:
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.ReLU(), nn.BatchNorm2d(3))
    conv = copy.deepcopy(model[0])
    batches = _batches(4)
    assert recalibrate(model, batches, CPU, channels_last=False) == 4
    with torch.no_grad():
        feats = [conv(x).double() for x in batches]
    mean = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.var((0, 2, 3), unbiased=True) for f in feats]).mean(0)
    bn = model[1]
    torch.testing.assert_close(bn.running_mean.double(), mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var.double(), var, rtol=1e-5, atol=1e-6)
    assert bn.momentum == 0.1 and not model.training  # settings restored, eval mode
    # The second layer saw the first one normalising with batch statistics, as in training.
    assert model[3].running_var.gt(0).all()


def test_dropout_is_off_and_weights_are_untouched() -> None:
    model = nn.Sequential(nn.Conv2d(2, 2, 1), nn.Dropout2d(0.9), nn.BatchNorm2d(2))
    twin = nn.Sequential(copy.deepcopy(model[0]), nn.BatchNorm2d(2))
    weights = {k: v.clone() for k, v in model[0].state_dict().items()}
    batches = _batches(3, seed=1)
    recalibrate(model, batches, CPU, channels_last=False)
    recalibrate(twin, batches, CPU, channels_last=False)
    torch.testing.assert_close(model[2].running_mean, twin[1].running_mean)
    torch.testing.assert_close(model[2].running_var, twin[1].running_var)
    assert_same_weights(weights, model[0].state_dict())


def test_nothing_changes_without_batchnorm_or_batches() -> None:
    plain = nn.Sequential(nn.Conv2d(2, 2, 1), nn.GroupNorm(1, 2))
    assert batchnorm_layers(plain) == []
    assert recalibrate(plain, _batches(2), CPU) == 0
    model = nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2))
    model[1].running_mean.fill_(0.5)
    model[1].running_var.fill_(2.0)
    assert recalibrate(model, [], CPU) == 0
    assert model[1].running_mean.eq(0.5).all() and model[1].running_var.eq(2.0).all()


def test_training_ends_with_recalibrated_statistics(tmp_path: Path) -> None:
    config = tiny_config(checkpoint_every=0, precise_bn=10)
    train(config, tmp_path / "precise", progress=False, data=toy_data(config))
    plain_config = tiny_config(checkpoint_every=0)
    train(plain_config, tmp_path / "plain", progress=False, data=toy_data(plain_config))
    a = load_checkpoint(tmp_path / "precise" / "checkpoints" / "latest.pt").model
    b = load_checkpoint(tmp_path / "plain" / "checkpoints" / "latest.pt").model
    stats = [k for k in a if k.endswith(("running_mean", "running_var"))]
    assert stats and all(not torch.equal(a[k], b[k]) for k in stats)
    # Weights are those of the same training; the statistics are the plain run's model
    # recalibrated on the last epoch's first 10 patches (the toy data has no uniform view).
    kept = [k for k in a if k not in stats and "num_batches" not in k]
    assert_same_weights({k: a[k] for k in kept}, {k: b[k] for k in kept})
    from spectraseg.models.unet import build_model

    model = build_model(plain_config, 3).to(memory_format=torch.channels_last)
    model.load_state_dict(b)
    data = toy_data(plain_config).train
    data.set_epoch(1)
    items = [data[i]["image"] for i in range(10)]
    batches = [torch.stack(items[i : i + PRECISE_BN_BATCH]) for i in range(0, 10, PRECISE_BN_BATCH)]
    recalibrate(model, batches, CPU)
    for k in stats:
        torch.testing.assert_close(model.state_dict()[k], a[k])


def test_resume_with_recalibration_is_exact(tmp_path: Path) -> None:
    config = tiny_config(checkpoint_every=0, precise_bn=8)
    train(config, tmp_path / "full", progress=False, data=toy_data(config))

    def interrupt(step: int, info: dict) -> None:
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    run = tmp_path / "stopped"
    train(config, run, progress=False, data=toy_data(config), callback=interrupt)
    stopped = load_checkpoint(run / "checkpoints" / "latest.pt").model
    train(None, run, resume=True, progress=False, data=toy_data(config))
    full = load_checkpoint(tmp_path / "full" / "checkpoints" / "latest.pt").model
    assert_same_weights(full, load_checkpoint(run / "checkpoints" / "latest.pt").model)
    # An interruption is not the end of training: it does not recalibrate.
    key = next(k for k in stopped if k.endswith("running_mean"))
    assert not torch.equal(stopped[key], full[key])


def test_negative_count_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"train\.precise_bn"):
        Config().replace(["train.precise_bn=-1"])
