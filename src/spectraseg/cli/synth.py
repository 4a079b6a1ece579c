"""write a synthetic dataset in the DSTL competition layout

Write a synthetic dataset in the DSTL competition layout: RGB, P, M and A products,
grid_sizes.csv, train_wkt_v4.csv, sample_submission.csv and the true band shifts in
shifts.csv. The same arguments give the same bytes.
"""

from __future__ import annotations

import argparse

from spectraseg.cli.options import add_progress, add_seed, add_synthetic


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="DIR", help="dataset root to write")
    add_synthetic(p, scenes=8, size=(512, 512))
    add_seed(p, "the dataset")
    p.add_argument(
        "--products",
        default="RGB,P,M,A",
        help="comma-separated products to write (RGB,P,M,A)",
    )
    p.add_argument(
        "--georef",
        action="store_true",
        help="instead, stream one georeferenced scene of --size H W pixels to DIR/scene.tif, "
        "DIR/labels.gpkg and DIR/dataset.toml (any size: it is never held in memory)",
    )
    p.add_argument(
        "--bands", type=int, default=8, help="with --georef: 8 multispectral bands, or 4 (8)"
    )
    add_progress(p)


def run(args: argparse.Namespace) -> int:
    # The stage loads here, not at the top: `spectraseg --help` imports every verb module.
    from spectraseg.data.synth import synthesize

    size = (args.size[0], args.size[1])
    if args.georef:
        from spectraseg.data.synth.georef import synthesize_georef

        desc = synthesize_georef(args.out, size, args.bands, args.seed, args.progress)
        print(
            f"synthesized a {size[0]}x{size[1]} px {args.bands}-band scene, "
            f"seed {args.seed}: {desc}"
        )
        return 0
    products = [p.strip() for p in args.products.split(",") if p.strip()]
    ids = synthesize(
        args.out,
        scenes=args.scenes,
        size=size,
        seed=args.seed,
        regions=args.regions,
        products=products,
        progress=args.progress,
    )
    regions = len({i.rsplit("_", 2)[0] for i in ids})
    print(
        f"synthesized {len(ids)} scene(s) in {regions} region(s), about {size[0]}x{size[1]} px, "
        f"products {','.join(p for p in ('RGB', 'P', 'M', 'A') if p in products)}, "
        f"seed {args.seed}: {args.out}"
    )
    return 0
