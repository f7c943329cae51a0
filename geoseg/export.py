"""Writing results: the format follows the extension; writes are atomic.

A result is first written to a hidden temporary file beside the target and
renamed into place only once complete, so a failed run leaves nothing half
written and an existing file is replaced only with `overwrite`.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import geopandas as gpd
import pyogrio
from pyproj import CRS

from geoseg.errors import OutputCRSWarning, OutputError

DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON", ".fgb": "FlatGeobuf", ".parquet": "Parquet"}
FORMATS = {"gpkg": ".gpkg", "geojson": ".geojson", "fgb": ".fgb", "parquet": ".parquet"}


def check_output(path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Check before any work that `path` can be written; return it as a Path."""
    path = Path(path)
    if path.suffix.lower() not in DRIVERS:
        raise OutputError(f"{path}: unknown output format {path.suffix!r}: use .gpkg, .geojson, .fgb or .parquet")
    parent = path.parent
    if not parent.is_dir():
        raise OutputError(f"{path}: folder {str(parent)!r} does not exist: create it first")
    try:  # a real write, not os.access: root passes os.access on read-only places
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError:
        raise OutputError(f"{path}: folder {str(parent)!r} is not writable: choose another output") from None
    if path.exists() and not overwrite:
        raise OutputError(f"{path} exists: pass --overwrite to replace it, or choose another name")
    if path.is_dir():
        raise OutputError(f"{path} is a folder: give a file name such as out.gpkg")
    return path


def sidecar(path: Path) -> Path:
    """Where provenance goes for formats without a metadata table."""
    return path.with_name(path.name + ".geoseg.json")


def write(
    gdf: gpd.GeoDataFrame, path: str | os.PathLike[str], *, layer: str = "detections",
    overwrite: bool = False, provenance: dict[str, Any] | None = None, crs_requested: bool = False,
) -> Path:
    """Write `gdf` to `path` atomically, with provenance.

    GeoJSON is written in EPSG:4326 (RFC 7946); a warning says so when another
    CRS was asked for (`crs_requested`).
    """
    path = check_output(path, overwrite)
    driver = DRIVERS[path.suffix.lower()]
    if driver == "GeoJSON" and gdf.crs is not None and not CRS(gdf.crs).equals(CRS.from_epsg(4326)):
        if crs_requested:
            warnings.warn(f"{path}: GeoJSON is always EPSG:4326 (RFC 7946); use .gpkg to keep {gdf.crs.to_string()}",
                          OutputCRSWarning, stacklevel=2)
        gdf = gdf.to_crs(4326)
    meta = json.dumps(provenance or {}, default=str)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        if driver == "Parquet":
            gdf.to_parquet(tmp, index=False)
        else:
            options: dict[str, Any] = {"RFC7946": "YES"} if driver == "GeoJSON" else {}
            pyogrio.write_dataframe(
                gdf, tmp, layer=layer if driver == "GPKG" else None, driver=driver, promote_to_multi=True,
                layer_options=options or None,
                layer_metadata={"geoseg": meta} if driver == "GPKG" else None,
            )
        if driver != "GPKG":
            side_tmp = sidecar(tmp)
            side_tmp.write_text(meta)
            os.replace(side_tmp, sidecar(path))
        os.replace(tmp, path)
    except BaseException:
        for leftover in (tmp, sidecar(tmp)):
            leftover.unlink(missing_ok=True)
        raise
    return path


def read_provenance(path: str | os.PathLike[str], layer: str = "detections") -> dict[str, Any]:
    """The provenance geoseg stored with an output file."""
    path = Path(path)
    if path.suffix.lower() == ".gpkg":
        meta = pyogrio.read_info(path, layer=layer).get("layer_metadata") or {}
        return json.loads(meta.get("geoseg", "{}"))  # type: ignore[no-any-return]
    return json.loads(sidecar(path).read_text())  # type: ignore[no-any-return]
