"""The C heap of the process (glibc's malloc), where numpy, GEOS, GDAL and torch
allocate: what it keeps of freed memory. Elsewhere (macOS, Windows, musl) these
do nothing and return False."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any


@functools.cache
def _glibc() -> Any:
    name = ctypes.util.find_library("c")
    if name is None or "libc.so" not in name:
        return None
    try:
        libc = ctypes.CDLL(name)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def mmap_threshold(size: int) -> bool:
    """Serve blocks above `size` bytes from mmap, given back to the system when freed. glibc raises
    its threshold each time such a block is freed (up to 32 MB), after which large blocks come from
    the heaps of the process's threads and stay there, fragmented."""
    libc = _glibc()
    m_mmap_threshold = -3  # malloc.h
    return libc is not None and bool(libc.mallopt(m_mmap_threshold, size))


def trim() -> bool:
    """Give the free pages of every heap back to the system: after a burst of small blocks
    (the polygons of a region put together) that freed memory would count as the process's
    until the end of the run."""
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))
