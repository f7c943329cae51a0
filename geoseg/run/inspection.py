"""Looking at an input before reading any pixel: its grid, CRS, area and tile plan."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import geopandas as gpd
import numpy as np
import shapely
from rasterio.windows import bounds

from geoseg.core import vectorize
from geoseg.core.tiling import TilePlan, Window, plan_tiles
from geoseg.errors import GeosegError, OutsideAreaError, option
from geoseg.io.area import Area, tiles_apart
from geoseg.io.raster import RasterSource, ReadOptions
from geoseg.io.sources import is_web_area, source_name, web_meta


@dataclass(frozen=True, eq=False)
class RasterInfo:
    """One input as a run sees it: the grid its tiles are read on (after
    resampling and the area's window), its tile plan, and where it lies."""

    path: str
    name: str  #: unique among a run's inputs (see `geoseg.io.sources.unique_names`)
    width: int
    height: int
    bands: tuple[int, ...]
    dtype: str
    crs: Any
    transform: Any
    pixel_size: float
    nodata: Any
    utm: Any  #: the UTM zone areas are measured in (None without a CRS)
    area_km2: float | None  #: of the part that is segmented
    plan: TilePlan
    skip: tuple[int, ...] = ()  #: tiles away from the area, never read
    zone: Any = None  #: the area in the raster's CRS, or None
    window: Window | None = None  #: the area's window in the whole grid read
    grid: tuple[int, int] = (0, 0)  #: (height, width) of that whole grid

    @property
    def tiles(self) -> int:
        """Tiles to segment."""
        return len(self.plan) - len(self.skip)

    @property
    def km2_per_tile(self) -> float:
        return float(self.area_km2 or 0.0) / max(self.tiles, 1)


def inspect(path: Any, *, tile_size: int, overlap: int, read: ReadOptions) -> RasterInfo:
    """Open a raster and plan its tiles, reading no pixel: grid, CRS, area, UTM zone."""
    with RasterSource(path, read) as src:
        return _inspect(src, path, tile_size, overlap)


def _inspect(src: RasterSource, path: Any, tile_size: int, overlap: int) -> RasterInfo:
    plan = plan_tiles(src.height, src.width, tile_size, overlap)
    box = shapely.box(*bounds(((0, src.height), (0, src.width)), src.transform))
    skip: list[int] = []
    if src.zone is not None and src.options.area is not None:  # only the tiles near the area are read
        box = shapely.intersection(box, src.zone)
        skip = tiles_apart(src.zone, plan, src.transform, src.options.area.margin)
    footprint = gpd.GeoSeries([box], crs=src.crs)
    utm = None if src.crs is None else footprint.estimate_utm_crs()
    area = vectorize.area_m2(footprint, utm)[0]
    return RasterInfo(
        path=str(path), name=source_name(path), width=src.width, height=src.height, bands=tuple(src.bands),
        dtype=str(src.dtype), crs=src.crs, transform=src.transform, pixel_size=vectorize.pixel_size(src.transform),
        nodata=src.nodata, utm=utm, area_km2=None if np.isnan(area) else area / 1e6, plan=plan, skip=tuple(skip),
        zone=src.zone, window=src.window, grid=src.grid_shape,
    )


def describe(
    path: str | os.PathLike[str], *, tile_size: int = 1008, overlap: int = 128,
    bands: str | Sequence[int] | None = None, resolution: float | None = None, pixel_coords: bool = False,
    area: Area | None = None, metres: bool = False,
) -> dict[str, Any]:
    """The plan for one raster, without running any model. With an `area`
    (`Area.of(bbox=...)`), `window` is its pixel window [col, row, width, height]
    in the grid read, and `tiles` and `area_km2` count only what would be segmented.
    `colours` is every band's colour tag; `bands` the bands read, None where
    none can be chosen without `bands` (a run refuses such a raster). With `metres`, `resolution` is
    a model's, in metres (see `ReadOptions`); `pixel_xy` is the pixel size of the grid read."""
    read = ReadOptions.of(bands=bands, resolution=resolution, pixel_coords=pixel_coords, area=area, metres=metres)
    with RasterSource(path, read, choose=False) as src:
        info = _inspect(src, path, tile_size, overlap)
        stretch = None if src.stretch_limits is None else src.stretch_limits.round(3).tolist()
        tags = list(src.colours)
    (height, width), win = info.grid, info.window
    web = web_meta(path) if is_web_area(path) else None  # a tile service: named by its (redacted) service
    return {
        "window": None if win is None else [win.col, win.row, win.width, win.height],
        **({} if web is None else {"web": web}),
        "path": str(path) if web is None else web["service"], "width": width, "height": height,
        "bands": list(info.bands) or None, "colours": tags,
        "dtype": info.dtype, "crs": None if info.crs is None else info.crs.to_string(),
        "pixel_size": info.pixel_size, "pixel_xy": [abs(info.transform.a), abs(info.transform.e)],
        "nodata": info.nodata, "stretch": stretch,
        "area_km2": info.area_km2, "tile_size": tile_size, "overlap": overlap,
        "tile_grid": list(info.plan.shape), "tiles": info.tiles,
    }


def check_area(paths: list[Any], read: ReadOptions) -> None:
    """Refuse an area that overlaps none of several `paths`, before any model
    loads (opening files, reading no pixel). A single input is checked by opening it."""
    if read.area is None or len(paths) < 2:
        return
    for p in paths:
        try:
            RasterSource(p, read).close()
            return
        except OutsideAreaError:
            continue
        except GeosegError:  # reported with its file by the run
            return
    raise outside_all(read, len(paths))


def outside_all(read: ReadOptions, n: int) -> OutsideAreaError:
    """The error for an area that overlaps none of `n` inputs."""
    assert read.area is not None
    hint = f" and {option('bbox_crs')}" if read.area.option == "--bbox" else f" and the CRS of the {option('aoi')} file"
    return OutsideAreaError(f"{read.area.shown()} overlaps none of the {n} inputs: check the coordinates{hint}")
