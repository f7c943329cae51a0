"""Exemplar boxes drawn on a map: read from a vector file, placed on each raster's pixel grid.

Each feature's envelope is one box; its `prompt` column (optional) names the
concept it is an example of, its `positive` column (optional boolean, default
true) says "like this" or "not like this". A box is placed, like an area
(`geoseg.io.area`), by reprojecting it (densified) to a raster's CRS and taking
its envelope in that raster's pixels; the first input holding its centre
holds it, and it is encoded on the tile of that input it lies in most centrally.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any

import geopandas as gpd
import numpy as np
import shapely
import shapely.affinity
from pyproj import CRS

from geoseg.core.exemplars import MIN_MODEL_PX, Exemplars, Shot, concepts, home_tile, model_px
from geoseg.core.refine import Refine, levels
from geoseg.core.tiling import plan_tiles
from geoseg.errors import UsageError, option
from geoseg.io.raster import RasterSource, ReadOptions, each_source
from geoseg.io.sources import source_name
from geoseg.io.vectors import UserFile, boolean_column, prompt_column, read_vector


@dataclass(frozen=True)
class ExemplarFile(UserFile):
    """The boxes of an exemplar file, in its own CRS.

    Attributes:
        bounds: (K, 4) minx, miny, maxx, maxy of each feature, in `crs` (WKT).
        labels: each box's prompt, or None.
        positive: each box's sign.
        name: the file as the user gave it (or "GeoDataFrame").
        digest: of the geometries, the CRS and both columns: the resume check.
    """

    bounds: tuple[tuple[float, float, float, float], ...]
    crs: str
    labels: tuple[str | None, ...]
    positive: tuple[bool, ...]
    name: str
    digest: str

    PARAM = "exemplars"

    def concepts(self, prompts: list[str]) -> tuple[list[str], list[str], list[tuple[str, ...]]]:
        """`geoseg.core.exemplars.concepts` of these boxes with text `prompts`."""
        return concepts(prompts, self.labels, self.positive, self.named())


def read_exemplars(source: Any) -> ExemplarFile:
    """Read a vector file (any format GDAL reads), a GeoDataFrame or a GeoSeries of exemplar boxes."""
    if isinstance(source, gpd.GeoSeries):
        source = gpd.GeoDataFrame(geometry=source)
    name = "GeoDataFrame" if isinstance(source, gpd.GeoDataFrame) else str(source)
    gdf = read_vector(source, name="exemplars")
    probe = ExemplarFile((), "", (), (), name, "")
    if gdf.empty:
        raise UsageError(f"{probe.named()}: holds no box: draw a rectangle around an example of what to find")
    lost = np.flatnonzero((gdf.geometry.isna() | gdf.geometry.is_empty).to_numpy())
    if lost.size:  # a box drawn with NaN coordinates reads as no geometry: never dropped without a word
        raise UsageError(f"{probe.named()}: feature {lost[0] + 1} has no geometry (or coordinates that are not "
                         f"numbers): redraw it, or delete it")
    if gdf.crs is None:
        raise UsageError(f"{probe.named()} has no CRS: set one (e.g. ogr2ogr -a_srs EPSG:4326 out.gpkg in.gpkg)")
    labels = tuple(prompt_column(gdf, "prompt", probe.named()))
    positive = tuple(boolean_column(gdf, "positive", probe.named(), "true for an example of what to find, false for "
                                    "one of what not to find"))
    bounds = _bounds(gdf, probe)
    digest = hashlib.sha1(gdf.crs.to_wkt().encode())
    for geom, label, pos in zip(gdf.geometry.values, labels, positive):
        digest.update(shapely.to_wkb(geom) + repr((label, pos)).encode())
    return ExemplarFile(bounds, gdf.crs.to_wkt(), labels, positive, name, digest.hexdigest()[:10])  # type: ignore[arg-type]


def _bounds(gdf: gpd.GeoDataFrame, file: ExemplarFile) -> tuple[tuple[float, float, float, float], ...]:
    """Each feature's envelope; refuses, naming the feature, a point or a line (a box has an area)
    and coordinates that are not finite numbers."""
    kinds = gdf.geometry.geom_type.to_numpy()
    out = []
    for k, (kind, box) in enumerate(zip(kinds, gdf.geometry.bounds.to_numpy())):
        if kind not in ("Polygon", "MultiPolygon"):
            raise UsageError(f"{file.named()}: feature {k + 1} is a {kind}: draw a rectangle around the example "
                             f"(a polygon; its envelope is the box)")
        if not np.isfinite(box).all():
            raise UsageError(f"{file.named()}: feature {k + 1} has coordinates that are not numbers "
                             f"({', '.join(f'{v:g}' for v in box)}): redraw it")
        if gdf.crs.is_geographic and not (-360 <= box[0] and box[2] <= 360 and -90 <= box[1] and box[3] <= 90):
            raise UsageError(f"{file.named()}: feature {k + 1} has coordinates ({box[0]:.8g}, {box[1]:.8g}) that "
                             f"are not degrees, though its CRS is {gdf.crs.to_string()}: set the file's right CRS")
        if box[2] <= box[0] or box[3] <= box[1]:
            raise UsageError(f"{file.named()}: feature {k + 1} has no area ({', '.join(f'{v:g}' for v in box)}): "
                             f"draw a rectangle around the example")
        out.append(tuple(float(v) for v in box))
    return tuple(out)  # type: ignore[return-value]


@dataclass(frozen=True)
class Placed:
    """Where one box is encoded: input, home tile, box (x0, y0, x1, y1) in its pixels."""

    box: int
    source: int
    tile: int
    xyxy: tuple[float, float, float, float]


def in_pixels(file: ExemplarFile, src: RasterSource) -> np.ndarray:
    """Every box's envelope in the pixel grid of `src`: (K, 4) x0, y0, x1, y1 (col, row)."""
    if src.crs is None:
        raise UsageError(f"{file.named()} has a CRS but {src.path} is read in pixel coordinates: "
                         f"give a raster with a CRS")
    boxes = [shapely.box(*b) for b in file.bounds]
    if not CRS.from_user_input(src.crs).equals(CRS.from_wkt(file.crs)):
        dense = [shapely.segmentize(b, max(b.bounds[2] - b.bounds[0], b.bounds[3] - b.bounds[1]) / 16)
                 for b in boxes]
        with np.errstate(all="ignore"):
            boxes = list(gpd.GeoSeries(dense, crs=file.crs).to_crs(src.crs).values)
    inverse = (~src.transform).to_shapely()
    out = np.full((len(boxes), 4), np.nan)
    for k, b in enumerate(boxes):
        # a box whose coordinates the CRS cannot take (degrees in a UTM file) comes back not finite
        if b is not None and not b.is_empty and np.isfinite(shapely.get_coordinates(b)).all():
            out[k] = shapely.bounds(shapely.affinity.affine_transform(b, inverse))
    return out


