"""Writing a synthetic dataset: :func:`synthesize` and the files of the DSTL layout.

Plans the scenes (ids, sizes, regions, seeds), makes each with :func:`.scene.make_scene`,
writes its products as uncompressed planar TIFFs, then the CSV tables and ``synth.json``;
every file is written atomically.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile
from shapely.geometry.base import BaseGeometry
from tqdm import tqdm

from spectraseg import NUM_CLASSES
from spectraseg.data.dstl import PRODUCTS, product_path, write_grid_sizes, write_wkt_csv
from spectraseg.data.files import atomic_output, write_text_atomic
from spectraseg.data.synth.products import MAX_SIZE, MIN_SIZE, check_products, check_size
from spectraseg.data.synth.region import (
    TILES_PER_REGION,
    Region,
    as_seedseq,
    make_region,
    region_names,
)
from spectraseg.data.synth.scene import SyntheticScene, make_scene
from spectraseg.errors import ConfigError


def _write_tiff(path: Path, image: np.ndarray, photometric: str) -> None:
    """Write a planar (bands, h, w) or (h, w) uint16 TIFF atomically, uncompressed like the
    competition files, in strips of about 256 KiB so that windowed reads stay cheap."""
    rows = max(1, (1 << 18) // (2 * image.shape[-1]))
    with atomic_output(path) as tmp:
        tifffile.imwrite(
            tmp,
            image,
            photometric=photometric,
            planarconfig="separate" if image.ndim == 3 else None,
            rowsperstrip=rows,
            metadata=None,
        )


def _plan(
    scenes: int, size: tuple[int, int], seed: int, regions: int
) -> list[tuple[str, int, int, Region, np.random.SeedSequence, bool]]:
    """``(image_id, height, width, region, seed, all_classes)`` of every scene, in id order."""
    plan = []
    counts = [scenes // regions + (r < scenes % regions) for r in range(regions)]
    for r, (name, n) in enumerate(zip(region_names(regions), counts, strict=True)):
        region = make_region(name, np.random.SeedSequence([seed, r]))
        prng = np.random.default_rng(np.random.SeedSequence([seed, r, 0]))
        tiles = sorted(prng.permutation(TILES_PER_REGION)[:n].tolist())
        for k, tile in enumerate(tiles):
            h = int(np.clip(size[0] + prng.integers(-2, 3), MIN_SIZE, MAX_SIZE))
            w = int(np.clip(size[1] + prng.integers(-3, 4), MIN_SIZE, MAX_SIZE))
            ss = np.random.SeedSequence([seed, r, k + 1])
            plan.append((f"{name}_{tile // 5}_{tile % 5}", h, w, region, ss, k == 0))
    return plan


def _default_regions(scenes: int) -> int:
    """Regions of a run that names none: ``ceil(scenes / 4)``."""
    return max(1, math.ceil(scenes / 4))


def _product_files(root: Path, ids: Sequence[str], products: Sequence[str]) -> set[Path]:
    """Paths of the image files of ``products`` for scenes ``ids`` under ``root``."""
    return {product_path(root, i, p) for i in ids for p in products}


def _prepare_out(out: Path, planned: set[Path]) -> None:
    """Refuse to mix with foreign scenes; remove scenes a previous synth run left behind."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {out} exists and is not a directory")
    existing: set[Path] = set()
    for sub, pattern in (("three_band", "*.tif"), ("sixteen_band", "*_[PMA].tif")):
        if (out / sub).is_dir():
            existing.update((out / sub).glob(pattern))
    stale = existing - planned
    if not stale:
        return
    manifest = out / "synth.json"
    ours: set[Path] = set()
    if manifest.is_file():
        try:
            ours = {out / f for f in json.loads(manifest.read_text())["files"]}
        except (ValueError, KeyError, TypeError):
            ours = set()
    foreign = sorted(stale - ours)
    if foreign:
        raise ConfigError(
            f"output {out} already holds scenes this run would not replace "
            f"(e.g. {foreign[0]}); choose an empty directory"
        )
    for path in stale:
        path.unlink()


