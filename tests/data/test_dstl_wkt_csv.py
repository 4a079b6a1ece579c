"""The WKT CSV writer (``spectraseg.data.dstl.write_wkt_csv``)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import MultiPolygon, Polygon, box

from spectraseg.data.dstl import WKT_HEADER, format_wkt, read_wkt_rows, write_wkt_csv


def csv_module_bytes(rows: list[tuple[str, int, object]]) -> str:
    """What ``csv.writer`` writes for the same rows (the reference)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    w.writerow(WKT_HEADER)
    for image_id, cls, geom in rows:
        w.writerow([image_id, cls, format_wkt(geom)])
    return buf.getvalue()


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["6010_1_2", "id,with,commas", 'q"uote', "plain"]),
            st.integers(1, 10),
            st.lists(st.tuples(st.integers(0, 50), st.integers(0, 50)), max_size=4),
        ),
        max_size=6,
    )
)
def test_rows_are_written_as_the_csv_module_writes_them(tmp_path_factory, spec) -> None:
    rows = [
        (i, c, MultiPolygon([box(x, y, x + 1.5, y + 0.25) for x, y in boxes]))
        for i, c, boxes in spec
    ]
    path = tmp_path_factory.mktemp("wkt") / "out.csv"
    write_wkt_csv(path, rows)
    assert path.read_text() == csv_module_bytes(rows)


def test_empty_and_polygon_rows_read_back(tmp_path: Path) -> None:
    tri = Polygon([(0, 0), (1, 0), (0, 1)])
    path = tmp_path / "out.csv"
    write_wkt_csv(path, [("a", 1, MultiPolygon()), ("a", 2, tri)])
    assert path.read_text().splitlines() == [
        "ImageId,ClassType,MultipolygonWKT",
        "a,1,MULTIPOLYGON EMPTY",
        'a,2,"MULTIPOLYGON (((0 0, 1 0, 0 1, 0 0)))"',
    ]
    assert [r[:2] for r in read_wkt_rows(path)] == [("a", 1), ("a", 2)]
