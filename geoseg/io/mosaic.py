"""Folders of adjacent tiles read as one raster: a GDAL VRT built in memory.

`build(paths)` returns the VRT's XML, a string GDAL opens as a dataset name
(no pixel is copied, reads go window by window across the files), so the
mosaic travels to Dask workers and process pools like any path. The tile plan
covers the union of the files; gaps between them are nodata (the VRT's mask
band is the union of the files' masks); where files overlap, the first file
(in the order given, folders sorted) wins. Files in another CRS than the
mosaic's (the first file's, or `dst_crs`) are warped on read, also window by
window. geoseg's own metadata in the XML names the mosaic and its members:
`sources` (which files an object comes from) and `geoseg.io.sources`
(`mosaic_identity`, the resume fingerprint) read it back without GDAL.
"""

from __future__ import annotations

import functools
import json
import math
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import rasterio
import rasterio.shutil
import shapely
from pyproj import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.io import MemoryFile
from rasterio.transform import array_bounds
from rasterio.vrt import WarpedVRT
from rasterio.warp import calculate_default_transform, transform_bounds, transform_geom

from geoseg.core.vectorize import parse_crs
from geoseg.errors import GeosegWarning, RasterError, UsageError, option
from geoseg.io.raster import crs_resolution, open_dataset
from geoseg.io.sources import MARK, mosaic_meta, unique_names

_GDAL_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
               "int32": "Int32", "uint64": "UInt64", "int64": "Int64", "float32": "Float32", "float64": "Float64"}
_RES_TOLERANCE = 0.05  # a warped file's pixel size is an estimate: within 5 % it is the mosaic's
_REACH = 6.0  # degrees beyond a CRS's area of use where files are still warped into it (one UTM zone)


class ReprojectWarning(GeosegWarning):
    """Files of a mosaic in another CRS than the mosaic's are warped on read."""


@dataclass(frozen=True)
class _Member:
    path: str
    count: int
    dtype: str
    crs: Any
    transform: Any
    width: int
    height: int
    colorinterp: tuple[str, ...]
    all_valid: bool = False  #: no nodata, mask or alpha: read as a plain source (no mask to read)
    nodata: tuple[float, ...] | None = None  #: per-band nodata values, where the file's mask comes from them
    footprint: Any = None  #: in the mosaic's CRS
    warped: bool = False


def _open(path: str) -> _Member:
    with open_dataset(path) as ds:
        if ds.crs is None:
            raise RasterError(f"{path} has no CRS: a mosaic places its files by their georeferencing: assign one "
                              f"(gdal_edit.py -a_srs EPSG:XXXX) or leave it out")
        return _Member(path, ds.count, ds.dtypes[0], ds.crs, ds.transform, ds.width, ds.height,
                       tuple(ci.name.title() for ci in ds.colorinterp),
                       all(flags == [MaskFlags.all_valid] for flags in ds.mask_flag_enums),
                       tuple(ds.nodatavals) if all(MaskFlags.nodata in f and MaskFlags.per_dataset not in f
                                                   for f in ds.mask_flag_enums) else None)


def _resolution(m: _Member, crs: Any) -> tuple[float, float]:
    if not m.warped:
        return abs(m.transform.a), abs(m.transform.e)
    left, bottom, right, top = array_bounds(m.height, m.width, m.transform)
    t, _, _ = calculate_default_transform(m.crs, crs, m.width, m.height, left, bottom, right, top)
    return abs(t.a), abs(t.e)


def _footprint(m: _Member, crs: Any) -> Any:
    box = shapely.segmentize(shapely.Polygon([m.transform @ xy for xy in
                                              ((0, 0), (m.width, 0), (m.width, m.height), (0, m.height))]),
                             max(m.width * abs(m.transform.a), m.height * abs(m.transform.e)) / 16)
    if not m.warped:
        return box
    geom = shapely.geometry.shape(transform_geom(m.crs, crs, shapely.geometry.mapping(box)))
    if geom.is_empty or not np.isfinite(shapely.get_coordinates(geom)).all() or not _within_reach(m, crs):
        raise UsageError(f"{m.path} cannot be placed in {_crs_name(crs)} (its extent lies outside what that CRS "
                         f"covers): pass {option('dst_crs')} with a CRS that covers every file")
    return geom


