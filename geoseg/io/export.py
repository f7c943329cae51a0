"""Writing results: the format follows the extension; writes are atomic.

A result is first written to a hidden temporary file beside the target and
renamed into place only once complete, so a failed run leaves nothing half
written and an existing file is replaced only with `overwrite`.

A GeoPackage holds many layers: writing one into an existing GeoPackage adds
it (or, with `overwrite`, replaces only that layer). The existing file is
copied to the temporary file, the layer written there, and the copy renamed
over the original: every other layer is kept as it was, and a failed write
leaves the original untouched. Other formats hold one layer per file.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import sqlite3
import tempfile
import warnings
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
from pyproj import CRS
from shapely.geometry import MultiPolygon

from geoseg.errors import (
    DiskFullError,
    GeosegError,
    OutputCRSWarning,
    OutputError,
    RunError,
    disk_full,
    keep_secret,
    option,
    redact,
)
from geoseg.io import files

DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON", ".fgb": "FlatGeobuf", ".parquet": "Parquet",
           ".shp": "ESRI Shapefile"}
FORMATS = {"gpkg": ".gpkg", "geojson": ".geojson", "fgb": ".fgb", "parquet": ".parquet", "shp": ".shp"}
SHP_PARTS = (".shp", ".shx", ".dbf", ".prj", ".cpg")
SHP_INDEXES = (".qix", ".sbn", ".sbx")  # spatial indexes of an old shapefile: wrong for a new one
log = logging.getLogger(__name__)
_LOW = 4 << 20  # bytes free below which a failed write is taken for a full disk
_CHUNK = 50_000  # features copied at once when a layer moves to another copy of its GeoPackage
# GPKG: replace a layer whose name differs only in case (checked first: overwrite was given)
OPTIONS: dict[str, dict[str, str]] = {"GeoJSON": {"RFC7946": "YES"}, "ESRI Shapefile": {"2GB_LIMIT": "YES"},
                                      "GPKG": {"OVERWRITE": "YES"}}


def parts(path: Path) -> list[Path]:
    """The files an output is made of: a shapefile is several."""
    if path.suffix.lower() == ".shp":
        return [path.with_suffix(ext) for ext in SHP_PARTS]
    return [path]


def gpkg_layers(path: Path) -> set[str] | None:
    """The layer names of an existing GeoPackage, lower case (SQLite table
    names ignore case); None when `path` is not a GeoPackage."""
    try:
        return {str(name).lower() for name in pyogrio.list_layers(path)[:, 0]}
    except pyogrio.errors.DataSourceError:
        return None


# about this much geometry (WKB) is read from a GeoPackage at once by `ranges`: a strip of
# `geoseg.core.merge.SPLIT` vertices (100,000 small objects would be 50 to 100 MB)
GEOMETRY_BYTES = 8 << 20


def ranges(path: Path, layer: str | None, features: int, chunk: int) -> list[tuple[int, int]]:
    """(first, count) runs of a layer's `features`, in order, each of at most `chunk` features and,
    in a GeoPackage, of about `GEOMETRY_BYTES` of geometry but one feature at least (the strips of
    a region hold hundreds of thousands of vertices each); one run at least."""
    sizes = _geometry_sizes(path, layer) if path.suffix.lower() == ".gpkg" and layer else None
    if sizes is None:
        return [(start, chunk) for start in range(0, max(features, 1), chunk)]
    out, start, n, held = [], 0, 0, 0
    for size in sizes:
        if n and (n == chunk or held + size > GEOMETRY_BYTES):
            out.append((start, n))
            start, n, held = start + n, 0, 0
        n, held = n + 1, held + size
    return [*out, (start, max(n, 1))]


def _geometry_sizes(path: Path, layer: str) -> np.ndarray | None:
    """The bytes of each feature's geometry in a GeoPackage's `layer`, in the order GDAL reads them;
    None for a layout other than geoseg's."""
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            found = db.execute("SELECT column_name FROM gpkg_geometry_columns WHERE lower(table_name) = lower(?)",
                               (layer,)).fetchone()
            if found is None:
                return None
            table, column = ('"' + name.replace('"', '""') + '"' for name in (layer, found[0]))
            rows = db.execute(f"SELECT COALESCE(length({column}), 0) FROM {table}")
            return np.fromiter((size for (size,) in rows), dtype=np.int64)
    except sqlite3.Error:
        return None


def output_key(path: str | os.PathLike[str], layer: str) -> str:
    """What a run records as written: the file, or the layer of a GeoPackage."""
    return f"{path}#{layer}" if Path(path).suffix.lower() == ".gpkg" else str(path)


