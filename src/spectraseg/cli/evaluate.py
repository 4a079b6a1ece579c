"""score predictions against ground truth (per-class Jaccard)

Score PRED against TRUTH (both ImageId,ClassType,MultipolygonWKT) with the competition metric:
per class, intersection and union areas summed over the images in both files, then the mean of
the 10 classes. A class whose union is empty over all scored images scores 0 and is marked '*'.
With a dataset description as TRUTH, PRED is a prediction directory of its scenes
(PRED/{id}/polygons.gpkg), scored against their label layers in map units, per schema class.
"""

from __future__ import annotations

import argparse
import sys

from spectraseg.cli.options import add_json
from spectraseg.errors import ConfigError


def parse_split(text: str) -> tuple[str, list[str]]:
    """``NAME=ID,ID,...`` -> ``(NAME, [ID, ...])``; ConfigError when malformed."""
    name, sep, ids = text.partition("=")
    members = [i.strip() for i in ids.split(",") if i.strip()]
    if not sep or not name.strip() or not members:
        raise ConfigError(f"--split {text!r} is not NAME=ID,ID,...")
    return name.strip(), members


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pred", help="prediction CSV, or a directory holding predictions.csv")
    p.add_argument(
        "--truth",
        required=True,
        help="ground truth CSV (.csv or .csv.gz), or a dataset description (.toml) whose "
        "label layers score PRED/{id}/polygons.gpkg",
    )
    p.add_argument(
        "--split",
        action="append",
        default=[],
        metavar="NAME=ID,ID",
        help="also score this subset of images as a named column (repeatable)",
    )
    add_json(p)
    p.add_argument(
        "--raster",
        action="store_true",
        help="count pixels on each scene's RGB grid instead of exact polygon areas (needs --data)",
    )
    p.add_argument("--data", help="dataset root giving the RGB grid sizes for --raster")


def run(args: argparse.Namespace) -> int:
    # The stage loads here, not at the top: `spectraseg --help` imports every verb module.
    from spectraseg.data.sources import is_georeferenced
    from spectraseg.evaluation.metrics import evaluate_description, evaluate_files, format_table

    splits: dict[str, list[str]] = {}
    for text in args.split:
        name, members = parse_split(text)
        if name in splits:
            raise ConfigError(f"--split {name!r} is given twice")
        splits[name] = members
    if args.raster and not args.data:
        raise ConfigError("--raster needs --data ROOT (the dataset whose RGB grid to count on)")
    if args.data and not args.raster:
        raise ConfigError("--data is only used with --raster")
    if is_georeferenced(args.truth):
        if args.raster:
            raise ConfigError("--raster scores DSTL files; a description is scored on polygons")
        ev = evaluate_description(args.pred, args.truth, splits)
    else:
        ev = evaluate_files(args.pred, args.truth, splits, args.data if args.raster else None)
    if args.json:
        sys.stdout.write(ev.to_json() + "\n")
    else:
        print(format_table(ev))
    return 0
