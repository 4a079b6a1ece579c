"""Raster outputs of a georeferenced scene, written strip by strip and finished as
Cloud-Optimized GeoTIFFs.

Each strip of rows is written as its own small tiled GeoTIFF, a cell of columns at a time
(:func:`strip_writer`, renamed into place when complete, so a killed prediction leaves only
whole strips and resumes after the last one). When every strip is there, a VRT mosaics them
(:func:`strips_vrt`) and GDAL's COG driver writes the COG from it (:func:`write_cog`):
overviews, internal tiling and the header laid out as the COG specification asks (the tests
validate every output with rio-cogeo's ``cog_validate``). Strips written by different Dask
workers finish the same way.

``classes.tif`` holds one uint8 value per pixel: ``c`` for the class of highest
probability among those at or above their thresholds, 0 for none, :data:`CLASS_NODATA`
where the input has no data. Its colour table comes from the class schema's colours and its
category names go into the GDAL sidecar ``classes.tif.aux.xml`` (read by GDAL and QGIS);
the band tags also list them (``CLASS_1=buildings`` ...). ``probs.tif`` holds one uint8 band
per class, ``round(p * 255)``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.io import DatasetWriter

from spectraseg.data.classes import ClassSchema, rgb
from spectraseg.data.files import atomic_output, write_text_atomic
from spectraseg.evaluation.levels import threshold_masks

CLASS_NODATA = 255
"""``classes.tif`` value where the input has no data (class values are 1..K, K < 255)."""

CLASS_BITS_NODATA = 1 << 15
"""A bit-per-class ``classes.tif``'s value where the input has no data: bit 15 alone, so
that testing a class's bit reads "absent" there even where nodata is not honoured."""

MAX_BIT_CLASSES = 15
"""Classes a bit-per-class ``classes.tif`` holds (bits 0-14 of a uint16; bit 15 is
nodata)."""

BLOCK = 256
"""Internal tile side of strip files and COGs (pixels)."""

GDAL_CACHE_MB = 128
"""GDAL's raster block cache while writing (its default, 5 % of RAM, would let a 32k scene's
blocks pile up in memory)."""


def class_raster(
    levels: np.ndarray, thresholds: Mapping[int, float], nodata: np.ndarray | None
) -> np.ndarray:
    """uint8 ``(h, W)`` class values of ``(K, h, W)`` uint8 probability levels: the most
    probable class among those at or above their thresholds (ties: the lower class), 0 where
    none is, :data:`CLASS_NODATA` where ``nodata``.

    One class at a time, keeping the best level so far: memory is three ``(h, W)`` planes,
    not the ``K`` masks and scores (441 MB for a 448-row strip 32768 px wide)."""
    out = np.zeros(levels.shape[1:], dtype=np.uint8)
    best = np.full(levels.shape[1:], -1, dtype=np.int16)
    for k in range(levels.shape[0]):
        above = threshold_masks(levels[k : k + 1], thresholds.get(k + 1, 0.5))[0]
        better = np.greater(levels[k], best, where=above, out=np.zeros_like(above))
        out[better] = k + 1
        best[better] = levels[k][better]
    if nodata is not None:
        out[nodata] = CLASS_NODATA
    return out


def class_bits(
    levels: np.ndarray, thresholds: Mapping[int, float], nodata: np.ndarray | None
) -> np.ndarray:
    """uint16 ``(h, W)``: bit ``c - 1`` set where class ``c``'s level is at or above its
    threshold, for classes that overlap (DSTL's vehicles lie on roads, trees in crops),
    where :func:`class_raster` keeps one; :data:`CLASS_BITS_NODATA` where ``nodata``.

    ``levels``: ``(K, h, W)`` uint8 probability levels, ``K`` <= :data:`MAX_BIT_CLASSES`."""
    if levels.shape[0] > MAX_BIT_CLASSES:
        raise ValueError(
            f"a bit per class holds at most {MAX_BIT_CLASSES} classes, got {levels.shape[0]}"
        )
    out = np.zeros(levels.shape[1:], dtype=np.uint16)
    for k in range(levels.shape[0]):
        above = threshold_masks(levels[k : k + 1], thresholds.get(k + 1, 0.5))[0]
        out[above] |= np.uint16(1 << k)
    if nodata is not None:
        out[nodata] = CLASS_BITS_NODATA
    return out


