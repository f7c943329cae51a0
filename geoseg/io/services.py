"""What a tile service is, as text: XYZ/TMS URL templates, GDAL WMTS and WMS connections, and
the GDAL service descriptions (`<GDAL_WMS>`, `<GDAL_WMTS>`) through which GDAL reads them as
rasters, with its disk cache, parallel requests and geoseg's User-Agent.

Pure text and arithmetic: nothing here opens a connection (`geoseg.io.web` reads areas).
"""

from __future__ import annotations

import math
import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from geoseg._version import __version__
from geoseg.errors import UsageError, keep_secret, option, redact

#: half the side of the EPSG:3857 world, in metres
WORLD = 20037508.342789244
TILE = 256  #: pixels per side of a service tile
MAX_ZOOM = 24
DEFAULT_MAX_TILES = 10_000
DEFAULT_CONNECTIONS = 2
CACHE_BYTES = 2 * 2**30  #: GDAL trims the tile cache past this size (its oldest tiles first)
USER_AGENT = f"geoseg/{__version__}"
_TEMPLATE = re.compile(r"\{(z|x|y|-y|s)\}")
# the ends of a tile answer that mean "no tile here": empty (nodata), not an error
_EMPTY = "<ZeroBlockHttpCodes>204,404</ZeroBlockHttpCodes><ZeroBlockOnServerException>true</ZeroBlockOnServerException>"


def kind(source: Any) -> str | None:
    """"xyz" for a URL template (`xyz:`/`tms:` prefixed, or an http(s) URL holding `{z}`, `{x}`
    and `{y}` or `{-y}`), "wmts" for `WMTS:URL`, "wms" for `WMS:URL`, "xml" for a GDAL service
    description file (`<GDAL_WMS>`, `<GDAL_WMTS>`); None for anything else."""
    if not isinstance(source, str):
        return None
    text = source.strip()
    if text.lower().endswith(".xml") and os.path.isfile(text):
        with open(text, "rb") as f:
            head = f.read(200).lstrip()
        return "xml" if head.startswith((b"<GDAL_WMS>", b"<GDAL_WMTS>")) else None
    if text.startswith("WMTS:"):
        return "wmts"
    if text.startswith("WMS:"):
        return "wms"
    if text.lower().startswith(("xyz:", "tms:")):
        return "xyz"
    if text.lower().startswith(("http://", "https://")) and "{z}" in text and "{x}" in text and (
            "{y}" in text or "{-y}" in text):
        return "xyz"
    return None


def is_web(source: Any) -> bool:
    """Whether `source` names a tile or map service (see `kind`)."""
    return kind(source) is not None


@dataclass(frozen=True)
class WebOptions:
    """How a tile service is read: its level of detail, where tiles are kept, how politely."""

    zoom: int | None = None  #: the service's zoom level
    resolution: float | None = None  #: ground metres per pixel at the area's centre (the nearest finer zoom)
    cache: str | None = None  #: tile cache folder [default: the user's cache folder, shared by runs]
    max_connections: int = DEFAULT_CONNECTIONS
    max_tiles: int = DEFAULT_MAX_TILES
    headers: tuple[str, ...] = ()  #: "Name: value" HTTP headers (an API key): kept out of every output
    attribution: str | None = None  #: the provider's required credit, recorded in the output

    @classmethod
    def of(cls, *, zoom: int | None = None, resolution: float | None = None, cache: Any = None,
           max_connections: int = DEFAULT_CONNECTIONS, max_tiles: int = DEFAULT_MAX_TILES,
           headers: Any = (), attribution: str | None = None) -> WebOptions:
        if zoom is not None and resolution is not None:
            raise UsageError(f"give either {option('web_zoom')} or {option('web_resolution')}, not both")
        if zoom is not None and not (isinstance(zoom, int) and 0 <= zoom <= MAX_ZOOM):
            raise UsageError(f"{option('web_zoom', zoom)}: give a zoom level from 0 to {MAX_ZOOM}")
        if resolution is not None and not resolution > 0:
            raise UsageError(f"{option('web_resolution', resolution)}: give ground metres per pixel, above 0")
        if not (isinstance(max_connections, int) and 1 <= max_connections <= 32):
            raise UsageError(f"{option('max_connections', max_connections)}: give 1 to 32 parallel requests")
        if not (isinstance(max_tiles, int) and max_tiles >= 1):
            raise UsageError(f"{option('max_tiles', max_tiles)}: give a number of service tiles, 1 or more")
        headers = (headers,) if isinstance(headers, str) else tuple(headers)
        for h in headers:
            name, sep, value = str(h).partition(":")
            if not sep or not name.strip() or not value.strip() or "\n" in h or "\r" in h:
                raise UsageError(f"{option('header')}: a header holds no 'Name: value' (not shown: it may hold a key): "
                                 f"give one header as 'Name: value'")
        keep_secret(*[f"https://header/?key={h.partition(':')[2].strip()}" for h in headers])
        return cls(zoom, resolution, None if cache is None else str(cache), max_connections, max_tiles,
                   tuple(headers), attribution)