def has_output(path: str | os.PathLike[str], layer: str) -> bool:
    """Whether `path` exists and, for a GeoPackage, holds `layer`."""
    path = Path(path)
    if path.suffix.lower() != ".gpkg":
        return path.exists()
    return path.exists() and layer.lower() in (gpkg_layers(path) or set())


def check_output(path: str | os.PathLike[str], overwrite: bool = False, layer: str | None = None) -> Path:
    """Check before any work that `path` (and `layer`, for a GeoPackage) can be
    written; return it as a Path.

    A GeoPackage that exists takes a new `layer` without `overwrite`; an
    existing layer of that name needs `overwrite`, which replaces only it.
    """
    keep_secret(path)  # a signed URL's secrets, in any message
    path = Path(path)
    if path.suffix.lower() not in DRIVERS:
        raise OutputError(f"{path}: unknown output format {path.suffix!r}: use .gpkg, .geojson, .fgb, .parquet or .shp")
    parent = path.parent
    if not parent.is_dir():
        raise OutputError(f"{path}: folder {str(parent)!r} does not exist: create it first")
    if not writable(parent):
        raise OutputError(f"{path}: folder {str(parent)!r} is not writable: choose another output")
    if path.is_dir():
        raise OutputError(f"{path} is a folder: give a file name such as out.gpkg")
    if DRIVERS[path.suffix.lower()] == "GPKG" and layer is not None:
        _check_layer(path, layer, overwrite)
        return path
    existing = [p for p in parts(path) if p.exists()]
    if existing and not overwrite:
        raise OutputError(f"{existing[0]} exists: pass {option('overwrite', True)} to replace it, "
                          f"or choose another name")
    return path


def writable(folder: Path) -> bool:
    """Whether a file can be made in `folder`: a real write, not os.access,
    which root passes on read-only places."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _check_layer(path: Path, layer: str, overwrite: bool) -> None:
    if not layer.strip() or layer.lower().startswith(("gpkg_", "rtree_", "sqlite_")):
        raise OutputError(f"{option('layer', layer)}: give a layer name, not empty and not starting with gpkg_, rtree_ "
                          f"or sqlite_ (names GeoPackage keeps for itself)")
    if not path.exists():
        return
    if Path(f"{path}-wal").exists():  # SQLite's write-ahead log: another program has it open
        raise OutputError(f"{path} is open in another program ({path.name}-wal is beside it): close it there "
                          f"(e.g. remove its layers from QGIS) and rerun")
    layers = gpkg_layers(path)
    if layers is None and not overwrite:
        raise OutputError(f"{path} exists: pass {option('overwrite', True)} to replace it (it is not a GeoPackage: "
                          f"it has no layers to keep), or choose another name")
    if layers is not None and layer.lower() in layers and not overwrite:
        raise OutputError(f"{path} already has a layer {layer!r}: pass {option('overwrite', True)} to replace "
                          f"that layer (the other layers are kept), or choose another {option('layer')}")


def sidecar(path: Path) -> Path:
    """Where provenance goes for formats without a metadata table."""
    return path.with_name(path.name + ".geoseg.json")


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime_ns


def as_multi(gdf: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Polygons as one-part MultiPolygons, so that every geometry has one type."""
    geoms = [MultiPolygon([g]) if g is not None and g.geom_type == "Polygon" else g for g in gdf.geometry]
    return gdf.set_geometry(gpd.GeoSeries(geoms, index=gdf.index, crs=gdf.crs, name=gdf.geometry.name))


