"""predict whole scenes with a trained run (probabilities, polygons, CSV)

Align the scenes of DATA into a cache where needed, predict each whole scene tile by tile with
the run's model, threshold per class and vectorise. Writes PRED/probs/{id}.npy (uint8
probabilities x 255 on the RGB grid), PRED/polygons/{id}.geojson (coordinates in DSTL grid
units, not lon/lat), PRED/predictions.csv (ImageId,ClassType,MultipolygonWKT) and
PRED/predict.json. Thresholds: RUN/thresholds.json, tuned on the run's validation scenes on
first use.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from spectraseg.cli.options import (
    add_progress,
    add_scenes,
    add_threads,
    add_workers,
    at_least,
    runner_args,
)
from spectraseg.errors import ConfigError


def parse_class_values(items: list[str], what: str) -> dict[int, float]:
    """``["C=V", ...]`` (or ``C=V,C=V``) -> ``{class: value}``; ConfigError when malformed."""
    out: dict[int, float] = {}
    for item in items:
        for part in item.split(","):
            key, sep, value = part.partition("=")
            try:
                cls, val = int(key), float(value)
            except ValueError:
                raise ConfigError(f"{what} {part!r} is not CLASS=VALUE") from None
            if not sep or not 1 <= cls <= 10:
                raise ConfigError(f"{what} {part!r} is not CLASS=VALUE with CLASS in 1..10")
            out[cls] = val
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "data",
        help="dataset root (DSTL layout) or dataset description (.toml) holding the scenes "
        "to predict; a description's scenes are written as PRED/{id}/polygons.gpkg",
    )
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--run", help="training run directory")
    model.add_argument(
        "--model",
        metavar="FILE",
        help="model bundle written by `spectraseg export` (unpacked into PRED/.model)",
    )
    p.add_argument("--out", required=True, metavar="PRED", help="prediction directory")
    add_scenes(p, "--images", "scenes to predict (default: all)")
    add_workers(p, "one per core up to the number of scenes", scheduler=True)
    p.add_argument("--cache", metavar="DIR", help="fused cache for DATA (default: see docs)")
    p.add_argument("--checkpoint", choices=("best", "latest"), default="best")
    p.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average the 8 dihedral transforms (default: the run's predict.tta)",
    )
    p.add_argument("--tile", type=int, help="tile side in pixels (default: predict.tile)")
    p.add_argument("--margin", type=int, help="context margin in pixels (default: predict.margin)")
    p.add_argument("--batch", type=int, help="tiles per forward pass (default: predict.batch)")
    p.add_argument(
        "--thresholds",
        default="auto",
        metavar="auto|retune|config|C=T,...",
        help="auto (RUN/thresholds.json, tuned when missing or stale), retune, config "
        "(predict.thresholds) or explicit per-class values",
    )
    p.add_argument(
        "--min-area",
        nargs="+",
        metavar="C=PX",
        help="per-class minimum polygon area in pixels (default: predict.min_area)",
    )
    p.add_argument("--tolerance", type=float, help="simplification tolerance in pixels")
    p.add_argument(
        "--no-probs",
        dest="probs",
        action="store_false",
        help="georeferenced scenes: write classes.tif and polygons.gpkg but not probs.tif",
    )
    p.add_argument(
        "--class-bits",
        action="store_true",
        help="georeferenced scenes: classes.tif holds a bit per class (uint16, bit c-1 for "
        "class c, 32768 where the input has no data) instead of one class per pixel, for "
        "classes that overlap",
    )
    p.add_argument(
        "--geojson",
        action="store_true",
        help="georeferenced scenes: also write polygons.geojson (EPSG:4326, RFC 7946)",
    )
    p.add_argument(
        "--strip-rows",
        type=int,
        metavar="N",
        help="georeferenced scenes: rows predicted at a time (default: what 256 MB of input "
        "allows; a whole number of tile rows)",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when available, the default), cpu, cuda or cuda:K; on CUDA the "
        "scenes are predicted in this process unless --workers or --scheduler says otherwise",
    )
    add_threads(p, "torch's default, or the cores shared among local workers")
    add_progress(p)


def run(args: argparse.Namespace) -> int:
    # The stage loads here, not at the top: `spectraseg --help` imports every verb module.
    from spectraseg.inference.pipeline import predict_run
    from spectraseg.inference.scene import PredictOptions
    from spectraseg.vectorize import DEFAULT_TOLERANCE

    thresholds: str | dict[int, float] = args.thresholds
    if args.thresholds not in ("auto", "retune", "config"):
        thresholds = parse_class_values([args.thresholds], "--thresholds")
        if sorted(thresholds) != list(range(1, 11)):
            raise ConfigError("--thresholds must give all 10 classes, e.g. 1=0.4,2=0.3,...")
    min_area = parse_class_values(args.min_area, "--min-area") if args.min_area else None
    for name, minimum in (("tile", 1), ("margin", 0), ("batch", 1), ("strip_rows", 1)):
        at_least(f"--{name.replace('_', '-')}", getattr(args, name), minimum)
    options = PredictOptions(
        checkpoint=args.checkpoint,
        tile=args.tile,
        margin=args.margin,
        batch=args.batch,
        tta=args.tta,
        device=args.device,
        tolerance=DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance,
        threads=args.threads or None,  # 0: torch's default, as None
        probs=args.probs,
        geojson=args.geojson,
        class_bits=args.class_bits,
        strip_rows=args.strip_rows,
    )
    run_dir = args.run
    if args.model is not None:
        from spectraseg.bundle import unpack_bundle

        run_dir = unpack_bundle(args.model, Path(args.out) / ".model").root
    report = predict_run(
        run_dir,
        args.data,
        args.out,
        image_ids=args.images,
        cache_dir=args.cache,
        options=options,
        thresholds=thresholds,
        min_area=min_area,
        progress=args.progress,
        **runner_args(args),
    )
    ok = [s for s in report.scenes if s["status"] == "ok"]
    print(f"predicted {len(ok)} of {len(report.scenes)} scene(s) in {report.seconds:.1f} s")
    print(f"thresholds: {report.threshold_source}")
    computed = report.normalization.get("computed")
    if computed:
        print(
            f"normalisation: {report.normalization['mode']} statistics of "
            f"{', '.join(sorted(computed))} (new to the run) computed from the scenes predicted"
        )
    for c, t in sorted(report.thresholds.items()):
        print(f"  {c:>2} {report.classes[c - 1]:<26} {t:.2f}")
    if report.predictions is not None:
        print(f"wrote {report.predictions}")
    if report.geopackages:
        names = ["classes.tif", "probs.tif" if options.probs else "", "polygons.gpkg"]
        names += ["polygons.geojson"] if options.geojson else []
        files = ", ".join(n for n in names if n)
        print(f"wrote {report.out_dir}/{{id}}/ {files} for {len(report.geopackages)} scene(s)")
    for s in report.failed:
        print(f"failed: {s['image_id']}: {s['reason']}")
    return 1 if report.failed else 0
