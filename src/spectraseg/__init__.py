"""spectraseg: multispectral satellite imagery to vector maps of ground features.

Pipeline stages, one module each: :mod:`io` (DSTL dataset reading), :mod:`geometry`
(grid <-> pixel transforms, rasterisation), :mod:`synth` (synthetic DSTL-format data),
:mod:`registration` (band alignment),
:mod:`fusion` (20-channel fusion and the cache), :mod:`normalization`, :mod:`sampling`,
:mod:`model`, :mod:`train`, :mod:`predict`, :mod:`vectorize`, :mod:`metrics`,
:mod:`submission`, :mod:`report` and :mod:`cli`.
"""

__version__ = "0.1.0"

CLASS_NAMES: dict[int, str] = {
    1: "Buildings",
    2: "Misc. manmade structures",
    3: "Road",
    4: "Track",
    5: "Trees",
    6: "Crops",
    7: "Waterway",
    8: "Standing water",
    9: "Vehicle large",
    10: "Vehicle small",
}
"""The 10 DSTL classes, 1-based as in the competition files."""

NUM_CLASSES = 10
