"""run the whole pipeline (synthetic data by default) and write a report

Synthesize a dataset (or use --data), register and fuse the bands, compute statistics, train a
U-Net, predict held-out scenes, vectorise, evaluate, write a submission and an HTML report.
Scenes are split by region into training, validation (checkpoint and thresholds) and test (the
reported scores). Re-running into the same --out resumes: cached scenes are skipped, training
continues.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from spectraseg.cli.options import (
    add_overrides,
    add_progress,
    add_scenes,
    add_seed,
    add_synthetic,
    add_workers,
    at_least,
)
from spectraseg.errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="output directory (runs/demo)")
    p.add_argument("--data", help="a DSTL-layout dataset instead of synthetic data")
    synthetic = p.add_argument_group("synthetic data (without --data)")
    add_synthetic(synthetic, scenes=16, size=(448, 448))
    add_seed(p, "the data, split and training")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument(
        "--steps",
        type=int,
        help="optimizer steps over all models: the folds and the final model (default 2000 "
        "on synthetic data, 6000 on --data): the same numbers on the same platform however "
        "busy the machine",
    )
    budget.add_argument(
        "--minutes", type=float, help="training minutes over all models instead of steps"
    )
    for part, what in (("test", "held out for the report"), ("val", "for validation")):
        p.add_argument(
            f"--{part}-fraction",
            type=float,
            default=0.2,
            help=f"share of scenes {what}, by region (0.2)",
        )
    add_scenes(p, "--test-scenes", "explicit test scenes", default=())
    add_scenes(p, "--val-scenes", "explicit validation scenes", default=())
    p.add_argument(
        "--folds",
        type=int,
        help="cross-validation folds by region, each scene scored once "
        "(default: 1 on synthetic data, 4 on --data)",
    )
    add_workers(p, default=0)
    add_overrides(p)
    add_progress(p)


def run(args: argparse.Namespace) -> int:
    # The stage loads here, not at the top: `spectraseg --help` imports every verb module.
    from spectraseg.demo import DemoSettings, format_summary, run_demo

    at_least("--folds", args.folds, 1)
    at_least("--steps", args.steps, 1)
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
        steps=args.steps,
        test_fraction=args.test_fraction,
        val_fraction=args.val_fraction,
        test_scenes=tuple(args.test_scenes),
        val_scenes=tuple(args.val_scenes),
        folds=args.folds,
        workers=args.workers,
        overrides=tuple(args.overrides),
        progress=args.progress,
    )
    result = run_demo(settings)
    print(format_summary(result))
    return 0