@contextmanager
def strip_writer(
    path: Path, bands: int, h: int, w: int, transform: Affine, crs_wkt: str, top: int,
    dtype: str = "uint8",
) -> Iterator[DatasetWriter]:  # fmt: skip
    """An open ``bands`` x ``h`` x ``W`` strip file of ``dtype``, a tiled, ZSTD-compressed GeoTIFF
    whose transform places it at scene row ``top``, to write by windows (a cell at a time);
    renamed onto ``path`` only when the block ends without an error (a killed write leaves
    no strip).

    ZSTD because strips are temporary and read back only by GDAL: 0.3 s against 1.2 s for
    DEFLATE on a 10 x 1344 x 4096 strip of random levels, though a small share of a strip's
    time either way (the 4k and 8k benchmark times did not move). The COGs users open stay
    DEFLATE."""
    profile = {
        "driver": "GTiff", "dtype": dtype, "count": bands, "height": h, "width": w,
        "crs": crs_wkt, "transform": transform @ Affine.translation(0, top),
        "tiled": True, "blockxsize": BLOCK, "blockysize": BLOCK, "compress": "zstd",
        "interleave": "band",
    }  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp, rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
        with rasterio.open(tmp, "w", **profile) as dst:
            yield dst


def strip_bands(path: Path) -> Iterator[np.ndarray]:
    """A strip file's bands in order, one ``(h, W)`` uint8 at a time (strips are written
    band-interleaved, so each read decodes only its band: a 32768 px strip's ten levels
    are 147 MB at once, 15 MB a band)."""
    with rasterio.open(path) as src:
        for b in range(1, src.count + 1):
            yield src.read(b)


def strips_vrt(
    path: Path, strips: Sequence[tuple[Path, int, int]], width: int, height: int,
    bands: int, transform: Affine, crs_wkt: str, nodata: int | None = None,
    colormap: Mapping[int, tuple[int, int, int, int]] | None = None,
    tags: Mapping[str, str] | None = None, dtype: str = "Byte",
) -> None:  # fmt: skip
    """A VRT mosaic of strip files ``(file, top, rows)`` stacked into one ``width`` x
    ``height`` raster (written atomically; sources relative to the VRT), with the
    ``nodata`` value, band 1's colour table and the dataset's ``tags`` that a COG written
    from it (:func:`write_cog`) carries over."""
    gt = ", ".join(repr(float(v)) for v in transform.to_gdal())
    lines = [
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
        f"  <SRS>{escape(crs_wkt)}</SRS>",
        f"  <GeoTransform>{gt}</GeoTransform>",
    ]
    if tags:
        items = "".join(f'<MDI key="{escape(k)}">{escape(v)}</MDI>' for k, v in tags.items())
        lines.append(f"  <Metadata>{items}</Metadata>")
    for b in range(1, bands + 1):
        lines.append(f'  <VRTRasterBand dataType="{dtype}" band="{b}">')
        if nodata is not None:
            lines.append(f"    <NoDataValue>{nodata}</NoDataValue>")
        if colormap and b == 1:
            entries = "".join(
                f'<Entry c1="{r}" c2="{g}" c3="{bl}" c4="{a}"/>'
                for r, g, bl, a in (colormap.get(v, (0, 0, 0, 0)) for v in range(256))
            )
            lines.append("    <ColorInterp>Palette</ColorInterp>")
            lines.append(f"    <ColorTable>{entries}</ColorTable>")
        for file, top, rows in strips:
            rel = os.path.relpath(file, path.parent)
            lines += [
                "    <SimpleSource>",
                f'      <SourceFilename relativeToVRT="1">{escape(rel)}</SourceFilename>',
                f"      <SourceBand>{b}</SourceBand>",
                f'      <SrcRect xOff="0" yOff="0" xSize="{width}" ySize="{rows}"/>',
                f'      <DstRect xOff="0" yOff="{top}" xSize="{width}" ySize="{rows}"/>',
                "    </SimpleSource>",
            ]
        lines.append("  </VRTRasterBand>")
    lines.append("</VRTDataset>")
    write_text_atomic(path, "\n".join(lines) + "\n")


