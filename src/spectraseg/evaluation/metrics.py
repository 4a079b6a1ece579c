"""The competition metric: per-class Jaccard on polygon areas, summed over images.

For each class ``c`` and the scored images ``i``::

    TP_c = sum_i |P_ic ∩ G_ic|     FP_c = sum_i |P_ic| - |P_ic ∩ G_ic|
    FN_c = sum_i |G_ic| - |P_ic ∩ G_ic|
    J_c  = TP_c / (TP_c + FP_c + FN_c)          score = mean of J_c over the 10 classes

Areas are in squared grid units (the DSTL normalised grid) for both variants:

- :func:`evaluate_polygons` measures exact polygon areas with shapely.
- :func:`raster_jaccard` rasterises both sides onto each scene's RGB grid (a pixel counts when
  its centre is inside, :func:`spectraseg.data.geometry.rasterize`) and counts pixels, each worth
  the area of one pixel in grid units. It is faster on large files and agrees with the polygon
  variant up to the boundary pixels (about 1% on the real labels at the RGB resolution).
  :func:`mask_counts` does the same for masks already on a grid (no vectorisation needed).

**Empty union.** A class with ``TP + FP + FN == 0`` over all scored images (no truth and no
prediction anywhere) scores ``EMPTY_UNION_SCORE = 0.0``: 0/0 earns no credit, so predicting
nothing never raises the score and the mean is always over 10 classes, as in the competition.
Such classes are flagged (``empty`` in JSON, ``*`` in the table) because their 0 says nothing
about the model. Pass ``empty_score=1.0`` for the "epsilon" convention of other evaluators.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.errors import GEOSException
from shapely.geometry.base import BaseGeometry

from spectraseg import CLASS_NAMES, NUM_CLASSES
from spectraseg.align.cache import Cache
from spectraseg.data.dstl import open_dataset, read_grid_sizes, read_predictions, read_wkt_csv
from spectraseg.data.geometry import EMPTY, pixel_scale, rasterize, repair
from spectraseg.data.georef import GeoDataset, prediction_gpkg, read_predicted
from spectraseg.errors import DataError, SpectrasegWarning

EMPTY_UNION_SCORE = 0.0
"""Jaccard given to a class whose union is empty over all scored images."""

Labels = Mapping[str, Mapping[int, BaseGeometry]]
"""``{image_id: {class: geometry}}`` in grid coordinates; missing classes are empty."""


@dataclass(frozen=True)
class Evaluation:
    """Per-image, per-class areas and the scores they give.

    ``counts`` is float64 ``(n_images, K, 3)``: TP, FP, FN areas (squared grid units, or
    map units for georeferenced scenes: ``units``) of each scored image (rows in
    ``image_ids`` order) and class (column ``c - 1``); K = 10 for DSTL, else the schema's.
    """

    image_ids: tuple[str, ...]
    counts: np.ndarray
    method: str = "polygon"
    empty_score: float = EMPTY_UNION_SCORE
    splits: dict[str, tuple[str, ...]] = field(default_factory=dict)
    names: tuple[str, ...] = tuple(CLASS_NAMES[c] for c in range(1, NUM_CLASSES + 1))
    """Class names, in column order."""
    units: str = "grid^2"

    @property
    def totals(self) -> np.ndarray:
        """float64 ``(10, 3)``: TP, FP, FN summed over the scored images."""
        return self.counts.sum(axis=0)

    @property
    def tp(self) -> np.ndarray:
        """float64 ``(10,)`` summed intersection areas."""
        return self.totals[:, 0]

    @property
    def fp(self) -> np.ndarray:
        """float64 ``(10,)`` summed predicted-but-not-true areas."""
        return self.totals[:, 1]

    @property
    def fn(self) -> np.ndarray:
        """float64 ``(10,)`` summed true-but-not-predicted areas."""
        return self.totals[:, 2]

    @property
    def empty(self) -> np.ndarray:
        """bool ``(10,)``: classes whose union is empty over all scored images."""
        return self.totals.sum(axis=1) <= 0

    @property
    def jaccard(self) -> np.ndarray:
        """float64 ``(10,)``: per-class Jaccard (``empty_score`` where the union is empty)."""
        return _jaccard(self.totals, self.empty_score)

    @property
    def mean(self) -> float:
        """The score: mean of the 10 per-class Jaccards."""
        return float(self.jaccard.mean())

    def subset(self, image_ids: Iterable[str]) -> Evaluation:
        """The evaluation restricted to some of its images (DataError for unknown ids)."""
        ids = list(image_ids)
        index = {i: n for n, i in enumerate(self.image_ids)}
        missing = [i for i in ids if i not in index]
        if missing:
            raise DataError(f"image id {missing[0]} is not among the scored images")
        rows = [index[i] for i in ids]
        return replace(self, image_ids=tuple(ids), counts=self.counts[rows], splits={})

    def with_splits(self, splits: Mapping[str, Sequence[str]]) -> Evaluation:
        """A copy carrying named image subsets (reported as extra columns / JSON keys)."""
        for name, ids in splits.items():
            self.subset(ids)  # validates the ids
            if not ids:
                raise DataError(f"split {name!r} lists no image ids")
        return replace(self, splits={k: tuple(v) for k, v in splits.items()})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"classes": [{"class", "name", "jaccard", "tp", "fp", "fn", ...}],
        "mean": ...}`` plus ``method``, ``images``, ``empty_union_score`` and ``splits``."""
        jac, tot, empty = self.jaccard, self.totals, self.empty
        classes = [
            {
                "class": c,
                "name": self.names[c - 1],
                "jaccard": float(jac[c - 1]),
                "tp": float(tot[c - 1, 0]),
                "fp": float(tot[c - 1, 1]),
                "fn": float(tot[c - 1, 2]),
                "empty": bool(empty[c - 1]),
            }
            for c in range(1, len(self.names) + 1)
        ]
        out: dict[str, Any] = {
            "classes": classes,
            "mean": self.mean,
            "method": self.method,
            "units": self.units,
            "images": list(self.image_ids),
            "empty_union_score": self.empty_score,
        }
        if self.splits:
            out["splits"] = {}
            for name, ids in self.splits.items():
                sub = self.subset(ids)
                out["splits"][name] = {
                    "images": list(ids),
                    "jaccard": [float(j) for j in sub.jaccard],
                    "empty": [bool(e) for e in sub.empty],
                    "mean": sub.mean,
                }
        return out

    def to_json(self, indent: int | None = 2) -> str:
        """:meth:`to_dict` as a JSON string."""
        return json.dumps(self.to_dict(), indent=indent)


