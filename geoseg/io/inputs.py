"""The inputs of a run resolved into its sources, in one place for every interface.

Folders (searched recursively), bucket prefixes and https:// folders
(`geoseg.io.buckets`) and STAC items (`geoseg.io.stac`) are expanded into
rasters; files, URLs, open datasets and DataArrays are kept as given; with
`mosaic`, all of them become one virtual raster (`geoseg.io.mosaic`). What a
source is called is `geoseg.io.sources`'.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from geoseg.errors import RasterError, UsageError, keep_secret, option
from geoseg.io import buckets, stac
from geoseg.io import mosaic as mosaics
from geoseg.io import web as webs
from geoseg.io.services import WebOptions, is_web
from geoseg.io.sources import RASTER_SUFFIXES, SIDECARS, is_raster_object, is_remote

log = logging.getLogger("geoseg")


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
    folders (`geoseg.io.buckets`); a STAC Item or ItemCollection gives the asset
    `asset` of each item (`geoseg.io.stac`).

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
        found = stac.expand(str(s), asset) if stac.is_stac(s) else buckets.expand(str(s), RASTER_SUFFIXES, SIDECARS)
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


def resolve(inputs: Any, *, asset: str | None = None, mosaic: bool = False, settings: Any = None,
            web: WebOptions | None = None) -> list[Any]:
    """The sources of a run, built in this one place for every interface:
    `inputs` expanded by `list_inputs`; a tile service read over the run's area
    at the level of detail `web` gives (`geoseg.io.web`); with `mosaic`, all of
    them read as one virtual raster on the grid of `settings` (a run's
    `Settings`: its `dst_crs`, resolution and bands; see
    `geoseg.io.mosaic.from_settings`)."""
    given = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]  # STAC collections: as they are
    keep_secret(*given)  # a URL's secrets, in any message
    if mosaic and any(is_web(s) for s in given):
        raise UsageError(f"{option('mosaic')} joins files; a tile service is one raster already: leave it out")
    area = getattr(getattr(settings, "read", None), "area", None)
    opened = webs.open_sources(given, area, web, getattr(settings, "overlap", 0))
    paths = list_inputs(inputs if opened is given else opened, asset)
    return [mosaics.from_settings(paths, settings)] if mosaic else paths
