"""``spectraseg demo``: the whole pipeline, on synthetic data or on a real dataset."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole pipeline (synthetic data by default) and write a report",
        description="Synthesize a dataset (or use --data), register and fuse the bands, "
        "compute statistics, train a U-Net, predict held-out scenes, vectorise, evaluate, "
        "write a submission and an HTML report. Scenes are split by region into training, "
        "validation (checkpoint and thresholds) and test (the reported scores). Re-running "
        "into the same --out resumes: cached scenes are skipped, training continues.",
    )
    p.add_argument("--out", default="runs/demo", help="output directory (runs/demo)")
    p.add_argument("--data", help="a DSTL-layout dataset instead of synthetic data")
    p.add_argument("--scenes", type=int, default=16, help="synthetic scenes (16)")
    p.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=(448, 448),
        metavar=("H", "W"),
        help="synthetic scene size (448 448)",
    )
    p.add_argument("--regions", type=int, help="synthetic regions (default: ceil(scenes/4))")
    p.add_argument("--seed", type=int, default=0, help="seed of data, split and training (0)")
    p.add_argument(
        "--minutes",
        type=float,
        help="training minutes (default 5 on synthetic data, 20 over all folds on --data)",
    )
    p.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="share of scenes held out for the report, by region (0.2)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="share of scenes for validation, by region (0.2)",
    )
    p.add_argument(
        "--test-scenes", nargs="+", default=(), metavar="ID", help="explicit test scenes"
    )
    p.add_argument(
        "--val-scenes", nargs="+", default=(), metavar="ID", help="explicit validation scenes"
    )
    p.add_argument(
        "--folds",
        type=int,
        help="cross-validation folds by region, each scene scored once "
        "(default: 1 on synthetic data, 4 on --data)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="Dask worker processes for align/predict (0: in this process)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. --set model.width=32 (repeatable)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spectraseg.demo import DemoSettings, format_summary, run_demo
    from spectraseg.errors import ConfigError

    if args.folds is not None and args.folds < 1:
        raise ConfigError(f"--folds {args.folds} must be at least 1")
    if args.scenes < 3:
        raise ConfigError(f"--scenes {args.scenes} is too few: the demo needs at least 3")
    settings = DemoSettings(
        out=Path(args.out),
        data=Path(args.data) if args.data else None,
        scenes=args.scenes,
        size=tuple(args.size),
        regions=args.regions,
        seed=args.seed,
        minutes=args.minutes,
        test_fraction=args.test_fraction,
        val_fraction=args.val_fraction,
        test_scenes=tuple(args.test_scenes),
        val_scenes=tuple(args.val_scenes),
        folds=args.folds,
        workers=args.workers,
        overrides=tuple(args.set),
        progress=not args.no_progress,
    )
    result = run_demo(settings)
    print(format_summary(result))
    return 0