class Writer:
    """Writes a result chunk by chunk to a hidden temporary file beside `path`;
    `commit()` renames it into place, so a failed run writes nothing.

    GeoJSON is written in EPSG:4326 (RFC 7946); a warning says so when another
    CRS was asked for (`crs`), as it is made. GeoPackage, GeoJSON, FlatGeobuf and
    Shapefile are appended to chunk by chunk; GeoParquet is written whole at
    `commit()`. Into an existing GeoPackage only `layer` is written (see the
    module docstring); the layer of other formats is named after the file.
    """

    def __init__(self, path: str | os.PathLike[str], *, layer: str = "detections", overwrite: bool = False,
                 provenance: dict[str, Any] | None = None, crs: Any = None, multi: bool = True) -> None:
        self.path = check_output(path, overwrite, layer)
        self.overwrite = overwrite
        self.multi = multi  # False: keep Polygons and MultiPolygons as they are (a staging file)
        self.driver = DRIVERS[self.path.suffix.lower()]
        self.layer = layer if self.driver == "GPKG" else self.path.stem
        if crs is not None:  # said before any work
            warn_crs(self.path, crs)
        self.meta = redact(json.dumps(provenance or {}, default=str))
        # every temporary file starts so; unique per writer, so that aborting one never removes another's
        self.prefix = f".{self.path.stem}.{os.getpid()}-{files.HOST_TAG}.{secrets.token_hex(3)}.tmp."
        self.tmp = self.path.with_name(self.prefix + self.path.suffix[1:])
        self._chunks: list[gpd.GeoDataFrame] = []  # Parquet only
        self._written = False
        self._original: tuple[int, int] | None = None  # the GeoPackage as the write began: size, mtime

    def _start(self) -> None:
        """Copy an existing GeoPackage to the temporary file: the layer goes in beside the others."""
        remove_dead_temporaries(self.path)
        if self.driver != "GPKG":
            return
        self._original = _stat(self.path)
        if self._original is None or gpkg_layers(self.path) is None:  # new, or not a GeoPackage to keep
            return
        try:  # again: the file may have changed since the check before the run
            _check_layer(self.path, self.layer, self.overwrite)
        except OutputError as e:  # a RunError: the run's work folder is kept for the rerun
            raise RunError(str(e)) from None
        shutil.copy2(self.path, self.tmp)  # copy2: the file keeps its mode

    def write(self, gdf: gpd.GeoDataFrame) -> None:
        try:
            self._write(gdf)
        except Exception as e:
            named = self._full(e)
            if named is not e:
                self.abort()
                raise named from e
            raise

    def _full(self, error: BaseException) -> BaseException:
        """`error`, or a DiskFullError naming the file where it came of a full disk
        (GDAL's error does not always say so: the free space tells)."""
        if isinstance(error, Exception) and not isinstance(error, GeosegError) and (
                disk_full(error) or shutil.disk_usage(self.tmp.parent).free < _LOW):
            return DiskFullError(self.path)
        return error

    def _write(self, gdf: gpd.GeoDataFrame) -> None:
        if self.driver == "GeoJSON" and gdf.crs is not None and not CRS(gdf.crs).equals(CRS.from_epsg(4326)):
            gdf = gdf.to_crs(4326)
        if self.driver == "Parquet":
            self._chunks.append(gdf)
            return
        if self._written and gdf.empty:
            return
        first = not self._written
        if first:
            self._start()
        # an empty result still declares MultiPolygon (GDAL would make an empty shapefile of lines)
        geometry_type = ("MultiPolygon" if gdf.empty else None) if self.multi else "Unknown"
        pyogrio.write_dataframe(
            gdf, self.tmp, layer=self.layer, driver=self.driver,
            promote_to_multi=self.multi, geometry_type=geometry_type, append=not first,
            layer_options=OPTIONS.get(self.driver) if first else None,
            layer_metadata={"geoseg": self.meta} if first and self.driver == "GPKG" else None,
        )
        self._written = True

    def commit(self, empty: gpd.GeoDataFrame) -> Path:
        """Move the file into place; `empty` gives the schema when nothing was written."""
        try:
            if self.driver == "Parquet":
                frames = [f for f in self._chunks if not f.empty] or [empty]
                gdf = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=frames[0].crs)
                (as_multi(gdf) if self.multi else gdf).to_parquet(self.tmp, index=False)
            elif not self._written:
                self.write(empty)
            if self.driver != "GPKG":
                side_tmp = sidecar(self.tmp)
                side_tmp.write_text(self.meta)
                files.replace(side_tmp, sidecar(self.path))
            self._move_into_place()
        except BaseException as e:
            named = self._full(e)
            self.abort()
            if named is not e:
                raise named from e
            raise
        return self.path

    def _move_into_place(self) -> None:
        if self.driver == "GPKG":
            files.sync(self.tmp)  # first: the check below stays right up to the rename
            while _stat(self.path) != self._original:  # another run wrote the file meanwhile (another layer)
                self._rebase()
        if self.driver != "ESRI Shapefile":
            files.replace(self.tmp, self.path)
            return
        made = sorted(self.path.parent.glob(glob.escape(self.prefix) + "*"), key=lambda p: p.suffix.lower() == ".shp")
        for part in made:  # the .shp last: readers look for it first
            files.replace(part, self.path.with_suffix(part.suffix))
        kept = {p.suffix.lower() for p in made}
        for ext in SHP_PARTS + SHP_INDEXES:  # what the replaced shapefile had and this one has not
            if ext not in kept:
                self.path.with_suffix(ext).unlink(missing_ok=True)

    def _rebase(self) -> None:
        """Put the layer written so far into a fresh copy of the GeoPackage as another program left it."""
        self._original = _stat(self.path)
        try:
            _check_layer(self.path, self.layer, self.overwrite)
        except OutputError as e:
            raise RunError(f"another program wrote {self.path} while geoseg wrote layer {self.layer!r} "
                           f"({e}): nothing written; rerun to write it again") from None
        mine, self.tmp = self.tmp, self.path.with_name(f"{self.prefix}{secrets.token_hex(2)}.gpkg")
        if self._original is not None:
            shutil.copy2(self.path, self.tmp)
        total = pyogrio.read_info(mine, layer=self.layer)["features"]
        for start in range(0, max(total, 1), _CHUNK):  # in chunks: memory stays bounded
            gdf = pyogrio.read_dataframe(mine, layer=self.layer, skip_features=start, max_features=_CHUNK)
            pyogrio.write_dataframe(
                gdf, self.tmp, layer=self.layer, driver="GPKG", append=start > 0,
                promote_to_multi=self.multi, geometry_type="MultiPolygon" if self.multi else "Unknown",
                layer_options=OPTIONS["GPKG"] if start == 0 else None,
                layer_metadata={"geoseg": self.meta} if start == 0 else None)
        for leftover in self.path.parent.glob(glob.escape(mine.name) + "*"):
            leftover.unlink(missing_ok=True)
        files.sync(self.tmp)

    def abort(self) -> None:
        """Remove the temporary files (with a shapefile's parts and SQLite's journals)."""
        for leftover in self.path.parent.glob(glob.escape(self.prefix) + "*"):
            leftover.unlink(missing_ok=True)

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()  # after a commit there is nothing left to remove


