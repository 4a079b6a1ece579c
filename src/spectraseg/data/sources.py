"""Open a dataset in either layout: a DSTL root directory or a dataset description."""

from __future__ import annotations

import os

from spectraseg.data.description import is_description, is_stack_directory
from spectraseg.data.dstl import Dataset, open_dataset
from spectraseg.data.georef import GeoDataset

Source = Dataset | GeoDataset
"""A dataset of either layout: both list ``image_ids``, ``select`` and open a ``scene``."""


def is_georeferenced(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a dataset description or a plain directory of GeoTIFF stacks."""
    return is_description(path) or is_stack_directory(path)


def open_source(root: str | os.PathLike[str]) -> Source:
    """A description file (``.toml``) or a plain directory of stacks as a
    :class:`GeoDataset`, else a DSTL root."""
    return GeoDataset(root) if is_georeferenced(root) else open_dataset(root)
