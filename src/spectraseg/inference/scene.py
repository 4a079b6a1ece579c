"""One scene: prediction options, probabilities as levels, polygons.

:class:`PredictOptions` says how scenes are predicted and vectorised; it is filled from a
run's ``[predict]`` config by :func:`resolve_options`. :func:`scene_levels` runs the tiled
model (:func:`spectraseg.inference.tiling.predict_probs`) and keeps uint8 levels;
:func:`levels_to_polygons` thresholds them per class and vectorises
(:func:`spectraseg.vectorize.masks_to_polygons`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import torch
from affine import Affine
from shapely.geometry import MultiPolygon

from spectraseg.config import Config
from spectraseg.data.classes import ClassSchema
from spectraseg.data.geometry import pixel_transform
from spectraseg.evaluation.levels import quantize, threshold_masks
from spectraseg.inference.tiling import predict_probs
from spectraseg.runtime import resolve_device
from spectraseg.vectorize import DEFAULT_DECIMALS, DEFAULT_TOLERANCE, masks_to_map


@dataclass(frozen=True)
class PredictOptions:
    """How scenes are predicted and vectorised (picklable: sent to Dask workers).

    ``None`` for ``tile``, ``margin``, ``batch`` and ``tta`` means the run's
    ``[predict]`` config (:func:`resolve_options`).
    """

    checkpoint: str = "best"
    tile: int | None = None
    margin: int | None = None
    batch: int | None = None
    tta: bool | None = None
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:K``; resolved where the
    scene is predicted (on a Dask worker, that worker's devices)."""
    amp: bool | None = None
    """float16 autocast on CUDA (None: the run's ``train.amp``); ignored on CPU."""
    tolerance: float = DEFAULT_TOLERANCE
    decimals: int = DEFAULT_DECIMALS
    threads: int | None = None
    """torch threads in each process that predicts (None: torch's default)."""
    sources: bool = False
    """With a blended pixel model, also write each model's own levels (``unet``, ``pixel``
    in :func:`spectraseg.inference.outputs.scene_paths`), e.g. to compare the two."""
    probs: bool = True
    """Write a georeferenced scene's ``probs.tif`` (``--no-probs``: classes and polygons
    only)."""
    geojson: bool = False
    """Also write a georeferenced scene's polygons as ``polygons.geojson`` in EPSG:4326
    (RFC 7946)."""
    class_bits: bool = False
    """A georeferenced scene's ``classes.tif`` as a bit per class (uint16, bit ``c - 1`` for
    class ``c``, for classes that overlap) instead of one class per pixel (uint8)."""
    strip_rows: int | None = None
    """Rows per strip of a georeferenced scene (None: what
    :data:`spectraseg.inference.streaming.STRIP_BYTES` allows)."""


def resolve_options(options: PredictOptions, config: Config, here: bool = True) -> PredictOptions:
    """Fill the ``None`` fields of ``options`` from ``config.predict`` (``amp`` from
    ``config.train``) and, with ``here``, resolve ``device`` on this machine (ConfigError
    for ``cuda`` without CUDA)."""
    p = config.predict
    return replace(
        options,
        tile=p.tile if options.tile is None else options.tile,
        margin=p.margin if options.margin is None else options.margin,
        batch=p.batch if options.batch is None else options.batch,
        tta=p.tta if options.tta is None else options.tta,
        amp=config.train.amp if options.amp is None else options.amp,
        device=str(resolve_device(options.device, what="--device")) if here else options.device,
    )


def scene_levels(model: torch.nn.Module, image: np.ndarray, options: PredictOptions) -> np.ndarray:
    """Probabilities of one normalised scene as uint8 levels ``(10, H, W)``.

    :func:`predict_probs` with the (resolved) ``options``, quantised at once
    (:func:`quantize`: a quarter of the float32 memory).
    """
    assert options.tile is not None and options.margin is not None and options.batch is not None
    probs = predict_probs(
        model,
        image,
        tile=options.tile,
        margin=options.margin,
        batch=options.batch,
        tta=bool(options.tta),
        device=options.device,
        amp=bool(options.amp),
    )
    return quantize(probs)


def levels_to_polygons(
    levels: np.ndarray,
    xmax: float,
    ymin: float,
    thresholds: Mapping[int, float],
    min_area: Mapping[int, float] | float = 0.0,
    options: PredictOptions = PredictOptions(),
) -> dict[int, MultiPolygon]:
    """A DSTL scene's probability levels -> per-class thresholds -> ``{class: MultiPolygon}``
    in grid units (the extent ``xmax``, ``ymin``), by :func:`spectraseg.vectorize.masks_to_map`
    with ``options.tolerance`` and ``options.decimals``; ``min_area`` in pixels (per class or
    one value)."""
    masks = threshold_masks(levels, thresholds)
    transform = pixel_transform(masks.shape[2], masks.shape[1], xmax, ymin)
    return masks_to_map(masks, transform, options.tolerance, min_area, options.decimals)


def class_vector_settings(
    transform: Affine,
    min_area: Mapping[int, float] | float,
    options: PredictOptions,
    schema: ClassSchema,
) -> tuple[dict[int, float], dict[int, float]]:
    """Per class the simplification tolerance (pixels) and minimum polygon area (square
    pixels): ``options.tolerance`` and ``min_area`` (per class or one value), where the
    schema's classes set their own ``tolerance`` (pixels) or ``min_area`` (squared map units,
    the larger area wins)."""
    pixel = abs(transform.a * transform.e)
    floor = (
        min_area
        if isinstance(min_area, Mapping)
        else dict.fromkeys(range(1, len(schema) + 1), min_area)
    )
    areas = {c.index: max(floor.get(c.index, 0.0), c.min_area / pixel) for c in schema.classes}
    tolerance = {
        c.index: options.tolerance if c.tolerance is None else c.tolerance for c in schema.classes
    }
    return tolerance, areas
