"""Streaming prediction of large georeferenced scenes: time per megapixel and peak memory
against scene size, and the cost of polygons across strip seams.

Run::

    .venv/bin/python benchmarks/bench_streaming.py --out runs/bench_streaming \\
        [--sizes 4096 8192 16384 32768 4096x32768] [--run RUN] [--steps 200] [--threads 2]

For each size N (or HxW), a synthetic georeferenced 8-band uint16 scene of N x N (H x W)
pixels is streamed to a tiled GeoTIFF (``spectraseg synth --georef``), aligned into a cache
(``spectraseg align``), then predicted by ``spectraseg predict --workers 0`` in a child
process, whose peak RSS is its own ``ru_maxrss`` (``os.wait4``). Printed per size::

    size=N seconds=S peak_rss_mb=M mpx_per_s=R

then the model pass and the vectorisation apart (from ``predict.json``): polygons, objects
per second of vectorisation, and the share of vectorisation spent at strip seams (finding
the regions a strip leaves open and carrying them into the next). Last,
the model pass alone in this process, strip by strip against the whole scene in memory
(:func:`spectraseg.inference.tiling.predict_probs` on the normalised scene) of the
``--compare`` size (4096 by default): the cost of streaming itself.

The model is a default-config U-Net (width 16, depth 4) trained for ``--steps`` steps on a
2048 px scene of the same generator (or ``--run``), so that masks have the structure of a
trained model's. Disk: the cache holds 16 bytes per pixel (17 GB at 32k), the scene about
half that. Scenes and caches are kept in ``OUT`` and reused when present.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

EXE = Path(sys.executable).with_name("spectraseg")


def run(*args: str, env: dict[str, str] | None = None) -> float:
    """``spectraseg ARGS`` to completion; its wall seconds."""
    t0 = time.perf_counter()
    subprocess.run([str(EXE), *args], check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - t0


def measured(*args: str, env: dict[str, str]) -> tuple[float, float]:
    """``spectraseg ARGS`` in a child: ``(wall seconds, peak RSS in MB)`` of that child."""
    t0 = time.perf_counter()
    child = subprocess.Popen([str(EXE), *args], stdout=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"spectraseg {' '.join(args)} failed ({child.returncode})")
    return time.perf_counter() - t0, usage.ru_maxrss / 1024


def parse_size(text: str) -> tuple[int, int]:
    """``N`` (N x N) or ``HxW`` -> ``(H, W)``."""
    h, _, w = text.partition("x")
    return int(h), int(w or h)


def size_name(size: tuple[int, int]) -> str:
    """``N`` for a square scene, else ``HxW`` (scene directories and printed lines)."""
    return str(size[0]) if size[0] == size[1] else f"{size[0]}x{size[1]}"


def scene(out: Path, size: tuple[int, int]) -> Path:
    """The synthetic scene of ``size`` ``(H, W)`` px and its cache, made once; its
    description."""
    name = size_name(size)
    root = out / f"scene_{name}"
    desc = root / "dataset.toml"
    if not desc.is_file():
        s = run("synth", "--georef", "--out", str(root), "--size", str(size[0]), str(size[1]),
                "--seed", "7", "--no-progress")  # fmt: skip
        print(f"  synth {name}: {s:.0f} s", file=sys.stderr)
    if not (root / "cache" / "manifest.json").is_file():
        s = run("align", str(desc), "--cache", str(root / "cache"), "--no-progress")
        print(f"  align {name}: {s:.0f} s", file=sys.stderr)
    return desc


def trained(out: Path, steps: int) -> Path:
    """A default-config run trained ``steps`` steps on the 2048 px scene."""
    run_dir = out / "run"
    if not (run_dir / "checkpoints" / "best.pt").is_file():
        desc = scene(out, (2048, 2048))
        sets = (
            f"data.root={desc}", f"data.cache={desc.parent / 'cache'}", f"train.steps={steps}",
            "data.val_fraction=0",
        )  # fmt: skip
        s = run("train", "--out", str(run_dir), "--no-progress",
                *(a for k in sets for a in ("--set", k)))  # fmt: skip
        print(f"  train {steps} steps: {s:.0f} s", file=sys.stderr)
    return run_dir


def model_pass(run_dir: Path, desc: Path, threads: int) -> tuple[float, float]:
    """Megapixels per second of the model pass alone on one scene: strip by strip, and
    the whole normalised scene in memory."""
    import torch

    from spectraseg.align.cache import open_cache
    from spectraseg.features.patches import load_scene
    from spectraseg.inference.streaming import strip_rows
    from spectraseg.inference.tiling import plan_strips, predict_probs
    from spectraseg.runs import load_model

    torch.set_num_threads(threads)
    model, config, stats = load_model(run_dir, "best", "cpu")
    assert stats is not None
    cache = desc.parent / "cache"
    (image_id,) = open_cache(cache).image_ids
    p = config.predict
    kw = dict(tile=p.tile, margin=p.margin, batch=p.batch)
    # oneDNN builds its kernels for each tile shape on first use: two rounds, alternating,
    # and the faster of each.
    times: dict[str, list[float]] = {"strips": [], "whole": []}
    for _ in range(2):
        t0 = time.perf_counter()
        whole = load_scene(cache, image_id, stats, config.data.indices)
        predict_probs(model, whole, **kw)
        times["whole"].append(time.perf_counter() - t0)
        c, h, w = whole.shape
        del whole
        t0 = time.perf_counter()
        rows = strip_rows(w, c, p.tile, p.margin)
        for s in plan_strips(h, p.tile, p.margin, rows, model.multiple):
            window = load_scene(cache, image_id, stats, config.data.indices, rows=s.read)
            predict_probs(model, window, strip=s, **kw)
        times["strips"].append(time.perf_counter() - t0)
    return h * w / 1e6 / min(times["strips"]), h * w / 1e6 / min(times["whole"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench_streaming"))
    ap.add_argument(
        "--sizes",
        type=parse_size,
        nargs="+",
        default=[(n, n) for n in (4096, 8192, 16384, 32768)],
        help="scene sizes: N (N x N) or HxW, e.g. 4096x32768 (a strip as wide as 32768 px)",
    )
    ap.add_argument("--run", type=Path, help="a georeferenced run (default: trained here)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--compare",
        type=int,
        default=4096,
        help="size of the scene whose model pass is timed whole in memory too (0: skip; "
        "the whole normalised scene must fit in RAM)",
    )
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    run_dir = args.run or trained(args.out, args.steps)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    for size in args.sizes:
        desc = scene(args.out, size)
        pred = args.out / f"pred_{size_name(size)}"
        seconds, peak = measured(
            "predict", str(desc), "--run", str(run_dir), "--out", str(pred),
            "--cache", str(desc.parent / "cache"), "--workers", "0", "--no-progress",
            "--threads", str(args.threads), env=env,
        )  # fmt: skip
        mpx = size[0] * size[1] / 1e6
        print(f"size={size_name(size)} seconds={seconds:.1f} peak_rss_mb={peak:.0f} "
              f"mpx_per_s={mpx / seconds:.3f}", flush=True)  # fmt: skip
        (doc,) = json.loads((pred / "predict.json").read_text())["scenes"]
        parts = sum(doc["parts"].values())
        vec, seam = doc["vectorize_seconds"], doc["seam_seconds"]
        print(
            f"  model pass {doc['model_seconds']:.1f} s ({mpx / doc['model_seconds']:.3f} Mpx/s, "
            f"{doc['strips']['total']} strips); vectorisation {vec:.1f} s: {parts} polygons, "
            f"{parts / vec:.0f} objects/s, seams {100 * seam / vec:.1f} % of it",
            flush=True,
        )
    if args.compare:
        square = (args.compare, args.compare)
        streaming, whole = model_pass(run_dir, scene(args.out, square), args.threads)
        print(
            f"model pass on {args.compare} px in this process: strips {streaming:.3f} Mpx/s, "
            f"whole scene in memory {whole:.3f} Mpx/s ({100 * (streaming / whole - 1):+.1f} %)"
        )


if __name__ == "__main__":
    main()
