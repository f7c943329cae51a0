"""Pixel masks -> polygons in map coordinates; simplify; area; reproject.

Polygons follow pixel edges exactly, through the raster's affine (rotated and
sheared geotransforms too), holes kept. Long edges are densified before any
reprojection so straight pixel edges bend as the projection asks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import geopandas as gpd
import numpy as np
import shapely
from affine import Affine
from pyproj import CRS
from pyproj.exceptions import CRSError
from rasterio.features import shapes
from shapely.geometry import MultiPolygon, shape

from geoseg.errors import UsageError
from geoseg.merge import Instance

COLUMNS = ["id", "label", "score", "area_m2", "n_tiles", "source"]


def parse_crs(text: Any) -> CRS:
    """Any CRS pyproj reads (EPSG code, WKT, PROJ string), or a UsageError."""
    try:
        return CRS.from_user_input(text)
    except CRSError:
        raise UsageError(f"unknown CRS {text!r}: give e.g. EPSG:4326, a WKT string or a PROJ string") from None


def pixel_size(transform: Affine) -> float:
    """Side of a pixel in CRS units (square root of its area)."""
    return math.sqrt(abs(transform.determinant))


def polygon(inst: Instance, transform: Affine) -> shapely.Geometry:
    """The instance's mask as a valid (Multi)Polygon through `transform`."""
    at = transform @ Affine.translation(inst.col, inst.row)
    mask = inst.mask.astype(np.uint8)
    parts = [shape(g) for g, _ in shapes(mask, mask=inst.mask, connectivity=4, transform=at)]
    geom = parts[0] if len(parts) == 1 else MultiPolygon(parts)
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
        polys = [g for g in shapely.get_parts(geom) if g.geom_type in ("Polygon", "MultiPolygon")]
        geom = shapely.union_all(polys)
    return geom


def to_frame(
    instances: Sequence[Instance], transform: Affine, crs: CRS | None, *, source: str,
    simplify: float | None = None,
) -> gpd.GeoDataFrame:
    """Instances -> GeoDataFrame in the raster's CRS, ordered top-left first."""
    order = sorted(range(len(instances)), key=lambda k: (instances[k].label, instances[k].row, instances[k].col))
    geoms = [polygon(instances[k], transform) for k in order]
    if simplify:
        geoms = list(shapely.simplify(np.array(geoms, dtype=object), simplify * pixel_size(transform)))
    return gpd.GeoDataFrame(
        {
            "label": [instances[k].label for k in order],
            "score": np.array([instances[k].score for k in order], dtype=float),
            "n_tiles": np.array([instances[k].n_tiles for k in order], dtype=np.int32),
            "source": source,
        },
        geometry=gpd.GeoSeries(geoms, crs=crs),
    )


def _densify(gdf: gpd.GeoDataFrame, step: float) -> gpd.GeoSeries:
    return gpd.GeoSeries(shapely.segmentize(gdf.geometry.values, step), crs=gdf.crs, index=gdf.index)


def area_m2(geoms: gpd.GeoSeries) -> np.ndarray:
    """Areas in square metres, measured in the UTM zone of the data."""
    if geoms.crs is None or geoms.empty:
        return np.full(len(geoms), np.nan)
    utm = geoms.estimate_utm_crs()
    return np.asarray(geoms.to_crs(utm).area, dtype=float)


def finish(
    gdf: gpd.GeoDataFrame, transform: Affine, dst_crs: CRS | None = None, min_area: float | None = None,
) -> gpd.GeoDataFrame:
    """Add `area_m2`, drop objects under `min_area` m², reproject to `dst_crs`."""
    gdf = gdf.copy()
    gdf["area_m2"] = area_m2(gdf.geometry)
    if min_area:
        if gdf.crs is None:
            raise UsageError("--min-area is in square metres and needs a georeferenced raster")
        gdf = gdf[gdf["area_m2"] >= min_area]
    if dst_crs is not None:
        if gdf.crs is None:
            raise UsageError("--dst-crs needs a georeferenced raster (this one is read in pixel coordinates)")
        if not CRS(gdf.crs).equals(dst_crs):
            # densify to a few pixels so reprojected edges follow the projection
            gdf = gdf.set_geometry(_densify(gdf, 4 * pixel_size(transform))).to_crs(dst_crs)
    return gdf
