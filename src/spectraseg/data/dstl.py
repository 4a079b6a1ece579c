"""Reading and writing datasets in the DSTL competition layout.

Layout of a dataset root::

    three_band/{id}.tif            RGB, (3, H, W), 11-bit in uint16 (or an 8-bit render)
    sixteen_band/{id}_P.tif        panchromatic, (H, W) or (1, H, W), 11-bit
    sixteen_band/{id}_M.tif        multispectral, (8, ~H/4, ~W/4), 11-bit
    sixteen_band/{id}_A.tif        SWIR, (8, ~H/24, ~W/24), 14-bit
    grid_sizes.csv                 ",Xmax,Ymin" (first header column unnamed)
    train_wkt_v4.csv[.gz]          ImageId,ClassType,MultipolygonWKT (grid coordinates)
    sample_submission.csv          the row order a submission must follow

Headers are read without pixels; pixels are read per product (all bands or a window) on
demand. Every failure caused by the input raises :class:`~spectraseg.errors.DataError`
with one sentence naming the file or id. Output files are written atomically
(:func:`atomic_output`).
"""

from __future__ import annotations

import csv
import gzip
import io as _io
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import rasterio
import shapely
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window
from shapely.geometry import MultiPolygon
from shapely.geometry.base import BaseGeometry

from spectraseg import NUM_CLASSES
from spectraseg.data.files import write_text_atomic
from spectraseg.data.geometry import EMPTY, repair, to_multipolygon
from spectraseg.data.rasters import read_header
from spectraseg.errors import DataError, SpectrasegWarning, first_line

PRODUCTS: tuple[str, ...] = ("RGB", "P", "M", "A")
"""Product names, in fusion order."""

PRODUCT_BANDS: dict[str, int] = {"RGB": 3, "P": 1, "M": 8, "A": 8}
"""Band count of each product."""

CHANNELS: dict[str, tuple[str, ...]] = {
    "RGB": ("R", "G", "B"),
    "P": ("P",),
    "M": tuple(f"M{i}" for i in range(1, 9)),
    "A": tuple(f"A{i}" for i in range(1, 9)),
}
"""Channel names of each product, in stacking order."""


def channels_of(products: Iterable[str]) -> list[str]:
    """The channel names of a set of products, in the fixed order R,G,B,P,M1..M8,A1..A8."""
    have = set(products)
    return [c for p in PRODUCTS if p in have for c in CHANNELS[p]]


CHANNEL_ORDER: tuple[str, ...] = (
    "R",
    "G",
    "B",
    "P",
    *(f"M{i}" for i in range(1, 9)),
    *(f"A{i}" for i in range(1, 9)),
)
"""The cache's canonical channel order (R,G,B,P,M1..M8,A1..A8, restricted to what exists)."""


PRODUCT_BITS: dict[str, int] = {"RGB": 11, "P": 11, "M": 11, "A": 14}
"""Nominal bit depth of the full-resolution products (dstl-lite's RGB render is 8-bit)."""

WKT_HEADER = ("ImageId", "ClassType", "MultipolygonWKT")
LABEL_FILES = ("train_wkt_v4.csv", "train_wkt_v4.csv.gz")

# Real label files hold single WKT fields of tens of MB.
csv.field_size_limit(2**31 - 1)

_ID_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


# --------------------------------------------------------------------------- atomic output


def _open_text(path: Path) -> _io.TextIOBase:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


# --------------------------------------------------------------------------- ids


def check_image_id(image_id: str) -> str:
    """Return ``image_id`` if it is safe to use in a file name, else raise DataError."""
    if (
        not image_id
        or "/" in image_id
        or "\\" in image_id
        or os.sep in image_id
        or ".." in image_id
        or not _ID_OK.match(image_id)
    ):
        raise DataError(
            f"image id {image_id!r} is not valid: ids may not contain path separators or '..'"
        )
    return image_id


def region_of(image_id: str) -> str:
    """The region of an id ``{region}_{i}_{j}`` (its 5 x 5 tile group); the id if no match."""
    parts = image_id.rsplit("_", 2)
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        return parts[0]
    return image_id


# --------------------------------------------------------------------------- CSV files