def _jaccard(totals: np.ndarray, empty_score: float) -> np.ndarray:
    union = totals.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        j = totals[..., 0] / union
    return np.where(union > 0, j, empty_score)


# --------------------------------------------------------------------------- polygons


def _intersection_area(a: BaseGeometry, b: BaseGeometry) -> float:
    """Area of ``a ∩ b`` for valid (multi)polygons, summed over pairs of parts.

    Parts of a valid MultiPolygon have disjoint interiors, so the area of the intersection
    is the sum over part pairs; pairs are found with an STRtree and intersected in one
    vectorised call, which is about twice as fast as one overlay of the whole geometries
    on the real labels (thousands of parts).
    """
    pa, pb = shapely.get_parts(a), shapely.get_parts(b)
    i, j = shapely.STRtree(pb).query(pa, predicate="intersects")
    if len(i) == 0:
        return 0.0
    return float(shapely.area(shapely.intersection(pa[i], pb[j])).sum())


def _safe_intersection_area(a: BaseGeometry, b: BaseGeometry) -> float:
    try:
        return _intersection_area(a, b)
    except GEOSException:
        # A topology error on nearly-degenerate input: repair both sides and retry once.
        return _intersection_area(repair(a), repair(b))


def polygon_counts(pred: BaseGeometry, truth: BaseGeometry) -> tuple[float, float, float]:
    """``(tp, fp, fn)`` areas of one image and class (squared grid units, exact polygons)."""
    pa = 0.0 if pred is None or pred.is_empty else float(pred.area)
    ga = 0.0 if truth is None or truth.is_empty else float(truth.area)
    if pa == 0.0 or ga == 0.0:
        return 0.0, pa, ga
    inter = _safe_intersection_area(pred, truth)
    # Float noise can make the intersection exceed an area by ~1 ulp; keep fp, fn >= 0.
    inter = min(inter, pa, ga)
    return inter, pa - inter, ga - inter