def default_cache() -> Path:
    """The tile cache shared by runs: $XDG_CACHE_HOME/geoseg/tiles (~/.cache/geoseg/tiles)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "geoseg" / "tiles"


def template_of(source: str) -> tuple[str, bool]:
    """The service's URL template in GDAL's terms (`${z}`, `${x}`, `${y}`) and whether rows
    count from the bottom (TMS, `{-y}`)."""
    text = source.strip()
    if text.lower().startswith(("xyz:", "tms:")):
        text = text[4:]
    names = _TEMPLATE.findall(text)
    if "s" in names:
        raise UsageError(f"{redact(source)}: {{s}} (subdomains) is not supported: write one subdomain in its place")
    if "z" not in names or "x" not in names or ("y" not in names and "-y" not in names):
        raise UsageError(f"{redact(source)}: a tile template needs {{z}}, {{x}} and {{y}} (or {{-y}} for TMS row "
                         f"order), e.g. https://host/{{z}}/{{x}}/{{y}}.png")
    bottom = "-y" in names or source.strip().lower().startswith("tms:")
    gdal = _TEMPLATE.sub(lambda m: "${" + m.group(1).lstrip("-") + "}", text)
    return gdal, bottom


def pixel_size(zoom: int) -> float:
    """EPSG:3857 metres per pixel at `zoom`."""
    return 2 * WORLD / (TILE * 2**zoom)


def zoom_for(resolution: float, latitude: float) -> int:
    """The coarsest zoom whose ground pixel at `latitude` is `resolution` metres or finer."""
    scale = math.cos(math.radians(latitude))
    for z in range(MAX_ZOOM + 1):
        if pixel_size(z) * scale <= resolution:
            return z
    return MAX_ZOOM


def xyz_xml(template: str, bottom: bool, zoom: int, options: WebOptions) -> str:
    """GDAL's service description of the XYZ/TMS world at `zoom`: 4 bands (RGB and alpha, so a
    missing tile is nodata), the cache, the connections and geoseg's User-Agent."""
    return (
        "<GDAL_WMS>"
        f'<Service name="TMS"><ServerUrl>{escape(template)}</ServerUrl></Service>'
        f"<DataWindow><UpperLeftX>{-WORLD!r}</UpperLeftX><UpperLeftY>{WORLD!r}</UpperLeftY>"
        f"<LowerRightX>{WORLD!r}</LowerRightX><LowerRightY>{-WORLD!r}</LowerRightY>"
        f"<TileLevel>{zoom}</TileLevel><TileCountX>1</TileCountX><TileCountY>1</TileCountY>"
        f"<YOrigin>{'bottom' if bottom else 'top'}</YOrigin></DataWindow>"
        f"<Projection>EPSG:3857</Projection><BlockSizeX>{TILE}</BlockSizeX><BlockSizeY>{TILE}</BlockSizeY>"
        + _common(options) + "</GDAL_WMS>"
    )


def _common(options: WebOptions) -> str:
    cache = options.cache or str(default_cache())
    return (f"<BandsCount>4</BandsCount><MaxConnections>{options.max_connections}</MaxConnections>"
            f"<Cache><Path>{escape(cache)}</Path><MaxSize>{CACHE_BYTES}</MaxSize></Cache>"
            f"<UserAgent>{USER_AGENT}</UserAgent>{_EMPTY}")


