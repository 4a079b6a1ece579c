"""Open a dataset in either layout: a DSTL root directory or a dataset description."""

from __future__ import annotations

import os

from spectraseg.data.description import is_description
from spectraseg.data.dstl import Dataset, open_dataset
from spectraseg.data.georef import GeoDataset

Source = Dataset | GeoDataset
"""A dataset of either layout: both list ``image_ids``, ``select`` and open a ``scene``."""


def open_source(root: str | os.PathLike[str]) -> Source:
    """A description file (``.toml``) as a :class:`GeoDataset`, else a DSTL root."""
    return GeoDataset(root) if is_description(root) else open_dataset(root)
