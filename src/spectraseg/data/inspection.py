"""Dataset summaries for ``spectraseg inspect``: products per scene and class area shares."""

from __future__ import annotations

import os
from typing import Any

from spectraseg import NUM_CLASSES
from spectraseg.data.dstl import open_dataset


def summarize(root: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON-ready summary of a dataset.

    Keys: ``root``; ``scenes`` (per id: ``image_id``, ``region`` and per product ``bands``,
    ``height``, ``width``, ``dtype``); ``labelled`` (count of labelled scenes present);
    ``class_share`` (class -> total label area / total grid area over those scenes, in [0, 1]).
    """
    ds = open_dataset(root)
    scenes = []
    for scene in ds.scenes():
        scenes.append(
            {
                "image_id": scene.image_id,
                "region": scene.region,
                "products": {
                    name: {
                        "bands": p.bands,
                        "height": p.height,
                        "width": p.width,
                        "dtype": str(p.dtype),
                    }
                    for name, p in scene.products.items()
                },
            }
        )
    labelled = ds.labelled_ids
    share: dict[str, float] = {}
    if labelled:
        total = sum(ds.grid_sizes[i][0] * -ds.grid_sizes[i][1] for i in labelled)
        for c in range(1, NUM_CLASSES + 1):
            area = sum(ds.scene_labels(i)[c].area for i in labelled)
            share[str(c)] = area / total
    return {
        "root": str(ds.root),
        "scenes": scenes,
        "labelled": len(labelled),
        "class_share": share,
    }
