"""Pixel masks -> polygons in map coordinates; simplify; area; reproject.

Polygons follow pixel edges exactly, through the raster's affine (rotated and
sheared geotransforms too), holes kept. Long edges are densified before any
reprojection so straight pixel edges bend as the projection asks.

Simplified (the default, `SIMPLIFY` pixels), each ring first runs through the
midpoints of its pixel edges, so that a staircase becomes the straight or
curved edge it stands for (a corner between two straight runs of 2 pixels or
more stays square), then Douglas-Peucker with the tolerance, topology kept.
The polygon moves at most the tolerance plus half a pixel from the pixel
edges, and burnt back at pixel centres it gives almost exactly the mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import geopandas as gpd
import numpy as np
import shapely
import shapely.affinity
from affine import Affine
from pyproj import CRS
from pyproj.exceptions import CRSError
from rasterio.features import rasterize, shapes
from shapely.geometry import MultiPolygon

from geoseg.core.merge import Instance
from geoseg.errors import UsageError, option

COLUMNS = ["id", "object_id", "label", "score", "area_m2", "n_tiles", "level", "source"]
"""An output's columns before the geometry: `object_id` is the `id` of its first feature (itself, but for the
strips of a region past `geoseg.core.merge.SPLIT` vertices, which share it). A frame not yet numbered
has `part` instead (the strip's number: `object_id` = `id` - `part`)."""
SIMPLIFY = 0.5  #: the default simplification tolerance, in pixels (0: the pixel edges as they are)


def tolerance(simplify: float | None) -> float:
    """The simplification tolerance in pixels: `simplify`, or the default for None."""
    return SIMPLIFY if simplify is None else float(simplify)


def parse_crs(text: Any, name: str = "dst_crs") -> CRS:
    """Any CRS pyproj reads (EPSG code, WKT, PROJ string), or a UsageError naming the parameter `name`."""
    try:
        return CRS.from_user_input(text)
    except CRSError:
        raise UsageError(f"{option(name, text)}: unknown CRS: give e.g. EPSG:4326, "
                         "a WKT string or a PROJ string") from None


def pixel_size(transform: Affine) -> float:
    """Side of a pixel in CRS units (square root of its area)."""
    return math.sqrt(abs(transform.determinant))


def _valid(parts: list[shapely.Geometry]) -> shapely.Geometry:
    geom = parts[0] if len(parts) == 1 else MultiPolygon(parts)
    if not geom.is_valid:  # pixels touching at a corner can pinch a ring
        geom = shapely.make_valid(geom)
        polys = [g for g in shapely.get_parts(geom) if g.geom_type in ("Polygon", "MultiPolygon")]
        geom = shapely.union_all(polys)
    return geom


def trace(mask: np.ndarray, row: int, col: int) -> list[shapely.Geometry]:
    """The polygons of a boolean mask at (row, col), in raster pixel coordinates
    (x a column, y a row; 4-connected, holes kept): how the merge traces a
    region's bands (`geoseg.core.merge.Trace`)."""
    if not mask.any():
        return []
    found = shapes(mask.view(np.uint8), mask=mask, connectivity=4, transform=Affine.translation(col, row))
    return [shapely.Polygon(g["coordinates"][0], g["coordinates"][1:]) for g, _ in found]


def mask_of(inst: Instance) -> np.ndarray:
    """An instance's boolean crop; a region's outline burnt back at pixel centres (exact: its
    corners are pixel corners). As large as its box: for tests and small regions."""
    if inst.mask is not None:
        return inst.mask
    return rasterize([inst.outline], out_shape=(inst.height, inst.width),
                     transform=Affine.translation(inst.col, inst.row), dtype="uint8").astype(bool)


def _midpoints(ring: np.ndarray) -> np.ndarray:
    """A closed ring of pixel edges (axis-aligned, integer corners) through the
    midpoints of its unit edges: a staircase becomes straight. A corner between
    two runs of 2 pixels or more is kept."""
    p = ring[:-1]
    d = np.roll(p, -1, axis=0) - p
    p = p[np.any(np.sign(d) != np.sign(np.roll(d, 1, axis=0)), axis=1)]  # where the direction turns
    if len(p) < 4:
        return ring
    q = np.roll(p, -1, axis=0)
    length = np.abs(q - p).sum(axis=1)
    u = (q - p) / length[:, None]
    sharp = (length >= 2) & (np.roll(length, -1) >= 2)  # the corner at q
    pts = np.full((len(p), 3, 2), np.nan)
    pts[:, 0] = np.where(np.roll(sharp, 1)[:, None], np.nan, p + 0.5 * u)
    pts[:, 1] = np.where(((length >= 2) & ~sharp)[:, None], q - 0.5 * u, np.nan)
    pts[:, 2] = np.where(sharp[:, None], q, np.nan)
    out = pts.reshape(-1, 2)
    out = out[~np.isnan(out[:, 0])]
    return np.vstack([out, out[:1]])


def _smoothed(geom: shapely.Geometry) -> shapely.Geometry:
    """`_midpoints` on every ring of a (Multi)Polygon in pixel coordinates. A large
    one is made valid by `simplified`, after it has fewer vertices."""
    polys = [shapely.Polygon(_midpoints(np.asarray(p.exterior.coords)),
                             [_midpoints(np.asarray(h.coords)) for h in p.interiors])
             for p in shapely.get_parts(geom)]
    if shapely.get_num_coordinates(geom) > LARGE:
        return polys[0] if len(polys) == 1 else MultiPolygon(polys)
    return _valid(polys)


LARGE = 100_000  #: vertices past which a polygon is simplified ring by ring


def simplified(geoms: Sequence[shapely.Geometry], tolerance: float) -> list[shapely.Geometry]:
    """Douglas-Peucker with `tolerance` (CRS units), topology kept. A polygon of
    more than `LARGE` vertices (a region) is simplified ring by ring, then made
    valid where two rings came to cross: GEOS's topology-keeping simplifier
    needs about half a kilobyte per vertex, 2 GB for a forest of four million."""
    arr = np.array(geoms, dtype=object)
    out = arr.copy()
    small = shapely.get_num_coordinates(arr) <= LARGE
    out[small] = shapely.simplify(arr[small], tolerance)
    for k in np.flatnonzero(~small):
        out[k] = _ring_by_ring(arr[k], tolerance)
    return list(out)


def _open_midpoints(chain: np.ndarray) -> np.ndarray:
    """`_midpoints` of an open chain of pixel edges whose two ends stay where they are."""
    d = np.diff(chain, axis=0)
    turn = np.ones(len(chain), bool)
    turn[1:-1] = np.any(np.sign(d[1:]) != np.sign(d[:-1]), axis=1)
    p = chain[turn]
    if len(p) < 3:
        return p
    q = p[1:]
    length = np.abs(q - p[:-1]).sum(axis=1)
    u = (q - p[:-1]) / length[:, None]
    sharp = np.ones(len(p), bool)  # the corner at each vertex; the ends are kept
    sharp[1:-1] = (length[:-1] >= 2) & (length[1:] >= 2)
    pts = np.full((len(q), 3, 2), np.nan)
    pts[:, 0] = np.where(sharp[:-1, None], np.nan, p[:-1] + 0.5 * u)
    pts[:, 1] = np.where(((length >= 2) & ~sharp[1:])[:, None], q - 0.5 * u, np.nan)
    pts[:, 2] = np.where(sharp[1:, None], q, np.nan)
    out = pts.reshape(-1, 2)
    return np.vstack([p[:1], out[~np.isnan(out[:, 0])]])


def _smooth_ring(ring: np.ndarray, tolerance: float, pins: Sequence[float] = ()) -> np.ndarray:
    """A closed ring of pixel edges through the midpoints of its edges, then Douglas-Peucker, its
    vertices on the rows `pins` kept where they are (so that two strips cut there still meet
    exactly); never collapsed."""
    p = ring[:-1]
    on = np.flatnonzero(np.isin(p[:, 1], pins)) if len(pins) else np.zeros(0, int)
    if on.size == 0:
        mid = _midpoints(ring)
        line = shapely.simplify(shapely.LineString(mid), tolerance, preserve_topology=False)
        return np.asarray(line.coords) if len(line.coords) >= 4 else mid
    p = np.roll(p, -on[0], axis=0)  # from a kept vertex, around to it
    ends = [*(on - on[0]).tolist(), len(p)]
    closed = np.vstack([p, p[:1]])
    out = []
    for a, b in zip(ends[:-1], ends[1:]):
        chain = closed[a:b + 1]
        if b - a >= 2:
            chain = _open_midpoints(chain)
            chain = np.asarray(shapely.simplify(shapely.LineString(chain), tolerance, preserve_topology=False).coords)
        out.append(chain[:-1])
    smooth = np.vstack([*out, out[0][:1]])
    return smooth if len(smooth) >= 4 else ring


def _large_region(outline: shapely.Geometry, tolerance: float, transform: Affine,
                  pins: Sequence[float] = ()) -> shapely.Geometry:
    """A region's outline (pixel coordinates) smoothed and simplified ring by ring, in pixels (one
    ring's copies at a time: the outline of a forest can have millions of vertices), then
    through `transform`, made valid where two rings came to cross. `pins`: rows where the
    region was cut into strips, whose vertices stay."""
    polys = []
    for p in shapely.get_parts(outline):
        rings = [_smooth_ring(np.asarray(ring.coords), tolerance, pins) for ring in (p.exterior, *p.interiors)]
        polys.append(shapely.Polygon(rings[0], rings[1:]))
    geom = shapely.affinity.affine_transform(polys[0] if len(polys) == 1 else MultiPolygon(polys),
                                             transform.to_shapely())
    if not geom.is_valid:
        geom = shapely.make_valid(geom, method="structure", keep_collapsed=False)
    return geom


def _ring_by_ring(geom: shapely.Geometry, tolerance: float) -> shapely.Geometry:
    polys = []
    for p in shapely.get_parts(geom):
        rings = shapely.get_rings(p)
        lines = shapely.simplify(np.array([shapely.LineString(r.coords) for r in rings], dtype=object), tolerance,
                                 preserve_topology=False)
        coords = [np.asarray(line.coords) if len(line.coords) >= 4 else np.asarray(ring.coords)  # never collapsed
                  for line, ring in zip(lines, rings)]
        polys.append(shapely.Polygon(coords[0], coords[1:]))
    out = polys[0] if len(polys) == 1 else MultiPolygon(polys)
    if not out.is_valid:
        out = shapely.make_valid(out, method="structure", keep_collapsed=False)
    return out


def polygon(inst: Instance, transform: Affine, smooth: bool = False) -> shapely.Geometry:
    """The instance's mask as a valid (Multi)Polygon through `transform`."""
    return polygons([inst], transform, smooth=smooth)[0]


def polygons(instances: Sequence[Instance], transform: Affine, width: int = 4096, *,
             smooth: bool = False) -> list[shapely.Geometry]:
    """Polygons of many instances, with few calls to GDAL's polygonize.

    The instances' crops are packed side by side into a canvas (each pixel
    labelled with its instance), polygonised together, then every ring is
    moved back to its instance's place and through `transform`. A region's
    outline (traced band by band by the merge) only goes through `transform`.
    `smooth`: rings through the midpoints of their pixel edges (see the module's note), for simplifying.
    """
    out: list[shapely.Geometry | None] = [None] * len(instances)
    dense = []
    for k, inst in enumerate(instances):
        if inst.mask is None:  # a region: its outline is traced already (valid), in pixel coordinates
            outline = _smoothed(inst.outline) if smooth else inst.outline
            out[k] = shapely.affinity.affine_transform(outline, transform.to_shapely())
        else:
            dense.append(k)
    if dense:
        for k, geom in zip(dense, _traced([instances[k] for k in dense], transform, width, smooth)):
            out[k] = geom
    return out  # type: ignore[return-value]


def _traced(instances: Sequence[Instance], transform: Affine, width: int, smooth: bool) -> list[shapely.Geometry]:
    n = len(instances)
    masks = [inst.mask for inst in instances if inst.mask is not None]
    width = max(width, max(m.shape[1] for m in masks))
    shift = np.zeros((n, 2))  # canvas -> raster pixel offset (cols, rows), per instance
    parts: list[list[shapely.Geometry]] = [[] for _ in range(n)]

    def flush(canvas: np.ndarray) -> None:
        rings, owner, shells = [], [], []
        for g, v in shapes(canvas, mask=canvas > 0, connectivity=4):
            for i, ring in enumerate(g["coordinates"]):
                rings.append(np.asarray(ring, dtype=float))
                owner.append(int(v) - 1)
                shells.append(i == 0)
        if smooth:
            rings = [_midpoints(r) for r in rings]
        lengths = np.array([len(r) for r in rings])
        px = np.concatenate(rings) + shift[np.repeat(owner, lengths)]
        t = transform
        world = np.column_stack([t.a * px[:, 0] + t.b * px[:, 1] + t.c, t.d * px[:, 0] + t.e * px[:, 1] + t.f])
        starts = np.flatnonzero(shells)
        offsets = (np.concatenate([[0], np.cumsum(lengths)]), np.concatenate([starts, [len(rings)]]))
        polys = shapely.from_ragged_array(shapely.GeometryType.POLYGON, world, offsets)
        for poly, k in zip(polys, np.asarray(owner)[starts]):
            parts[k].append(poly)

    canvas = np.zeros((0, width), np.int32)  # 1024 rows at a time, more for a taller instance
    x = y = shelf = 0
    for k in sorted(range(n), key=lambda k: -masks[k].shape[0]):  # shelf packing, tallest first
        inst = instances[k]
        h, w = masks[k].shape
        if x + w > width:
            x, y, shelf = 0, y + shelf, 0
        if y + h > canvas.shape[0]:
            if y > 0:  # canvas full: polygonise it and start anew
                flush(canvas[:y])
                x, y, shelf = 0, 0, 0
            canvas = np.zeros((max(h, 1024), width), np.int32)
        canvas[y:y + h, x:x + w][masks[k]] = k + 1
        shift[k] = (inst.col - x, inst.row - y)
        x, shelf = x + w, max(shelf, h)
    flush(canvas[:y + shelf])
    return [_valid(p) for p in parts]


def centroids(instances: Sequence[Instance], transform: Affine) -> np.ndarray:
    """Each instance's centroid through `transform`: the centre of its pixels, as
    `--simplify 0` draws them, so that which objects an area keeps does not
    depend on the simplification; the strips of one object (see `Instance.part`)
    all have the object's (`Instance.centre`)."""
    xy = np.zeros((len(instances), 2))
    for k, inst in enumerate(instances):
        if inst.centre is not None:
            xy[k] = inst.centre
        elif inst.mask is None:
            c = shapely.centroid(inst.outline)
            xy[k] = c.x, c.y
        else:
            rows, cols = inst.mask.sum(axis=1), inst.mask.sum(axis=0)
            xy[k] = (inst.col + 0.5 + (cols * np.arange(cols.size)).sum() / cols.sum(),
                     inst.row + 0.5 + (rows * np.arange(rows.size)).sum() / rows.sum())
    t = transform
    return shapely.points(t.a * xy[:, 0] + t.b * xy[:, 1] + t.c, t.d * xy[:, 0] + t.e * xy[:, 1] + t.f)


def to_frame(
    instances: Sequence[Instance], transform: Affine, crs: CRS | None, *, source: str,
    simplify: float | None = None,
) -> gpd.GeoDataFrame:
    """Instances -> GeoDataFrame in the raster's CRS, in the order given. `simplify`: the
    tolerance in pixels (None: `SIMPLIFY`; 0: the pixel edges as they are)."""
    tol = tolerance(simplify)
    large = {k for k, inst in enumerate(instances)  # and the strips of a region: their cuts kept
             if tol > 0 and inst.mask is None and (inst.parts > 1 or shapely.get_num_coordinates(inst.outline) > LARGE)}
    rest = [k for k in range(len(instances)) if k not in large]
    geoms: list[shapely.Geometry] = [None] * len(instances)
    for k, geom in zip(rest, polygons([instances[k] for k in rest], transform, smooth=tol > 0)):
        geoms[k] = geom
    if tol > 0 and rest:
        for k, geom in zip(rest, simplified([geoms[k] for k in rest], tol * pixel_size(transform))):
            geoms[k] = geom
    for k in large:
        inst = instances[k]
        cuts = [inst.row] * (inst.part > 0) + [inst.row + inst.height] * (inst.part < inst.parts - 1)
        geoms[k] = _large_region(inst.outline, tol, transform, cuts)
    return gpd.GeoDataFrame(
        {
            "label": [inst.label for inst in instances],
            "score": np.array([inst.score for inst in instances], dtype=float),
            "n_tiles": np.array([inst.n_tiles for inst in instances], dtype=np.int32),
            "level": np.array([inst.level for inst in instances], dtype=np.int32),
            "source": source,
            "part": np.array([inst.part for inst in instances], dtype=np.int64),
        },
        geometry=gpd.GeoSeries(geoms, crs=crs),
    )


def _densify(gdf: gpd.GeoDataFrame, step: float) -> gpd.GeoSeries:
    return gpd.GeoSeries(shapely.segmentize(gdf.geometry.values, step), crs=gdf.crs, index=gdf.index)


def area_m2(geoms: gpd.GeoSeries, utm: CRS | None = None) -> np.ndarray:
    """Areas in square metres, measured in `utm` (default: the UTM zone of the data)."""
    if geoms.crs is None or geoms.empty:
        return np.full(len(geoms), np.nan)
    utm = utm or geoms.estimate_utm_crs()
    return np.asarray(geoms.to_crs(utm).area, dtype=float)


def finish(
    gdf: gpd.GeoDataFrame, transform: Affine, dst_crs: CRS | None = None, min_area: float | None = None,
    utm: CRS | None = None,
) -> gpd.GeoDataFrame:
    """Add `area_m2` (measured in `utm`, default the data's UTM zone), drop
    objects under `min_area` m² (the strips of one object by its whole area), reproject to `dst_crs`."""
    gdf = gdf.copy()
    gdf["area_m2"] = area_m2(gdf.geometry, utm)
    if min_area:
        if gdf.crs is None:
            raise UsageError(f"{option('min_area')} is in square metres and needs a georeferenced raster")
        whole = gdf["area_m2"]
        if "part" in gdf.columns:  # strips follow their first, part 0
            whole = whole.groupby((gdf["part"].to_numpy() == 0).cumsum()).transform("sum")
        gdf = gdf[whole >= min_area]
    if dst_crs is not None:
        if gdf.crs is None:
            raise UsageError(f"{option('dst_crs')} needs a georeferenced raster "
                             "(this one is read in pixel coordinates)")
        if not CRS(gdf.crs).equals(dst_crs):
            # densify to a few pixels so reprojected edges follow the projection
            gdf = gdf.set_geometry(_densify(gdf, 4 * pixel_size(transform))).to_crs(dst_crs)
    return gdf
