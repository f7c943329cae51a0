"""What a source is and what it is called: paths, URLs, mosaics and in-memory rasters.

Every input of a run is one of these: a local file, a remote URL or GDAL
virtual path (a signed URL, a bucket object, a STAC asset), the XML of a
mosaic (`geoseg.io.mosaic`), an open rasterio dataset or a DataArray. The
functions here tell them apart and name them, without opening anything.

Two inputs never share a name: the `source` column and the per-input output
files use the file name, or, where several inputs share one, the shortest
trailing part of their paths that tells them apart (``2020/a.tif``,
``2021/a.tif``).
"""

from __future__ import annotations

import functools
import json
import os
import re
import urllib.parse
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any
from xml.sax.saxutils import unescape

import rasterio.io
from rasterio.vrt import WarpedVRT

from geoseg.errors import UsageError

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")
# GDAL's sidecars of a raster: part of it, not a file skipped
SIDECARS = (".aux.xml", ".ovr", ".msk", ".tfw", ".tifw", ".wld", ".prj", ".jgw", ".j2w", ".rrd", ".xml")


def _parts(source: Any) -> tuple[str, ...]:
    if is_raster_object(source) or is_mosaic(source) or is_web_area(source):
        return (source_name(source),)
    text = str(source)
    if is_remote(text):  # no query string: a signed URL's signature stays out of outputs
        text = urllib.parse.urlsplit(text.split("/vsicurl/")[-1]).path
        return PurePosixPath(text).parts or (text,)
    path = Path(os.path.abspath(text))
    return path.parts[1:] if path.anchor else path.parts


def _key(parts: tuple[str, ...], depth: int) -> str:
    # two names clash when their outputs would: letter case and extension aside
    return str(PurePosixPath(*parts[-depth:]).with_suffix("")).lower()


def unique_names(sources: list[Any]) -> list[str]:
    """A name per input, unique among `sources`: the file name, or the shortest
    trailing part of the path that tells inputs apart, with "/" between folders
    (``scenes/a.tif``, ``other/a.tif``). Names that differ only in letter case
    or extension are not told apart, since their outputs would be one file.

    Raises:
        UsageError: two inputs that cannot be told apart that way (a.tif and
            a.vrt in one folder, two in-memory arrays of one name).
    """
    parts = [_parts(s) for s in sources]
    depth = [1] * len(parts)
    while True:
        keys = [_key(p, d) for p, d in zip(parts, depth)]
        counts = Counter(keys)
        clash = [k for k, key in enumerate(keys) if counts[key] > 1]
        if not clash:
            return ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        grown = False
        for k in clash:
            if depth[k] < len(parts[k]):
                depth[k] += 1
                grown = True
        if not grown:
            a, b = [sources[k] if isinstance(sources[k], str) else source_name(sources[k])
                    for k in clash if keys[k] == keys[clash[0]]][:2]
            raise UsageError(f"{a} and {b} would share one output name: rename one of them, "
                             f"or segment them in separate runs")


def output_names(names: list[str], suffix: str) -> list[str]:
    """Per-input output file names (relative, "/" between folders) for `names`
    made by `unique_names`."""
    return [str(PurePosixPath(n).with_suffix(suffix)) for n in names]


MARK = "geoseg_mosaic"


def is_mosaic(source: Any) -> bool:
    """True for the XML `build` returns."""
    return isinstance(source, str) and source.startswith("<VRTDataset") and MARK in source[:300]


def mosaic_name(xml: str) -> str:
    """The mosaic's name: its folder's name (``tiles``), or ``mosaic``."""
    return mosaic_meta(xml)["name"]  # type: ignore[no-any-return]


def mosaic_members(xml: str) -> list[str]:
    """The member files of a mosaic, as given to `build`."""
    return list(mosaic_meta(xml)["paths"])


def mosaic_identity(xml: str) -> list[list[Any]]:
    """What tells the members apart from changed ones: path, size, mtime (local files)."""
    out: list[list[Any]] = []
    for p in mosaic_members(xml):
        if os.path.isfile(p):
            st = os.stat(p)
            out.append([p, st.st_size, st.st_mtime_ns])
        else:
            out.append([p])
    return out


WEB_MARK = "geoseg_web"


def is_web_area(source: Any) -> bool:
    """True for the XML `geoseg.io.web.open_area` returns: an area read from a tile service."""
    return isinstance(source, str) and source.startswith("<VRTDataset") and WEB_MARK in source[:300]


def web_meta(xml: str) -> dict[str, Any]:
    """What `geoseg.io.web.open_area` recorded: the service (redacted), zoom, tiles, name."""
    m = re.search(rf'<MDI key="{WEB_MARK}">(.*?)</MDI>', xml[:4096], re.S)
    if m is None:
        raise ValueError("not an area of a tile service")
    return json.loads(unescape(m.group(1)))  # type: ignore[no-any-return]


@functools.lru_cache(maxsize=8)
def mosaic_meta(xml: str) -> dict[str, Any]:
    m = re.search(rf'<MDI key="{MARK}">(.*?)</MDI>', xml[:1 << 26], re.S)
    if m is None:
        raise ValueError("not a geoseg mosaic")
    return json.loads(unescape(m.group(1)))  # type: ignore[no-any-return]


def is_remote(path: str) -> bool:
    """True for GDAL virtual paths and URLs, read over the network or from
    archives, and for mosaics (`geoseg.io.mosaic`: VRT XML, no file of its own)."""
    return path.startswith(("/vsi", "http://", "https://", "s3://", "gs://")) or is_mosaic(path) or is_web_area(path)


def is_dataarray(obj: Any) -> bool:
    # detected without importing xarray, which stays optional
    return type(obj).__name__ == "DataArray" and hasattr(obj, "dims") and hasattr(obj, "isel")


def is_dataset(obj: Any) -> bool:
    return isinstance(obj, (rasterio.io.DatasetReader, WarpedVRT))


def is_raster_object(obj: Any) -> bool:
    """True for the in-memory inputs `RasterSource` takes besides paths."""
    return is_dataarray(obj) or is_dataset(obj)


def source_name(source: Any) -> str:
    """A short name for a raster input: the file name, else the DataArray's name."""
    if is_dataarray(source):
        found = source.encoding.get("source") if hasattr(source, "encoding") else None
        if found:
            return Path(str(found)).name
        return str(source.name) if source.name is not None else "DataArray"
    if is_dataset(source):
        return Path(str(source.name)).name
    if is_mosaic(source):
        return mosaic_name(source)
    if is_web_area(source):
        return web_meta(source)["name"]  # type: ignore[no-any-return]
    if is_remote(str(source)):  # no query string: a signed URL's signature stays out of outputs
        return Path(urllib.parse.urlsplit(str(source).split("/vsicurl/")[-1]).path).name
    return Path(str(source)).name
