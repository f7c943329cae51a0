"""STAC inputs: an Item or ItemCollection (a file or a URL) names the rasters.

Each item gives one raster: its asset `asset` (default "visual", else the
first RGB asset), whose href may be relative to the item. The objects found in
it record the item's id and datetime (`item_id`, `datetime` columns). See
docs/cloud.md.
"""

from __future__ import annotations

import os
import urllib.parse
from datetime import datetime
from pathlib import Path
from typing import Any

from geoseg.errors import RasterError, UsageError, option
from geoseg.io.buckets import gdal_path, is_url
from geoseg.io.sources import RASTER_SUFFIXES

COLUMNS = ("item_id", "datetime")
RGB = {"red", "green", "blue"}


class StacAsset(str):
    """A GDAL path to an item's asset, carrying the item's id and datetime."""

    item_id: str
    datetime: datetime | None

    def __new__(cls, path: str, item_id: str, when: datetime | None) -> StacAsset:
        self = super().__new__(cls, path)
        self.item_id, self.datetime = item_id, when
        return self

    def __reduce__(self) -> tuple[Any, ...]:  # pickled to Dask workers whole
        return (StacAsset, (str(self), self.item_id, self.datetime))


def is_stac(source: Any) -> bool:
    """Whether an input names STAC JSON: a .json/.geojson file or URL, or a
    STAC API's item or search URL (…/items/ID, …/search?…)."""
    if not isinstance(source, (str, os.PathLike)):
        return False
    text = str(source)
    path = urllib.parse.urlsplit(text).path if text.startswith(("http://", "https://")) else text
    if path.lower().endswith((".json", ".geojson")):
        return True
    if path.lower().endswith(RASTER_SUFFIXES):
        return False
    return text.startswith(("http://", "https://")) and ("/items/" in path or path.rstrip("/").endswith("/search"))


def _read(href: str) -> dict[str, Any]:
    import pystac

    if not href.startswith(("http://", "https://")) and not Path(href).is_file():
        raise RasterError(f"{href}: no such file: check the path of the STAC item")
    try:
        return pystac.StacIO.default().read_json(href)  # type: ignore[no-any-return]
    except Exception as e:
        why = str(e).strip().split("\n")[0][:200]
        raise RasterError(f"{href}: cannot read the STAC item ({type(e).__name__}: {why}): check the path or URL") \
            from None


def expand(href: str, asset: str | None = None) -> list[StacAsset]:
    """The rasters of a STAC Item or ItemCollection at `href`: one per item.

    Raises:
        RasterError: not STAC JSON, or an ItemCollection with no item.
        UsageError: an item without the asset asked for (or, by default, without
            a "visual" or RGB asset); the message lists its assets.
    """
    try:
        import pystac
    except ImportError:
        raise UsageError("STAC inputs need pystac: pip install pystac (the cloud extra)") from None
    data = _read(href)
    kind = data.get("type") if isinstance(data, dict) else None
    try:
        if kind == "FeatureCollection":
            items = list(pystac.ItemCollection.from_dict(data, preserve_dict=False).items)
        elif kind == "Feature":
            items = [pystac.Item.from_dict(data, preserve_dict=False)]
        else:
            raise RasterError(f"{href}: not a STAC Item or ItemCollection (type {kind!r}): give an item's JSON")
    except (KeyError, ValueError, TypeError) as e:
        raise RasterError(f"{href}: not a valid STAC item ({type(e).__name__}: {e})") from None
    if not items:
        raise RasterError(f"{href}: the ItemCollection holds no item")
    return [_asset(item, href, asset) for item in items]


def _asset(item: Any, href: str, name: str | None) -> StacAsset:
    assets = item.assets
    chosen = name if name is not None else "visual" if "visual" in assets else _first_rgb(assets)
    if chosen not in assets:
        asked = f"no asset {name!r}" if name is not None else "no 'visual' asset nor an RGB one"
        raise UsageError(f"{href}: item {item.id!r} has {asked}: pass {option('asset', 'NAME')} with one of "
                         f"{', '.join(sorted(assets)) or '(none)'}")
    self_link = item.get_self_href()
    base = self_link if self_link else href
    when = item.datetime or item.common_metadata.start_datetime
    return StacAsset(_gdal(_join(base, assets[chosen].href)), item.id, when)


def _first_rgb(assets: dict[str, Any]) -> str | None:
    for key, a in assets.items():
        bands = a.extra_fields.get("eo:bands") or a.extra_fields.get("bands") or []
        names = {str(b.get("common_name", "")).lower() for b in bands if isinstance(b, dict)}
        if RGB <= names or "visual" in (a.roles or []):
            return key  # type: ignore[no-any-return]
    return None


def _join(base: str, href: str) -> str:
    """`href` made absolute against the item's own location."""
    if "://" in href or href.startswith("/"):
        return href
    if "://" in base:
        return urllib.parse.urljoin(base, href)
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(base)), href))


def _gdal(href: str) -> str:
    if is_url(href):
        return gdal_path(href)
    if href.startswith(("http://", "https://")):
        return "/vsicurl/" + href
    if href.startswith("file://"):
        return urllib.parse.unquote(urllib.parse.urlsplit(href).path)
    return href


def columns(paths: list[Any], names: list[str]) -> dict[str, dict[str, Any]] | None:
    """Per input name, the STAC columns of its objects; None when no input is
    a STAC item (the output then has no STAC columns)."""
    if not any(isinstance(p, StacAsset) for p in paths):
        return None
    return {n: {"item_id": p.item_id, "datetime": p.datetime} if isinstance(p, StacAsset)
            else {"item_id": None, "datetime": None} for p, n in zip(paths, names)}
