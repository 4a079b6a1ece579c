"""Loop state across interruptions: RNG states, stop requests, exact resume
(``spectraseg.training.state``)."""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import numpy as np
import torch
from toy import assert_same_weights, tiny_config, toy_data, weights

from spectraseg.runs import load_checkpoint
from spectraseg.training.loop import train
from spectraseg.training.state import rng_state, set_rng_state


def test_rng_state_round_trip() -> None:

    state = rng_state()
    a = (torch.rand(3), np.random.random(3), random.random())  # noqa: NPY002
    set_rng_state(state)
    b = (torch.rand(3), np.random.random(3), random.random())  # noqa: NPY002
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_ctrl_c_checkpoints_and_resume_is_exact(tmp_path: Path) -> None:
    config = tiny_config(checkpoint_every=0)
    full = train(config, tmp_path / "full", progress=False, data=toy_data(config))

    def interrupt(step: int, info: dict) -> None:
        if step == 2:  # mid-epoch, between checkpoints
            os.kill(os.getpid(), signal.SIGINT)

    run = tmp_path / "stopped"
    stopped = train(config, run, progress=False, data=toy_data(config), callback=interrupt)
    # The request is honoured after the step in progress: step 3 completes, is saved.
    assert stopped.interrupted and stopped.steps == 3
    assert load_checkpoint(run / "checkpoints" / "latest.pt").step == 3
    resumed = train(None, run, resume=True, progress=False, data=toy_data(config))
    assert resumed.steps == 6 and not resumed.interrupted
    assert_same_weights(weights(tmp_path / "full"), weights(run))
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in full.history]
    assert [r["val_mean"] for r in resumed.history] == [r["val_mean"] for r in full.history]


def test_resume_with_weight_averaging_is_exact(tmp_path: Path) -> None:
    config = tiny_config(ema=0.9, checkpoint_every=0)
    full = train(config, tmp_path / "full", progress=False, data=toy_data(config))

    def interrupt(step: int, info: dict) -> None:
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    run = tmp_path / "stopped"
    assert train(config, run, progress=False, data=toy_data(config), callback=interrupt).steps == 3
    resumed = train(None, run, resume=True, progress=False, data=toy_data(config))
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "latest.pt")
    b = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert a.ema_count == b.ema_count == 6
    assert_same_weights(a.ema, b.ema)
    assert [r["val_mean"] for r in resumed.history] == [r["val_mean"] for r in full.history]