def _within_reach(m: _Member, crs: Any) -> bool:
    """Whether the member lies in `crs`'s area of use grown by `_REACH` degrees
    (a neighbouring UTM zone is in reach, the other side of the globe is not)."""
    use = CRS.from_user_input(crs).area_of_use
    if use is None:
        return True
    lon0, lat0, lon1, lat1 = transform_bounds(m.crs, "EPSG:4326", *array_bounds(m.height, m.width, m.transform))
    west, east = use.west - _REACH, use.east + _REACH
    if west > east:  # an area across the antimeridian
        east += 360
    lon0, lon1 = (lon0, lon1) if lon0 >= west else (lon0 + 360, lon1 + 360)
    return lon0 <= east and lon1 >= west and lat0 <= use.north + _REACH and lat1 >= use.south - _REACH


def _crs_name(crs: Any) -> str:
    code = crs.to_authority()
    return ":".join(code) if code else crs.name


def _same(a: float, b: float, tol: float) -> bool:
    return abs(a - b) <= tol * max(a, b)


def _check(ms: list[_Member], bands: Sequence[int] | None) -> None:
    first = ms[0]
    for m in ms[1:]:
        if (m.count, m.dtype) != (first.count, first.dtype):
            raise UsageError(f"{m.path} has {m.count} bands of {m.dtype} but {first.path} {first.count} of "
                             f"{first.dtype}: a mosaic needs the same bands in every file; segment them "
                             f"without {option('mosaic')}")
    bad = [b for b in bands or () if not 1 <= b <= first.count]
    if bad:
        raise UsageError(f"{option('bands', bad[0])} is out of range: the files have bands 1 to {first.count}")


def _grid_resolution(ms: list[_Member], crs: Any, resolution: float | None) -> tuple[float, float]:
    if resolution is not None:
        if resolution <= 0:
            raise UsageError(f"{option('resolution', resolution)} must be a positive ground distance in CRS units")
        return float(resolution), float(resolution)
    res = [(m, _resolution(m, crs)) for m in ms]
    exact = [(m, r) for m, r in res if not m.warped]
    ref_m, ref = (exact or res)[0]
    for m, r in res:
        tol = _RES_TOLERANCE if m.warped or ref_m.warped else 1e-6
        if not (_same(r[0], ref[0], tol) and _same(r[1], ref[1], tol)):
            raise UsageError(f"{m.path} has {r[0]:.6g} x {r[1]:.6g} pixels but {ref_m.path} {ref[0]:.6g} x "
                             f"{ref[1]:.6g}: pass {option('resolution')} to read the mosaic at one pixel size")
    return ref


def _name(paths: list[str]) -> str:
    local = [p for p in paths if "://" not in p and not p.startswith("/vsi")]
    if len(local) == len(paths):
        parent = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
        if Path(parent).name:
            return Path(parent).name
    return "mosaic"


