"""Object prompts drawn on a map: clicks and boxes read from a vector file, placed on a raster.

Each point is a click on an object; each polygon's envelope is a box around
one. Columns, all optional: `object` (features sharing a value are one object:
several clicks, or clicks and a box; without it each feature is its own),
`positive` (boolean, default true: false is a click on what is not the
object) and `label` (written to the output; default "object").
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any

import geopandas as gpd
import numpy as np
import shapely
from pyproj import CRS

from geoseg.core.objects import ObjectPrompt
from geoseg.errors import UsageError, option
from geoseg.io.raster import RasterSource, each_source
from geoseg.io.vectors import UserFile, boolean_column, prompt_column, read_vector

MAX_BOX = 8192  #: the largest box side in pixels of the grid read (a larger one is refused)
_POINTS = ("Point", "MultiPoint")
_BOXES = ("Polygon", "MultiPolygon")


@dataclass(frozen=True)
class ObjectFile(UserFile):
    """The objects of a file, in its CRS: per object its clicks, their signs, its box and label."""

    ids: tuple[str, ...]
    points: tuple[tuple[tuple[float, float], ...], ...]
    positive: tuple[tuple[bool, ...], ...]
    boxes: tuple[tuple[float, float, float, float] | None, ...]
    labels: tuple[str, ...]
    crs: str
    name: str
    digest: str

    PARAM = "objects"


def read_objects(source: Any) -> ObjectFile:
    """Read a vector file (any format GDAL reads, `FILE:LAYER`), a GeoDataFrame or GeoSeries of
    object prompts. Refuses, in one line: no feature, no CRS, a line, a feature without geometry or
    with coordinates that are not numbers, an object with only negative clicks or with two boxes,
    a `positive` column that is not boolean, a `label` that `-p` would refuse."""
    if isinstance(source, gpd.GeoSeries):
        source = gpd.GeoDataFrame(geometry=source)
    name = "GeoDataFrame" if isinstance(source, gpd.GeoDataFrame) else str(source)
    gdf = read_vector(source, name="objects")
    probe = ObjectFile((), (), (), (), (), "", name, "")
    if gdf.empty:
        raise UsageError(f"{probe.named()}: holds no feature: click on the object to outline, or draw a box")
    if gdf.crs is None:
        raise UsageError(f"{probe.named()} has no CRS: set one (e.g. ogr2ogr -a_srs EPSG:4326 out.gpkg in.gpkg)")
    for k, geom in enumerate(gdf.geometry.values):
        kind = None if geom is None or geom.is_empty else geom.geom_type
        if kind not in _POINTS + _BOXES:
            what = "no geometry" if kind is None else f"a {kind}"
            raise UsageError(f"{probe.named()}: feature {k + 1} is {what}: give points (clicks on the object) or "
                             f"polygons (boxes around it)")
        if not np.isfinite(shapely.get_coordinates(geom)).all():
            raise UsageError(f"{probe.named()}: feature {k + 1} has coordinates that are not numbers: redraw it")
    signs = boolean_column(gdf, "positive", probe.named(), "true for a click on the object, false for one on "
                           "what is not it")
    labels = prompt_column(gdf, "label", probe.named())
    groups = [str(v) for v in gdf["object"]] if "object" in gdf.columns else [str(k + 1) for k in range(len(gdf))]
    order = list(dict.fromkeys(groups))
    points: dict[str, list[tuple[float, float]]] = {g: [] for g in order}
    pos: dict[str, list[bool]] = {g: [] for g in order}
    boxes: dict[str, tuple[float, float, float, float] | None] = dict.fromkeys(order)
    label: dict[str, str] = {}
    for g, geom, sign, lab in zip(groups, gdf.geometry.values, signs, labels):
        if lab is not None:
            label.setdefault(g, lab)
        if geom.geom_type in _BOXES:
            if boxes[g] is not None:
                raise UsageError(f"{probe.named()}: object {g!r} has two boxes: give one box an object, and "
                                 f"clicks for the rest")
            if not sign:
                raise UsageError(f"{probe.named()}: object {g!r} has a negative box: a box is drawn around the "
                                 f"object; click (positive = false) on what is not it")
            boxes[g] = tuple(float(v) for v in geom.bounds)  # type: ignore[assignment]
            continue
        for pt in shapely.get_parts(geom):
            points[g].append((float(pt.x), float(pt.y)))
            pos[g].append(sign)
    for g in order:
        if boxes[g] is None and not any(pos[g]):
            raise UsageError(f"{probe.named()}: object {g!r} has negative clicks only: click on the object too "
                             f"(positive = true), or draw a box around it")
    digest = hashlib.sha1(gdf.crs.to_wkt().encode())
    for g in order:
        digest.update(repr((g, points[g], pos[g], boxes[g], label.get(g))).encode())
    return ObjectFile(tuple(order), tuple(tuple(points[g]) for g in order), tuple(tuple(pos[g]) for g in order),
                      tuple(boxes[g] for g in order), tuple(label.get(g, "object") for g in order),
                      gdf.crs.to_wkt(), name, digest.hexdigest()[:10])


@dataclass(frozen=True)
class Placed:
    """One object placed on an input: which input, its prompts in that raster's pixels."""

    index: int  #: the object's number in its file (0-based)
    source: int
    prompt: ObjectPrompt


