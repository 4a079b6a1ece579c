"""list the scenes, products and class area shares of a dataset

List the scenes of a DSTL-layout dataset or a dataset description (.toml), the products
each has with their shapes and dtypes (and, for georeferenced scenes, CRS, resolution and the
target grid), and the per-class area share of the labelled scenes.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from spectraseg.cli.options import add_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "data",
        help="dataset root (three_band/, sixteen_band/, grid_sizes.csv, ...) or a dataset "
        "description (.toml)",
    )
    add_json(p)


def run(args: argparse.Namespace) -> int:
    # The stage loads here, not at the top: `spectraseg --help` imports every verb module.
    from spectraseg.data.inspection import summarize

    summary = summarize(args.data)
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
        return 0
    print(
        f"dataset {summary['root']}: {len(summary['scenes'])} scene(s), "
        f"{summary['labelled']} labelled"
    )
    for s in summary["scenes"]:
        prods = "  ".join(
            f"{name} {p['bands']}x{p['height']}x{p['width']} {p['dtype']}"
            for name, p in s["products"].items()
        )
        print(f"  {s['image_id']:<12} {prods}")
        if "grid" in s:
            _print_georef(s)
    if summary["class_share"]:
        print("per-class area share of the labelled scenes:")
        names = summary["class_names"]
        for c, share in summary["class_share"].items():
            print(f"  {int(c):>2} {names[c]:<26} {100 * share:7.3f} %")
    return 0


def _print_georef(s: dict[str, Any]) -> None:
    g = s["grid"]
    print(f"  {'':<12} grid {g['height']}x{g['width']} at {_res(g['res'])} in {g['crs']}")
    for name, p in s["products"].items():
        print(
            f"  {'':<12} {name:<3} {p['file']}: {','.join(p['channels'])}, {_res(p['res'])} "
            f"in {p['crs']}, covers {100 * p['coverage']:.1f} % of the grid"
        )


def _res(res: list[float]) -> str:
    return f"{res[0]:.4g} x {res[1]:.4g}"
