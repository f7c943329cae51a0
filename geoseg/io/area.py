"""The part of a raster to segment: a bounding box or an area-of-interest polygon.

An `Area` is a frozen, hashable value: the geometry in its own CRS (None for a
bbox in each raster's CRS), the option it came from, and the pixel margin the
reader grows it by. `RasterSource` places it on each raster it opens.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import geopandas as gpd
import numpy as np
import shapely
import shapely.affinity
from affine import Affine
from pyproj import CRS
from pyproj.exceptions import CRSError

from geoseg import errors
from geoseg.core.tiling import TilePlan, Window
from geoseg.errors import UsageError, option
from geoseg.io.vectors import read_vector


@dataclass(frozen=True)
class Area:
    """Where to segment.

    Attributes:
        geometry: a polygon (or multipolygon) in `crs`.
        crs: WKT of the geometry's CRS; None means each raster's own CRS.
        option: "--bbox" or "--aoi", for messages and the resume fingerprint.
        label: the value as the user gave it (numbers or file name).
        margin: pixels of the grid read added around the area, so that objects
            crossing its edge are read whole.
    """

    geometry: shapely.Geometry
    crs: str | None
    option: str
    label: str
    margin: int = 0

    @classmethod
    def of(cls, *, bbox: str | Sequence[float] | None = None, bbox_crs: Any = None, aoi: Any = None,
           margin: int = 0) -> Area | None:
        """The area from the API's or the CLI's loose types; None when none is given.

        `bbox` is "minx,miny,maxx,maxy" or four numbers, in `bbox_crs` (default:
        each raster's CRS). `aoi` is a vector file, a GeoDataFrame or GeoSeries
        with a CRS, or a shapely geometry (in `bbox_crs`, default the raster's CRS).
        """
        if bbox is not None and aoi is not None:
            raise UsageError(f"give either {option('bbox')} or {option('aoi')}, not both")
        crs = None if bbox_crs is None else _crs(bbox_crs)
        if bbox is not None:
            numbers = _bbox(bbox)
            label = ",".join(f"{v:.15g}" for v in numbers)
            return cls(shapely.box(*numbers), crs, "--bbox", label, margin)
        if aoi is None:
            if bbox_crs is not None:
                raise UsageError(f"{option('bbox_crs', str(bbox_crs))} goes with {option('bbox')}: "
                                 f"add {option('bbox', 'minx,miny,maxx,maxy')}")
            return None
        if isinstance(aoi, shapely.Geometry):
            geom = _polygonal(aoi, f"the geometry given as {option('aoi')}")
            return cls(geom, crs, "--aoi", f"geometry {_digest(geom)}", margin)
        if bbox_crs is not None:
            raise UsageError(f"{option('bbox_crs')} goes with {option('bbox')}: "
                             f"the {option('aoi')} file carries its own CRS")
        return _from_vector(aoi, margin)

    def in_crs(self, crs: Any, path: str) -> shapely.Geometry:
        """The geometry in a raster's CRS (`crs`; None: a raster read in pixel coordinates)."""
        if self.crs is None:
            return self.geometry
        if crs is None:
            raise UsageError(f"{self.named()} has a CRS but {path} is read in pixel coordinates: "
                             f"give the area in pixel coordinates (no {option('bbox_crs')})")
        mine = CRS.from_wkt(self.crs)
        if CRS.from_user_input(crs).equals(mine):
            return self.geometry
        x0, y0, x1, y1 = shapely.bounds(self.geometry)
        if mine.is_geographic and not (-360 <= x0 <= x1 <= 360 and -90 <= y0 <= y1 <= 90):
            # a GeoJSON without a "crs" member is EPSG:4326 (RFC 7946), whatever its numbers are
            raise UsageError(f"{self.named()} is in {mine.to_string()} but its coordinates (x {x0:.6g} to "
                             f"{x1:.6g}, y {y0:.6g} to {y1:.6g}) are not longitude and latitude: a GeoJSON "
                             f"without a CRS is read as EPSG:4326; reproject it to EPSG:4326, or give a "
                             f"GeoPackage that carries its CRS")
        # densify first: a straight edge in one CRS is a curve in another
        step = max(shapely.bounds(self.geometry)[2:] - shapely.bounds(self.geometry)[:2]) / 64
        dense = shapely.segmentize(self.geometry, step) if step > 0 else self.geometry
        moved = gpd.GeoSeries([dense], crs=self.crs).to_crs(crs).iloc[0]
        if moved is None or moved.is_empty or not shapely.is_valid(moved) or not all(
                math.isfinite(v) for v in moved.bounds):
            raise UsageError(f"{self.named()} cannot be placed in the CRS of {path}: "
                             f"check the coordinates and their CRS")
        return moved

    def fingerprint(self) -> dict[str, Any]:
        """The area by CLI option name, for the resume check."""
        crs = None if self.crs is None else CRS.from_wkt(self.crs).to_string()
        if self.option == "--bbox":
            return {"--bbox": self.label, "--bbox-crs": crs, "--aoi": None}
        return {"--bbox": None, "--bbox-crs": None, "--aoi": f"{self.label} ({_digest(self.geometry)})"}

    def describe(self) -> str:
        """The area by CLI option, as the output's provenance records it."""
        crs = "" if self.crs is None or self.option == "--aoi" else f" --bbox-crs {CRS.from_wkt(self.crs).to_string()}"
        return f"{self.option} {self.label}{crs}"

    def named(self) -> str:
        """The area in the caller's terms, for messages: `bbox='...'` or `--bbox ...`."""
        name = self.option.lstrip("-")
        if self.label == "GeoDataFrame" or self.label.startswith("geometry "):  # only the API passes these
            return f"the {self.label} given as {option(name)}"
        return option(name, self.label)

    def shown(self) -> str:
        """`named()` with the CRS of a bbox given in another CRS."""
        if self.crs is None or self.option == "--aoi":
            return self.named()
        sep = " " if errors.cli_terms else ", "
        return f"{self.named()}{sep}{option('bbox_crs', CRS.from_wkt(self.crs).to_string())}"


def _crs(value: Any) -> str:
    try:
        return CRS.from_user_input(value).to_wkt()
    except CRSError:
        shown = value if isinstance(value, str) else str(value)
        raise UsageError(f"{option('bbox_crs', shown)} is not a CRS: "
                         "give e.g. EPSG:4326, a WKT or a PROJ string") from None


def _bbox(value: str | Sequence[float]) -> tuple[float, float, float, float]:
    example = f"e.g. {option('bbox', '404100,3285400,404300,3285600')}"
    try:
        parts = value.split(",") if isinstance(value, str) else list(value)
        numbers = tuple(float(v) for v in parts)
    except (TypeError, ValueError):
        raise UsageError(f"{option('bbox', value)}: give four numbers minx,miny,maxx,maxy, {example}") from None
    if len(numbers) != 4 or not all(math.isfinite(v) for v in numbers):
        raise UsageError(f"{option('bbox', value)}: give four numbers minx,miny,maxx,maxy, {example}")
    minx, miny, maxx, maxy = numbers
    if minx >= maxx or miny >= maxy:
        raise UsageError(f"{option('bbox', value)}: need minx < maxx and miny < maxy (order minx,miny,maxx,maxy)")
    return minx, miny, maxx, maxy


def _polygonal(geom: Any, what: str) -> shapely.Geometry:
    parts = [p for p in shapely.get_parts(shapely.make_valid(geom)) if p.geom_type in ("Polygon", "MultiPolygon")]
    union = shapely.union_all(parts) if parts else None
    if union is None or union.is_empty or union.area <= 0:
        raise UsageError(f"{what}: holds no polygon: give polygons (buffer points or lines first)")
    return shapely.normalize(union)


def _from_vector(aoi: Any, margin: int) -> Area:
    if isinstance(aoi, gpd.GeoSeries):
        aoi = gpd.GeoDataFrame(geometry=aoi)
    label = "GeoDataFrame" if isinstance(aoi, gpd.GeoDataFrame) else os.path.basename(str(aoi))
    gdf = read_vector(aoi, name="aoi")
    shown = label if isinstance(aoi, gpd.GeoDataFrame) else str(aoi)
    named = f"the GeoDataFrame given as {option('aoi')}" if isinstance(aoi, gpd.GeoDataFrame) else option("aoi", shown)
    geoms = gdf.geometry[~(gdf.geometry.isna() | gdf.geometry.is_empty)]
    if geoms.empty:
        raise UsageError(f"{named}: holds no polygon: give a file of polygons")
    if gdf.crs is None:
        raise UsageError(f"{named} has no CRS: set one (e.g. ogr2ogr -a_srs EPSG:4326 out.gpkg in.gpkg)")
    geom = _polygonal(shapely.union_all(geoms.values), named)
    return Area(geom, gdf.crs.to_wkt(), "--aoi", label, margin)


def _digest(geom: shapely.Geometry) -> str:
    return hashlib.sha1(shapely.to_wkb(geom)).hexdigest()[:10]


def pixel_window(zone: shapely.Geometry, transform: Affine, height: int, width: int, margin: int) -> Window:
    """The pixels of a `height` x `width` grid (of `transform`) within the bounds
    of `zone` grown by `margin` pixels, clipped to the grid."""
    pixels = shapely.affinity.affine_transform(zone, (~transform).to_shapely())
    c0, r0, c1, r1 = shapely.bounds(pixels)
    r0, c0 = max(0, math.floor(r0) - margin), max(0, math.floor(c0) - margin)
    r1, c1 = min(height, math.ceil(r1) + margin), min(width, math.ceil(c1) + margin)
    return Window(r0, c0, max(r1 - r0, 0), max(c1 - c0, 0))


def tiles_apart(zone: shapely.Geometry, plan: TilePlan, transform: Affine, margin: float) -> list[int]:
    """Indices of the tiles of `plan` (on the grid of `transform`) farther than
    `margin` pixels from `zone`: they need not be read."""
    pixels = shapely.affinity.affine_transform(zone, (~transform).to_shapely())
    rows, cols = np.meshgrid(plan.row_starts, plan.col_starts, indexing="ij")  # row-major, as tile indices
    rows, cols = rows.ravel(), cols.ravel()
    boxes = shapely.box(cols, rows, np.minimum(cols + plan.tile_size, plan.width),
                        np.minimum(rows + plan.tile_size, plan.height))
    shapely.prepare(pixels)
    return [int(k) for k in np.flatnonzero(~shapely.dwithin(pixels, boxes, margin))]


def cut_by_window(instances: Sequence[Any], window: Window, grid: tuple[int, int]) -> np.ndarray:
    """Which instances (rows, cols in the window) touch an edge of `window` that
    lies inside the `grid` (height, width): they may reach past what was read."""
    top, left = window.row > 0, window.col > 0
    bottom, right = window.row_stop < grid[0], window.col_stop < grid[1]
    return np.array([(top and i.row == 0) or (left and i.col == 0)
                     or (bottom and i.row + i.height >= window.height)
                     or (right and i.col + i.width >= window.width) for i in instances], dtype=bool)
