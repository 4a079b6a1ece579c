"""The prediction directory's per-scene files (``spectraseg.inference.outputs``)."""

from __future__ import annotations

import json

import shapely
from shapely.geometry import MultiPolygon, Polygon

from spectraseg.inference.outputs import scene_geojson


def test_scene_geojson_is_valid_json_with_the_exact_geometries() -> None:
    ring = [(0.1234567891, -0.000987654321), (0.5, -0.1), (0.3, -0.7)]
    hole = [(0.3, -0.2), (0.32, -0.2), (0.31, -0.25)]
    polygons = {
        1: MultiPolygon([Polygon(ring, [hole]), Polygon([(1, -1), (2, -1), (2, -2)])]),
        2: MultiPolygon(),
    }
    pieces = scene_geojson("6010_0_0", polygons, 0.009, -0.0091, 545, 538, {1: 0.35, 2: 0.95})
    text = "".join(pieces)
    assert text.endswith("]}\n")
    doc = json.loads(text)
    assert doc["type"] == "FeatureCollection" and doc["image_id"] == "6010_0_0"
    assert (doc["xmax"], doc["ymin"], doc["width"], doc["height"]) == (0.009, -0.0091, 545, 538)
    first, second = doc["features"]
    assert first["properties"] == {
        "class": 1, "name": "Buildings", "area": polygons[1].area, "threshold": 0.35
    }  # fmt: skip
    back = shapely.from_geojson(json.dumps(first["geometry"]))
    assert shapely.equals_exact(back, polygons[1], tolerance=0.0)
    assert second["geometry"] == {"type": "MultiPolygon", "coordinates": []}
    assert second["properties"]["name"] == "Misc. manmade structures"
