"""Raster headers: the one place a raster file is opened for its size, dtype and
georeferencing (no pixels), for either dataset layout."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from spectraseg.errors import DataError, first_line


@dataclass(frozen=True)
class RasterHeader:
    """What a raster file's header says: band count, size, the one numeric dtype of its
    bands, and its georeferencing (``crs`` None for DSTL's plain TIFFs)."""

    count: int
    height: int
    width: int
    dtype: np.dtype
    crs: CRS | None
    transform: Affine
    nodata: float | None


def read_header(path: str | os.PathLike[str]) -> RasterHeader:
    """The header of ``path``; DataError naming the file when it cannot be read as a
    raster, mixes band dtypes or is not numeric."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                dtypes = set(src.dtypes)
                head = (src.count, src.height, src.width, src.crs, src.transform, src.nodata)
    except RasterioError as exc:
        raise DataError(f"{path} cannot be read as a raster ({first_line(exc)})") from None
    if len(dtypes) != 1:
        raise DataError(f"{path} mixes band dtypes {sorted(dtypes)}")
    dtype = np.dtype(dtypes.pop())
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise DataError(f"{path} has dtype {dtype}, expected a numeric image")
    count, height, width, crs, transform, nodata = head
    return RasterHeader(count, height, width, dtype, crs, transform, nodata)