def read_grid_sizes(path: str | os.PathLike[str]) -> dict[str, tuple[float, float]]:
    """Read ``grid_sizes.csv`` -> ``{image_id: (xmax, ymin)}``.

    The header is ``,Xmax,Ymin`` (the id column has no name; ``ImageId`` is accepted too).
    """
    path = Path(path)
    rows = _read_csv(path)
    header = [h.strip() for h in rows[0]] if rows else []
    if len(header) != 3 or header[1:] != ["Xmax", "Ymin"] or header[0] not in ("", "ImageId"):
        raise DataError(f"{path} has columns {header}, expected ',Xmax,Ymin'")
    out: dict[str, tuple[float, float]] = {}
    for n, image_id, row in _id_rows(path, rows):
        try:
            xmax, ymin = float(row[1]), float(row[2])
        except ValueError:
            raise DataError(f"{path} line {n} has a non-numeric Xmax or Ymin") from None
        if not (xmax > 0 and ymin < 0):
            raise DataError(f"{path} line {n}: Xmax must be > 0 and Ymin < 0 for {image_id}")
        out[image_id] = (xmax, ymin)
    return out


def write_grid_sizes(
    path: str | os.PathLike[str], sizes: Mapping[str, tuple[float, float]]
) -> None:
    """Write ``grid_sizes.csv`` in the competition format (unnamed first column), atomically."""
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["", "Xmax", "Ymin"])
    for image_id, (xmax, ymin) in sizes.items():
        w.writerow([image_id, repr(float(xmax)), repr(float(ymin))])
    write_text_atomic(path, buf.getvalue())


def _id_rows(path: Path, rows: list[list[str]]) -> Iterator[tuple[int, str, list[str]]]:
    """The rows after the header of a three-column CSV whose first column is an image id:
    ``(line number, checked id, fields)``, blank lines skipped. DataError naming the line of
    a row of another width; :func:`check_image_id`'s for an unsafe id."""
    for n, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != 3:
            raise DataError(f"{path} line {n} has {len(row)} fields, expected 3")
        yield n, check_image_id(row[0].strip()), row


def _read_csv(path: Path) -> list[list[str]]:
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    try:
        with _open_text(path) as f:
            return list(csv.reader(f))
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path} cannot be read as CSV ({exc})") from None


def format_wkt(geom: BaseGeometry | str, decimals: int = 8) -> str:
    """WKT of a geometry with at most ``decimals`` decimals (strings pass through)."""
    if isinstance(geom, str):
        return geom
    geom = to_multipolygon(geom)
    if geom.is_empty:
        return "MULTIPOLYGON EMPTY"
    return shapely.to_wkt(geom, rounding_precision=decimals, trim=True)


def write_wkt_csv(
    path: str | os.PathLike[str],
    rows: Iterable[tuple[str, int, BaseGeometry | str]],
    decimals: int = 8,
) -> None:
    """Write ``ImageId,ClassType,MultipolygonWKT`` rows atomically (``.gz`` compresses).

    Geometries are normalised to MultiPolygon; empty ones are written ``MULTIPOLYGON EMPTY``.
    Non-empty WKT is quoted, as in the competition files. The bytes are ``csv.writer``'s
    (``QUOTE_MINIMAL``); the WKT field is appended as it would quote it (WKT holds commas,
    never quotes or line breaks), because its scan of every character took 4.4 s of a 61 s
    prediction of a noisy scene (190 MB of WKT).
    """
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator=",", quoting=csv.QUOTE_MINIMAL)
    buf.write(",".join(WKT_HEADER) + "\n")
    for image_id, cls, geom in rows:
        w.writerow([image_id, int(cls)])  # "id,class," with csv's quoting of the id
        buf.write(_wkt_field(format_wkt(geom, decimals)) + "\n")
    write_text_atomic(path, buf.getvalue())


def _wkt_field(wkt: str) -> str:
    """A WKT string as a ``QUOTE_MINIMAL`` CSV field: quoted when it holds a comma."""
    if '"' in wkt or "\n" in wkt or "\r" in wkt:
        raise ValueError(f"WKT with a quote or line break: {wkt[:80]!r}")
    return f'"{wkt}"' if "," in wkt else wkt


