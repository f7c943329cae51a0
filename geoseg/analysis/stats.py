"""Per-object and per-label statistics: area, perimeter, counts, density per km².

Lengths and areas are measured in the UTM zone of the data (metres), whatever the
CRS of the GeoDataFrame; a frame without CRS is measured in its own units.
"""

from __future__ import annotations

from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from geoseg.core import vectorize
from geoseg.errors import RasterError
from geoseg.io.raster import RasterSource
from geoseg.io.sources import source_name
from geoseg.run.inspection import describe


def _metric(gdf: gpd.GeoDataFrame) -> gpd.GeoSeries:
    if gdf.crs is None or gdf.empty:
        return gdf.geometry
    return gdf.geometry.to_crs(gdf.geometry.estimate_utm_crs())


def measure(gdf: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """A copy with per-object `area_m2`, `perimeter_m`, `diameter_m` (of the circle of
    the same area) and `compactness` (4πA/P²: 1 for a disc, lower for ragged shapes)."""
    out = gdf.copy()
    geoms = _metric(gdf)
    area = np.asarray(geoms.area, dtype=float)
    perimeter = np.asarray(geoms.length, dtype=float)
    out["area_m2"] = area
    out["perimeter_m"] = perimeter
    out["diameter_m"] = 2 * np.sqrt(area / np.pi)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["compactness"] = np.where(perimeter > 0, 4 * np.pi * area / perimeter**2, np.nan)
    return out


def raster_area_km2(raster: Any) -> float:
    """Area covered by a raster (path, dataset or DataArray), in km² (nodata included)."""
    if isinstance(raster, (str,)) or hasattr(raster, "__fspath__"):
        area = describe(raster)["area_km2"]
        return float("nan") if area is None else float(area)
    import shapely
    from rasterio.windows import bounds

    with RasterSource(raster) as src:
        footprint = shapely.box(*bounds(((0, src.height), (0, src.width)), src.transform))
        value = vectorize.area_m2(gpd.GeoSeries([footprint], crs=src.crs))[0] / 1e6
    if np.isnan(value):
        raise RasterError(f"{source_name(raster)} has no CRS: its area in km² is unknown; pass area_km2=")
    return float(value)


def union_area(geoms: Any) -> float:
    """The area of the union of `geoms`: ground covered twice counts once.

    Objects that intersect no other are summed as they are; only the ones that
    overlap a neighbour go through `shapely.union_all`, so the cost follows the
    overlaps, not the number of objects.
    """
    geoms = np.asarray(geoms, dtype=object)
    geoms = geoms[~(shapely.is_missing(geoms) | shapely.is_empty(geoms))]
    if not len(geoms):
        return 0.0
    bad = ~shapely.is_valid(geoms)
    if bad.any():
        geoms[bad] = shapely.make_valid(geoms[bad])
    a, b = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    shared = np.zeros(len(geoms), bool)
    shared[a[a != b]] = True
    alone = float(shapely.area(geoms[~shared]).sum())
    return alone + (float(shapely.union_all(geoms[shared]).area) if shared.any() else 0.0)


def summarize(gdf: gpd.GeoDataFrame, *, area_km2: float | None = None, raster: Any = None,
              by: str = "label") -> pd.DataFrame:
    """Counts, areas, cover and density per label (and `all`).

    Args:
        gdf: objects, e.g. from `geoseg.segment`.
        area_km2: the surveyed area, for cover and densities; or give `raster` to take its footprint.
        by: the column to group by.

    Returns:
        One row per label: `count`; `area_m2_sum`, the sum of the objects' areas
        (overlapping objects each count in full) and their mean and median;
        `perimeter_m_mean`; `cover_m2`, the area of the union of the objects (ground
        covered twice counts once); `cover_pct`, that union as a % of the surveyed
        area (never above 100 when the objects lie inside it); `per_km2`, objects per km².
        The `all` row unions every label together.
    """
    if area_km2 is None and raster is not None:
        area_km2 = raster_area_km2(raster)
    measured = measure(gdf).reset_index(drop=True)  # positions, so rows find their metric geometry
    geoms = np.asarray(_metric(gdf).values, dtype=object)
    groups = [(str(k), g) for k, g in measured.groupby(by, sort=True)] if by in measured and len(measured) else []
    rows = []
    for name, g in [*groups, ("all", measured)]:
        cover = union_area(geoms[g.index.to_numpy()])
        rows.append({
            by: name,
            "count": len(g),
            "area_m2_sum": float(g["area_m2"].sum()),
            "area_m2_mean": float(g["area_m2"].mean()) if len(g) else np.nan,
            "area_m2_median": float(g["area_m2"].median()) if len(g) else np.nan,
            "perimeter_m_mean": float(g["perimeter_m"].mean()) if len(g) else np.nan,
            "cover_m2": cover,
            "cover_pct": 100 * cover / (area_km2 * 1e6) if area_km2 else np.nan,
            "per_km2": len(g) / area_km2 if area_km2 else np.nan,
        })
    return pd.DataFrame(rows).set_index(by)
