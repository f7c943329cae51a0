"""The inputs of a run: folders expanded into rasters, and a unique name per input.

Two inputs never share a name: the `source` column and the per-input output
files use the file name, or, where several inputs share one, the shortest
trailing part of their paths that tells them apart (``2020/a.tif``,
``2021/a.tif``).
"""

from __future__ import annotations

import logging
import os
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from geoseg import cloud, stac
from geoseg.errors import RasterError, UsageError, option
from geoseg.mosaic import is_mosaic
from geoseg.raster import is_raster_object, is_remote, source_name

log = logging.getLogger("geoseg")

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")
# GDAL's sidecars of a raster: part of it, not a file skipped
SIDECARS = (".aux.xml", ".ovr", ".msk", ".tfw", ".tifw", ".wld", ".prj", ".jgw", ".j2w", ".rrd", ".xml")


def _is_raster(name: str) -> bool:
    return name.lower().endswith(RASTER_SUFFIXES)


def visible_files(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """The files under `folder`, recursively, leaving out hidden files and
    folders (such as a `.geoseg-work` folder or a temporary file)."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        yield from (Path(root) / f for f in sorted(files) if not f.startswith("."))


def _scan(folder: Path) -> list[str]:
    """The rasters under `folder` (`visible_files`), sorted; other files are
    logged as skipped."""
    found: list[str] = []
    skipped: list[str] = []
    for path in visible_files(folder):
        if _is_raster(path.name):
            found.append(str(path))
        elif not path.name.lower().endswith(SIDECARS):
            skipped.append(os.path.relpath(path, folder))
    if skipped:
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        log.info("%s: skipped %d file%s that %s not a raster (%s): %s", folder, len(skipped),
                 "s" * (len(skipped) > 1), "are" if len(skipped) > 1 else "is", ", ".join(RASTER_SUFFIXES), shown)
    return sorted(found)


def list_inputs(sources: Any, asset: str | None = None) -> list[Any]:
    """Expand folders into the rasters they hold, searched recursively and
    sorted; keep files, URLs, open rasterio datasets and DataArrays as given.
    Bucket prefixes (s3://, gs://, az://) and https:// folders are listed as
    folders (`geoseg.cloud`); a STAC Item or ItemCollection gives the asset
    `asset` of each item (`geoseg.stac`).

    Raises:
        RasterError: a folder holding no raster, or no input at all.
        UsageError: the same file given twice (also through a folder).
    """
    if isinstance(sources, (str, os.PathLike)) or is_raster_object(sources):
        sources = [sources]
    paths: list[Any] = []
    items = 0
    for s in sources:
        if is_raster_object(s):
            paths.append(s)
            continue
        if isinstance(s, stac.StacAsset):
            paths.append(s)
            continue
        items += stac.is_stac(s)
        found = stac.expand(str(s), asset) if stac.is_stac(s) else cloud.expand(str(s), RASTER_SUFFIXES, SIDECARS)
        if found is not None:  # a bucket prefix, an https:// folder, a STAC item (collection)
            paths.extend(found)
            continue
        p = Path(s)
        if not is_remote(str(s)) and p.is_dir():
            found = _scan(p)
            if not found:
                raise RasterError(f"{p}: folder holds no raster ({', '.join(RASTER_SUFFIXES)}), also in its subfolders")
            paths.extend(found)
        else:
            paths.append(str(s))
    if not paths:
        raise RasterError("no input raster given")
    if asset is not None and not items:
        raise UsageError(f"{option('asset', asset)} picks an asset of STAC items: give a STAC item (.json) as input")
    files = Counter(os.path.realpath(p) for p in paths if isinstance(p, str) and not is_remote(p))
    twice = [f for f, n in files.items() if n > 1]
    if twice:
        raise UsageError(f"{twice[0]} is given twice (also through a folder): give each input once")
    return paths


def _parts(source: Any) -> tuple[str, ...]:
    if is_raster_object(source) or is_mosaic(source):
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
