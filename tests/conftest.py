"""Shared fixtures: paths to the real data in ``../shared/data`` (tests skip when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DSTL_LITE = SHARED_DATA / "dstl-lite"
SPACENET = SHARED_DATA / "spacenet-ms-pan"


@pytest.fixture(scope="session")
def dstl_lite() -> Path:
    """The real 20-scene DSTL subset (RGB render + A); skips the test when absent."""
    if not (DSTL_LITE / "grid_sizes.csv").is_file():
        pytest.skip(f"real data not found at {DSTL_LITE}")
    return DSTL_LITE


@pytest.fixture(scope="session")
def spacenet() -> Path:
    """Real SpaceNet multispectral + panchromatic pairs; skips the test when absent."""
    if not (SPACENET / "pan1.tif").is_file():
        pytest.skip(f"real data not found at {SPACENET}")
    return SPACENET
