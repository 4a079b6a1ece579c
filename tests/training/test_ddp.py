"""Training in several processes: SIGKILL + resume, DDP under torchrun, Ctrl-C of the CLI.

Each test starts processes (``train_worker.py`` beside this file is the worker script)
and takes a few seconds to start them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from toy import CHANNELS, assert_same_weights, cache_config, tiny_config, toy_data, weights

from spectraseg.models.unet import UNet
from spectraseg.runs import load_checkpoint
from spectraseg.training.loop import train

WORKER = Path(__file__).resolve().with_name("train_worker.py")


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    return env


def test_sigkill_then_resume_ends_with_identical_weights(tmp_path: Path) -> None:
    """A run killed with SIGKILL and resumed = an uninterrupted run, weight for weight."""
    torch.set_num_threads(1)
    full = tmp_path / "full"
    train(tiny_config(epochs=3), full, progress=False, data=toy_data(tiny_config(epochs=3)))
    run = tmp_path / "killed"
    cmd = [sys.executable, str(WORKER), str(run), str(tmp_path / "w"), "--epochs", "3"]
    # Killed right after step 5: latest.pt is from step 4 (checkpoint_every=2).
    proc = subprocess.run(
        [*cmd, "--kill-at", "5"], env=_worker_env(), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert load_checkpoint(run / "checkpoints" / "latest.pt").step == 4
    proc = subprocess.run(
        [*cmd, "--resume"], env=_worker_env(), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert load_checkpoint(run / "checkpoints" / "latest.pt").step == 9
    assert_same_weights(weights(full), weights(run))
    assert_same_weights(weights(full, "best"), weights(run, "best"))


def test_ddp_two_processes_end_with_identical_weights(tmp_path: Path) -> None:
    run = tmp_path / "run"
    out = tmp_path / "w"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
        str(WORKER), str(run), str(out), "--accumulate", "2", "--epochs", "1",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=_worker_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0 = torch.load(out / "rank0.pt", weights_only=True, map_location="cpu")
    w1 = torch.load(out / "rank1.pt", weights_only=True, map_location="cpu")
    assert_same_weights(w0, w1)
    # Training moved the weights, and rank 0 wrote what every rank holds.
    init = UNet(CHANNELS, width=4, depth=2)
    assert any(
        not torch.equal(w0[k], v) for k, v in init.state_dict().items() if v.is_floating_point()
    )
    assert_same_weights(w0, weights(run))
    ckpt = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert ckpt.step == 3 and len(ckpt.rng) == 2
    doc = json.loads((run / "metrics.json").read_text())
    assert len(doc["epochs"]) == 1


def test_cli_under_torchrun(tmp_path: Path) -> None:
    """``torchrun -m spectraseg train``: two ranks on the cache, one run directory."""
    config = cache_config(tmp_path)
    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
        "-m", "spectraseg", "train", "--config", str(config), "--out", str(run),
        "--no-progress",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=_worker_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("best validation mean Jaccard") == 1  # rank 0 reports
    ckpt = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert ckpt.step == 6 and len(ckpt.rng) == 2
    doc = json.loads((run / "metrics.json").read_text())
    # Two ranks of 4 patches: 8 patches per step.
    assert [r["step"] for r in doc["epochs"]] == [3, 6]


def test_cli_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path: Path) -> None:
    config = cache_config(tmp_path)
    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "spectraseg", "train", "--config", str(config), "--out", str(run),
        "--set", "train.epochs=100000", "--set", "train.checkpoint_every=1", "--no-progress",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=_worker_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while not (run / "checkpoints" / "latest.pt").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted at step" in err and "Traceback" not in err
    step = int(err.split("interrupted at step ")[1].split(";")[0])
    assert load_checkpoint(run / "checkpoints" / "latest.pt").step == step >= 1