def read_wkt_rows(path: str | os.PathLike[str]) -> list[tuple[str, int, str]]:
    """Read the raw rows of an ``ImageId,ClassType,MultipolygonWKT`` file (plain or .gz)."""
    path = Path(path)
    rows = _read_csv(path)
    if not rows or [h.strip() for h in rows[0]] != list(WKT_HEADER):
        got = rows[0] if rows else []
        raise DataError(f"{path} has columns {got}, expected {','.join(WKT_HEADER)}")
    out: list[tuple[str, int, str]] = []
    for n, image_id, row in _id_rows(path, rows):
        try:
            cls = int(row[1])
        except ValueError:
            raise DataError(f"{path} line {n} has ClassType {row[1]!r}, expected 1..10") from None
        if not 1 <= cls <= NUM_CLASSES:
            raise DataError(f"{path} line {n} has ClassType {cls}, expected 1..{NUM_CLASSES}")
        out.append((image_id, cls, row[2]))
    return out


def parse_wkt_rows(
    rows: list[tuple[str, int, str]], source: str | os.PathLike[str]
) -> tuple[dict[str, dict[int, MultiPolygon]], int]:
    """Parse WKT rows into ``{image_id: {class: MultiPolygon}}`` and count the repairs.

    Invalid polygons are repaired (see :func:`~spectraseg.data.geometry.repair`); malformed WKT
    raises DataError naming the row.
    """
    texts = np.array([r[2] for r in rows], dtype=object)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        geoms = shapely.from_wkt(texts, on_invalid="ignore")
    bad = [i for i, g in enumerate(geoms) if g is None]
    if bad:
        image_id, cls, text = rows[bad[0]]
        snippet = text if len(text) < 40 else text[:37] + "..."
        raise DataError(f"{source}: malformed WKT for image {image_id} class {cls}: {snippet!r}")
    for i, g in enumerate(geoms):
        if not g.is_empty and g.geom_type not in ("Polygon", "MultiPolygon", "GeometryCollection"):
            image_id, cls, _ = rows[i]
            raise DataError(
                f"{source}: image {image_id} class {cls} is a {g.geom_type}, expected polygons"
            )
    valid = shapely.is_valid(geoms)
    out: dict[str, dict[int, MultiPolygon]] = {}
    repaired = 0
    for (image_id, cls, _), g, ok in zip(rows, geoms, valid, strict=True):
        if not ok:
            repaired += 1
            g = repair(g)
        out.setdefault(image_id, {})[cls] = to_multipolygon(g)
    return out, repaired


def read_wkt_csv(path: str | os.PathLike[str]) -> dict[str, dict[int, MultiPolygon]]:
    """Read a label or prediction file -> ``{image_id: {class: MultiPolygon}}``.

    Coordinates stay in the DSTL grid; holes are kept. Invalid polygons are repaired and
    counted in one :class:`~spectraseg.errors.SpectrasegWarning`.
    """
    return _parse_and_warn(read_wkt_rows(path), path)


def _parse_and_warn(
    rows: list[tuple[str, int, str]], source: str | os.PathLike[str]
) -> dict[str, dict[int, MultiPolygon]]:
    """:func:`parse_wkt_rows`, the repairs counted in one SpectrasegWarning attributed to
    the caller of the public reader that called this."""
    out, repaired = parse_wkt_rows(rows, source)
    if repaired:
        warnings.warn(
            f"{source}: repaired {repaired} invalid polygon(s) of {len(rows)}",
            SpectrasegWarning,
            stacklevel=3,
        )
    return out


def read_sample_order(path: str | os.PathLike[str]) -> list[tuple[str, int]]:
    """The ``(ImageId, ClassType)`` order of ``sample_submission.csv``."""
    return [(image_id, cls) for image_id, cls, _ in read_wkt_rows(path)]


# --------------------------------------------------------------------------- rasters


