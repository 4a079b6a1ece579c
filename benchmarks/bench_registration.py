"""Registration and fusion benchmark: accuracy on synthetic and real data, speed, memory.

    .venv/bin/python benchmarks/bench_registration.py [--quick] [--figure PNG]

Prints:

1. synthetic accuracy: ``spectraseg synth`` scenes with known shifts, aligned with
   ``align_dataset``; RMS error of the composed shifts (P in RGB px, M and A in their own
   px), plus one scene made featureless in P and M, recovered by the region fallback;
2. speed and memory: one full-size scene (3348 x 3392, all four products) registered and
   fused in memory (``align_scene``), and through ``spectraseg align`` into a cache in a
   fresh process (wall time and peak resident memory); serial vs ``--workers 2``;
3. SpaceNet ms/pan pairs: injected shifts (exact, by cropping) against the estimates;
4. dstl-lite: the A -> RGB shift of every scene.

``--figure`` also writes the before/after overlay of a dstl-lite scene used in the docs.
Sections whose data is absent are skipped.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from spectraseg.align.cache import read_shifts
from spectraseg.align.estimators import ecc_shift
from spectraseg.align.fusion import align_dataset, align_scene
from spectraseg.data.dstl import open_dataset, product_path
from spectraseg.errors import SpectrasegWarning

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _rms(errors: list[float]) -> float:
    return math.sqrt(float(np.mean(np.square(errors)))) if errors else math.nan


def make_featureless(root: Path, image_id: str, products=("P", "M"), seed: int = 0) -> None:
    """Overwrite products of a scene with flat digital numbers plus sensor noise."""
    import tifffile

    rng = np.random.default_rng(seed)
    for product in products:
        path = product_path(root, image_id, product)
        arr = tifffile.imread(path)
        flat = np.full(arr.shape, 400.0) + rng.normal(0, 2.0, arr.shape)
        tifffile.imwrite(
            path,
            flat.astype(np.uint16),
            photometric="minisblack",
            planarconfig="separate" if arr.ndim == 3 else None,
        )


def bench_synthetic(work: Path, scenes: int, size: tuple[int, int]) -> None:
    from spectraseg.data.synth import synthesize

    root = work / f"synth_{size[0]}"
    regions = max(1, scenes // 4)
    t0 = time.perf_counter()
    ids = synthesize(root, scenes=scenes, size=size, seed=11, regions=regions, progress=False)
    print(
        f"synthesised {scenes} scenes of ~{size[0]} x {size[1]} in {regions} region(s) "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    dead = ids[-1]
    make_featureless(root, dead)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpectrasegWarning)
        report = align_dataset(root, work / f"cache_{size[0]}", progress=False)
    truth = {(t.image_id, t.product): t for t in read_shifts(root / "shifts.csv")}
    per: dict[str, list[float]] = {"P": [], "M": [], "A": []}
    fallback = []
    for r in report.shifts:
        t = truth[r.image_id, r.product]
        err = math.hypot(r.dx - t.dx, r.dy - t.dy)
        if r.image_id == dead and r.product in ("P", "M"):
            fallback.append((r.product, r.method, err))
        else:
            per[r.product].append(err)
    every = [e for v in per.values() for e in v]
    print(
        f"  aligned {len(report.aligned)} scene(s), failed {len(report.failed)}, "
        f"{report.seconds:.1f} s"
    )
    for p, v in per.items():
        print(
            f"  {p}: RMS {_rms(v):.4f} px, max {max(v):.4f} px over {len(v)} scenes "
            f"({'RGB' if p == 'P' else p} px)"
        )
    print(f"  all composed shifts: RMS {_rms(every):.4f} px (target <= 0.1)")
    for product, method, err in fallback:
        print(
            f"  featureless scene {dead} {product}: {method}, error {err:.3f} px (target <= 0.75)"
        )
    # Memory must not grow with the number of scenes.
    for n in (1, scenes):
        args = [str(root), "--cache", str(work / f"mem{n}"), "--images", *ids[:n]]
        wall, peak, rc = _run_align(args)
        print(
            f"  spectraseg align, {n} scene(s), serial: {wall:.2f} s wall, "
            f"peak RSS {peak:.0f} MiB, rc {rc}"
        )


_WRAPPER = """
import sys
from spectraseg.cli import main
rc = main(sys.argv[1:])
# VmHWM: this process's peak resident memory (unlike ru_maxrss, not inherited from the
# parent across fork + exec).
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM")]
print("peak_kib=" + (hwm[0].split()[1] if hwm else "nan"), file=sys.stderr)
sys.exit(rc)
"""


def _run_align(args: list[str]) -> tuple[float, float, int]:
    """``spectraseg align ARGS`` in a fresh process: (wall s, its peak RSS in MiB, exit code).

    The peak is the client process's; Dask worker processes are not included.
    """
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _WRAPPER, "align", *args, "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wall = time.perf_counter() - t0
    peak = math.nan
    for line in proc.stderr.splitlines():
        if line.startswith("peak_kib="):
            peak = float(line.split("=", 1)[1]) / 1024
    if proc.returncode not in (0, 3):
        print(proc.stderr[-2000:], file=sys.stderr)
    return wall, peak, proc.returncode


def bench_full_size(work: Path) -> None:
    from spectraseg.data.synth import synthesize

    root = work / "full"
    t0 = time.perf_counter()
    ids = synthesize(root, scenes=2, size=(3348, 3392), seed=5, regions=1, progress=False)
    print(f"synthesised 2 full-size scenes in {time.perf_counter() - t0:.1f} s")
    ds = open_dataset(root)
    scene = ds.scene(ids[0])
    for _ in range(2):  # the first run warms the page cache and OpenCV
        t0 = time.perf_counter()
        out = align_scene(scene)
        dt = time.perf_counter() - t0
    print(
        f"  align_scene (read + register + fuse in memory), 1 scene "
        f"{out.stack.shape[1]} x {out.stack.shape[2]} x {out.stack.shape[0]} channels: "
        f"{dt:.2f} s (target < 15 s)"
    )
    truth = {(t.image_id, t.product): t for t in read_shifts(root / "shifts.csv")}
    parts = []
    for r in out.shifts:
        t = truth[r.image_id, r.product]
        parts.append(f"{r.product} {math.hypot(r.dx - t.dx, r.dy - t.dy):.3f}")
    errs = ", ".join(parts)
    print(f"  its shift errors (own px): {errs}")
    del out
    wall, peak, rc = _run_align([str(root), "--cache", str(work / "c1"), "--images", ids[0]])
    print(
        f"  spectraseg align, 1 full-size scene, serial: {wall:.2f} s wall "
        f"(process start, read, register, fuse, write 454 MB), peak RSS {peak:.0f} MiB, rc {rc}"
    )
    wall, peak, rc = _run_align([str(root), "--cache", str(work / "c2")])
    print(
        f"  spectraseg align, 2 full-size scenes, serial: {wall:.2f} s wall, "
        f"peak RSS {peak:.0f} MiB, rc {rc}"
    )
    wall, peak, rc = _run_align([str(root), "--cache", str(work / "c3"), "--workers", "2"])
    print(
        f"  spectraseg align, 2 full-size scenes, --workers 2: {wall:.2f} s wall "
        f"(includes starting the Dask cluster), client peak RSS {peak:.0f} MiB, rc {rc}"
    )


def bench_spacenet() -> None:
    import rasterio

    root = DATA / "spacenet-ms-pan"
    if not (root / "pan1.tif").is_file():
        print("spacenet-ms-pan: absent, skipped")
        return
    print(
        "SpaceNet ms (1 m) -> pan (0.5 m): injected shift vs estimate(shifted) - "
        "estimate(original), ms px"
    )
    cases = [
        (k, j)
        for k in ((3, 0), (-3, 2), (1, -2), (-2, 3), (0, 0), (2, 1), (-1, -3))
        for j in ((0, 0), (1, -1), (-1, 1))
    ]
    for pair in (1, 2):
        with rasterio.open(root / f"ms{pair}.tif") as src:
            ms = src.read().astype(np.float32)[:3].mean(axis=0)
        with rasterio.open(root / f"pan{pair}.tif") as src:
            pan = src.read(1).astype(np.float32)
        a, n = 22, 256

        def est(k, j, ms=ms, pan=pan, a=a, n=n):
            mov = ms[a + k[1] : a + k[1] + n, a + k[0] : a + k[0] + n]
            ref = pan[2 * a + j[1] : 2 * a + j[1] + 2 * n, 2 * a + j[0] : 2 * a + j[0] + 2 * n]
            return ecc_shift(ref, mov)

        base = est((0, 0), (0, 0))
        errs = []
        for k, j in cases:
            inj = (j[0] / 2 - k[0], j[1] / 2 - k[1])
            e = est(k, j)
            errs.append(math.hypot(e.dx - base.dx - inj[0], e.dy - base.dy - inj[1]))
        print(
            f"  pair {pair}: native offset ({base.dx:+.3f}, {base.dy:+.3f}) ms px, "
            f"corr {base.corr:.3f}; {len(cases)} injected shifts in [-3.5, 3.5]: "
            f"max error {max(errs):.4f}, RMS {_rms(errs):.4f} ms px (target <= 0.1)"
        )


def bench_dstl_lite(work: Path) -> None:
    root = DATA / "dstl-lite"
    if not (root / "grid_sizes.csv").is_file():
        print("dstl-lite: absent, skipped")
        return
    report = align_dataset(root, work / "dstl", progress=False)
    ds = open_dataset(root)
    print(
        f"dstl-lite: A -> RGB (8-bit render at ~1/6.2 scale), {len(report.aligned)} scenes "
        f"aligned in {report.seconds:.2f} s"
    )
    print("| scene | A size | dx (A px) | dy (A px) | dx (RGB px) | dy (RGB px) | corr | method |")
    print("|---|---|---|---|---|---|---|---|")
    for r in report.shifts:
        scene = ds.scene(r.image_id)
        a, ref = scene.info("A"), scene.reference
        print(
            f"| {r.image_id} | {a.height} x {a.width} | {r.dx:+.3f} | {r.dy:+.3f} | "
            f"{r.dx * ref.width / a.width:+.2f} | {r.dy * ref.height / a.height:+.2f} | "
            f"{r.corr:.3f} | {r.method} |"
        )


def write_figure(path: Path, image_id: str = "6150_2_3") -> None:
    """Before/after overlay of dstl-lite A (SWIR) on the RGB render of one scene."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spectraseg.align.registration import ShiftRow

    root = DATA / "dstl-lite"
    scene = open_dataset(root).scene(image_id)
    after = align_scene(scene)
    zero = [ShiftRow(image_id, "A", 0.0, 0.0, math.nan, "identity")]
    before = align_scene(scene, shifts=zero)
    shift = after.shifts[0]

    def norm(x: np.ndarray) -> np.ndarray:
        lo, hi = np.percentile(x, (2, 98))
        return np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1)

    rows, cols = slice(150, 390), slice(150, 390)
    grey = norm(after.stack[:3].astype(np.float32).mean(axis=0))[rows, cols]
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.3), dpi=80)
    for ax, fused, title in (
        (axes[0], before, "before: A resampled, unshifted"),
        (axes[1], after, f"after: A shifted by ({shift.dx:+.2f}, {shift.dy:+.2f}) A px"),
    ):
        swir = norm(fused.stack[3:].astype(np.float32).mean(axis=0))[rows, cols]
        # Magenta = RGB grey, green = SWIR: aligned edges turn grey, misaligned ones fringe.
        ax.imshow(np.dstack([grey, swir, grey]), interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    fig.suptitle(f"dstl-lite {image_id}: SWIR (green) over the RGB render (magenta)", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=80, format="png")
    plt.close(fig)
    # A 256-colour palette keeps the docs figure small.
    from PIL import Image

    buf.seek(0)
    Image.open(buf).convert("RGB").quantize(256).save(path, optimize=True)
    print(f"figure: {path} ({path.stat().st_size / 1024:.0f} KiB)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small synthetic set, no full-size run")
    p.add_argument("--figure", type=Path, help="write the dstl-lite overlay figure here")
    args = p.parse_args()
    print(f"cpus: {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="bench_registration_") as tmp:
        work = Path(tmp)
        if args.quick:
            bench_synthetic(work, scenes=4, size=(1200, 1200))
        else:
            bench_synthetic(work, scenes=8, size=(1674, 1696))
            bench_full_size(work)
        bench_spacenet()
        bench_dstl_lite(work)
    if args.figure:
        write_figure(args.figure)


if __name__ == "__main__":
    main()
