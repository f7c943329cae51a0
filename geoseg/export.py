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
import pandas as pd
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


class Writer:
    """Writes a result chunk by chunk to a hidden temporary file beside `path`;
    `commit()` renames it into place, so a failed run writes nothing.

    GeoJSON is written in EPSG:4326 (RFC 7946); a warning says so when another
    CRS was asked for (`crs_requested`). GeoPackage, GeoJSON and FlatGeobuf are
    appended to chunk by chunk; GeoParquet is written whole at `commit()`.
    """

    def __init__(self, path: str | os.PathLike[str], *, layer: str = "detections", overwrite: bool = False,
                 provenance: dict[str, Any] | None = None, crs_requested: bool = False, multi: bool = True) -> None:
        self.path = check_output(path, overwrite)
        self.multi = multi  # False: keep Polygons and MultiPolygons as they are (a staging file)
        self.driver = DRIVERS[self.path.suffix.lower()]
        self.layer, self.crs_requested = layer, crs_requested
        self.meta = json.dumps(provenance or {}, default=str)
        self.tmp = self.path.with_name(f".{self.path.stem}.{os.getpid()}.tmp{self.path.suffix}")
        self._chunks: list[gpd.GeoDataFrame] = []  # Parquet only
        self._written = False
        self._warned = False

    def write(self, gdf: gpd.GeoDataFrame) -> None:
        if self.driver == "GeoJSON" and gdf.crs is not None and not CRS(gdf.crs).equals(CRS.from_epsg(4326)):
            if self.crs_requested and not self._warned:
                warnings.warn(f"{self.path}: GeoJSON is always EPSG:4326 (RFC 7946); use .gpkg to keep "
                              f"{gdf.crs.to_string()}", OutputCRSWarning, stacklevel=2)
                self._warned = True
            gdf = gdf.to_crs(4326)
        if self.driver == "Parquet":
            self._chunks.append(gdf)
            return
        if self._written and gdf.empty:
            return
        first = not self._written
        pyogrio.write_dataframe(
            gdf, self.tmp, layer=self.layer if self.driver == "GPKG" else None, driver=self.driver,
            promote_to_multi=self.multi, geometry_type=None if self.multi else "Unknown", append=not first,
            layer_options={"RFC7946": "YES"} if first and self.driver == "GeoJSON" else None,
            layer_metadata={"geoseg": self.meta} if first and self.driver == "GPKG" else None,
        )
        self._written = True

    def commit(self, empty: gpd.GeoDataFrame) -> Path:
        """Move the file into place; `empty` gives the schema when nothing was written."""
        try:
            if self.driver == "Parquet":
                frames = [f for f in self._chunks if not f.empty] or [empty]
                gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=frames[0].crs).to_parquet(
                    self.tmp, index=False)
            elif not self._written:
                self.write(empty)
            if self.driver != "GPKG":
                side_tmp = sidecar(self.tmp)
                side_tmp.write_text(self.meta)
                os.replace(side_tmp, sidecar(self.path))
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Remove the temporary file."""
        for leftover in (self.tmp, sidecar(self.tmp)):
            leftover.unlink(missing_ok=True)

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()  # after a commit there is nothing left to remove


def write(
    gdf: gpd.GeoDataFrame, path: str | os.PathLike[str], *, layer: str = "detections",
    overwrite: bool = False, provenance: dict[str, Any] | None = None, crs_requested: bool = False,
) -> Path:
    """Write `gdf` to `path` atomically, with provenance (see `Writer`)."""
    with Writer(path, layer=layer, overwrite=overwrite, provenance=provenance, crs_requested=crs_requested) as w:
        w.write(gdf)
        return w.commit(gdf)


def read_provenance(path: str | os.PathLike[str], layer: str = "detections") -> dict[str, Any]:
    """The provenance geoseg stored with an output file."""
    path = Path(path)
    if path.suffix.lower() == ".gpkg":
        meta = pyogrio.read_info(path, layer=layer).get("layer_metadata") or {}
        return json.loads(meta.get("geoseg", "{}"))  # type: ignore[no-any-return]
    return json.loads(sidecar(path).read_text())  # type: ignore[no-any-return]