@dataclass(frozen=True)
class ProductInfo:
    """Header of one product file: what it holds, without its pixels."""

    name: str
    """``RGB``, ``P``, ``M`` or ``A``."""
    path: Path
    bands: int
    height: int
    width: int
    dtype: np.dtype

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(bands, height, width)``."""
        return (self.bands, self.height, self.width)


def _probe(name: str, path: Path) -> ProductInfo:
    head = read_header(path)
    bands, height, width, dtype = head.count, head.height, head.width, head.dtype
    expected = PRODUCT_BANDS[name]
    if bands != expected:
        raise DataError(f"{path} has {bands} band(s), but a {name} product has {expected}")
    return ProductInfo(name, path, bands, height, width, dtype)


def product_path(root: Path, image_id: str, product: str) -> Path:
    """Where ``product`` of ``image_id`` lives under a dataset root."""
    if product == "RGB":
        return root / "three_band" / f"{image_id}.tif"
    if product in ("P", "M", "A"):
        return root / "sixteen_band" / f"{image_id}_{product}.tif"
    raise ValueError(f"unknown product {product!r}; expected one of {PRODUCTS}")


@dataclass
class Scene:
    """One scene (image id) of a dataset: its grid extent and the products that exist.

    Pixels are read on demand with :meth:`read`; construction reads only headers.
    """

    image_id: str
    root: Path
    xmax: float
    ymin: float
    products: dict[str, ProductInfo] = field(default_factory=dict)

    @property
    def region(self) -> str:
        """The scene's 5 x 5 tile group ``{region}`` of ``{region}_{i}_{j}``."""
        return region_of(self.image_id)

    @property
    def channels(self) -> list[str]:
        """The fused stack's channel names, in cache order."""
        return channels_of(self.products)

    def has(self, product: str) -> bool:
        """Whether the product file exists for this scene."""
        return product in self.products

    def info(self, product: str) -> ProductInfo:
        """Header of ``product``; DataError if the scene lacks it."""
        if product not in self.products:
            path = product_path(self.root, self.image_id, product)
            raise DataError(f"scene {self.image_id} has no {product} product ({path} is missing)")
        return self.products[product]

    @property
    def reference(self) -> ProductInfo:
        """The grid everything is aligned to: RGB if present, else the finest product."""
        if "RGB" in self.products:
            return self.products["RGB"]
        return max(self.products.values(), key=lambda p: p.height * p.width)

    def read(self, product: str, window: tuple[slice, slice] | None = None) -> np.ndarray:
        """Pixels of ``product`` as (bands, h, w) in the file's dtype.

        ``window`` is ``(rows, cols)`` slices in that product's own pixels; None reads all.
        """
        info = self.info(product)
        win = None
        if window is not None:
            rows, cols = window
            r0, r1, _ = rows.indices(info.height)
            c0, c1, _ = cols.indices(info.width)
            win = Window(c0, r0, max(c1 - c0, 0), max(r1 - r0, 0))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(info.path) as src:
                    return src.read(window=win)
        except RasterioError as exc:
            raise DataError(f"{info.path} is unreadable or truncated ({first_line(exc)})") from None


