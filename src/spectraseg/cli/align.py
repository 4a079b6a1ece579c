"""register the products of each scene and fuse them into a cache

Estimate the translation of every product (P, M, A) relative to RGB (ECC, with fallbacks:
region median, phase correlation, identity), resample all products onto the RGB grid and write
one (C, H, W) uint16 .npy per scene, manifest.json and shifts.csv into the cache directory.
Scenes already complete in the cache are skipped. Without --workers or --scheduler scenes run
serially in this process. Exit status 3 when some scenes failed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from spectraseg.cli.options import add_json, add_progress, add_scenes, add_workers, runner_args

# The run finished but some scenes failed (each listed on stdout with its reason; the other
# scenes are cached). Exit 1 stays for user errors: bad dataset root, unknown id, not a cache.
EXIT_SCENES_FAILED = 3


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "data",
        help="dataset root (three_band/, sixteen_band/, grid_sizes.csv) or a dataset "
        "description (.toml)",
    )
    p.add_argument("--cache", required=True, help="cache directory to write (created if needed)")
    add_workers(p, scheduler=True)
    add_scenes(p, "--images", "scenes to align (default: all)")
    p.add_argument(
        "--force", action="store_true", help="recompute scenes already complete in the cache"
    )
    add_json(p)
    add_progress(p)


def _fmt(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x:.3f}"


def run(args: argparse.Namespace) -> int:
    # The stage loads here, not at the top: `spectraseg --help` imports every verb module.
    from spectraseg.align.fusion import align_dataset

    report = align_dataset(
        args.data,
        args.cache,
        image_ids=args.images,
        progress=args.progress,
        force=args.force,
        **runner_args(args),
    )
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=1)
        print()
    else:
        print(
            f"aligned {len(report.aligned)}, skipped {len(report.skipped)} (already cached), "
            f"failed {len(report.failed)} scene(s) into {report.cache_dir} "
            f"in {report.seconds:.1f} s"
        )
        if report.shifts:
            print(f"{'image_id':<12} {'product':<7} {'dx':>8} {'dy':>8} {'corr':>6}  method")
            for r in report.shifts:
                print(
                    f"{r.image_id:<12} {r.product:<7} {r.dx:8.3f} {r.dy:8.3f} "
                    f"{_fmt(r.corr):>6}  {r.method}"
                )
        for r in report.fallbacks:
            print(f"fallback {r.image_id} {r.product}: {r.method} ({r.reason})")
        for s in report.failed:
            print(f"failed {s.image_id}: {s.reason}")
    return EXIT_SCENES_FAILED if report.failed else 0
