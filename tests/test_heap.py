"""The C heap: memory freed in the middle of it goes back to the system when trimmed (glibc)."""

import gc
import sys

import numpy as np
import pytest
import shapely

from geoseg.core import heap


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_trim_gives_back_what_a_burst_of_polygons_freed():
    """A million polygons made by GEOS and dropped but one in a thousand (as a region's union leaves
    them): the heap keeps the freed pages between the survivors until trimmed."""
    n = 1_000_000
    x = np.arange(n, dtype=float)
    polys = shapely.box(x, 0, x + 1, 1)
    kept = polys[::1000].copy()  # noqa: F841 (the survivors pin the heap's top)
    del polys
    gc.collect()
    before = _rss_mb()
    assert heap.trim()
    assert _rss_mb() < before - 50, (before, _rss_mb())
