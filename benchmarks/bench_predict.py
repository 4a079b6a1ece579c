"""Benchmark of whole-scene prediction: tiled inference, peak memory, vectorisation.

Run::

    .venv/bin/python benchmarks/bench_predict.py [--threads 2] [--scenes 3] [--rounds 2]
        [--configs 480x1 736x1 896x1 1024x1 256x8] [--memory-tile TILE BATCH] [--quick]
        [--skip memory inference vectorize]

On a full-size DSTL scene (3348 x 3392 pixels, 20 channels) with 2 torch threads (the
process is pinned to that many cores):

1. **Peak memory** of predicting one scene as ``spectraseg predict`` does (normalised
   float32 input, tiled inference, uint8 quantisation, thresholds, vectorisation) in a
   fresh process (``VmHWM``), first, before this process holds any scene; at the
   ``[predict]`` defaults unless ``--memory-tile`` says otherwise.
2. **Inference** with :func:`spectraseg.inference.tiling.predict_probs` at several tile sizes and
   batch sizes (margin 16). Efficiency = effective throughput / pure model throughput,
   defined exactly in :data:`EFFICIENCY` (printed with the figures): scene pixels per
   wall second of the call over the model's best pixels per second on any of the batches
   of :data:`PURE_BATCHES` (small and large), factored into output/computed pixels x model
   time/wall x model speed in the call/pure.
3. **Vectorisation** of the 10 class masks of real scenes (``../shared/data/dstl-lite``
   labels rasterised at full size; plus a prediction-like version with noisy boundaries
   and speckles) with :func:`spectraseg.vectorize.masks_to_polygons` against the
   reference conversion, OpenCV ``findContours`` (``RETR_CCOMP``) + ``approxPolyDP`` +
   ``buffer(0)`` (:func:`reference_polygons`), well written (vectorised construction,
   ``buffer(0)`` of the invalid polygons only) and in the classic form of the public DSTL
   kernels (``buffer(0)`` of the whole MultiPolygon). Reported: time (best of 3,
   interleaved; the classic form once), of which tracing (OpenCV + outlines), round-trip IoU
   (mask -> polygons -> mask, per class over all scenes), vertices, and validity after
   rounding to the 8 decimals written to WKT. Everything runs in one thread.
4. **The worst case**, an untrained model: ``spectraseg predict --workers 0`` of one
   full-size synthetic scene (``synth --seed 99``) with a run trained for 3 steps, whose
   masks are salt and pepper (100 000 to 790 000 components per class): wall time, peak
   RSS (the predicting child's ``ru_maxrss``) and the size of what it writes.

The model is :class:`spectraseg.models.unet.UNet` (width 16, depth 4: the default config).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import resource
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

from spectraseg.runtime import tune_memory

# As the ``spectraseg`` command does before torch starts (spectraseg.runtime); to measure
# without, set SPECTRASEG_TUNE_MEMORY=0.
tune_memory()

H, W, C = 3348, 3392, 20
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dstl-lite"
SCENES = ("6110_1_2", "6120_2_0", "6010_4_4", "6100_2_2", "6140_3_1")


def log(msg: str) -> None:
    print(msg, flush=True)


def smooth_scene(seed: int = 0) -> np.ndarray:
    """A (20, H, W) float32 scene of smooth random fields (content does not affect speed)."""
    import cv2

    rng = np.random.default_rng(seed)
    out = np.empty((C, H, W), dtype=np.float32)
    for c in range(C):
        low = rng.standard_normal((H // 16, W // 16)).astype(np.float32)
        out[c] = cv2.resize(low, (W, H), interpolation=cv2.INTER_CUBIC)
    return out


def build_model():
    import torch

    torch.manual_seed(0)
    try:
        from spectraseg.models.unet import UNet

        return UNet(
            C, 10, width=16, depth=4
        ).eval(), "spectraseg.models.unet.UNet(20, 10, width=16, depth=4)"
    except ImportError:  # pragma: no cover - the model module is part of the package
        net = torch.nn.Sequential(
            torch.nn.Conv2d(C, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 10, 1)
        )
        return net.eval(), "stand-in conv net (spectraseg.models.unet missing)"


# --------------------------------------------------------------------------- inference


class Timed:
    """Wraps a model and adds up the seconds spent inside its forward passes."""

    def __init__(self, model) -> None:
        self.model = model
        self.seconds = 0.0
        self.multiple = getattr(model, "multiple", None)

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def __call__(self, x):
        t0 = time.perf_counter()
        y = self.model(x)
        self.seconds += time.perf_counter() - t0
        return y


PURE_BATCHES = ((2, 256), (4, 256), (8, 256), (16, 256), (1, 480), (1, 512), (1, 1024), (2, 1024))
"""``(n, side)``: the channels-last batches whose best throughput is the model's pure speed
(every tile shape and batch the default configurations feed at full size is among them).
Small batches are included: without :func:`spectraseg.runtime.tune_memory` they are the
fastest on CPU (2 x 256^2 runs 2x faster than 8 x 256^2), because glibc reuses their memory
while it maps every activation over 32 MiB afresh, and faults its pages in, on every call;
with it, all run at about the same speed."""

EFFICIENCY = (
    "efficiency = effective throughput / pure model throughput, where effective = scene "
    "pixels / wall seconds of one predict_probs call on the whole scene, and pure = the "
    "model's best throughput over forward passes of channels-last batches "
    + ", ".join(f"{n}x{s}^2" for n, s in PURE_BATCHES)
    + " (best of 2 passes each, averaged between right before and right after the call); it "
    "factors exactly into output/computed pixels (the overlap and the shrunk last tiles) x "
    "model time/wall (the tiling machinery: reading tiles, reflect padding, channels-last "
    "interleaving, stitching, sigmoid) x model speed in the call/pure (tile shapes and "
    "batch sizes). The machine may be shared: each configuration runs ROUNDS times, "
    "interleaved, and the best round is reported with the median."
)


def pure_throughput(model, reps: int = 2) -> float:
    """Best model throughput (pixels/s) over :data:`PURE_BATCHES`.

    The best of ``reps`` runs of each, channels-last input like :func:`predict_probs`.
    """
    import torch

    best = 0.0
    with torch.inference_mode():
        for n, side in PURE_BATCHES:
            x = torch.randn(n, C, side, side).contiguous(memory_format=torch.channels_last)
            model(x)
            t = min(_time(lambda x=x: model(x)) for _ in range(reps))
            best = max(best, n * side * side / t)
    return best


def bench_inference(threads: int, quick: bool, configs: list[tuple[int, int]], rounds: int) -> None:
    import torch

    from spectraseg.inference.tiling import predict_probs, tile_layout

    torch.set_num_threads(threads)
    model, name = build_model()
    image = smooth_scene() if not quick else smooth_scene()[:, :1024, :1024]
    h, w = image.shape[1:]
    margin = 16
    log(
        f"tiled inference of a {h}x{w}x{C} scene, model {name}, torch threads {threads}, "
        f"margin {margin} px; {EFFICIENCY.replace('ROUNDS', str(rounds))}"
    )
    runs: dict[tuple[int, int], list[tuple[float, ...]]] = {c: [] for c in configs}
    for _ in range(rounds):
        for tile, batch in configs:
            before = pure_throughput(model)
            timed = Timed(model)
            t0 = time.perf_counter()
            probs = predict_probs(timed, image, tile=tile, margin=margin, batch=batch)
            wall = time.perf_counter() - t0
            assert probs.shape == (10, h, w)
            del probs
            pure = (before + pure_throughput(model)) / 2
            runs[(tile, batch)].append((h * w / wall / pure, wall, pure, timed.seconds))
    for (tile, batch), found in runs.items():
        ys, xs = tile_layout(h, tile, margin, 16), tile_layout(w, tile, margin, 16)
        computed = sum(s for _, s in ys) * sum(s for _, s in xs)
        eff, wall, pure, model_s = max(found)
        log(
            f"  tile {tile}, batch {batch}: {len(ys) * len(xs)} tiles in {wall:.1f} s, "
            f"{h * w / wall / 1e6:.3f} Mpx/s vs pure {pure / 1e6:.3f} Mpx/s; efficiency "
            f"{eff:.3f} = output/computed pixels {h * w / computed:.3f} x model time/wall "
            f"{model_s / wall:.3f} x model speed vs pure {computed / model_s / pure:.3f} "
            f"(median of {len(found)} rounds {np.median([f[0] for f in found]):.3f})"
        )
    log(f"  (load average {os.getloadavg()[0]:.1f})")


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _peak_rss() -> int:
    """Peak resident memory of this process in bytes (``VmHWM``; ``ru_maxrss`` would
    include the parent's pages from before ``exec``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _scene_peak(threads: int, tile: int, batch: int, queue) -> None:
    """Child process: predict one full scene as ``spectraseg predict`` does; report RSS.

    Phase 1: the normalised float32 scene -> probabilities -> uint8 levels (then the scene
    is freed, as in :func:`spectraseg.inference.pipeline.predict_scene_task`). Phase 2: levels ->
    thresholds -> polygons. An untrained net's probabilities are noise around 0.5, so
    phase 2 uses the levels of a real scene's labels rasterised at full size instead.
    """
    import torch

    from spectraseg.inference.scene import PredictOptions, levels_to_polygons, scene_levels

    torch.set_num_threads(threads)
    model, _ = build_model()
    rss = _peak_rss
    base = rss()
    image = smooth_scene(1)
    opts = PredictOptions(tile=tile, margin=16, batch=batch, tta=False, device="cpu")
    t0 = time.perf_counter()
    levels = scene_levels(model, image, opts)
    t1 = time.perf_counter() - t0
    nbytes = image.nbytes
    del image
    peak1 = rss()
    xmax, ymin = 0.0092, -0.009
    if (DATA / "grid_sizes.csv").is_file():
        from spectraseg.data.dstl import open_dataset
        from spectraseg.data.geometry import rasterize_classes

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = open_dataset(DATA)
            xmax, ymin = ds.grid_sizes[SCENES[0]]
            levels = rasterize_classes(ds.scene_labels(SCENES[0]), W, H, xmax, ymin) * 255
    t0 = time.perf_counter()
    polys = levels_to_polygons(levels, xmax, ymin, dict.fromkeys(range(1, 11), 0.5), 0, opts)
    t2 = time.perf_counter() - t0
    queue.put((base, peak1, rss(), nbytes, t1, t2, sum(len(g.geoms) for g in polys.values())))


def bench_memory(threads: int, tile: int = 256, batch: int = 8) -> None:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_scene_peak, args=(threads, tile, batch, q))
    p.start()
    while True:  # a child that dies must not leave this process waiting forever
        try:
            base, peak1, peak2, nbytes, t1, t2, parts = q.get(timeout=5)
            break
        except queue.Empty:
            if not p.is_alive():
                raise RuntimeError(f"the memory child died (exit code {p.exitcode})") from None
    p.join()
    gb = 2**30
    log(
        f"peak RSS predicting one {H}x{W}x{C} scene (tile {tile}, batch {batch}): inference "
        f"{peak1 / gb:.2f} GB ({t1:.1f} s), with vectorisation {peak2 / gb:.2f} GB "
        f"({t2:.1f} s, {parts} polygons); of which the process with torch and the model "
        f"{base / gb:.2f} GB and the float32 input {nbytes / gb:.2f} GB"
    )


