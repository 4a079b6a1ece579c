"""Deprecated since 0.2: the 0.1 path of what is now :mod:`spectraseg.models.pixel` (fitting a
run's: :mod:`spectraseg.training.pixel`)."""

from spectraseg._moved import moved

__getattr__ = moved(
    __name__,
    (
        "spectraseg.models.pixel",
        "spectraseg.training.pixel",
        "spectraseg.features.patches",
    ),
    {"PIXEL_MODEL_FILE": "pixelmodel.pkl"},
)
