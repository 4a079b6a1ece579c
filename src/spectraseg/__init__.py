"""spectraseg: multispectral satellite imagery to vector maps of ground features.

The pipeline, one subpackage per stage, imports flowing one way (``docs/architecture.md``):
:mod:`.data` (the DSTL layout, geometry, synthetic data), :mod:`.align` (registration,
fusion, the cache), :mod:`.features` (normalisation, indices, windows, splits, patches),
:mod:`.models`, :mod:`.evaluation` (metric, probability levels, threshold tuning),
:mod:`.runs` (the run directory), :mod:`.training`, :mod:`.inference`, then
:mod:`.vectorize`, :mod:`.submission`, :mod:`.report`, :mod:`.demo` and :mod:`.cli`.
"""

__version__ = "0.2.0"

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

RARE_CLASSES: tuple[int, ...] = (2, 7, 8, 9, 10)
"""Classes oversampled in training patches by default (``train.rare_classes``): structures,
waterway, standing water and both vehicle classes, each under 0.7 % of dstl-lite's labelled
area (1-based)."""
