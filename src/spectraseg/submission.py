"""Writing and checking competition submissions.

A submission is ``ImageId,ClassType,MultipolygonWKT`` with exactly the rows of
``sample_submission.csv``, in its order (429 test scenes x 10 classes in the real file).
:func:`write_submission` fills it from a prediction file (``predictions.csv`` of
``spectraseg predict``, or any file in the same format): every row of the sample gets the
predicted MultiPolygon, or ``MULTIPOLYGON EMPTY`` where nothing is predicted. Geometries are
normalised to MultiPolygon and made valid after rounding to the written decimals
(:func:`spectraseg.vectorize.finalize`). The output is written atomically; ``.gz`` compresses.

:func:`check_submission` lists every problem of a submission against the sample: header,
row count, ids and classes in order, duplicates, malformed or non-polygonal or invalid WKT.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import shapely
from shapely.errors import GEOSException
from shapely.geometry import MultiPolygon

from spectraseg import NUM_CLASSES
from spectraseg.data.dstl import (
    WKT_HEADER,
    format_wkt,
    read_predictions,
    read_sample_order,
)
from spectraseg.data.files import atomic_output, remove_temporaries
from spectraseg.errors import SpectrasegWarning, first_line
from spectraseg.vectorize import DEFAULT_DECIMALS, finalize


@dataclass(frozen=True)
class SubmissionSummary:
    """What :func:`write_submission` wrote."""

    path: Path
    rows: int
    nonempty: int
    scenes_predicted: int
    repaired: int
    not_in_sample: tuple[str, ...]


def _open_write(path: Path, compress: bool) -> io.TextIOWrapper:
    if compress:
        return gzip.open(path, "wt", encoding="utf-8", newline="")
    return open(path, "w", encoding="utf-8", newline="")


def write_submission(
    predictions: str | os.PathLike[str] | dict[str, dict[int, MultiPolygon]],
    sample: str | os.PathLike[str],
    out: str | os.PathLike[str],
    decimals: int = DEFAULT_DECIMALS,
) -> SubmissionSummary:
    """Write a submission with the rows of ``sample`` in its order, atomically.

    Args:
        predictions: a prediction CSV, a directory with ``predictions.csv``, or the parsed
            ``{image_id: {class: geometry}}``.
        sample: ``sample_submission.csv`` (its ids and classes give the rows).
        out: the submission path (``.gz`` compresses).
        decimals: decimals of the written coordinates (geometries are valid after rounding).

    Predicted scenes missing from the sample are left out with a warning.
    """
    pred = predictions if isinstance(predictions, dict) else read_predictions(predictions)
    order = read_sample_order(sample)
    sample_ids = {image_id for image_id, _ in order}
    extra = tuple(sorted(set(pred) - sample_ids))
    if extra:
        warnings.warn(
            f"{len(extra)} predicted scene(s) are not in {sample} and are left out "
            f"(e.g. {extra[0]})",
            SpectrasegWarning,
            stacklevel=2,
        )
    out = Path(out)
    remove_temporaries(out.parent, out.name)  # a killed earlier write's
    nonempty = repaired = 0
    with atomic_output(out) as tmp, _open_write(tmp, out.name.endswith(".gz")) as f:
        w = csv.writer(f, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        w.writerow(WKT_HEADER)
        for image_id, cls in order:
            geom = pred.get(image_id, {}).get(cls)
            text = "MULTIPOLYGON EMPTY"
            if geom is not None and not geom.is_empty:
                fixed = finalize(geom, decimals)
                repaired += not geom.is_valid
                text = format_wkt(fixed, decimals)
                nonempty += not fixed.is_empty
            w.writerow([image_id, cls, text])
    return SubmissionSummary(
        out, len(order), nonempty, len(set(pred) & sample_ids), repaired, extra
    )


# --------------------------------------------------------------------------- checking


def _rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        yield from enumerate(csv.reader(f), start=1)


def _wkt_problem(text: str) -> str | None:
    """Why a WKT field is unacceptable, or None."""
    try:
        g = shapely.from_wkt(text)
    except (GEOSException, ValueError, TypeError) as exc:
        return f"malformed WKT ({first_line(exc)[:80]})"
    if g.is_empty:
        return None
    if g.geom_type not in ("Polygon", "MultiPolygon"):
        return f"WKT is a {g.geom_type}, expected a MULTIPOLYGON"
    if not g.is_valid:
        return f"invalid polygon ({shapely.is_valid_reason(g)})"
    return None


def check_submission(path: str | os.PathLike[str], sample: str | os.PathLike[str]) -> list[str]:
    """Every problem of a submission against the sample's rows; empty when it is good.

    Checks the header, that row ``n`` has the sample's ``(ImageId, ClassType)`` of row
    ``n`` (so ids, classes, order and count all match), no duplicates, classes in 1..10,
    and that each WKT parses to a valid (Multi)Polygon or ``MULTIPOLYGON EMPTY``. Each
    problem is one line naming the file line. A missing sample raises DataError.
    """
    path = Path(path)
    order = read_sample_order(sample)
    if not path.is_file():
        return [f"{path}: file does not exist"]
    problems: list[str] = []
    seen: dict[tuple[str, int], int] = {}
    n_data = 0
    try:
        for line, row in _rows(path):
            if line == 1:
                if [h.strip() for h in row] != list(WKT_HEADER):
                    problems.append(
                        f"{path}:1: header is {','.join(row)!r}, expected {','.join(WKT_HEADER)}"
                    )
                continue
            if not row:
                continue
            if len(row) != 3:
                problems.append(f"{path}:{line}: {len(row)} fields, expected 3")
                n_data += 1
                continue
            image_id, cls_text, text = row[0].strip(), row[1].strip(), row[2]
            expected = order[n_data] if n_data < len(order) else None
            n_data += 1
            try:
                cls = int(cls_text)
            except ValueError:
                problems.append(f"{path}:{line}: ClassType {cls_text!r} is not an integer")
                continue
            if not 1 <= cls <= NUM_CLASSES:
                problems.append(f"{path}:{line}: ClassType {cls} is outside 1..{NUM_CLASSES}")
            key = (image_id, cls)
            if key in seen:
                problems.append(
                    f"{path}:{line}: image {image_id} class {cls} repeats line {seen[key]}"
                )
            else:
                seen[key] = line
            if expected is None:
                problems.append(f"{path}:{line}: extra row {image_id},{cls} beyond the sample")
            elif key != expected:
                problems.append(
                    f"{path}:{line}: row is {image_id},{cls} but the sample has "
                    f"{expected[0]},{expected[1]} here"
                )
            why = _wkt_problem(text)
            if why:
                problems.append(f"{path}:{line}: image {image_id} class {cls}: {why}")
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
        problems.append(f"{path}: cannot be read as CSV ({exc})")
        return problems
    if n_data < len(order):
        missing = order[n_data:]
        problems.append(
            f"{path}: {len(missing)} row(s) missing at the end, from "
            f"{missing[0][0]},{missing[0][1]}"
        )
    return problems