def build(paths: Sequence[str | os.PathLike[str]], *, dst_crs: Any = None, resolution: float | None = None,
          bands: Sequence[int] | None = None, name: str | None = None, metres: bool = False) -> str:
    """One virtual raster over `paths` (GDAL-openable names): its VRT XML.

    Only metadata is read. The grid is the first file's (its CRS, pixel size
    and pixel alignment) stretched over the union of all files, unless
    `dst_crs` or `resolution` say otherwise. Files in another CRS are warped
    (nearest neighbour, as gdalbuildvrt resamples) with a `ReprojectWarning`.

    Raises:
        UsageError: no file, files with other band counts or dtypes, several
            pixel sizes without `resolution`, a file outside `dst_crs`'s reach.
        RasterError: a file that cannot be opened or has no CRS.
    """
    names_given = [str(p) for p in paths]
    if not names_given:
        raise UsageError(f"{option('mosaic')} needs at least one raster file")
    local = [p if "://" in p or p.startswith("/vsi") else os.path.abspath(p) for p in names_given]
    with ThreadPoolExecutor(max_workers=8) as pool:  # metadata only; remote files cost a request each
        ms = list(pool.map(_open, local))
    _check(ms, bands)
    crs = parse_crs(dst_crs) if dst_crs is not None else ms[0].crs
    ms = [replace(m, warped=m.crs != crs or m.transform.b != 0 or m.transform.d != 0) for m in ms]
    ms = [replace(m, footprint=_footprint(m, crs)) for m in ms]
    xres, yres = _grid_resolution(ms, crs, resolution)
    if metres and resolution is not None:  # a model's resolution, in metres: in the mosaic's units
        xres, yres = crs_resolution(resolution, crs, shapely.total_bounds([m.footprint for m in ms]))
    warped = [m.path for m in ms if m.warped]
    if warped:
        shown = ", ".join(Path(p).name for p in warped[:5]) + (" ..." if len(warped) > 5 else "")
        warnings.warn(f"{len(warped)} of {len(ms)} files are not in {_crs_name(crs)} and are warped to it on read: "
                      f"{shown}", ReprojectWarning, stacklevel=2)
    left, bottom, right, top = shapely.total_bounds([m.footprint for m in ms])
    anchor = next((m for m in ms if not m.warped), None)
    if anchor is not None:  # the grid keeps the first unwarped file's pixel alignment
        ax, ay = anchor.transform.c, anchor.transform.f
        left = ax - math.ceil((ax - left) / xres - 1e-6) * xres
        top = ay + math.ceil((top - ay) / yres - 1e-6) * yres
    width = max(1, math.ceil((right - left) / xres - 1e-6))
    height = max(1, math.ceil((top - bottom) / yres - 1e-6))
    grid = rasterio.Affine(xres, 0, left, 0, -yres, top)
    meta = {"name": name or _name(names_given), "paths": local, "names": unique_names(names_given),
            "footprints": [shapely.to_wkt(m.footprint, rounding_precision=-1) for m in ms]}
    sources = [_source(m, grid, crs) for m in reversed(ms)]  # painted in order: the first file last, on top
    first = ms[0]
    out = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
           f'<Metadata domain="geoseg"><MDI key="{MARK}">{escape(json.dumps(meta))}</MDI></Metadata>',
           f"<SRS>{escape(crs.to_wkt())}</SRS>",
           f"<GeoTransform>{', '.join(repr(v) for v in grid.to_gdal())}</GeoTransform>"]
    gdal_type = _GDAL_TYPES[first.dtype]
    for b in range(1, first.count + 1):
        out.append(f'<VRTRasterBand dataType="{gdal_type}" band="{b}">'
                   f"<ColorInterp>{first.colorinterp[b - 1]}</ColorInterp>")
        out += [f"<SimpleSource>{src}<SourceBand>{b}</SourceBand>{rects}</SimpleSource>" if plain else
                f"<ComplexSource>{src}<SourceBand>{b}</SourceBand>{rects}<UseMaskBand>true</UseMaskBand>"
                f"</ComplexSource>" for src, rects, plain in sources]
        out.append("</VRTRasterBand>")
    out.append('<MaskBand><VRTRasterBand dataType="Byte">')
    out += [f"<ComplexSource>{src}<SourceBand>mask,1</SourceBand>{rects}<NODATA>0</NODATA></ComplexSource>"
            for src, rects, _ in sources]
    out.append("</VRTRasterBand></MaskBand></VRTDataset>")
    return "".join(out)