def scored_ids(
    pred: Labels, truth: Labels, image_ids: Iterable[str] | None = None
) -> tuple[str, ...]:
    """The images to score: ``image_ids`` if given (each must be in ``truth``), else the
    images present in both ``pred`` and ``truth``, sorted. DataError if none."""
    if image_ids is not None:
        ids = tuple(image_ids)
        for i in ids:
            if i not in truth:
                raise DataError(f"image id {i} has no ground truth")
        if not ids:
            raise DataError("no image to score")
        return ids
    ids = tuple(sorted(set(pred) & set(truth)))
    if not ids:
        raise DataError("the predictions and the ground truth have no image id in common")
    return ids


def evaluate_polygons(
    pred: Labels,
    truth: Labels,
    image_ids: Iterable[str] | None = None,
    empty_score: float = EMPTY_UNION_SCORE,
    validate: bool = True,
) -> Evaluation:
    """The competition metric on polygon areas.

    Args:
        pred, truth: ``{image_id: {class: (Multi)Polygon}}`` in grid coordinates; a class
            or image missing from ``pred`` counts as predicted empty.
        image_ids: images to score; default those in both ``pred`` and ``truth``.
        empty_score: Jaccard of a class with an empty union over all scored images.
        validate: repair invalid geometries first (areas of invalid polygons are
            meaningless); pass False for geometries known valid, e.g. read with
            :func:`spectraseg.data.dstl.read_wkt_csv`, which repairs.

    Returns:
        an :class:`Evaluation` (``.jaccard``, ``.mean``, ``.to_json()``).
    """
    ids = scored_ids(pred, truth, image_ids)
    counts = np.zeros((len(ids), NUM_CLASSES, 3), dtype=np.float64)

    def ok(g: BaseGeometry | None) -> BaseGeometry:
        if g is None or g.is_empty:
            return EMPTY
        return repair(g) if validate and not g.is_valid else g

    for n, image_id in enumerate(ids):
        p = pred.get(image_id, {})
        g = truth[image_id]
        for c in range(1, NUM_CLASSES + 1):
            counts[n, c - 1] = polygon_counts(ok(p.get(c)), ok(g.get(c)))
    return Evaluation(ids, counts, "polygon", empty_score)


# --------------------------------------------------------------------------- rasters