def write_cog(src: Path, dst: Path, overviews: bool = True, threads: int | None = None) -> None:
    """``src`` (any raster GDAL reads, e.g. a strips VRT) as a DEFLATE Cloud-Optimized
    GeoTIFF at ``dst``, atomically, by GDAL's COG driver, with ``src``'s colour table, tags
    and nodata value; nearest-neighbour overviews (class values and levels stay values)
    unless ``overviews`` is False; ``threads`` compress (None: every core).

    GDAL's driver, not rio-cogeo's ``cog_translate`` (which writes a temporary GeoTIFF and
    copies it): 24 s against 41 s for a 4032 x 4096 10-band strips VRT of random levels
    (the tests validate the result with rio-cogeo). Overviews are most of the cost (11-12 s
    of that; 1 s without), so ``probs.tif``, analysis data rather than a picture, has none.
    """
    options = {
        "COMPRESS": "DEFLATE", "BLOCKSIZE": str(BLOCK), "BIGTIFF": "IF_SAFER",
        "OVERVIEW_RESAMPLING": "NEAREST", "OVERVIEWS": "AUTO" if overviews else "NONE",
        "NUM_THREADS": str(threads) if threads else "ALL_CPUS",
    }  # fmt: skip
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(dst) as tmp, rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
        rasterio.shutil.copy(src, tmp, driver="COG", **options)


def class_colormap(schema: ClassSchema) -> dict[int, tuple[int, int, int, int]]:
    """``classes.tif``'s colour table: 0 black, each class its schema colour,
    :data:`CLASS_NODATA` black (and the file's nodata value). A TIFF palette holds no alpha,
    so GIS tools show 0 as black unless styled."""
    table = {0: (0, 0, 0, 0), CLASS_NODATA: (0, 0, 0, 0)}
    for c in schema.classes:
        table[c.index] = (*rgb(c.color), 255)
    return table


def class_tags(schema: ClassSchema) -> dict[str, str]:
    """``CLASS_0=none``, ``CLASS_c=name`` ..., ``CLASS_255=nodata``."""
    tags = {"CLASS_0": "none", f"CLASS_{CLASS_NODATA}": "nodata"}
    tags.update({f"CLASS_{c.index}": c.name for c in schema.classes})
    return tags


def class_bit_tags(schema: ClassSchema) -> dict[str, str]:
    """A bit-per-class ``classes.tif``'s tags: ``BIT_0=name`` (class 1) ...,
    ``NODATA=32768``."""
    tags = {f"BIT_{c.index - 1}": c.name for c in schema.classes}
    tags["NODATA"] = str(CLASS_BITS_NODATA)
    return tags


def write_category_names(tif: Path, schema: ClassSchema) -> Path:
    """The GDAL PAM sidecar ``{tif}.aux.xml`` naming ``classes.tif``'s values (entry ``v``
    of ``CategoryNames`` names value ``v``), atomically."""
    names = ["none"] + [""] * CLASS_NODATA
    for c in schema.classes:
        names[c.index] = c.name
    names[CLASS_NODATA] = "nodata"
    last = max(i for i, n in enumerate(names) if n)
    cats = "".join(f"\n      <Category>{escape(n)}</Category>" for n in names[: last + 1])
    text = (
        '<PAMDataset>\n  <PAMRasterBand band="1">\n    <CategoryNames>'
        f"{cats}\n    </CategoryNames>\n  </PAMRasterBand>\n</PAMDataset>\n"
    )
    path = tif.with_name(tif.name + ".aux.xml")
    write_text_atomic(path, text)
    return path
