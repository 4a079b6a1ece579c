"""compute per-channel normalisation statistics of a fused cache

Compute per-channel mean and standard deviation of the cached scenes in one streaming pass
(fill pixels skipped), for every scene, every region and the whole set, and write them as JSON.
MODE is the scope used to normalise a scene later: its own statistics (image), its 5 x 5 tile
group's (region) or all scenes' (dataset).
"""

from __future__ import annotations

import argparse

from spectraseg.cli.options import add_scenes


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("cache", help="fused cache directory (written by `spectraseg align`)")
    p.add_argument(
        "--mode",
        choices=("image", "dataset", "region"),
        default="region",
        help="normalisation scope (default: region)",
    )
    p.add_argument("--out", required=True, help="statistics JSON file to write")
    p.add_argument(
        "--indices",
        nargs="+",
        default=[],
        metavar="INDEX",
        help="spectral indices to hold statistics for too, after the bands (e.g. NBR2 "
        "ND:A1:A8), for a run with data.index_norm = true and the same data.indices",
    )
    add_scenes(
        p,
        "--images",
        "scenes to use (normally the training scenes); default: every cached scene",
    )
    add_scenes(
        p,
        "--extra",
        "scenes (e.g. validation or test scenes) that get their own image entry, and a region "
        "entry where their region has none, without entering the other statistics",
    )


def run(args: argparse.Namespace) -> int:
    # The stage loads here, not at the top: `spectraseg --help` imports every verb module.
    from spectraseg.features.normalization import compute_stats, extend_stats
    from spectraseg.features.stats import save_stats

    stats = compute_stats(args.cache, args.images, mode=args.mode, indices=args.indices)
    line = (
        f"statistics of {len(stats.image)} scene(s) in {len(stats.region)} region(s), "
        f"mode {stats.mode}"
    )
    if args.extra:
        stats = extend_stats(stats, args.cache, args.extra)
        line += f", with entries for {len(args.extra)} extra scene(s)"
    save_stats(stats, args.out)
    print(f"{line}: {args.out}")
    ds = stats.dataset
    print(f"{'channel':<8} {'mean':>12} {'std':>12} {'pixels':>12}")
    for k, ch in enumerate(stats.channels):
        print(f"{ch:<8} {ds.mean[k]:12.3f} {ds.std[k]:12.3f} {ds.counts[k]:12d}")
    return 0