def warn_crs(path: str | os.PathLike[str], crs: Any) -> None:
    """Warn that a GeoJSON `path` is written in EPSG:4326 whatever `crs` was asked for (RFC 7946)."""
    if DRIVERS.get(Path(path).suffix.lower()) == "GeoJSON" and not CRS(crs).equals(CRS.from_epsg(4326)):
        warnings.warn(f"{path}: GeoJSON is always EPSG:4326 (RFC 7946); use .gpkg to keep {CRS(crs).to_string()}",
                      OutputCRSWarning, stacklevel=3)


def remove_dead_temporaries(path: Path) -> None:
    """Remove the temporary files of output `path` left by runs killed while writing it
    (their process gone from this host); never a live run's, nor another host's."""
    mark = re.compile(re.escape(f".{path.stem}.") + r"(\d+)-([0-9a-f]{6})\.[0-9a-f]{6}\.tmp\.")
    for leftover in path.parent.glob(glob.escape(f".{path.stem}.") + "*.tmp.*"):
        found = mark.match(leftover.name)
        if found and found[2] == files.HOST_TAG and not files.pid_alive(int(found[1])):
            log.info("%s: removing %s, left by a run killed while writing it", path, leftover.name)
            leftover.unlink(missing_ok=True)


def write(
    gdf: gpd.GeoDataFrame, path: str | os.PathLike[str], *, layer: str = "detections",
    overwrite: bool = False, provenance: dict[str, Any] | None = None, crs: Any = None,
) -> Path:
    """Write `gdf` to `path` atomically, with provenance (see `Writer`)."""
    with Writer(path, layer=layer, overwrite=overwrite, provenance=provenance, crs=crs) as w:
        w.write(gdf)
        return w.commit(gdf)


def read_provenance(path: str | os.PathLike[str], layer: str = "detections") -> dict[str, Any]:
    """The provenance geoseg stored with an output file (with `layer` of a GeoPackage)."""
    path = Path(path)
    if path.suffix.lower() == ".gpkg":
        meta = pyogrio.read_info(path, layer=layer).get("layer_metadata") or {}
        return json.loads(meta.get("geoseg", "{}"))  # type: ignore[no-any-return]
    return json.loads(sidecar(path).read_text())  # type: ignore[no-any-return]


def record(path: str | os.PathLike[str], layer: str = "detections") -> dict[str, Any]:
    """What tells an output file from another: its number of features, under "objects" (in
    `layer` of a GeoPackage; a region's strips each count), and the SHA-256 of its bytes (a
    shard's manifest keeps both for `combine`)."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        n = int(pq.ParquetFile(path).metadata.num_rows)
    else:
        gpkg = layer if path.suffix.lower() == ".gpkg" else None
        n = int(pyogrio.read_info(path, layer=gpkg, force_feature_count=True)["features"])
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"objects": n, "sha256": h.hexdigest()}
