"""``--scheduler`` against a real Dask cluster: a scheduler and two worker processes started
from the ``dask`` command line on 127.0.0.1 (free ports), as a user would run them, with
``align`` and ``predict`` giving exactly what they give in one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from spectraseg.cli import main

DASK = Path(sys.executable).with_name("dask")


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """A ``dask`` command in its own process group (so that its children stop with it)."""
    with open(log, "wb") as f:
        return subprocess.Popen(
            [str(DASK), *args], stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[str]:
    """A scheduler on a free port of 127.0.0.1 and two single-threaded worker processes;
    its address. Every process is stopped at the end, whatever happened."""
    from distributed import Client

    if not DASK.is_file():
        pytest.skip("the dask command line is not installed")
    tmp = tmp_path_factory.mktemp("cluster")
    info = tmp / "scheduler.json"
    procs = [
        _start(
            ["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
             "--scheduler-file", str(info)],
            tmp / "scheduler.log",
        )
    ]  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not info.is_file() and time.monotonic() < deadline:
            assert procs[0].poll() is None, (tmp / "scheduler.log").read_text()
            time.sleep(0.2)
        address = json.loads(info.read_text())["address"]
        for k in range(2):
            procs.append(
                _start(
                    ["worker", address, "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
                     "--host", "127.0.0.1", "--local-directory", str(tmp / f"w{k}")],
                    tmp / f"worker{k}.log",
                )
            )  # fmt: skip
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
            assert len(client.scheduler_info()["workers"]) == 2
        yield address
    finally:
        _stop(procs)
    assert all(p.poll() is not None for p in procs)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from tiny import synth_data

    base = tmp_path_factory.mktemp("cluster_data")
    synth_data(base, scenes=4, size=192, seed=1)
    return base


def test_align_and_predict_on_a_command_line_cluster_match_one_process(
    cluster: str, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from spectraseg.config import to_toml
    from tiny import tiny_config

    root = data / "data"
    q = ["--no-progress"]
    assert main(["align", str(root), "--cache", str(data / "cache"), "--workers", "0", *q]) == 0
    assert main(["align", str(root), "--cache", str(data / "c2"), "--scheduler", cluster, *q]) == 0
    ids = sorted(p.stem for p in (data / "cache").glob("*.npy"))
    assert len(ids) == 4
    for i in ids:
        np.testing.assert_array_equal(
            np.load(data / "cache" / f"{i}.npy"), np.load(data / "c2" / f"{i}.npy")
        )
    config = data / "run.toml"
    config.write_text(to_toml(tiny_config(data, "data.val_fraction=0.5")))
    assert main(["train", "--config", str(config), "--out", str(data / "run"), *q]) == 0
    outs = {}
    for name, how in (("serial", ["--workers", "0"]), ("cluster", ["--scheduler", cluster])):
        outs[name] = data / f"pred_{name}"
        args = ["predict", str(root), "--run", str(data / "run"), "--out", str(outs[name])]
        assert main([*args, *how, *q]) == 0
    capsys.readouterr()
    a, b = outs["serial"], outs["cluster"]
    assert (a / "predictions.csv").read_bytes() == (b / "predictions.csv").read_bytes()
    for i in ids:
        np.testing.assert_array_equal(
            np.load(a / "probs" / f"{i}.npy"), np.load(b / "probs" / f"{i}.npy")
        )
    done = json.loads((b / "predict.json").read_text())
    assert sorted(s["image_id"] for s in done["scenes"]) == ids


def test_one_georeferenced_scene_split_over_the_cluster_matches_one_process(
    cluster: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One scene of a description, its strips predicted on both workers of the cluster and
    finished from their files: the same COGs (bytes) and polygons as in one process."""
    from tiny import TINY_RUN

    desc = tmp_path / "data" / "dataset.toml"
    assert main(["synth", "--georef", "--out", str(desc.parent), "--size", "300", "250",
                 "--no-progress"]) == 0  # fmt: skip
    cache = tmp_path / "cache"
    assert main(["align", str(desc), "--cache", str(cache), "--no-progress"]) == 0
    sets = [f'data.root="{desc}"', f'data.cache="{cache}"', *TINY_RUN, "data.val_fraction=0"]
    overrides = [a for s in sets for a in ("--set", s)]
    assert main(["train", "--out", str(tmp_path / "run"), "--no-progress", *overrides]) == 0
    files = {}
    for name, how in (("serial", ["--workers", "0"]), ("cluster", ["--scheduler", cluster])):
        out = tmp_path / name
        args = ["predict", str(desc), "--run", str(tmp_path / "run"), "--out", str(out)]
        assert main([*args, "--strip-rows", "48", "--no-progress", *how]) == 0
        scene = out / "synth_0_0"
        files[name] = {p.name: p.read_bytes() for p in scene.iterdir()}
        (doc,) = json.loads((out / "predict.json").read_text())["scenes"]
        assert doc["strips"]["total"] == 7 and doc["status"] == "ok"
    capsys.readouterr()
    assert sorted(files["serial"]) == ["classes.tif", "classes.tif.aux.xml", "polygons.gpkg",
                                       "probs.tif"]  # fmt: skip
    assert files["serial"] == files["cluster"]
