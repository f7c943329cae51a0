"""An area of a tile or map service, read as a raster through GDAL.

A service (`geoseg.io.services`: an XYZ/TMS template, a WMTS or a WMS) at a level
of detail is a GDAL dataset, often the whole world. A run reads only its area:
the source geoseg segments is a VRT of the area plus a margin, on the service's
tile grid, cut from that dataset, so everything downstream (tiling, seams, resume,
the area kept by centre) is the same as for a GeoTIFF. Tiles the service does not
have (404, 204) are empty, their pixels nodata (alpha 0), not an error. Reads go
through `read_retrying`: GDAL's options for the service (cache, User-Agent, HTTP
headers, which stay in this process's memory only), and new tries while the
service answers 429 or 5xx.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from xml.sax.saxutils import escape

import rasterio
import rasterio.shutil
from pyproj import CRS, Transformer
from rasterio.errors import RasterioIOError

from geoseg.errors import RunError, UsageError, keep_secret, option, redact
from geoseg.io.files import replace
from geoseg.io.services import (
    TILE,
    USER_AGENT,
    WebOptions,
    default_cache,
    is_web,
    kind,
    template_of,
    wms_crs,
    wms_xml,
    wmts_xml,
    xyz_xml,
    zoom_for,
)
from geoseg.io.sources import WEB_MARK, web_meta

log = logging.getLogger("geoseg")
T = TypeVar("T")

# GDAL's options for the reads of each service area opened in this process: its cache folder,
# the User-Agent, and the HTTP headers (an API key), which are never written into the VRT, a
# work folder or an output
_ENV: dict[str, dict[str, str]] = {}


@dataclass(frozen=True)
class Grid:
    """The part of a service's dataset read: a pixel window on its tile grid, and its zoom."""

    col: int
    row: int
    width: int
    height: int
    tile: int  #: the service tile's side, in pixels
    zoom: int | None  #: the zoom level (None for a WMS, which has none)

    @property
    def tiles(self) -> int:
        """The service tiles (or WMS requests) it takes."""
        return math.ceil(self.width / self.tile) * math.ceil(self.height / self.tile)


def _bounds_in(area: Any, crs: Any) -> tuple[float, float, float, float]:
    """The area's bounds in `crs` (the area's own CRS, else `crs` itself), densified."""
    bounds = area.geometry.bounds
    if area.crs is None or CRS.from_user_input(area.crs).equals(CRS.from_user_input(crs)):
        return bounds  # type: ignore[no-any-return]
    t = Transformer.from_crs(area.crs, crs, always_xy=True)
    return t.transform_bounds(*bounds, densify_pts=21)  # type: ignore[no-any-return]


def _latitude(area: Any, crs: Any) -> float:
    """The latitude of the area's centre (its own CRS, else `crs`)."""
    minx, miny, maxx, maxy = area.geometry.bounds
    t = Transformer.from_crs(area.crs or crs, "EPSG:4326", always_xy=True)
    return float(t.transform((minx + maxx) / 2, (miny + maxy) / 2)[1])


def _ground(crs: Any, res: float, latitude: float) -> float:
    """Ground metres of a pixel of `res` CRS units at `latitude`."""
    c = CRS.from_user_input(crs)
    if c.is_geographic:
        return res * 111_320 * math.cos(math.radians(latitude))
    metres = res * (c.axis_info[0].unit_conversion_factor if c.axis_info else 1.0)
    return metres * math.cos(math.radians(latitude)) if "Mercator" in (c.coordinate_operation or c).name else metres


def _wmts_level(xml: str, env: dict[str, str], resolution: float, area: Any) -> int:
    """The zoom level of a WMTS (0: the coarsest) whose ground pixel at the area is `resolution` or
    the nearest finer: its tile matrices are GDAL's dataset and overviews, finest first."""
    with rasterio.Env(**env), rasterio.open(xml) as ds:
        lat = _latitude(area, ds.crs)
        levels = [ds.res[0]] + [ds.res[0] * f for f in ds.overviews(1)]
    ground = [_ground(ds.crs, r, lat) for r in levels]
    finer = [i for i, g in enumerate(ground) if g <= resolution]
    pick = max(finer) if finer else 0  # the coarsest that is fine enough; else the finest there is
    return len(levels) - 1 - pick


