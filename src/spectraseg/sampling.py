"""Deprecated since 0.2: the 0.1 path of what is now :mod:`spectraseg.features` (patches, windows,
split) and :mod:`spectraseg.align.masks`."""

from spectraseg._moved import moved

__getattr__ = moved(
    __name__,
    (
        "spectraseg.features.patches",
        "spectraseg.features.windows",
        "spectraseg.features.split",
        "spectraseg.align.masks",
        "spectraseg.align.cache",
    ),
)
