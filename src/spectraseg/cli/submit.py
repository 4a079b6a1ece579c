"""write a submission in the sample's row order, or check one

Write PRED (a prediction directory holding predictions.csv, or a CSV in the
ImageId,ClassType,MultipolygonWKT format) as a submission with exactly the rows of the sample,
in its order, MULTIPOLYGON EMPTY where nothing is predicted. With --check FILE, list every
problem of an existing submission (ids, order, classes, WKT validity) and exit 1 if there is
any.
"""

from __future__ import annotations

import argparse
import sys

from spectraseg.errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pred", nargs="?", help="prediction directory or CSV")
    p.add_argument("--sample", required=True, help="sample_submission.csv (gives the rows)")
    p.add_argument("--out", help="submission to write (.csv or .csv.gz)")
    p.add_argument("--check", metavar="FILE", help="check FILE instead of writing")
    p.add_argument(
        "--decimals", type=int, default=8, help="decimals of grid coordinates (default 8)"
    )


def run(args: argparse.Namespace) -> int:
    # The stage loads here, not at the top: `spectraseg --help` imports every verb module.
    from spectraseg.submission import check_submission, write_submission

    if args.check:
        if args.pred or args.out:
            raise ConfigError("--check takes only FILE and --sample, not PRED or --out")
        problems = check_submission(args.check, args.sample)
        for line in problems:
            print(line)
        if problems:
            print(f"{args.check}: {len(problems)} problem(s)", file=sys.stderr)
            return 1
        print(f"{args.check}: OK")
        return 0
    if not args.pred or not args.out:
        raise ConfigError("give PRED and --out to write a submission, or --check FILE")
    if not 0 <= args.decimals <= 15:
        raise ConfigError(f"--decimals {args.decimals} is outside 0..15")
    s = write_submission(args.pred, args.sample, args.out, decimals=args.decimals)
    print(
        f"wrote {s.path}: {s.rows} rows, {s.nonempty} non-empty, "
        f"{s.scenes_predicted} predicted scene(s) in the sample"
        + (f", {s.repaired} geometry(ies) repaired" if s.repaired else "")
    )
    return 0