def _to_pixels(xy: np.ndarray, file: ObjectFile, src: RasterSource) -> np.ndarray:
    """Map coordinates (N, 2) in the file's CRS -> pixel x, y (N, 2) of `src`; NaN where they cannot be."""
    if src.crs is None:
        raise UsageError(f"{file.named()} has a CRS but {src.path} is read in pixel coordinates: "
                         f"give a raster with a CRS")
    if len(xy) == 0:
        return xy
    pts = gpd.GeoSeries(shapely.points(xy), crs=file.crs)
    if not CRS.from_user_input(src.crs).equals(CRS.from_wkt(file.crs)):
        with np.errstate(all="ignore"):
            pts = pts.to_crs(src.crs)
    c = shapely.get_coordinates(pts.values)
    inv = ~src.transform
    return np.column_stack([inv.a * c[:, 0] + inv.b * c[:, 1] + inv.c, inv.d * c[:, 0] + inv.e * c[:, 1] + inv.f])


def place(file: ObjectFile, paths: list[Any], read: Any) -> list[Placed]:
    """Each object on the first input holding the centre of its prompts, in that raster's pixels (as
    read: resolution, area's grid aside). Refuses, naming it, an object outside every input and a
    box larger than `MAX_BOX` pixels."""
    whole = replace(read, area=None)
    found: dict[int, Placed] = {}
    for s, src in each_source(paths, whole):
        for k in range(len(file.ids)):
            if k in found:
                continue
            xy = _to_pixels(np.array(file.points[k], float).reshape(-1, 2), file, src)
            box = None
            if file.boxes[k] is not None:
                x0, y0, x1, y1 = file.boxes[k]  # type: ignore[misc]
                corners = _to_pixels(np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], float), file, src)
                if not np.isfinite(corners).all():
                    continue
                box = (float(corners[:, 0].min()), float(corners[:, 1].min()), float(corners[:, 0].max()),
                       float(corners[:, 1].max()))
            if not np.isfinite(xy).all():
                continue
            centre = np.vstack([xy, [[(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]]]) if box else xy
            cx, cy = centre.mean(axis=0)
            if not (0 <= cx < src.width and 0 <= cy < src.height):
                continue
            if box is not None and max(box[2] - box[0], box[3] - box[1]) > MAX_BOX:
                raise UsageError(f"{file.named()}: object {file.ids[k]!r} has a box of "
                                 f"{box[2] - box[0]:.0f} x {box[3] - box[1]:.0f} px in {src.path}, more than "
                                 f"{MAX_BOX} a side: draw it around one object, or read coarser with "
                                 f"{option('resolution')}")
            prompt = ObjectPrompt(xy, np.array(file.positive[k], bool), box, file.labels[k])
            found[k] = Placed(k, s, prompt)
    missing = [k for k in range(len(file.ids)) if k not in found]
    if missing:
        raise UsageError(f"{file.named()}: object {file.ids[missing[0]]!r} lies outside every input: click on "
                         f"the rasters segmented, and check the file's CRS")
    return [found[k] for k in range(len(file.ids))]
