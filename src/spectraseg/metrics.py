"""Deprecated since 0.2: the 0.1 path of what is now :mod:`spectraseg.evaluation.metrics`."""

from spectraseg._moved import moved

__getattr__ = moved(
    __name__,
    ("spectraseg.evaluation.metrics",),
)