def place(file: ExemplarFile, paths: list[Any], read: ReadOptions, *, tile_size: int, overlap: int,
          refine: Refine) -> list[Placed]:
    """Where each box is encoded; refuses, naming the box, one outside every input, one
    smaller than `MIN_MODEL_PX` model pixels where it is first applied, one larger than a tile."""
    whole = replace(read, area=None)  # a box may lie outside the area to segment
    found: dict[int, Placed] = {}
    first = levels(tile_size, overlap)[refine.zoom][0]
    for s, src in each_source(paths, whole):
        px = in_pixels(file, src)
        plan = plan_tiles(src.height, src.width, tile_size, overlap)
        for k, (x0, y0, x1, y1) in enumerate(px):
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            if k in found or not (np.isfinite(px[k]).all() and 0 <= cx < src.width and 0 <= cy < src.height):
                continue
            box = (max(x0, 0.0), max(y0, 0.0), min(x1, float(src.width)), min(y1, float(src.height)))
            t = plan.tile(home_tile(box, plan))
            shown = f"{file.named()}: box {k + 1} ({_box(file, k)})"
            if max(box[2] - box[0], box[3] - box[1]) > tile_size:
                raise UsageError(f"{shown} is {box[2] - box[0]:.0f} x {box[3] - box[1]:.0f} px in "
                                 f"{source_name(paths[s])}, larger than a tile ({option('tile_size', tile_size)}): "
                                 f"draw it around one object, or raise {option('tile_size')}")
            size = model_px(box, first)
            if size < MIN_MODEL_PX:
                raise UsageError(f"{shown} is {size:.1f} model pixels across in {source_name(paths[s])}, fewer "
                                 f"than {MIN_MODEL_PX}: the model cannot see it; draw it around the whole "
                                 f"object, or use {option('zoom')} or a smaller {option('tile_size')}")
            xyxy = (box[0] - t.window.col, box[1] - t.window.row, box[2] - t.window.col, box[3] - t.window.row)
            found[k] = Placed(k, s, t.index, xyxy)
    missing = [k for k in range(len(file.bounds)) if k not in found]
    if missing:
        k = missing[0]
        raise UsageError(f"{file.named()}: box {k + 1} ({_box(file, k)}) lies outside every input: draw it "
                         f"on the rasters segmented, and check the file's CRS")
    return [found[k] for k in range(len(file.bounds))]


def _box(file: ExemplarFile, k: int) -> str:
    label = file.labels[k]
    crs = CRS.from_wkt(file.crs).to_string()
    x0, y0, x1, y1 = file.bounds[k]
    what = f"prompt {label!r}, " if label is not None else ""
    return f"{what}{'positive' if file.positive[k] else 'negative'}, {x0:.8g},{y0:.8g},{x1:.8g},{y1:.8g} {crs}"


def prepare(file: ExemplarFile, paths: list[Any], read: ReadOptions, prompts: list[str], *, tile_size: int,
            overlap: int, refine: Refine) -> Exemplars:
    """The run's exemplars placed, with the pixels of their home tiles (each read once).
    `prompts`: the text prompts."""
    placed = place(file, paths, read, tile_size=tile_size, overlap=overlap, refine=refine)
    _, only, serves = file.concepts(prompts)
    shots = []
    whole = replace(read, area=None)
    homes = sorted({(p.source, p.tile) for p in placed})
    for s in sorted({s for s, _ in homes}):
        with RasterSource(paths[s], whole) as src:
            plan = plan_tiles(src.height, src.width, tile_size, overlap)
            for _, t in [h for h in homes if h[0] == s]:
                rgb, _ = src.read(plan.tile(t).window)
                mine = [p for p in placed if (p.source, p.tile) == (s, t)]
                shots.append(Shot(rgb, np.array([p.xyxy for p in mine], float),
                                  np.array([file.positive[p.box] for p in mine], bool),
                                  tuple(serves[p.box] for p in mine)))
    return Exemplars(tuple(shots), tuple(only), tile_size, overlap)