# --------------------------------------------------------------------------- vectorisation


def _reference_rings(mask: np.ndarray, epsilon: float):
    """OpenCV contours of ``mask`` simplified by ``approxPolyDP``, as polygon rings.

    Contours run through the centres of boundary pixels (shifted by half a pixel to
    continuous coordinates); ``RETR_CCOMP`` gives outer contours and, as their children,
    the holes. Returns ``(approx, shell, owner, n)``: the simplified contours (``(n, 1, 2)`` int
    pixel coordinates), which of them are shells with at least 3 vertices, and for each the
    index of the shell it belongs to (itself for a shell), and their vertex counts; or
    ``None`` when there is no contour.
    """
    import cv2

    contours, hierarchy = cv2.findContours(
        mask.view(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE
    )
    if not contours:
        return None
    approx = [cv2.approxPolyDP(c, epsilon, True) for c in contours]
    parent = hierarchy[0][:, 3]
    n = np.fromiter(map(len, approx), np.int64, len(approx))
    shell = (parent == -1) & (n >= 3)
    owner = np.where(parent == -1, np.arange(len(approx)), parent)
    return approx, shell, owner, n


def reference_polygons(
    mask: np.ndarray, xmax: float, ymin: float, epsilon: float, classic: bool = False
):
    """The reference: OpenCV ``findContours`` + ``approxPolyDP`` + ``buffer(0)``.

    Well written (the default): every polygon of the class is built in one vectorised
    shapely call, validity is checked per polygon in one call, and only the invalid ones go
    through ``buffer(0)``; the MultiPolygon is buffered as a whole only if it is still
    invalid (parts overlapping). ``classic=True`` is the form of the public DSTL kernels: a
    Python loop building each ``Polygon``, then ``buffer(0)`` of the whole MultiPolygon as
    soon as any part is invalid, which costs 2-5x more on these masks for the same result.
    Shells (and holes) with fewer than 3 vertices are dropped in both.
    """
    import shapely
    from shapely.geometry import MultiPolygon, Polygon

    from spectraseg.data.geometry import pixel_scale

    h, w = mask.shape
    traced = _reference_rings(mask, epsilon)
    if traced is None:
        return MultiPolygon()
    approx, shell, owner, n = traced
    keep = (n >= 3) & shell[owner]  # a shell with >= 3 vertices, or a hole of one
    if not keep.any():
        return MultiPolygon()
    sx, sy = pixel_scale(w, h, xmax, ymin)
    to_grid = np.array([1.0 / sx, 1.0 / sy])
    if classic:
        children: dict[int, list[np.ndarray]] = defaultdict(list)
        for i in np.flatnonzero(keep & ~shell):
            children[owner[i]].append((approx[i][:, 0, :] + 0.5) * to_grid)
        polys = [
            Polygon((approx[i][:, 0, :] + 0.5) * to_grid, children[i])
            for i in np.flatnonzero(shell)
        ]
        out = MultiPolygon(polys)
    else:
        # Rings grouped by polygon, shell first: shapely.polygons(rings, indices=...).
        idx = np.flatnonzero(keep)
        idx = idx[np.lexsort((~shell[idx], owner[idx]))]
        pts = np.concatenate([approx[i] for i in idx])[:, 0, :]
        rings = shapely.linearrings(
            (pts + 0.5) * to_grid, indices=np.repeat(np.arange(len(idx)), n[idx])
        )
        polys = shapely.polygons(rings, indices=np.unique(owner[idx], return_inverse=True)[1])
        bad = ~shapely.is_valid(polys)
        if bad.any():
            fixed = shapely.get_parts(shapely.buffer(polys[bad], 0))
            polys = np.concatenate([polys[~bad], fixed[shapely.get_type_id(fixed) == 3]])
        out = shapely.multipolygons(polys)
    if not out.is_valid:
        out = out.buffer(0)
        if out.geom_type == "Polygon":
            out = MultiPolygon([out])
    return out


def noisy(masks: np.ndarray, seed: int) -> np.ndarray:
    """Prediction-like masks: blurred labels plus smooth noise, thresholded at 0.5."""
    import cv2

    rng = np.random.default_rng(seed)
    out = np.empty(masks.shape, dtype=bool)
    for k in range(masks.shape[0]):
        blur = cv2.GaussianBlur(masks[k].astype(np.float32), (0, 0), 3)
        noise = cv2.GaussianBlur(
            rng.standard_normal(masks[k].shape).astype(np.float32), (0, 0), 1.5
        )
        out[k] = blur + noise > 0.5
    return out


def bench_vectorize(n_scenes: int, reps: int = 3) -> None:
    import shapely

    from spectraseg.data.dstl import format_wkt, open_dataset
    from spectraseg.data.geometry import rasterize_classes
    from spectraseg.vectorize import DEFAULT_TOLERANCE, masks_to_polygons, trace_pixels

    if not (DATA / "grid_sizes.csv").is_file():
        log(f"vectorisation: skipped ({DATA} not found)")
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = open_dataset(DATA)
        labels = {i: ds.scene_labels(i) for i in SCENES[:n_scenes]}
    tol = DEFAULT_TOLERANCE
    log(
        f"vectorisation: 10 classes of {len(labels)} real scene(s) rasterised at {H}x{W}, "
        f"one thread; tolerance {tol} px (reference approxPolyDP epsilon {tol} px); times "
        f"summed over the scenes, each the best of {reps} interleaved runs (classic: 1 run)"
    )
    who = ("ours", "reference", "classic")
    for kind in ("labels", "noisy"):
        t = dict.fromkeys((*who, "tracing"), 0.0)
        inter = np.zeros((3, 10))
        union = np.zeros((3, 10))
        verts = [0, 0, 0]
        invalid = [0, 0, 0]
        for n, (image_id, lab) in enumerate(labels.items()):
            xmax, ymin = ds.grid_sizes[image_id]
            masks = rasterize_classes(lab, W, H, xmax, ymin).astype(bool)
            if kind == "noisy":
                masks = noisy(masks, n)
            best = dict.fromkeys(t, np.inf)
            for _ in range(reps):
                t0 = time.perf_counter()
                ours = masks_to_polygons(masks, xmax, ymin, tolerance=tol)
                best["ours"] = min(best["ours"], time.perf_counter() - t0)
                t0 = time.perf_counter()
                trace_pixels(masks)
                best["tracing"] = min(best["tracing"], time.perf_counter() - t0)
                t0 = time.perf_counter()
                ref = {c: reference_polygons(masks[c - 1], xmax, ymin, tol) for c in range(1, 11)}
                best["reference"] = min(best["reference"], time.perf_counter() - t0)
            t0 = time.perf_counter()
            classic = {
                c: reference_polygons(masks[c - 1], xmax, ymin, tol, classic=True)
                for c in range(1, 11)
            }
            best["classic"] = time.perf_counter() - t0
            for k in t:
                t[k] += best[k]
            for j, polys in enumerate((ours, ref, classic)):
                back = rasterize_classes(polys, W, H, xmax, ymin).astype(bool)
                inter[j] += (back & masks).reshape(10, -1).sum(1)
                union[j] += (back | masks).reshape(10, -1).sum(1)
                for g in polys.values():
                    verts[j] += int(shapely.get_num_coordinates(g))
                    invalid[j] += not shapely.from_wkt(format_wkt(g, 8)).is_valid
        present = union[0] > 0
        iou = np.where(present, inter / np.maximum(union, 1), np.nan)
        log(
            f"  {kind}: ours {t['ours']:.2f} s (of which tracing "
            f"{t['tracing']:.2f} s), reference {t['reference']:.2f} s, classic "
            f"{t['classic']:.2f} s; speed-up vs reference {t['reference'] / t['ours']:.2f}x, "
            f"vs classic {t['classic'] / t['ours']:.2f}x (load average {os.getloadavg()[0]:.1f})"
        )
        for j, name in enumerate(who):
            cells = " ".join(f"{v:.3f}" if np.isfinite(v) else "  -  " for v in iou[j])
            log(
                f"    {name:<9} IoU min {np.nanmin(iou[j]):.4f} per class [{cells}] "
                f"vertices {verts[j]}, invalid after rounding {invalid[j]}"
            )


def bench_untrained(threads: int) -> None:
    """The worst case of vectorisation end to end: ``spectraseg predict`` of one full-size
    synthetic scene with a run trained for 3 steps, whose masks are salt and pepper."""
    import subprocess
    import tempfile

    exe = Path(sys.executable).with_name("spectraseg")
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)

        def run(*args: str) -> float:
            t0 = time.perf_counter()
            subprocess.run([str(exe), *args], check=True, capture_output=True, cwd=t)
            return time.perf_counter() - t0

        run("synth", "--out", "data", "--scenes", "1", "--size", str(H), str(W), "--seed", "99")
        run("align", "data", "--cache", "cache", "--workers", "0")
        sets = ("data.root=data", "data.cache=cache", "train.steps=3", "data.val_fraction=0")
        run("train", "--out", "run", "--no-progress", *(a for k in sets for a in ("--set", k)))
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        seconds = run(
            "predict", "data", "--run", "run", "--out", "pred", "--thresholds", "config",
            "--workers", "0", "--no-progress", "--threads", str(threads),
        )  # fmt: skip
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        size = sum(f.stat().st_size for f in (t / "pred").rglob("*") if f.is_file())
        log(
            f"untrained run (3 steps), one {H}x{W} synthetic scene, spectraseg predict "
            f"--workers 0: {seconds:.1f} s, peak RSS "
            f"{peak / 2**20:.2f} GB{'' if peak > before else ' (or less: an earlier child)'}, "
            f"outputs {size / 2**20:.0f} MB"
        )


