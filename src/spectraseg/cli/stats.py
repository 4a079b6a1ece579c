"""``spectraseg stats CACHE --mode MODE --out FILE.json``: per-channel normalisation statistics."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stats",
        help="compute per-channel normalisation statistics of a fused cache",
        description="Compute per-channel mean and standard deviation of the cached scenes "
        "in one streaming pass (fill pixels skipped), for every scene, every region and the "
        "whole set, and write them as JSON. MODE is the scope used to normalise a scene "
        "later: its own statistics (image), its 5 x 5 tile group's (region) or all scenes' "
        "(dataset).",
    )
    p.add_argument("cache", help="fused cache directory (written by `spectraseg align`)")
    p.add_argument(
        "--mode",
        choices=("image", "dataset", "region"),
        default="region",
        help="normalisation scope (default: region)",
    )
    p.add_argument("--out", required=True, help="statistics JSON file to write")
    p.add_argument(
        "--images",
        nargs="+",
        metavar="ID",
        help="scenes to use (normally the training scenes); default: every cached scene",
    )
    p.add_argument(
        "--extra",
        nargs="+",
        metavar="ID",
        help="scenes (e.g. validation or test scenes) that get their own image entry, and a "
        "region entry where their region has none, without entering the other statistics",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spectraseg.features.normalization import compute_stats, extend_stats, save_stats

    stats = compute_stats(args.cache, args.images, mode=args.mode)
    line = (
        f"statistics of {len(stats['image'])} scene(s) in {len(stats['region'])} region(s), "
        f"mode {stats['mode']}"
    )
    if args.extra:
        stats = extend_stats(stats, args.cache, args.extra)
        line += f", with entries for {len(args.extra)} extra scene(s)"
    save_stats(stats, args.out)
    print(f"{line}: {args.out}")
    ds = stats["dataset"]
    print(f"{'channel':<8} {'mean':>12} {'std':>12} {'pixels':>12}")
    for k, ch in enumerate(stats["channels"]):
        print(f"{ch:<8} {ds['mean'][k]:12.3f} {ds['std'][k]:12.3f} {ds['counts'][k]:12d}")
    return 0
