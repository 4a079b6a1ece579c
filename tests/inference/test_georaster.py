"""Class rasters of probability levels (``spectraseg.inference.georaster.class_raster``)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from spectraseg.evaluation.levels import level_of
from spectraseg.inference.georaster import CLASS_NODATA, class_raster


@settings(max_examples=200, deadline=None)
@given(
    levels=st.integers(1, 10).flatmap(
        lambda k: arrays(np.uint8, (k, 5, 6), elements=st.sampled_from([0, 25, 64, 128, 200, 255]))
    ),
    thresholds=st.dictionaries(st.integers(1, 10), st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0])),
    nodata=st.none() | arrays(bool, (5, 6)),
)
def test_class_raster_is_the_best_class_above_its_threshold(levels, thresholds, nodata) -> None:
    """Per pixel: the class with the highest level among those at or above their threshold
    (missing: 0.5), the lower class on ties, 0 where none is, 255 where nodata."""
    got = class_raster(levels, thresholds, nodata)
    assert got.dtype == np.uint8 and got.shape == levels.shape[1:]
    for (y, x), value in np.ndenumerate(got):
        if nodata is not None and nodata[y, x]:
            assert value == CLASS_NODATA
            continue
        above = [
            (int(levels[k, y, x]), -k)
            for k in range(len(levels))
            if levels[k, y, x] >= level_of(thresholds.get(k + 1, 0.5))
        ]
        assert value == (1 - max(above)[1] if above else 0)
