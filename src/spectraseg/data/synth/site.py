"""The frame a layout is drawn in: scene extent, margins, main orientation, random stream.

Every feature of :mod:`.landscape` and :mod:`.settlements` takes a :class:`Site` and draws
from its one random stream, so the order in which :func:`.layout.layout` calls them is part
of the output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry import LineString, Polygon

from spectraseg.data.synth.materials import Builder
from spectraseg.data.synth.region import Region

Road = tuple[LineString, float]
"""A road's centre line and its width, in metres."""

PAD = 40.0
"""Metres drawn beyond every side of the scene, so that no feature ends at its edge."""


@dataclass(frozen=True, eq=False)
class Site:
    """A scene of ``wm x hm`` metres (x right, y down) being laid out.

    ``scene`` is the box ``[0, wm] x [0, hm]`` and ``ext`` the same grown by ``PAD``;
    ``area`` is the scene's area in km^2; ``centre`` its (2,) centre in metres; ``half`` the
    half-diagonal plus ``PAD`` (long enough for any line across the scene); ``theta`` the
    scene's main direction (radians); ``gsd`` metres per RGB pixel; ``force``: every class
    must appear. ``builder`` collects the objects and draws their materials from ``rng``.
    """

    rng: np.random.Generator
    builder: Builder
    region: Region
    wm: float
    hm: float
    gsd: float
    force: bool
    scene: Polygon
    ext: Polygon
    area: float
    centre: np.ndarray
    half: float
    theta: float

    def somewhere(self, spread: float = 0.3) -> np.ndarray:
        """A random point (2,) within ``spread`` times the scene's size of its centre."""
        return self.centre + self.rng.uniform(-spread, spread, 2) * (self.wm, self.hm)


def make_site(
    rng: np.random.Generator, wm: float, hm: float, gsd: float, region: Region, force: bool
) -> Site:
    """The frame of a ``wm x hm`` metre scene; draws its orientation from ``rng``."""
    return Site(
        rng=rng,
        builder=Builder(rng, region),
        region=region,
        wm=wm,
        hm=hm,
        gsd=gsd,
        force=force,
        scene=shapely.box(0, 0, wm, hm),
        ext=shapely.box(-PAD, -PAD, wm + PAD, hm + PAD),
        area=wm * hm / 1e6,
        centre=np.array([wm / 2, hm / 2]),
        half=math.hypot(wm, hm) / 2 + PAD,
        theta=float(region.orientation + rng.normal(0, 0.08)),
    )