def synthesize(
    out: str | Path,
    scenes: int,
    size: tuple[int, int],
    seed: int,
    regions: int | None = None,
    products: Sequence[str] = PRODUCTS,
    progress: bool = True,
) -> list[str]:
    """Write a synthetic dataset in the DSTL layout under ``out``; return its image ids.

    ``scenes`` scenes of about ``size = (height, width)`` RGB pixels are spread over
    ``regions`` regions (default ``ceil(scenes / 4)``, at most 25 scenes each). Every file is
    written atomically; files of an earlier synth run in ``out`` that this run does not
    rewrite are removed, and ``out`` may not hold other scenes. See the package docstring
    (:mod:`spectraseg.data.synth`) for the layout, the shifts and determinism.
    """
    regions = _check_run(scenes, size, seed, regions)
    products = check_products(products)
    out = Path(out)
    plan = _plan(int(scenes), (int(size[0]), int(size[1])), int(seed), int(regions))
    ids = [p[0] for p in plan]
    _prepare_out(out, _product_files(out, ids, products))

    grid: dict[str, tuple[float, float]] = {}
    label_rows: list[tuple[str, int, BaseGeometry]] = []
    sample_rows: list[tuple[str, int, str]] = []
    shift_lines = ["image_id,product,dx,dy"]
    for image_id, h, w, region, ss, force in tqdm(
        plan, desc="synth", unit="scene", disable=not progress, file=sys.stderr
    ):
        scene = make_scene(image_id, h, w, ss, region, products=products, all_classes=force)
        _write_products(out, scene)
        grid[image_id] = (scene.xmax, scene.ymin)
        full = (
            f"POLYGON ((0 0, {scene.xmax!r} 0, {scene.xmax!r} {scene.ymin!r}, "
            f"0 {scene.ymin!r}, 0 0))"
        )
        for cls in range(1, NUM_CLASSES + 1):
            label_rows.append((image_id, cls, scene.labels[cls]))
            sample_rows.append((image_id, cls, full))
        for name, (dx, dy) in scene.shifts.items():
            shift_lines.append(f"{image_id},{name},{dx:.4f},{dy:.4f}")
        del scene

    write_grid_sizes(out / "grid_sizes.csv", grid)
    write_wkt_csv(out / "train_wkt_v4.csv", label_rows)
    write_wkt_csv(out / "sample_submission.csv", sample_rows)
    write_text_atomic(out / "shifts.csv", "\n".join(shift_lines) + "\n")
    files = sorted(str(p.relative_to(out)) for p in _product_files(out, ids, products))
    manifest = {
        "format": "spectraseg-synth",
        "version": 1,
        "seed": int(seed),
        "scenes": int(scenes),
        "size": [int(size[0]), int(size[1])],
        "regions": int(regions),
        "products": list(products),
        "image_ids": ids,
        "files": files,
    }
    write_text_atomic(out / "synth.json", json.dumps(manifest, indent=2) + "\n")
    return ids


def _check_run(scenes: int, size: tuple[int, int], seed: int, regions: int | None) -> int:
    """Raise ConfigError unless the arguments of :func:`synthesize` make a dataset; return
    the number of regions (``ceil(scenes / 4)`` when None)."""
    if isinstance(scenes, bool) or not isinstance(scenes, int | np.integer) or scenes < 1:
        raise ConfigError(f"number of scenes {scenes!r} is not valid: use 1 or more")
    if len(size) != 2:
        raise ConfigError(f"size {size!r} is not valid: give height and width")
    check_size(size[0], size[1])
    as_seedseq(seed)
    if regions is None:
        regions = _default_regions(int(scenes))
    if isinstance(regions, bool) or not isinstance(regions, int | np.integer) or regions < 1:
        raise ConfigError(f"number of regions {regions!r} is not valid: use 1 or more")
    if regions > scenes:
        raise ConfigError(f"{regions} regions cannot be filled by {scenes} scene(s)")
    if math.ceil(scenes / regions) > TILES_PER_REGION:
        raise ConfigError(
            f"{scenes} scenes in {regions} region(s) exceed {TILES_PER_REGION} tiles per "
            f"region: use at least {math.ceil(scenes / TILES_PER_REGION)} regions"
        )
    return regions


def _write_products(out: Path, scene: SyntheticScene) -> None:
    """Write the products of ``scene`` as TIFFs in the dataset under ``out``."""
    for name, image in scene.products.items():
        photometric = "rgb" if name == "RGB" else "minisblack"
        _write_tiff(product_path(out, scene.image_id, name), image, photometric)
