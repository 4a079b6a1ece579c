"""train the U-Net (or resume a run)

Train the U-Net on a fused cache into a run directory (config, statistics, checkpoints,
metrics), or resume a stopped run exactly where it stopped. Under torchrun every process trains
on its own patches (DDP); rank 0 writes. With --folds K, train K models on region-grouped folds,
predict every labelled scene out of fold, fit the per-class thresholds (and U-Net / per-pixel
blend) on those predictions, report the nested cross-validated score, and train a final model
on every scene, which predicting with such a run uses (--ensemble: the average of the K fold
models instead).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from spectraseg import CLASS_NAMES
from spectraseg.cli.options import add_overrides, add_progress, add_threads, at_least
from spectraseg.config import Config, load_config, to_toml
from spectraseg.errors import ConfigError

if TYPE_CHECKING:  # torch loads in `run`, not with `spectraseg --help`
    from spectraseg.training.loop import TrainResult

# spectraseg train --config run.toml [--set train.lr=3e-4 ...] --out RUN
# spectraseg train --resume RUN [--set train.epochs=20 ...]
# spectraseg train --config run.toml --print-config
# torchrun --standalone --nproc-per-node=2 -m spectraseg train --config run.toml --out RUN
# spectraseg train --config run.toml --out RUN --folds 4 [--ensemble]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="TOML", help="config file (default: built-in defaults)")
    add_overrides(p)
    p.add_argument("--out", metavar="RUN", help="new run directory")
    p.add_argument("--resume", metavar="RUN", help="continue the run in this directory")
    p.add_argument(
        "--folds",
        type=int,
        metavar="K",
        help="cross-validate: K region-grouped folds, one model each, then a final model on "
        "every scene (the budget is per model)",
    )
    p.add_argument(
        "--ensemble",
        action="store_true",
        help="with --folds: ship the average of the K fold models instead of a final model "
        "(one training fewer, K times the prediction time; no better on new regions, "
        "docs/accuracy.md)",
    )
    add_threads(p, "the config's train.threads, which this sets")
    p.add_argument(
        "--print-config", action="store_true", help="print the resolved config (TOML) and exit"
    )
    add_progress(p)


def _summary(result: TrainResult, rank: int) -> None:

    if rank != 0:
        return
    minutes = result.seconds / 60
    print(
        f"run {result.run_dir}: {result.steps} steps, {result.epochs} epoch(s), {minutes:.1f} min"
    )
    if result.best_score is None:
        print("no validation scenes: best.pt is the final model")
        return
    print(f"best validation mean Jaccard {result.best_score:.4f} at step {result.best_step}")
    best = next((r for r in result.history if r.get("step") == result.best_step), None)
    if best and best.get("val_jaccard"):
        names = _class_names(result.run_dir)
        for c, (j, empty) in enumerate(
            zip(best["val_jaccard"], best["val_empty"], strict=True), start=1
        ):
            note = "  (no truth and no prediction)" if empty else ""
            print(f"  {c:>2} {names.get(c, str(c)):<26} {j:.4f}{note}")


def _class_names(run_dir: str | os.PathLike[str]) -> dict[int, str]:
    """Class names of a run (its ``metrics.json``), DSTL's when it has none."""
    try:
        doc = json.loads((Path(run_dir) / "metrics.json").read_text(encoding="utf-8"))
        return dict(enumerate(doc["classes"], start=1))
    except (OSError, ValueError, KeyError, TypeError):
        return dict(CLASS_NAMES)


def run(args: argparse.Namespace) -> int:

    overrides = list(args.overrides)
    if args.threads is not None:
        overrides.append(f"train.threads={args.threads}")
    if args.resume:
        if args.config:
            raise ConfigError("--resume uses the run's own config.toml; change keys with --set")
        if args.out:
            raise ConfigError("--resume and --out exclude each other")
        path = os.path.join(args.resume, "config.toml")
        if not os.path.isfile(path):
            raise ConfigError(f"{args.resume} is not a run directory ({path} is missing)")
        config = load_config(path, overrides)
    else:
        config = load_config(args.config, overrides)
    if args.print_config:
        sys.stdout.write(to_toml(config))
        return 0
    if not args.out and not args.resume:
        raise ConfigError("give --out RUN for a new run or --resume RUN to continue one")

    run_dir = args.resume or args.out
    cv_resume = bool(args.resume) and os.path.isfile(os.path.join(args.resume, "cv.json"))
    if args.ensemble and args.folds is None:
        raise ConfigError("--ensemble is for a new cross-validated run: give --folds K with it")
    if args.folds is not None or cv_resume:
        return _cross_validate(
            config, run_dir, args.folds, bool(args.resume), args.progress, not args.ensemble
        )
    # The stage loads here, not at the top: `spectraseg --help` imports every verb module.
    from spectraseg.training.loop import train

    rank = int(os.environ.get("RANK", "0"))
    result = train(config, run_dir, resume=bool(args.resume), progress=args.progress)
    if result.interrupted:
        if rank == 0:
            print(
                f"spectraseg train: interrupted at step {result.steps}; checkpoint saved; "
                f"continue with: spectraseg train --resume {run_dir}",
                file=sys.stderr,
            )
        return 130
    _summary(result, rank)
    return 0


def _cross_validate(
    config: Config, run_dir: str, folds: int | None, resume: bool, progress: bool, final: bool
) -> int:
    """``--folds K`` (or resuming a cross-validated run): train, predict out of fold, score."""
    if folds is not None:
        at_least("--folds", folds, 2)
        if resume:
            raise ConfigError("--folds sets up a new run; --resume continues with its own folds")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("--folds trains its folds one after another: run it without torchrun")
    # The stage loads here, not at the top: `spectraseg --help` imports every verb module.
    from spectraseg.crossval import train_folds

    result = train_folds(config, run_dir, folds or 0, resume, progress, final=final)
    minutes = result.seconds / 60
    shipped = (
        "the fold models' average" if result.final is None else f"the final model, {result.final}"
    )
    print(
        f"run {result.run_dir}: {len(result.folds)} folds, {minutes:.1f} training min; "
        f"predict uses {shipped}"
    )
    print(f"{'class':<31} {'nested':>8} {'plain':>8}")
    for c, name in enumerate(result.nested.names, start=1):
        nested, plain = result.nested.jaccard[c - 1], result.plain.jaccard[c - 1]
        print(f"  {c:>2} {name:<26} {nested:8.4f} {plain:8.4f}")
    print(f"  {'mean':<29} {result.nested.mean:8.4f} {result.plain.mean:8.4f}")
    print("raster mean Jaccard pooled over all scenes, out of fold: nested = decisions fitted")
    print("on the other folds (the honest figure), plain = on every scene (optimistic)")
    return 0
