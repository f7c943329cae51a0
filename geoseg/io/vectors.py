"""Vector layers given by the user: read in any format GDAL knows, polygons checked."""

from __future__ import annotations

import os
import warnings
from typing import TypeAlias

import geopandas as gpd
import shapely

from geoseg.errors import GeosegWarning, UsageError, option

_POLYGONAL = ("Polygon", "MultiPolygon")


class InvalidGeometryWarning(GeosegWarning):
    """Invalid polygons (self-intersecting, badly closed) were repaired."""


Vector: TypeAlias = "str | os.PathLike[str] | gpd.GeoDataFrame"


def read_vector(source: Vector, what: str = "vector", *, name: str | None = None) -> gpd.GeoDataFrame:
    """Read any vector file geopandas reads (or pass a GeoDataFrame through).

    Messages call it `what` (PRED, REF), or the parameter `name` in the caller's terms.
    """
    if isinstance(source, gpd.GeoDataFrame):
        return source
    path = str(source)
    shown = f"{what} {path}" if name is None else option(name, path)
    if not os.path.exists(path):
        raise UsageError(f"{shown}: no such file: check the path")
    if os.path.isdir(path) and not path.lower().endswith(".gdb"):
        raise UsageError(f"{shown}: is a folder, not a vector file")
    try:
        return gpd.read_file(path)
    except Exception as e:  # pyogrio raises DataSourceError and friends; keep it one line
        reason = str(e).split("\n")[0]
        raise UsageError(f"{shown}: not a readable vector file ({reason}): give a GPKG, GeoJSON, "
                         "Shapefile, FlatGeobuf or GeoParquet") from None


def polygons_only(gdf: gpd.GeoDataFrame, name: str) -> gpd.GeoDataFrame:
    """Drop empty geometries, repair invalid ones (with a warning naming `name`); refuse points and lines."""
    gdf = gdf[~(gdf.geometry.isna() | gdf.geometry.is_empty)]
    kinds = set(gdf.geometry.geom_type)
    if kinds - set(_POLYGONAL):
        bad = sorted(kinds - set(_POLYGONAL))[0]
        raise UsageError(f"{name} has {bad} geometries: polygons are needed (buffer points or lines first)")
    bad = ~gdf.geometry.is_valid
    if bad.any():
        fixed = [shapely.union_all([p for p in shapely.get_parts(shapely.make_valid(g))
                                    if p.geom_type in _POLYGONAL]) for g in gdf.geometry[bad]]
        gdf = gdf.copy()
        gdf.loc[bad, gdf.geometry.name] = fixed
        # a bow-tie's area is 0 as drawn: said aloud, as its repair changes what is scored
        n, empty = int(bad.sum()), sum(g.is_empty for g in fixed)
        lost = f"; {empty} had no area left and cannot match" if empty else ""
        warnings.warn(f"{name}: {n} of {len(gdf)} polygons invalid (e.g. self-intersecting), repaired with "
                      f"shapely.make_valid keeping their polygonal parts{lost}", InvalidGeometryWarning, stacklevel=3)
    return gdf
