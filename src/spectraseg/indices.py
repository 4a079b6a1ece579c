"""Deprecated since 0.2: the 0.1 path of what is now :mod:`spectraseg.features.indices`."""

from spectraseg._moved import moved

__getattr__ = moved(
    __name__,
    ("spectraseg.features.indices",),
)
