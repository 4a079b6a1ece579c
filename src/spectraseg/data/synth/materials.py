"""Objects of a layout and their materials.

An :class:`Entity` is one polygon in metres with its own pair of 16-band reflectance spectra
and texture parameters; a :class:`Builder` collects entities per drawing layer, drawing each
one's material from the layout's random stream when it is added. ``CLASS_Z`` is the z-order
shared by rendering (:mod:`.render`) and labels (:mod:`.labels`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypedDict, Unpack

import numpy as np
from shapely.geometry.base import BaseGeometry

from spectraseg.data.synth.region import Region
from spectraseg.data.synth.spectra import (
    CAR_PAINT_P,
    CAR_PAINTS,
    ENDMEMBERS,
    ROOFS,
    TRUCK_PAINTS,
)

CLASS_Z = (6, 5, 8, 7, 4, 3, 1, 2, 9, 10)
"""Classes from bottom to top: a pixel shows the topmost class covering it."""

VEHICLES = (9, 10)
"""Classes that hide nothing underneath in the labels (a car leaves its road labelled)."""

LAYERS: tuple[str | int, ...] = ("ground", "garden", "yard", *CLASS_Z)
"""Drawing layers from bottom to top: unlabelled ground, gardens and yards, then classes."""

_E = ENDMEMBERS  # short: the material tables below name it on every line


@dataclass
class Entity:
    """One rendered object: a polygon in metres and its spectral/texture parameters."""

    geom: BaseGeometry
    sa: np.ndarray  # (16,) float32 reflectance of the texture's first component
    sb: np.ndarray  # (16,) float32 ... and its second
    f0: float  # mixing fraction of sa
    fr: float = 0.0  # amplitude of the row/pitch pattern
    fn1: float = 0.0  # amplitude of fine texture (about 1 m)
    fn2: float = 0.0  # amplitude of coarse texture (about 6 m)
    theta: float = 0.0  # direction across the rows (radians)
    period: float = 0.0  # row period in metres (0: no rows)
    centre: tuple[float, float] | None = None  # a pattern crest sits here (roof ridge)
    tall: bool = False  # casts a shadow


class MaterialOptions(TypedDict, total=False):
    """What some material kinds take (crop: theta; roof: all of them)."""

    theta: float  # direction across the rows or ridge (radians)
    depth: float  # roof depth in metres: the ridge period is twice it
    centre: tuple[float, float] | None  # the roof ridge passes here
    pitched: bool  # a pitched roof (default) or a flat one
    material: str | None  # roof material; None draws one from the region's palette


class Builder:
    """Collects objects per layer and draws their materials from ``rng``."""

    def __init__(self, rng: np.random.Generator, region: Region) -> None:
        self.rng = rng
        self.region = region
        self.layers: dict[str | int, list[Entity]] = {k: [] for k in LAYERS}

    def spectrum(self, base: np.ndarray, bright: float = 0.08) -> np.ndarray:
        """A per-object variant (16,) float32 of a spectrum: overall brightness and per-band
        jitter."""
        r = self.rng
        s = base * np.float32(math.exp(r.normal(0, bright))) * (1 + r.normal(0, 0.02, 16))
        return np.clip(s, 0.0005, 1.0).astype(np.float32)

    def mix(self, *parts: tuple[str, float]) -> np.ndarray:
        """The (16,) float32 weighted sum of named endmembers ``(name, weight)``."""
        return sum((_E[n] * np.float32(w) for n, w in parts), np.zeros(16, np.float32))

    def add(
        self, layer: str | int, geom: BaseGeometry, kind: str, **kw: Unpack[MaterialOptions]
    ) -> None:
        """Add ``geom`` (metres) to ``layer`` with a new material of ``kind``; empty or None
        geometries are skipped without drawing."""
        if geom is None or geom.is_empty:
            return
        self.layers[layer].append(self.material(geom, kind, **kw))

    def material(self, geom: BaseGeometry, kind: str, **kw: Unpack[MaterialOptions]) -> Entity:
        """An entity of ``kind`` (grass, garden, yard, crop, tree, water, pond, track, road,
        roof, structure, car, truck) over ``geom``; ``kw`` as the kind needs (crop: theta;
        roof: theta, depth, centre, pitched, material)."""
        make = _MATERIALS.get(kind)
        if make is None:
            raise ValueError(f"unknown material kind {kind!r}")
        return make(self, geom, kw)

    def entities(self) -> list[tuple[int, Entity]]:
        """All objects as ``[(class, entity)]`` in z-order, class 0 for unlabelled ground."""
        out: list[tuple[int, Entity]] = []
        for layer in LAYERS:
            cls = layer if isinstance(layer, int) else 0
            out.extend((cls, e) for e in self.layers[layer])
        return out


# One function per material kind; each draws from ``b.rng`` in a fixed order.


def _grass(b: Builder, geom: BaseGeometry, kw: MaterialOptions) -> Entity:
    r, sp = b.rng, b.spectrum
    dry = r.uniform(0.1, 0.45)
    sa = sp(b.mix(("green_veg", 1 - dry), ("dry_veg", dry)))
    return Entity(geom, sa, sp(_E["soil"]), r.uniform(0.55, 0.8), fn1=0.08, fn2=0.15)


def _garden(b: Builder, geom: BaseGeometry, kw: MaterialOptions) -> Entity:
    r, sp = b.rng, b.spectrum
    sa = sp(b.mix(("green_veg", 0.8), ("dry_veg", 0.2)))
    sb = sp(b.mix(("dry_veg", 0.5), ("soil", 0.4), ("concrete", 0.1)))
    return Entity(geom, sa, sb, r.uniform(0.55, 0.8), fn1=0.1, fn2=0.15)


def _yard(b: Builder, geom: BaseGeometry, kw: MaterialOptions) -> Entity:
    r, sp = b.rng, b.spectrum
    sa = sp(b.mix(("concrete", 0.6), ("dirt", 0.4)))
    return Entity(geom, sa, sp(_E["soil"]), r.uniform(0.5, 0.8), fn1=0.08, fn2=0.25)


def _crop(b: Builder, geom: BaseGeometry, kw: MaterialOptions) -> Entity:
    r, sp = b.rng, b.spectrum
    state = r.choice(3, p=[0.5, 0.25, 0.25])
    theta = float(kw["theta"])
    period = float(r.uniform(1.5, 4.0))
    if state == 0:  # green crop in rows
        sa = sp(b.mix(("green_veg", r.uniform(0.8, 1.0)), ("dry_veg", 0.1)))
        f0, fr = r.uniform(0.55, 0.85), r.uniform(0.12, 0.3)
    elif state == 1:  # ripening cereal
        sa = sp(b.mix(("dry_veg", 0.8), ("green_veg", 0.2)))
        f0, fr = r.uniform(0.6, 0.85), r.uniform(0.1, 0.2)
    else:  # ploughed: moist furrows against dry ridges
        sa = sp(_E["soil"] * np.float32(0.6))
        f0, fr = 0.5, r.uniform(0.3, 0.5)
    return Entity(
        geom, sa, sp(_E["soil"]), f0, fr=fr, fn1=0.05, fn2=0.1, theta=theta, period=period
    )


def _tree(b: Builder, geom: BaseGeometry, kw: MaterialOptions) -> Entity:
    r, sp = b.rng, b.spectrum
    base = "conifer" if r.random() < 0.25 else "green_veg"
    sa = sp(_E[base] * np.float32(1.05))
    sb = sp(b.mix((base, 0.3), ("soil", 0.05)))
    return Entity(geom, sa, sb, 0.65, fn1=0.35, fn2=0.1, tall=True)


def _water(b: Builder, geom: BaseGeometry, kw: MaterialOptions) -> Entity:
    r, sp = b.rng, b.spectrum
    sb = sp(_E["turbid"], 0.15)
    return Entity(geom, sp(_E["water"], 0.1), sb, r.uniform(0.4, 0.9), fn2=0.1)


def _pond(b: Builder, geom: BaseGeometry, kw: MaterialOptions) -> Entity:
    r, sp = b.rng, b.spectrum
    sa = sp(_E["water"] * np.float32(0.8), 0.1)
    return Entity(geom, sa, sp(_E["algae"], 0.15), r.uniform(0.5, 0.95), fn2=0.12)


def _track(b: Builder, geom: BaseGeometry, kw: MaterialOptions) -> Entity:
    r, sp = b.rng, b.spectrum
    sb = sp(b.mix(("green_veg", 0.6), ("dry_veg", 0.4)))
    return Entity(geom, sp(_E["dirt"]), sb, r.uniform(0.75, 0.9), fn1=0.15, fn2=0.1)


def _road(b: Builder, geom: BaseGeometry, kw: MaterialOptions) -> Entity:
    r, sp = b.rng, b.spectrum
    sa = sp(_E["asphalt"] * np.float32(r.uniform(0.85, 1.25)))
    return Entity(geom, sa, sp(_E["concrete"]), r.uniform(0.85, 0.97), fn1=0.05)


def _roof(b: Builder, geom: BaseGeometry, kw: MaterialOptions) -> Entity:
    r, sp = b.rng, b.spectrum
    mat = str(kw.get("material") or ROOFS[r.choice(4, p=b.region.roof_palette)])
    sa = sp(_E[mat])
    pitched = bool(kw.get("pitched", True)) and mat != "concrete"
    return Entity(
        geom,
        sa,
        sa * np.float32(r.uniform(0.6, 0.8)),
        0.5,
        fr=1.5 if pitched else 0.0,
        fn1=0.05,
        theta=float(kw.get("theta", 0.0)),
        period=2 * float(kw.get("depth", 0.0)) if pitched else 0.0,
        centre=kw.get("centre"),
        tall=True,
    )


def _structure(b: Builder, geom: BaseGeometry, kw: MaterialOptions) -> Entity:
    r, sp = b.rng, b.spectrum
    mat = ("concrete", "metal", "slate", "white_paint")[r.choice(4, p=[0.4, 0.3, 0.2, 0.1])]
    sa = sp(_E[mat])
    return Entity(geom, sa, sa * np.float32(0.7), 0.7, fn1=0.1, tall=True)


def _car(b: Builder, geom: BaseGeometry, kw: MaterialOptions) -> Entity:
    paint = CAR_PAINTS[b.rng.choice(5, p=CAR_PAINT_P)]
    sa = b.spectrum(_E[paint], 0.1)
    return Entity(geom, sa, sa * np.float32(0.5), 0.75, fn1=0.2, tall=False)


def _truck(b: Builder, geom: BaseGeometry, kw: MaterialOptions) -> Entity:
    paint = TRUCK_PAINTS[b.rng.choice(5)]
    sa = b.spectrum(_E[paint], 0.1)
    return Entity(geom, sa, sa * np.float32(0.5), 0.75, fn1=0.2, tall=True)


_MATERIALS: dict[str, Callable[[Builder, BaseGeometry, MaterialOptions], Entity]] = {
    "grass": _grass,
    "garden": _garden,
    "yard": _yard,
    "crop": _crop,
    "tree": _tree,
    "water": _water,
    "pond": _pond,
    "track": _track,
    "road": _road,
    "roof": _roof,
    "structure": _structure,
    "car": _car,
    "truck": _truck,
}
