"""Training-data loader: patches/s against a training step's appetite, and memory vs scenes.

Measures, on a cache built from synthetic data (``spectraseg.data.synth``, aligned by
``spectraseg.align.fusion``: 20 channels R,G,B,P,M1..M8,A1..A8, uint16, with label masks):

1. loader throughput, patches/s: :class:`spectraseg.features.patches.PatchDataset` items in one
   process, and through a ``DataLoader`` with 2 worker processes (batches of 4);
2. the training step of the default U-Net (:class:`spectraseg.models.unet.UNet`, width 16,
   depth 4, BCE + soft Jaccard, Adam, channels-last) in patches/s, and the ratio;
3. resident memory after drawing patches from caches of growing numbers of scenes, each in
   a fresh process: anonymous memory (heap) and file-backed pages (memory-mapped cache,
   shared and reclaimable by the kernel) separately.

Run: ``.venv/bin/python benchmarks/bench_loader.py`` (``--help`` for sizes). Timings are medians
(over chunks of 10 patches, batches, steps) with ``torch.set_num_threads(--threads)``; run
on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def make_cache(tmp: Path, n: int, h: int, w: int, seed: int = 0) -> tuple[Path, list[str]]:
    """A synthetic dataset (``spectraseg.data.synth``) aligned into a cache, with label masks."""
    from spectraseg.align.fusion import align_dataset
    from spectraseg.align.masks import build_masks
    from spectraseg.data.synth import synthesize

    data, cache = tmp / f"data{seed}", tmp / f"cache{seed}"
    ids = synthesize(data, n, (h, w), seed, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # registration fallbacks do not matter here
        report = align_dataset(data, cache, progress=False)
    if not report.ok:
        raise SystemExit(f"align failed: {report.to_dict()}")
    build_masks(cache, data, progress=False)
    return cache, ids


def _dataset(root: Path, ids: list[str], stats: dict, args: argparse.Namespace, length: int):
    from spectraseg.features.patches import PatchDataset

    return PatchDataset(
        root,
        ids,
        stats,
        size=args.patch,
        length=length,
        rare_share=0.5,
        indices=args.indices,
    )


def bench_loader(root: Path, ids: list[str], stats: dict, args: argparse.Namespace) -> dict:
    import torch

    ds = _dataset(root, ids, stats, args, length=100_000)
    for i in range(8):  # open memory maps, warm the page cache
        ds[i]
    # Medians over chunks: the machine may be shared, and bursts of other load skew means.
    n, chunk = args.patches, 10
    rates = []
    for k in range(0, n, chunk):
        t0 = time.perf_counter()
        for i in range(k, k + chunk):
            ds[1000 + i]
        rates.append(chunk / (time.perf_counter() - t0))
    single = float(np.median(rates))

    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=args.batch,
        num_workers=2,
        sampler=range(2000, 2000 + 4 * n),
    )
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    got, intervals = 0, []
    t0 = time.perf_counter()
    for batch in it:
        t1 = time.perf_counter()
        intervals.append(t1 - t0)
        t0 = t1
        got += batch["image"].shape[0]
        if got >= 2 * n:
            break
    workers = args.batch / float(np.median(intervals))
    return {"single": single, "workers2": workers, "in_channels": ds.in_channels}


def bench_train_step(in_channels: int, args: argparse.Namespace) -> dict:
    import torch

    from spectraseg.models.losses import BCEJaccardLoss
    from spectraseg.models.unet import UNet

    model = UNet(in_channels, 10, width=args.width, depth=args.depth)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = BCEJaccardLoss()
    x = torch.randn(args.batch, in_channels, args.patch, args.patch).to(
        memory_format=torch.channels_last
    )
    y = (torch.rand(args.batch, 10, args.patch, args.patch) < 0.1).float()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    dt = float(np.median(times))
    return {"step_s": dt, "patches_per_s": args.batch / dt}


def rss_child(root: Path, n_scenes: int, patches: int, patch: int) -> None:
    """Print ``{"anon_mb", "file_mb", ...}`` after drawing patches from ``n_scenes`` scenes."""
    import torch

    from spectraseg.features.normalization import compute_stats
    from spectraseg.features.patches import PatchDataset

    torch.set_num_threads(1)

    def status() -> dict[str, float]:
        out = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) / 1024
        return out

    ids = sorted(json.loads((root / "manifest.json").read_text())["scenes"])[:n_scenes]
    stats = compute_stats(root, ids, mode="region", progress=False)
    before = status()
    ds = PatchDataset(root, ids, stats, size=patch, length=patches, indices=["NDWI", "CCCI"])
    for i in range(patches):
        ds[i]
    after = status()
    print(
        json.dumps(
            {
                "scenes": n_scenes,
                "anon_before_mb": before["RssAnon"],
                "anon_mb": after["RssAnon"],
                "file_mb": after["RssFile"],
                "rss_mb": after["VmRSS"],
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=6, help="scenes for the throughput runs")
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--width", type=int, default=1024, dest="scene_width")
    p.add_argument("--patch", type=int, default=256, help="patch side (issue default 256)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--patches", type=int, default=200, help="patches timed per loader run")
    p.add_argument("--steps", type=int, default=10, help="training steps timed (median)")
    p.add_argument("--unet-width", type=int, default=16, dest="width")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--indices", nargs="*", default=["NDWI", "NDVI", "CCCI"])
    p.add_argument("--rss-scenes", type=int, nargs="*", default=[1, 4, 16, 32], help="scene counts")
    p.add_argument("--rss-size", type=int, default=512, help="scene side for the memory runs")
    p.add_argument("--rss-patches", type=int, default=400)
    p.add_argument("--rss-child", nargs=2, metavar=("CACHE", "N"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rss_child:
        rss_child(Path(args.rss_child[0]), int(args.rss_child[1]), args.rss_patches, args.patch)
        return

    import torch

    from spectraseg.features.normalization import compute_stats

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        t0 = time.perf_counter()
        root, ids = make_cache(Path(tmp), args.scenes, args.height, args.scene_width)
        print(
            f"cache: {args.scenes} synthetic scenes of 20 x {args.height} x {args.scene_width} "
            f"uint16 (synth + align + masks: {time.perf_counter() - t0:.1f} s)"
        )
        t0 = time.perf_counter()
        stats = compute_stats(root, ids, mode="region", progress=False)
        dt = time.perf_counter() - t0
        mpix = args.scenes * args.height * args.scene_width / 1e6
        print(f"stats: one pass over {mpix:.1f} Mpx x 20 channels in {dt:.2f} s")

        lo = bench_loader(root, ids, stats, args)
        tr = bench_train_step(lo["in_channels"], args)
        print(
            f"patches {lo['in_channels']} x {args.patch} x {args.patch} "
            f"(20 channels + {', '.join(args.indices) or 'no indices'}), torch threads "
            f"{args.threads}"
        )
        print(f"  loader, 1 process:        {lo['single']:8.1f} patches/s")
        print(f"  loader, 2 workers:        {lo['workers2']:8.1f} patches/s")
        print(
            f"  train step (UNet w{args.width} d{args.depth}, batch {args.batch}): "
            f"{tr['patches_per_s']:8.2f} patches/s ({tr['step_s']:.2f} s/step)"
        )
        print(f"  loader / train, 1 process: {lo['single'] / tr['patches_per_s']:8.1f} x")
        print(f"  loader / train, 2 workers: {lo['workers2'] / tr['patches_per_s']:8.1f} x")

        if args.rss_scenes:
            rroot, _ = make_cache(Path(tmp), max(args.rss_scenes), args.rss_size, args.rss_size, 1)
            print(
                f"memory after {args.rss_patches} patches, scenes of 20 x {args.rss_size} x "
                f"{args.rss_size} (fresh process each):"
            )
            print(f"  {'scenes':>6} {'anon MB':>9} {'(before)':>9} {'file MB':>9} {'RSS MB':>9}")
            for n in args.rss_scenes:
                cmd = [sys.executable, __file__, "--rss-child", str(rroot), str(n)]
                cmd += ["--rss-patches", str(args.rss_patches), "--patch", str(args.patch)]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                r = json.loads(out.strip().splitlines()[-1])
                print(
                    f"  {n:>6} {r['anon_mb']:9.1f} {r['anon_before_mb']:9.1f} "
                    f"{r['file_mb']:9.1f} {r['rss_mb']:9.1f}"
                )


if __name__ == "__main__":
    main()
