"""write a run's model as one file (a model bundle)

Write the model of RUN (every fold model of a cross-validated run) with what prediction
needs of it: config, class schema, input channel names, normalisation statistics, tuned
thresholds and training resolution, in one file that `spectraseg predict DATA --model FILE`
reads with nothing else. Loading it runs no pickled code.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="training run directory")
    p.add_argument("--out", required=True, metavar="FILE", help="bundle file to write")


def run(args: argparse.Namespace) -> int:
    # The stage loads here, not at the top: `spectraseg --help` imports every verb module.
    from spectraseg.bundle import export_bundle

    path = export_bundle(args.run, args.out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0
