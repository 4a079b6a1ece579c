"""``spectraseg align DATA --cache DIR``: register every product to RGB and fuse the scenes.

Exit status: 0 when every scene is aligned or already cached; 1 on a user error (bad
dataset root, unknown id, not a cache directory); 3 when the run finished but some scenes
failed (each listed on stdout with its reason; the other scenes are cached).
"""

from __future__ import annotations

import argparse
import json
import math
import sys

EXIT_SCENES_FAILED = 3


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "align",
        help="register the products of each scene and fuse them into a cache",
        description="Estimate the translation of every product (P, M, A) relative to RGB "
        "(ECC, with fallbacks: region median, phase correlation, identity), resample all "
        "products onto the RGB grid and write one (C, H, W) uint16 .npy per scene, "
        "manifest.json and shifts.csv into the cache directory. Scenes already complete "
        "in the cache are skipped. Without --workers or --scheduler scenes run serially "
        "in this process. Exit status 3 when some scenes failed.",
    )
    p.add_argument("data", help="dataset root (three_band/, sixteen_band/, grid_sizes.csv)")
    p.add_argument("--cache", required=True, help="cache directory to write (created if needed)")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="run on a local Dask cluster of N single-threaded worker processes",
    )
    where.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run on an existing Dask cluster (e.g. tcp://host:8786); its workers must see "
        "DATA and the cache at the same paths",
    )
    p.add_argument("--images", nargs="+", metavar="ID", help="scenes to align (default: all)")
    p.add_argument(
        "--force", action="store_true", help="recompute scenes already complete in the cache"
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON document")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _fmt(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x:.3f}"


def run(args: argparse.Namespace) -> int:
    from spectraseg.align.fusion import align_dataset
    from spectraseg.errors import ConfigError

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    report = align_dataset(
        args.data,
        args.cache,
        image_ids=args.images,
        workers=args.workers,
        scheduler=args.scheduler,
        progress=not args.quiet and sys.stderr.isatty(),
        force=args.force,
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