def _dataset(source: str, area: Any, options: WebOptions, margin_px: int,
             env: dict[str, str]) -> tuple[str, int | None]:
    """The GDAL dataset (a service description) of `source` at the level of detail `options` give."""
    k = kind(source)
    if k == "xml":  # a service description of the user's: read as it says, at its own level
        if options.zoom is not None or options.resolution is not None:
            raise UsageError(f"{source}: a service description file sets its own level of detail: leave out "
                             f"{option('web_zoom')} and {option('web_resolution')}")
        return source, None
    if k == "xyz":
        template, bottom = template_of(source)
        zoom = options.zoom if options.zoom is not None else zoom_for(options.resolution,  # type: ignore[arg-type]
                                                                      _latitude(area, "EPSG:3857"))
        return xyz_xml(template, bottom, zoom, options), zoom
    if k == "wmts":
        zoom = options.zoom
        if zoom is None:
            zoom = _wmts_level(wmts_xml(source, None), env, options.resolution, area)  # type: ignore[arg-type]
        return wmts_xml(source, zoom), zoom
    if options.zoom is not None:
        raise UsageError(f"{redact(source)}: a WMS has no zoom levels: give {option('web_resolution')} (ground "
                         f"metres per pixel)")
    crs = wms_crs(source)
    lat = _latitude(area, crs)
    res = options.resolution / _ground(crs, 1.0, lat)  # type: ignore[operator]
    minx, miny, maxx, maxy = _bounds_in(area, crs)
    pad = margin_px * res  # pixels on a grid anchored at the CRS's origin: the same for every area
    minx, maxy = math.floor((minx - pad) / res) * res, math.ceil((maxy + pad) / res) * res
    size = (max(1, math.ceil((maxx + pad - minx) / res)), max(1, math.ceil((maxy - miny + pad) / res)))
    maxx, miny = minx + size[0] * res, maxy - size[1] * res  # whole pixels of exactly `res`
    return wms_xml(source, (minx, miny, maxx, maxy), size, crs, options), None


def open_area(source: str, area: Any, options: WebOptions, margin_px: int) -> tuple[str, Grid]:
    """The VRT (XML) of the service `source` over `area` (a `geoseg.io.area.Area`; in its CRS, else
    the service's) grown by `margin_px`, at the level of detail `options` give, and the part of
    the service it reads. Refuses a missing area or level of detail, and more service tiles than
    `options.max_tiles`, before any tile is fetched (a WMTS's capabilities are read first)."""
    shown = redact(source)
    keep_secret(source)
    if area is None:
        raise UsageError(f"{shown}: a tile service covers the world: give the area to segment, "
                         f"{option('bbox')} (with {option('bbox_crs')}) or {option('aoi')}")
    if options.zoom is None and options.resolution is None and kind(source) != "xml":
        raise UsageError(f"{shown}: give the level of detail to read, {option('web_zoom')} (the service's zoom "
                         f"level) or {option('web_resolution')} (ground metres per pixel)")
    env = {"GDAL_HTTP_USERAGENT": USER_AGENT, "GDAL_DEFAULT_WMS_CACHE_PATH": options.cache or str(default_cache())}
    if options.headers:
        env["GDAL_HTTP_HEADERS"] = "\r\n".join(h.strip() for h in options.headers)
    name, zoom = _dataset(source, area, options, margin_px, env)
    try:
        with rasterio.Env(**env), rasterio.open(name) as ds:
            transform, crs, width, height, count = ds.transform, ds.crs, ds.width, ds.height, ds.count
            tile = max(TILE, ds.block_shapes[0][0])
    except RasterioIOError as e:
        raise UsageError(f"{shown}: cannot open the service ({str(e).splitlines()[0]}): check the URL, the "
                         f"layer and any key it needs") from None
    g = _window(area, transform, crs, width, height, tile, zoom, margin_px)
    if g is None:
        raise UsageError(f"{shown}: the area lies outside the service's extent: check {option('bbox_crs')}")
    if g.tiles > options.max_tiles:
        raise UsageError(f"{shown}: the area needs {g.tiles} service tiles"
                         + (f" at zoom {zoom}" if zoom is not None else "")
                         + f", more than {option('max_tiles', options.max_tiles)}: choose a smaller area or "
                         f"zoom, or raise {option('max_tiles')} where the service's terms allow bulk downloads")
    host = _url(source).hostname
    level = f"_z{zoom}" if zoom is not None else f"_{abs(transform.a):.3g}"
    named = Path(source).stem if kind(source) == "xml" else f"{host or 'service'}{level}"
    meta = {"name": named, "service": shown, "zoom": zoom, "pixel": abs(transform.a),
            "crs": crs.to_string(), "window": [g.col, g.row, g.width, g.height], "tiles": g.tiles,
            "attribution": options.attribution}
    vrt = _crop(name, g, transform, crs, min(count, 4), meta)
    _ENV[vrt] = env
    return vrt, g


