"""``kill -9`` in the middle of ``predict`` and ``submit``: a real child process is killed
while it writes an output, nothing under a final name is half-written, and running the
same command again gives exactly the outputs of an uninterrupted run (and sweeps the
killed run's temporary files)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from spectraseg.cli import main

EXE = Path(sys.executable).with_name("spectraseg")


def kill_when(args: list[str], ready: Callable[[], bool], timeout: float = 120.0) -> None:
    """Run ``spectraseg ARGS`` in a child process and SIGKILL it as soon as ``ready()``."""
    child = subprocess.Popen(
        [str(EXE), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert child.poll() is None, "the command ended before it could be killed"
            assert time.monotonic() < deadline, "the moment to kill never came"
            time.sleep(0.002)
        child.send_signal(signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL


def files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """Eight synthetic 384 px scenes, their cache and a tiny trained run."""
    from spectraseg.align.fusion import align_dataset
    from spectraseg.training.loop import train
    from tiny import synth_data, tiny_config

    base = tmp_path_factory.mktemp("kill")
    synth_data(base, scenes=8, size=384, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        align_dataset(base / "data", base / "cache", progress=False)
        train(tiny_config(base, "data.val_fraction=0.25"), base / "run", progress=False)
    return base


def predict_args(base: Path, out: Path) -> list[str]:
    return [
        "predict", str(base / "data"), "--run", str(base / "run"), "--out", str(out),
        "--cache", str(base / "cache"), "--workers", "0", "--no-progress",
    ]  # fmt: skip


def test_predict_killed_mid_write_then_rerun_matches_an_uninterrupted_run(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref, out = trained / "pred_ref", trained / "pred_killed"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(predict_args(trained, ref)) == 0
    # Killed in the middle: three scenes' probabilities written, predictions.csv not yet.
    kill_when(predict_args(trained, out), lambda: len(list(out.glob("probs/*.npy"))) >= 3)
    assert not (out / "predictions.csv").exists() and len(list(out.glob("probs/*.npy"))) < 8
    for path in out.rglob("*"):
        if path.is_file() and not path.name.startswith("."):
            if path.suffix == ".npy":
                assert np.load(path).shape[0] == 10
            elif path.suffix in (".json", ".geojson"):
                json.loads(path.read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(predict_args(trained, out)) == 0
    capsys.readouterr()
    got, want = files(out), files(ref)
    assert not [k for k in got if Path(k).name.startswith(".")]  # temporaries swept
    doc_got, doc_want = json.loads(got.pop("predict.json")), json.loads(want.pop("predict.json"))
    assert got.keys() == want.keys() and len(want) > 8
    for name, content in want.items():
        assert got[name] == content, name
    assert [s["image_id"] for s in doc_got["scenes"]] == [s["image_id"] for s in doc_want["scenes"]]


def test_submit_killed_mid_write_then_rerun_matches(trained: Path) -> None:
    pred = trained / "pred_ref"
    if not (pred / "predictions.csv").is_file():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert main(predict_args(trained, pred)) == 0
    sample = trained / "data" / "sample_submission.csv"
    # Rows of 20 000 more (unpredicted) scenes make the write long enough to catch.
    big = trained / "sample_big.csv"
    lines = sample.read_text().splitlines()
    more = [f"9{k:03d}_{j // 5}_{j % 5},{c},MULTIPOLYGON EMPTY"
            for k in range(800) for j in range(25) for c in range(1, 11)]  # fmt: skip
    big.write_text("\n".join([lines[0], *lines[1:], *more]) + "\n")
    ref, out = trained / "ref.csv", trained / "sub" / "killed.csv"
    out.parent.mkdir()
    assert main(["submit", str(pred), "--sample", str(big), "--out", str(ref)]) == 0
    args = ["submit", str(pred), "--sample", str(big), "--out", str(out)]
    kill_when(args, lambda: any(out.parent.glob(".killed.csv.*.tmp")))
    # Killed while writing: the temporary file is there, the final name is not.
    assert not out.exists() and any(out.parent.glob(".killed.csv.*.tmp"))
    assert main(["submit", str(pred), "--sample", str(big), "--out", str(out)]) == 0
    assert out.read_bytes() == ref.read_bytes()
    assert os.listdir(out.parent) == ["killed.csv"]
