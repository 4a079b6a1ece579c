"""Deprecated since 0.2: the 0.1 path of what is now the DSTL layout, :mod:`spectraseg.data.dstl`
(atomic files: :mod:`spectraseg.data.files`)."""

from spectraseg._moved import moved

__getattr__ = moved(
    __name__,
    (
        "spectraseg.data.dstl",
        "spectraseg.data.files",
    ),
)