def wmts_parts(source: str) -> tuple[str, dict[str, str]]:
    """`WMTS:URL[,layer=L][,tilematrixset=T][,style=S][,tilematrix=M][,zoom_level=Z]` -> URL and keys."""
    url, *rest = source.strip()[len("WMTS:"):].split(",")
    keys: dict[str, str] = {}
    for part in rest:
        key, sep, value = part.partition("=")
        if not sep or key.strip().lower() not in ("layer", "tilematrixset", "style", "tilematrix", "zoom_level"):
            raise UsageError(f"{redact(source)}: {part!r} is not a WMTS option: give WMTS:URL,layer=ID"
                             f"[,tilematrixset=ID][,style=ID]")
        keys[key.strip().lower()] = value.strip()
    return url, keys


def wmts_xml(source: str, zoom: int | None) -> str:
    """GDAL's WMTS service description of `source` at zoom level `zoom` (None: the finest), with
    the cache (`<Cache/>`: its folder is GDAL's GDAL_DEFAULT_WMS_CACHE_PATH, set for each read)."""
    url, keys = wmts_parts(source)
    elements = [f"<GetCapabilitiesUrl>{escape(url)}</GetCapabilitiesUrl>"]
    for key, tag in (("layer", "Layer"), ("style", "Style"), ("tilematrixset", "TileMatrixSet"),
                     ("tilematrix", "TileMatrix")):
        if key in keys:
            elements.append(f"<{tag}>{escape(keys[key])}</{tag}>")
    level = zoom if zoom is not None else (int(keys["zoom_level"]) if "zoom_level" in keys else None)
    if level is not None and "tilematrix" not in keys:
        elements.append(f"<ZoomLevel>{level}</ZoomLevel>")
    return "<GDAL_WMTS>" + "".join(elements) + f"<BandsCount>4</BandsCount><Cache/>{_EMPTY}</GDAL_WMTS>"


def wms_xml(source: str, bounds: tuple[float, float, float, float], size: tuple[int, int], crs: str,
            options: WebOptions) -> str:
    """GDAL's WMS service description of `WMS:URL?...LAYERS=...` over `bounds` (in `crs`) at
    `size` (width, height) pixels: GetMap requests of 256 px, PNG with transparency."""
    url = source.strip()[len("WMS:"):]
    base, _, query = url.partition("?")
    params = {k.upper(): v for k, v in urllib.parse.parse_qsl(query, keep_blank_values=True)}
    if not params.get("LAYERS"):
        raise UsageError(f"{redact(source)}: name the layer to read, WMS:https://host/wms?LAYERS=NAME")
    version = params.get("VERSION", "1.1.1")
    kept = {k: v for k, v in params.items() if k not in ("SERVICE", "REQUEST", "VERSION", "LAYERS", "STYLES", "SRS",
                                                          "CRS", "BBOX", "WIDTH", "HEIGHT", "FORMAT", "TRANSPARENT")}
    server = base + "?" + urllib.parse.urlencode(kept) + ("&" if kept else "")  # an API key among them stays
    srs = "CRS" if version >= "1.3" else "SRS"
    minx, miny, maxx, maxy = bounds
    return (
        f'<GDAL_WMS><Service name="WMS"><Version>{escape(version)}</Version>'
        f"<ServerUrl>{escape(server)}</ServerUrl><{srs}>{escape(crs)}</{srs}>"
        f"<ImageFormat>{escape(params.get('FORMAT', 'image/png'))}</ImageFormat><Transparent>TRUE</Transparent>"
        f"<Layers>{escape(params['LAYERS'])}</Layers><Styles>{escape(params.get('STYLES', ''))}</Styles></Service>"
        f"<DataWindow><UpperLeftX>{minx!r}</UpperLeftX><UpperLeftY>{maxy!r}</UpperLeftY>"
        f"<LowerRightX>{maxx!r}</LowerRightX><LowerRightY>{miny!r}</LowerRightY>"
        f"<SizeX>{size[0]}</SizeX><SizeY>{size[1]}</SizeY></DataWindow>"
        f"<Projection>{escape(crs)}</Projection><BlockSizeX>{TILE}</BlockSizeX><BlockSizeY>{TILE}</BlockSizeY>"
        + _common(options) + "</GDAL_WMS>"
    )


def wms_crs(source: str) -> str:
    """The CRS a `WMS:` connection asks for (its SRS or CRS parameter), EPSG:3857 by default."""
    query = source.strip()[len("WMS:"):].partition("?")[2]
    params = {k.upper(): v for k, v in urllib.parse.parse_qsl(query)}
    return params.get("CRS") or params.get("SRS") or "EPSG:3857"