def mask_counts(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Pixel counts of boolean masks: int64 ``(K, 3)`` TP, FP, FN per channel.

    ``pred`` and ``truth`` are ``(K, H, W)`` (any dtype; nonzero is positive); ``valid``
    ``(H, W)`` bool leaves the other pixels (nodata) out of every count.
    """
    if pred.shape != truth.shape or pred.ndim != 3:
        raise ValueError(f"masks must both be (K, H, W), got {pred.shape} and {truth.shape}")
    p = pred.reshape(pred.shape[0], -1).astype(bool, copy=False)
    g = truth.reshape(truth.shape[0], -1).astype(bool, copy=False)
    if valid is not None:
        keep = np.asarray(valid, dtype=bool).ravel()
        p, g = p[:, keep], g[:, keep]
    tp = np.count_nonzero(p & g, axis=1)
    return np.stack([tp, np.count_nonzero(p, axis=1) - tp, np.count_nonzero(g, axis=1) - tp], 1)


def pixel_area(width: int, height: int, xmax: float, ymin: float) -> float:
    """Area of one pixel of a ``width x height`` raster, in squared grid units."""
    sx, sy = pixel_scale(width, height, xmax, ymin)
    return float(1.0 / abs(sx * sy))


def pixel_areas(
    cache: Cache, root: str | os.PathLike[str] | None, image_ids: Iterable[str]
) -> dict[str, float]:
    """The metric's weight of each cached scene: the area of one of its pixels, in squared
    map units for a georeferenced scene (its cached transform), in squared grid units from
    the dataset's ``grid_sizes.csv`` under ``root`` for a DSTL one; 1.0 (pixel counts)
    where neither is known (no ``root``, no file, or the scene not in it)."""
    grid: dict[str, tuple[float, float]] = {}
    if root and (Path(root) / "grid_sizes.csv").is_file():
        grid = read_grid_sizes(Path(root) / "grid_sizes.csv")
    out = {}
    for i in image_ids:
        transform = cache.entry(i).get("transform")
        if transform is not None:
            out[i] = abs(float(transform[0]) * float(transform[4]))
            continue
        h, w = cache.load(i).shape[1:]
        out[i] = pixel_area(w, h, *grid[i]) if i in grid else 1.0
    return out


def raster_jaccard(
    pred: Labels,
    truth: Labels,
    sizes: Mapping[str, tuple[int, int]],
    grid_sizes: Mapping[str, tuple[float, float]],
    image_ids: Iterable[str] | None = None,
    empty_score: float = EMPTY_UNION_SCORE,
) -> Evaluation:
    """The competition metric on pixel counts at each scene's RGB grid.

    Args:
        pred, truth: as for :func:`evaluate_polygons`.
        sizes: ``{image_id: (width, height)}`` of the grid to count on (the RGB product).
        grid_sizes: ``{image_id: (xmax, ymin)}`` (``grid_sizes.csv``).
        image_ids, empty_score: as for :func:`evaluate_polygons`.

    Returns:
        an :class:`Evaluation` with ``method="raster"``; areas are pixel counts times the
        pixel area, so they are comparable with the polygon variant.
    """
    ids = scored_ids(pred, truth, image_ids)
    counts = np.zeros((len(ids), NUM_CLASSES, 3), dtype=np.float64)
    for n, image_id in enumerate(ids):
        if image_id not in sizes or image_id not in grid_sizes:
            raise DataError(f"image id {image_id} has no raster size or grid size to count on")
        w, h = sizes[image_id]
        xmax, ymin = grid_sizes[image_id]
        p = pred.get(image_id, {})
        g = truth[image_id]
        for c in range(1, NUM_CLASSES + 1):
            pm = rasterize(p.get(c, EMPTY), w, h, xmax, ymin)
            gm = rasterize(g.get(c, EMPTY), w, h, xmax, ymin)
            counts[n, c - 1] = mask_counts(pm[None], gm[None])[0]
        counts[n] *= pixel_area(w, h, xmax, ymin)
    return Evaluation(ids, counts, "raster", empty_score)


def evaluate_masks(
    pred: Mapping[str, np.ndarray],
    truth: Mapping[str, np.ndarray],
    grid_sizes: Mapping[str, tuple[float, float]] | None = None,
    empty_score: float = EMPTY_UNION_SCORE,
) -> Evaluation:
    """The metric on ``(10, H, W)`` masks already on a common grid per image.

    Areas are pixel counts, times the pixel area in grid units when ``grid_sizes`` is given.
    Every id of ``truth`` must be in ``pred``.
    """
    ids = tuple(truth)
    counts = np.zeros((len(ids), NUM_CLASSES, 3), dtype=np.float64)
    for n, image_id in enumerate(ids):
        if image_id not in pred:
            raise DataError(f"image id {image_id} has no predicted mask")
        counts[n] = mask_counts(pred[image_id], truth[image_id])
        if grid_sizes is not None:
            h, w = truth[image_id].shape[1:]
            counts[n] *= pixel_area(w, h, *grid_sizes[image_id])
    return Evaluation(ids, counts, "raster", empty_score)


# --------------------------------------------------------------------------- table


def _units_text(units: str) -> str:
    return "squared grid units" if units == "grid^2" else units


def format_table(ev: Evaluation, splits: Mapping[str, Sequence[str]] | None = None) -> str:
    """The per-class table in the seed team's style.

    Columns: class, name, Jaccard, contribution (J/K, the contributions sum to the score),
    TP, FP, FN areas (``ev.units``), then one Jaccard column per split. Classes with an
    empty union are marked ``*`` and explained under the table.
    """
    k_ = len(ev.names)
    splits = dict(ev.splits if splits is None else splits)
    subs = {name: ev.subset(ids) for name, ids in splits.items()}
    jac, tot, empty = ev.jaccard, ev.totals, ev.empty
    share = f"J/{k_}"
    head = f"{'class':>5}  {'name':<24} {'Jaccard':>8} {share:>8} {'TP':>11} {'FP':>11} {'FN':>11}"
    head += "".join(f" {name[:10]:>10}" for name in subs)
    lines = [head, "-" * len(head)]
    for c in range(1, k_ + 1):
        k = c - 1
        mark = "*" if empty[k] else " "
        row = (
            f"{c:>5}{mark} {ev.names[k]:<24} {jac[k]:8.4f} {jac[k] / k_:8.5f} "
            f"{tot[k, 0]:11.4e} {tot[k, 1]:11.4e} {tot[k, 2]:11.4e}"
        )
        for sub in subs.values():
            cell = f"{sub.jaccard[k]:.4f}" + ("*" if sub.empty[k] else " ")
            row += f" {cell:>10}"
        lines.append(row)
    lines.append("-" * len(head))
    total = f"{'':>5}  {'mean':<24} {ev.mean:8.4f} {ev.mean:8.5f} {'':>11} {'':>11} {'':>11}"
    for sub in subs.values():
        cell = f"{sub.mean:.4f} "
        total += f" {cell:>10}"
    lines.append(total.rstrip())
    lines.append(
        f"{ev.method} metric over {len(ev.image_ids)} image(s); areas in {_units_text(ev.units)}"
        + "".join(f"; {name}: {len(ids)} image(s)" for name, ids in splits.items())
    )
    if empty.any() or any(s.empty.any() for s in subs.values()):
        lines.append(
            f"* empty union (no truth and no prediction on these images): scored {ev.empty_score:g}"
        )
    return "\n".join(lines)


def evaluate_files(
    pred_path: str | os.PathLike[str],
    truth_path: str | os.PathLike[str],
    splits: Mapping[str, Sequence[str]] | None = None,
    raster_root: str | os.PathLike[str] | None = None,
    empty_score: float = EMPTY_UNION_SCORE,
) -> Evaluation:
    """Score a prediction file against a truth file (both ``ImageId,ClassType,WKT``).

    Args:
        pred_path: a prediction CSV or a directory holding ``predictions.csv``.
        truth_path: labels (``train_wkt_v4.csv[.gz]`` or any file in that format).
        splits: named image lists reported as extra columns (each id must have truth;
            listed images without predictions count as predicted empty).
        raster_root: when given, use the raster variant, counting pixels on the RGB grid of
            this dataset's scenes (its ``grid_sizes.csv`` gives the extents).
        empty_score: Jaccard of a class with an empty union.

    The scored images are those in both files plus every split's images. Predicted images
    without truth are ignored with a warning.
    """

    pred = read_predictions(pred_path)
    truth = read_wkt_csv(truth_path)
    splits = dict(splits or {})
    image_ids = _scored_ids(
        set(pred), set(truth), splits, str(truth_path),
        f"{pred_path} and {truth_path} have no image id in common",
    )  # fmt: skip
    if raster_root is None:
        ev = evaluate_polygons(pred, truth, image_ids, empty_score, validate=False)
    else:
        ds = open_dataset(raster_root)
        sizes = {}
        for i in image_ids:
            ref = ds.scene(i).reference
            sizes[i] = (ref.width, ref.height)
        ev = raster_jaccard(pred, truth, sizes, ds.grid_sizes, image_ids, empty_score)
    return ev.with_splits(splits) if splits else ev


def _scored_ids(
    predicted: set[str],
    labelled: set[str],
    splits: Mapping[str, Sequence[str]],
    truth_name: str,
    nothing: str,
) -> list[str]:
    """The images an evaluation scores: those predicted and labelled, plus every split's
    (a split image without a prediction counts as predicted empty). Predicted images
    without truth are ignored with a warning; DataError for a split image without truth
    or (``nothing``) when no image is left."""
    extra = sorted(predicted - labelled)
    if extra:
        warnings.warn(
            f"{len(extra)} predicted image(s) have no ground truth in {truth_name} and are not "
            f"scored (e.g. {extra[0]})",
            SpectrasegWarning,
            stacklevel=3,
        )
    ids = predicted & labelled
    for name, members in splits.items():
        for i in members:
            if i not in labelled:
                raise DataError(f"split {name!r}: image id {i} has no ground truth in {truth_name}")
        ids.update(members)
    if not ids:
        raise DataError(nothing)
    return sorted(ids)


def evaluate_description(
    pred_dir: str | os.PathLike[str],
    description: str | os.PathLike[str],
    splits: Mapping[str, Sequence[str]] | None = None,
    empty_score: float = EMPTY_UNION_SCORE,
) -> Evaluation:
    """Score georeferenced predictions (``PRED/{id}/polygons.gpkg``) against the label
    layers of a dataset description, with the competition metric on polygon areas in map
    units (predictions reprojected to each scene's CRS when they are in another).

    The scored scenes are those with labels and a prediction, plus every split's scenes
    (a labelled scene without a prediction counts as predicted empty). DataError when
    nothing is in common or a split names a scene without labels.
    """
    ds = GeoDataset(description)
    schema = ds.description.classes
    labelled = set(ds.labelled_ids)
    predicted = {i for i in ds.image_ids if prediction_gpkg(pred_dir, i).is_file()}
    image_ids = _scored_ids(
        predicted, labelled, splits or {}, str(ds.root),
        f"{pred_dir} has no polygons.gpkg of a labelled scene of {ds.root}",
    )  # fmt: skip
    counts = np.zeros((len(image_ids), len(schema), 3), dtype=np.float64)
    units = set()
    for n, image_id in enumerate(image_ids):
        crs = ds.scene(image_id).grid.crs
        units.add(crs.linear_units)
        truth = ds.labels(image_id)
        pred = read_predicted(pred_dir, image_id, schema, crs) if image_id in predicted else {}
        for c in range(1, len(schema) + 1):
            counts[n, c - 1] = polygon_counts(_union(pred.get(c, [])), _union(truth[c]))
    unit = f"{units.pop()}^2" if len(units) == 1 else "map units^2"
    ev = Evaluation(
        tuple(image_ids), counts, "polygon", empty_score, names=tuple(schema.names), units=unit
    )
    return ev.with_splits(splits) if splits else ev


def _union(geoms: Sequence[BaseGeometry]) -> BaseGeometry:
    """One valid geometry covering ``geoms`` (overlapping label polygons count once)."""
    if not geoms:
        return EMPTY
    return repair(shapely.union_all([repair(g) for g in geoms]))
