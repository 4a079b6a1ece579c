"""``spectraseg synth --out DIR --scenes N --size H W --seed S``: a synthetic DSTL dataset."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="write a synthetic dataset in the DSTL competition layout",
        description="Write a synthetic dataset in the DSTL competition layout: RGB, P, M and A "
        "products, grid_sizes.csv, train_wkt_v4.csv, sample_submission.csv and the true band "
        "shifts in shifts.csv. The same arguments give the same bytes.",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="dataset root to write")
    p.add_argument("--scenes", type=int, default=8, metavar="N", help="number of scenes (8)")
    p.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=(512, 512),
        metavar=("H", "W"),
        help="RGB size in pixels, varied by a few pixels per scene (512 512; full size is "
        "about 3348 3392)",
    )
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (0)")
    p.add_argument(
        "--regions",
        type=int,
        default=None,
        metavar="R",
        help="number of regions the scenes are spread over (default: ceil(N / 4))",
    )
    p.add_argument(
        "--products",
        default="RGB,P,M,A",
        help="comma-separated products to write (RGB,P,M,A)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spectraseg.data.synth import synthesize

    products = [p.strip() for p in args.products.split(",") if p.strip()]
    size = (args.size[0], args.size[1])
    ids = synthesize(
        args.out,
        scenes=args.scenes,
        size=size,
        seed=args.seed,
        regions=args.regions,
        products=products,
        progress=not args.quiet,
    )
    regions = len({i.rsplit("_", 2)[0] for i in ids})
    print(
        f"synthesized {len(ids)} scene(s) in {regions} region(s), about {size[0]}x{size[1]} px, "
        f"products {','.join(p for p in ('RGB', 'P', 'M', 'A') if p in products)}, "
        f"seed {args.seed}: {args.out}"
    )
    return 0