def _window(area: Any, transform: Any, crs: Any, width: int, height: int, tile: int, zoom: int | None,
            margin_px: int) -> Grid | None:
    """The area's pixel window in a service dataset, grown by `margin_px`, snapped outwards to its
    tile grid and clipped to it; None where they do not meet."""
    minx, miny, maxx, maxy = _bounds_in(area, crs)
    inverse = ~transform
    cols, rows = zip(*(inverse * (x, y) for x in (minx, maxx) for y in (miny, maxy)))
    c0 = math.floor(min(cols) - margin_px) // tile * tile
    r0 = math.floor(min(rows) - margin_px) // tile * tile
    c1 = -(-math.ceil(max(cols) + margin_px) // tile) * tile
    r1 = -(-math.ceil(max(rows) + margin_px) // tile) * tile
    c0, r0, c1, r1 = max(c0, 0), max(r0, 0), min(c1, width), min(r1, height)
    if c1 <= c0 or r1 <= r0:
        return None
    return Grid(c0, r0, c1 - c0, r1 - r0, tile, zoom)


def _crop(name: str, g: Grid, transform: Any, crs: Any, bands: int, meta: dict[str, Any]) -> str:
    """A VRT of window `g` of the dataset `name`; `meta` recorded for `geoseg.io.sources.web_meta`."""
    left, top = transform * (g.col, g.row)
    rect = (f'<SrcRect xOff="{g.col}" yOff="{g.row}" xSize="{g.width}" ySize="{g.height}"/>'
            f'<DstRect xOff="0" yOff="0" xSize="{g.width}" ySize="{g.height}"/>')
    out = []
    for b, colour in enumerate(("Red", "Green", "Blue", "Alpha")[:bands] if bands >= 3 else ("Gray",) * bands, 1):
        out.append(f'<VRTRasterBand dataType="Byte" band="{b}"><ColorInterp>{colour}</ColorInterp>'
                   f'<SimpleSource><SourceFilename relativeToVRT="0">{escape(name)}</SourceFilename>'
                   f"<SourceBand>{b}</SourceBand>{rect}</SimpleSource></VRTRasterBand>")
    credit = meta.get("attribution")  # a Cloud-Optimised GeoTIFF written from it keeps it as its copyright tag
    tags = "" if not credit else f'<Metadata><MDI key="TIFFTAG_COPYRIGHT">{escape(credit)}</MDI></Metadata>'
    return (f'<VRTDataset rasterXSize="{g.width}" rasterYSize="{g.height}">'
            f'<Metadata domain="geoseg"><MDI key="{WEB_MARK}">{escape(json.dumps(meta))}</MDI></Metadata>{tags}'
            f"<SRS>{escape(crs.to_wkt())}</SRS><GeoTransform>{left!r}, {transform.a!r}, {transform.b!r}, "
            f"{top!r}, {transform.d!r}, {transform.e!r}</GeoTransform>" + "".join(out) + "</VRTDataset>")


def _url(service: str) -> urllib.parse.SplitResult:
    """A service's URL, its kind's prefix (`xyz:`, `WMTS:` ...) taken off."""
    return urllib.parse.urlsplit(re.sub(r"^(xyz:|tms:|WMTS:|WMS:)", "", service.strip(), flags=re.I))


def open_sources(sources: list[Any], area: Any, options: WebOptions | None, margin_px: int) -> list[Any]:
    """`sources` with each service replaced by its area's VRT (`open_area`); the others as given
    (the same list where there is no service). Service options without a service are refused."""
    if not any(is_web(s) for s in sources):
        if options is not None and options != WebOptions():
            raise UsageError(f"{option('web_zoom')}, {option('web_resolution')} and the other tile-service "
                             f"options go with a tile service input (https://host/{{z}}/{{x}}/{{y}}.png)")
        return sources
    return [open_area(s, area, options or WebOptions(), margin_px)[0] if is_web(s) else s for s in sources]


RETRIED = (429, 500, 502, 503, 504)  #: statuses after which a read is tried again
BACKOFF = (1.0, 2.0, 4.0, 8.0, 16.0)  #: seconds waited before each new try (GDAL's WMS driver does not retry)
_STATUS = re.compile(r"HTTP status code: (\d+)")


def http_status(error: BaseException) -> int | None:
    """The HTTP status a failed read of a service names (GDAL says it in the error it chains)."""
    seen: BaseException | None = error
    while seen is not None:
        m = _STATUS.search(str(seen))
        if m:
            return int(m.group(1))
        seen = seen.__cause__ or seen.__context__
    return None


def read_retrying(read: Callable[[], T], source: str, sleep: Callable[[float], None] = time.sleep) -> T:
    """`read()` of a service area (`source`: its VRT) with GDAL's options for it, tried again after
    `BACKOFF` seconds while the service answers 429 or 5xx (the tiles already fetched come from
    the cache); a service that keeps failing stops the run in one line naming its host and the
    status. GDAL's options are set in the reading thread: they are per thread."""
    env = _ENV.get(source) or {"GDAL_HTTP_USERAGENT": USER_AGENT, "GDAL_DEFAULT_WMS_CACHE_PATH": str(default_cache())}
    for wait in (*BACKOFF, None):
        try:
            with rasterio.Env(**env):
                return read()
        except RasterioIOError as e:
            status = http_status(e)
            if status is None:
                raise
            meta = web_meta(source)
            host = _url(meta["service"]).netloc
            if wait is None or status not in RETRIED:
                tries = f" after {len(BACKOFF) + 1} tries" if status in RETRIED else ""
                raise RunError(f"{host}: the tile service answered HTTP {status}{tries} for a tile of {meta['name']}: "
                               f"rerun the same command later to resume (the tiles fetched are cached)") from None
            log.info("%s: the tile service answered HTTP %d: trying again in %.3g s", host, status, wait)
            sleep(wait)
    raise AssertionError("unreachable")


def fetch(source: str, output: str | os.PathLike[str], *, area: Any, options: WebOptions, overwrite: bool = False,
          margin_px: int = 0) -> tuple[Path, Grid]:
    """Write the service `source` over `area` as a Cloud-Optimised GeoTIFF (tiled, compressed,
    with overviews; RGB and alpha, the alpha 0 where the service had no tile), through the same
    cache and limits as a run. Written beside `output` and renamed into place when whole."""
    out = Path(output)
    if out.suffix.lower() not in (".tif", ".tiff"):
        raise UsageError(f"{out}: give a .tif output (a Cloud-Optimised GeoTIFF)")
    if out.exists() and not overwrite:
        raise UsageError(f"{out} exists: pass {option('overwrite')} to replace it")
    if not out.parent.is_dir():
        raise UsageError(f"{out}: no such folder {out.parent}: create it first")
    vrt, g = open_area(source, area, options, margin_px)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.tif")
    try:
        with rasterio.open(vrt) as src:
            read_retrying(lambda: rasterio.shutil.copy(src, tmp, driver="COG", COMPRESS="DEFLATE",
                                                       OVERVIEWS="AUTO", BLOCKSIZE=512), vrt)
        replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out, g