class Dataset:
    """A dataset root in the DSTL competition layout (some products may be missing).

    ``image_ids`` are the ids with at least one product file. Labels and the sample
    submission are optional and read lazily.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"dataset root {self.root} does not exist or is not a directory")
        self.grid_path = self.root / "grid_sizes.csv"
        self.grid_sizes = read_grid_sizes(self.grid_path)
        self._scenes: dict[str, Scene] = {}

    @cached_property
    def image_ids(self) -> list[str]:
        """Sorted ids having at least one product file under the root."""
        ids: set[str] = set()
        three = self.root / "three_band"
        sixteen = self.root / "sixteen_band"
        if three.is_dir():
            ids.update(p.stem for p in three.glob("*.tif"))
        if sixteen.is_dir():
            for p in sixteen.glob("*_[PMA].tif"):
                ids.add(p.stem[:-2])
        return sorted(ids)

    @property
    def label_path(self) -> Path | None:
        """The label file if present (``train_wkt_v4.csv`` or ``.csv.gz``)."""
        for name in LABEL_FILES:
            if (self.root / name).is_file():
                return self.root / name
        return None

    @property
    def sample_path(self) -> Path | None:
        """``sample_submission.csv`` if present."""
        p = self.root / "sample_submission.csv"
        return p if p.is_file() else None

    def select(
        self, image_ids: Iterable[str] | None, verb: str, gridded: bool = False
    ) -> list[str]:
        """The scenes a command works on: ``image_ids`` (every scene when None), in order,
        each once. DataError naming the first id without a product file (or, with
        ``gridded``, without a ``grid_sizes.csv`` row), or when there is nothing to ``verb``."""
        ids = list(dict.fromkeys(self.image_ids if image_ids is None else image_ids))
        if not ids:
            raise DataError(
                f"no scene to {verb} under {self.root} (three_band/ and sixteen_band/ empty)"
            )
        known = set(self.image_ids)
        for image_id in ids:
            check_image_id(image_id)
            if image_id not in known:
                raise DataError(f"image id {image_id} has no product file under {self.root}")
            if gridded and image_id not in self.grid_sizes:
                raise DataError(f"image id {image_id} is not in {self.grid_path}")
        return ids

    def scene(self, image_id: str) -> Scene:
        """The scene ``image_id`` with the headers of its products (no pixels read)."""
        check_image_id(image_id)
        if image_id in self._scenes:
            return self._scenes[image_id]
        if image_id not in self.grid_sizes:
            raise DataError(f"image id {image_id} is not in {self.grid_path}")
        products: dict[str, ProductInfo] = {}
        for name in PRODUCTS:
            path = product_path(self.root, image_id, name)
            if path.exists():
                products[name] = _probe(name, path)
        if not products:
            raise DataError(
                f"image id {image_id} has no product file under {self.root} "
                f"(looked for {product_path(self.root, image_id, 'RGB')} and sixteen_band/)"
            )
        xmax, ymin = self.grid_sizes[image_id]
        scene = Scene(image_id, self.root, xmax, ymin, products)
        self._scenes[image_id] = scene
        return scene

    def scenes(self) -> Iterator[Scene]:
        """All scenes, in id order."""
        for image_id in self.image_ids:
            yield self.scene(image_id)

    @cached_property
    def labels(self) -> dict[str, dict[int, MultiPolygon]]:
        """``{image_id: {class: MultiPolygon}}`` from the label file; empty if none."""
        path = self.label_path
        if path is None:
            return {}
        labels = read_wkt_csv(path)
        for image_id in labels:
            if image_id not in self.grid_sizes:
                raise DataError(f"{path}: image id {image_id} is not in {self.grid_path}")
        return labels

    @property
    def labelled_ids(self) -> list[str]:
        """Ids that have both labels and at least one product file, sorted."""
        return sorted(set(self.labels) & set(self.image_ids))

    def scene_labels(self, image_id: str) -> dict[int, MultiPolygon]:
        """All 10 classes of ``image_id`` (empty MultiPolygons where not labelled)."""
        got = self.labels.get(image_id, {})
        return {c: got.get(c, EMPTY) for c in range(1, NUM_CLASSES + 1)}

    def sample_order(self) -> list[tuple[str, int]]:
        """Row order of ``sample_submission.csv``; DataError if absent."""
        if self.sample_path is None:
            raise DataError(f"{self.root / 'sample_submission.csv'} does not exist")
        return read_sample_order(self.sample_path)


def open_dataset(root: str | os.PathLike[str]) -> Dataset:
    """Open a dataset root in the DSTL competition layout."""
    return Dataset(root)


PREDICTIONS_CSV = "predictions.csv"
"""Name of the all-scenes prediction file in a prediction directory."""


def prediction_file(path: str | os.PathLike[str]) -> Path:
    """The prediction CSV of ``path``: the file itself, or ``predictions.csv`` in a directory."""
    path = Path(path)
    if path.is_dir():
        for name in (PREDICTIONS_CSV, PREDICTIONS_CSV + ".gz"):
            if (path / name).is_file():
                return path / name
        raise DataError(f"prediction directory {path} has no {PREDICTIONS_CSV}")
    if not path.is_file():
        raise DataError(f"prediction file {path} does not exist")
    return path


def read_predictions(path: str | os.PathLike[str]) -> dict[str, dict[int, MultiPolygon]]:
    """Read predictions (a CSV, or a directory holding ``predictions.csv``).

    Returns ``{image_id: {class: MultiPolygon}}`` in grid coordinates. A malformed file, an
    (image, class) pair given twice, or WKT that is not polygons raises DataError naming the
    file and row. Invalid polygons are repaired (``make_valid(method="structure")``) and
    counted in one warning.
    """
    src = prediction_file(path)
    rows = read_wkt_rows(src)
    seen: set[tuple[str, int]] = set()
    for image_id, cls, _ in rows:
        if (image_id, cls) in seen:
            raise DataError(f"{src}: image {image_id} class {cls} appears twice")
        seen.add((image_id, cls))
    return _parse_and_warn(rows, src)
