"""Class schemas: the classes a run predicts, their output channels, label values and colours.

The DSTL ten classes are one schema (:data:`DSTL_SCHEMA`); a dataset description declares
its own (``[classes]``), which the cache's manifest keeps (``classes``) and every run trained
on that cache inherits: the model has one output channel per class, in schema order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from spectraseg import CLASS_NAMES
from spectraseg.errors import DataError


@dataclass(frozen=True)
class ClassSpec:
    """One class of a schema. ``index`` is its 1-based output channel (table order)."""

    name: str
    index: int
    value: int | str
    """The label attribute's value for this class (every feature has value 1 when the
    description names no ``label_attribute``)."""
    color: str = "#808080"
    min_area: float = 0.0
    """Smallest polygon kept in outputs, in squared CRS units (0: keep all)."""
    tolerance: float | None = None
    """Simplification tolerance in pixels (None: the run's default)."""


@dataclass(frozen=True)
class ClassSchema:
    """The classes a run predicts, in output-channel order."""

    classes: tuple[ClassSpec, ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    def __len__(self) -> int:
        return len(self.classes)

    def index_of(self, value: object) -> int | None:
        """The channel (1-based) of an attribute value (compared as text), or None."""
        text = value_text(value)
        for c in self.classes:
            if value_text(c.value) == text:
                return c.index
        return None

    @property
    def is_dstl(self) -> bool:
        """Whether this is the DSTL competition's ten-class schema."""
        return self == DSTL_SCHEMA

    def to_json(self) -> list[dict[str, Any]]:
        """The schema as a JSON list, one object per class in channel order."""
        return [{k: v for k, v in asdict(c).items() if k != "index"} for c in self.classes]

    @classmethod
    def from_json(cls, doc: object, source: str) -> ClassSchema:
        """Inverse of :meth:`to_json`; DataError naming ``source`` when malformed."""
        if not isinstance(doc, list) or not doc:
            raise DataError(f"{source}: 'classes' must be a non-empty list")
        out = []
        for n, item in enumerate(doc, start=1):
            if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
                raise DataError(f"{source}: class {n} has no name")
            try:
                out.append(
                    ClassSpec(
                        item["name"], n, item.get("value", n), str(item.get("color", "#808080")),
                        float(item.get("min_area", 0.0)),
                        None if item.get("tolerance") is None else float(item["tolerance"]),
                    )
                )  # fmt: skip
            except (TypeError, ValueError):
                raise DataError(
                    f"{source}: class {n} has a non-numeric area or tolerance"
                ) from None
        return cls(tuple(out))


def value_text(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def schema_of(classes: Sequence[tuple[str, int | str]]) -> ClassSchema:
    """A schema from ``(name, value)`` pairs, in channel order (default colours)."""
    return ClassSchema(
        tuple(ClassSpec(name, i, value) for i, (name, value) in enumerate(classes, start=1))
    )


DSTL_COLORS = (
    "#e6194b", "#f58230", "#ffe119", "#aa6e28", "#3cb44b",
    "#d2f53c", "#0082c8", "#46f0f0", "#f032e6", "#ffffff",
)  # fmt: skip
"""A colour per DSTL class (report panels, outputs' colour tables): buildings red,
structures orange, road yellow, track brown, trees green, crops lime, waterway blue,
standing water cyan, large vehicles magenta, small vehicles white."""


def rgb(color: str) -> tuple[int, int, int]:
    """``'#rrggbb'`` -> ``(r, g, b)`` in 0..255."""
    return (int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16))


DSTL_SCHEMA = ClassSchema(
    tuple(
        ClassSpec(CLASS_NAMES[c], c, c, DSTL_COLORS[c - 1]) for c in range(1, len(CLASS_NAMES) + 1)
    )
)
"""The DSTL competition's ten classes; label value = class number = channel."""
