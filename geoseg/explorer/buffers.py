"""Polygons as the binary buffers deck.gl draws (its GeoJSON layer's binary form).

Coordinates are lon/lat, flattened (GeoArrow's ragged layout): no GeoJSON text,
so 100,000 polygons cross to the browser as a few typed arrays.
"""

from __future__ import annotations

from typing import Any

import geopandas as gpd
import numpy as np
import shapely


def polygon_buffers(gdf: gpd.GeoDataFrame) -> tuple[dict[str, Any], list[bytes]]:
    """`gdf`'s polygons in lon/lat as (description, buffers): per vertex its position (float64 x, y)
    and feature (uint32: the row of `gdf`); the vertex where each polygon and each ring starts (uint32,
    closed by the total)."""
    geoms = gdf.geometry.to_crs("EPSG:4326").values if len(gdf) else np.array([], dtype=object)
    multi = _as_multi(np.asarray(geoms))
    if len(multi) == 0:
        coords = np.zeros((0, 2))
        rings = polys = np.zeros(1, np.int64)
        owners = np.zeros(0, np.int64)
    else:
        _, coords, (rings, polys, features) = shapely.to_ragged_array(multi)
        # features[k]: the first polygon of feature k; each polygon's feature, then each vertex's
        poly_feature = np.repeat(np.arange(len(multi)), np.diff(features))
        vertex_poly = np.repeat(np.arange(len(polys) - 1), np.diff(rings[polys]))
        owners = poly_feature[vertex_poly]
    meta = {"features": len(gdf), "vertices": int(len(coords)), "polygons": int(len(polys) - 1),
            "rings": int(len(rings) - 1)}
    return meta, [np.ascontiguousarray(coords, np.float64).tobytes(), owners.astype(np.uint32).tobytes(),
                  rings[polys].astype(np.uint32).tobytes(), rings.astype(np.uint32).tobytes()]


def _as_multi(geoms: np.ndarray) -> np.ndarray:
    """Every geometry as a MultiPolygon (an empty one where none is left)."""
    out = np.empty(len(geoms), dtype=object)
    for k, g in enumerate(geoms):
        if g is None or g.is_empty:
            out[k] = shapely.MultiPolygon()
        elif g.geom_type == "Polygon":
            out[k] = shapely.MultiPolygon([g])
        elif g.geom_type == "MultiPolygon":
            out[k] = g
        else:
            out[k] = shapely.MultiPolygon([p for p in shapely.get_parts(g) if p.geom_type == "Polygon"])
    return out
