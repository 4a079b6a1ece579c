"""Deprecated since 0.2: the 0.1 path of what is now :mod:`spectraseg.align.registration`."""

from spectraseg._moved import moved

__getattr__ = moved(
    __name__,
    ("spectraseg.align.registration", "spectraseg.align.estimators", "spectraseg.align.greys"),
)