def _source(m: _Member, grid: Any, crs: Any) -> tuple[str, str, bool]:
    """A member's <SourceFilename>, its <SrcRect>/<DstRect> in the mosaic grid, and
    whether its pixels are all valid (then painted without reading its mask)."""
    xres, yres = grid.a, -grid.e
    if not m.warped:
        x0 = (m.transform.c - grid.c) / xres
        y0 = (grid.f - m.transform.f) / yres
        w, h = m.width * abs(m.transform.a) / xres, m.height * abs(m.transform.e) / yres
        rects = (f'<SrcRect xOff="0" yOff="0" xSize="{m.width}" ySize="{m.height}"/>'
                 f'<DstRect xOff="{x0!r}" yOff="{y0!r}" xSize="{w!r}" ySize="{h!r}"/>')
        return f'<SourceFilename relativeToVRT="0">{escape(_dataset_mask(m))}</SourceFilename>', rects, m.all_valid
    # warped onto the mosaic's grid, over the member's footprint only
    fx0, fy0, fx1, fy1 = m.footprint.bounds
    c0, r0 = math.floor((fx0 - grid.c) / xres), math.floor((grid.f - fy1) / yres)
    c1, r1 = math.ceil((fx1 - grid.c) / xres), math.ceil((grid.f - fy0) / yres)
    w, h = max(1, c1 - c0), max(1, r1 - r0)
    transform = grid @ rasterio.Affine.translation(c0, r0)
    with rasterio.open(m.path) as ds, \
            WarpedVRT(ds, crs=crs, transform=transform, width=w, height=h, resampling=Resampling.nearest,
                      add_alpha=True) as vrt, MemoryFile(ext=".vrt") as mem:
        rasterio.shutil.copy(vrt, mem.name, driver="VRT")
        xml = mem.read().decode()
    rects = (f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
             f'<DstRect xOff="{c0}" yOff="{r0}" xSize="{w}" ySize="{h}"/>')
    return f'<SourceFilename relativeToVRT="0">{escape(xml)}</SourceFilename>', rects, False


def _dataset_mask(m: _Member) -> str:
    """The member's name, or for a file whose nodata is per band a VRT over it whose mask
    is per pixel (nodata only where every band is), as geoseg reads a single file."""
    if m.nodata is None:
        return m.path
    bands = "".join(f'<VRTRasterBand dataType="{_GDAL_TYPES[m.dtype]}" band="{b}"><SimpleSource>'
                    f'<SourceFilename relativeToVRT="0">{escape(m.path)}</SourceFilename><SourceBand>{b}</SourceBand>'
                    f"</SimpleSource></VRTRasterBand>" for b in range(1, m.count + 1))
    values = " ".join(repr(float(v)) for v in m.nodata)
    return (f'<VRTDataset rasterXSize="{m.width}" rasterYSize="{m.height}"><Metadata><MDI key="NODATA_VALUES">'
            f"{values}</MDI></Metadata>{bands}</VRTDataset>")


class _Attribution:
    """The part of the mosaic each member's pixels are read from (the first file wins)."""

    def __init__(self, xml: str) -> None:
        meta = mosaic_meta(xml)
        self.names = list(meta["names"])
        shapes = shapely.from_wkt(meta["footprints"])
        tree = shapely.STRtree(shapes)
        own = []
        for k, shape in enumerate(shapes):
            earlier = [j for j in tree.query(shape) if j < k]
            own.append(shapely.difference(shape, shapely.union_all(shapes[earlier])) if earlier else shape)
        self.own = np.array(own, dtype=object)
        self.tree = shapely.STRtree(self.own)


@functools.lru_cache(maxsize=4)
def _attribution(xml: str) -> _Attribution:
    return _Attribution(xml)


def sources(xml: str, geometries: Any) -> list[str]:
    """Per geometry (in the mosaic's CRS), the names of the files its pixels
    were read from, comma-separated in the mosaic's order."""
    att = _attribution(xml)
    geoms = np.asarray(geometries, dtype=object)
    hits: list[list[int]] = [[] for _ in range(len(geoms))]
    if len(geoms):
        g_idx, m_idx = att.tree.query(geoms, predicate="intersects")
        for g, m in zip(g_idx, m_idx):
            if shapely.intersection(geoms[g], att.own[m]).area > 0:
                hits[g].append(int(m))
    return [",".join(att.names[m] for m in sorted(h)) for h in hits]


def from_settings(paths: Sequence[Any], settings: Any) -> str:
    """`build` with a run's `Settings`: its `dst_crs`, `resolution` and `bands`."""
    read = settings.read
    odd = next((p for p in paths if not isinstance(p, (str, os.PathLike))), None)
    if odd is not None:
        raise UsageError(f"{option('mosaic')} takes raster files and folders, not a {type(odd).__name__}")
    if read.pixel_coords:
        raise UsageError(f"{option('mosaic')} places the files by their CRS: leave out {option('pixel_coords')}")
    return build(paths, dst_crs=settings.dst_crs, resolution=read.resolution, bands=read.bands, metres=read.metres)
