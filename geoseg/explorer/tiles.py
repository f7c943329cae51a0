"""The source's pixels as web map tiles (PNG), rendered in the kernel with rio-tiler.

A tile is read through the raster's overviews at the zoom asked for, so a
50,000² px orthomosaic pans without being read whole. The bands and the
scene-wide stretch are those geoseg segments with (`RasterSource`).
"""

from __future__ import annotations

import math
import threading
import warnings
from typing import Any

import numpy as np
import rasterio
from rasterio.transform import array_bounds
from rasterio.warp import transform_bounds
from rio_tiler.errors import NoOverviewWarning, TileOutsideBounds
from rio_tiler.io import Reader

from geoseg.errors import GeosegWarning
from geoseg.io.raster import RasterSource, ReadOptions
from geoseg.io.sources import source_name


class NoOverviewsWarning(GeosegWarning):
    """A large raster without overviews: the map is slow when zoomed out."""

BIG = 4096  #: px: a raster wider than this is slow to show zoomed out without overviews
EARTH = 40075016.686  #: the equator's length in metres (Web Mercator's zoom 0 tile is 256 px of it)


class MapTiles:
    """Renders tiles of one raster (a path, URL or VRT text) for the map."""

    def __init__(self, path: str, read: ReadOptions) -> None:
        with RasterSource(path, read) as src:
            self.bands = list(src.bands)
            limits = src.stretch_limits
            crs, transform = src.crs, src.transform
            west, south, east, north = array_bounds(src.height, src.width, transform)
            big = max(src.height, src.width) > BIG
        self.crs, self.transform = crs, transform
        self.bounds = transform_bounds(crs, "EPSG:4326", west, south, east, north, densify_pts=21)
        metres = abs(transform.a) * (crs.linear_units_factor[1] if crs.is_projected else 111320.0)
        self.path = path
        self.rescale = None if limits is None else [(float(lo), float(hi)) for lo, hi in np.asarray(limits)]
        lat = (self.bounds[1] + self.bounds[3]) / 2
        #: the zoom whose pixels are as fine as the raster's (deeper zooms are drawn magnified)
        self.max_zoom = max(0, min(24, math.ceil(math.log2(EARTH * math.cos(math.radians(lat)) / 256 / metres))))
        self._local = threading.local()  # one open reader per thread (GDAL handles are not shared)
        if big and not path.lstrip().startswith("<"):  # a mosaic's or service's VRT reads its members' overviews
            with rasterio.open(path) as ds:
                if not ds.overviews(1):
                    warnings.warn(f"{source_name(path)} has no overviews: the map reads its full-resolution pixels "
                                  f"when zoomed out (slow); build them once with: gdaladdo -r average {path}",
                                  NoOverviewsWarning, stacklevel=3)

    def _reader(self) -> Any:
        reader = getattr(self._local, "reader", None)
        if reader is None:
            reader = self._local.reader = Reader(self.path)
        return reader

    def png(self, x: int, y: int, z: int, size: int = 256) -> bytes | None:
        """Tile (x, y) of zoom `z` (XYZ, Web Mercator) as a PNG with transparency (grey and alpha for one
        band); None outside the raster."""
        try:
            with warnings.catch_warnings():  # said once, in geoseg's words, when the map opened
                warnings.simplefilter("ignore", NoOverviewWarning)
                img = self._reader().tile(x, y, z, tilesize=size, indexes=self.bands)
        except TileOutsideBounds:
            return None
        if self.rescale is not None:
            img = img.rescale(in_range=self.rescale)
        return bytes(img.render(img_format="PNG"))

    def close(self) -> None:
        reader = getattr(self._local, "reader", None)
        if reader is not None:
            reader.close()
