"""Small scenes: what ``spectraseg predict`` costs per scene when scenes are small.

Run::

    .venv/bin/python benchmarks/bench_small_scenes.py [--run RUN --data DATA --images ID ...]

Without ``--run``: five synthetic scenes the size of dstl-lite's (538 x 538 px) and a run of
the default model trained for 300 steps (about a minute; an untrained model's masks are
salt and pepper, whose vectorisation is the worst case of ``bench_predict.py``, not this). With
``--run``: that run on ``DATA`` (e.g. the real-data demo's ``runs/dstl-lite/run``, its final
model, on five dstl-lite scenes). ``spectraseg predict`` runs as a user runs it, once
with the default worker plan and once in this process (``--workers 0``); printed: the
command's wall time (imports included) and each scene's seconds from ``predict.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXE = Path(sys.executable).with_name("spectraseg")


def spectraseg(*args: str, cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([str(EXE), *args], check=True, capture_output=True, cwd=cwd)
    return time.perf_counter() - t0


def synthetic(tmp: Path) -> tuple[Path, Path, list[str]]:
    """Five 538 px synthetic scenes, aligned, and a 300-step run of the default model."""
    spectraseg("synth", "--out", "data", "--scenes", "5", "--size", "538", "538", cwd=tmp)
    spectraseg("align", "data", "--cache", "cache", "--workers", "0", cwd=tmp)
    sets = ("data.root=data", "data.cache=cache", "train.steps=300", "data.val_fraction=0")
    spectraseg("train", "--out", "run", *(a for k in sets for a in ("--set", k)), cwd=tmp)
    ids = sorted(p.stem for p in (tmp / "cache").glob("*.npy"))
    return tmp / "run", tmp / "data", ids


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path)
    p.add_argument("--data", type=Path)
    p.add_argument("--images", nargs="*", default=[])
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        if args.run:
            run, data, ids = args.run.resolve(), args.data.resolve(), args.images
        else:
            run, data, ids = synthetic(tmp)
        for name, how in (("default workers", []), ("in this process", ["--workers", "0"])):
            out = tmp / name.replace(" ", "_")
            seconds = spectraseg(
                "predict", str(data), "--run", str(run), "--out", str(out), "--images", *ids,
                "--thresholds", "config", "--no-progress", *how, cwd=tmp,
            )  # fmt: skip
            doc = json.loads((out / "predict.json").read_text())
            per = ", ".join(f"{s['seconds']:.2f}" for s in doc["scenes"])
            print(f"{name}: {len(ids)} scenes in {seconds:.1f} s (command); per scene {per} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