def _config(text: str) -> tuple[int, int]:
    tile, _, batch = text.partition("x")
    return int(tile), int(batch)


def main() -> int:
    from spectraseg.config import PredictConfig

    default = (PredictConfig().tile, PredictConfig().batch)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--scenes", type=int, default=3, help="real scenes for vectorisation")
    p.add_argument("--quick", action="store_true", help="1024 x 1024 inference only")
    p.add_argument(
        "--memory-tile",
        type=int,
        nargs=2,
        default=default,
        metavar=("TILE", "BATCH"),
        help="configuration of the memory measurement (default: the [predict] defaults)",
    )
    p.add_argument(
        "--configs",
        type=_config,
        nargs="+",
        default=[default, (736, 1), (896, 1), (1024, 1), (256, 8)],
        metavar="TILExBATCH",
        help="inference configurations (default: the [predict] defaults, 736x1 896x1 1024x1 256x8)",
    )
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds of inference")
    p.add_argument(
        "--skip", nargs="*", default=[], choices=("inference", "memory", "vectorize", "untrained")
    )
    args = p.parse_args()
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > args.threads:
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.threads]))
    # Memory first: a child forked from a process holding a full scene starts big.
    if "memory" not in args.skip and not args.quick:
        bench_memory(args.threads, *args.memory_tile)
    if "inference" not in args.skip:
        bench_inference(args.threads, args.quick, args.configs, args.rounds)
    if "vectorize" not in args.skip:
        bench_vectorize(args.scenes)
    if "untrained" not in args.skip:
        bench_untrained(args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
