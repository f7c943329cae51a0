"""Label rasters beside the polygons: each object burnt into a GeoTIFF on the
grid the tiles were read on, as its `id` (to join the vector output) or as the
1-based number of its prompt.

The objects are read back from a run's per-input result GeoPackage one window
at a time (its R-tree answers each window's bbox), put back in the raster's CRS
when they were reprojected, and burnt with the pixel-centre rule: a polygon
made from a pixel mask and not simplified burns back to exactly that mask. At
most one window is held in memory. The raster is staged sparse (windows without
objects are never written), copied into a Cloud Optimised GeoTIFF by GDAL, and
renamed into place when complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import rasterio
import rasterio.shutil
from affine import Affine
from pyproj import CRS
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.features import rasterize
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from geoseg.errors import OutputError, RunError, UsageError, option
from geoseg.io import files
from geoseg.io.export import writable
from geoseg.io.sources import is_remote, output_names, unique_names

VALUES = ("instance", "class")
SUFFIXES = (".tif", ".tiff")
BLOCK = 512
WINDOW = (BLOCK, 8 * BLOCK)  # rows, cols burnt at a time: 16 MiB of uint32 at most
COPY_OPTIONS = dict(COMPRESS="DEFLATE", SPARSE_OK="TRUE", BIGTIFF="IF_SAFER", NUM_THREADS="ALL_CPUS")
# class colours (uint8 rasters): 0 stays transparent
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
           (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
           (0, 0, 128), (128, 128, 128)]


@dataclass(frozen=True)
class Grid:
    """The pixel grid of a label raster: the grid the tiles were read on."""

    transform: Affine
    width: int
    height: int
    crs: CRS | None


@dataclass(frozen=True)
class LabelRaster:
    """One label raster to write: where, and which values (see `VALUES`)."""

    path: Path
    values: str = "instance"
    labels: tuple[str, ...] = ()  #: the prompts, in order: class k is labels[k - 1]

    @property
    def dtype(self) -> str:
        if self.values == "instance":
            return "uint32"
        return "uint8" if len(self.labels) < 256 else "uint16"

    def write(self, objects: str | os.PathLike[str], grid: Grid, *, first_id: int = 1,
              tags: dict[str, str] | None = None) -> Path:
        """Burn the objects of the result GeoPackage `objects` (layer "objects";
        object k, in file order, has id first_id + k) into `path`, atomically."""
        target = self.path
        target.parent.mkdir(parents=True, exist_ok=True)  # a subfolder of the folder named, for nested inputs
        stage = target.with_name(f".{target.stem}.{os.getpid()}.stage.tif")
        tmp = target.with_name(f".{target.stem}.{os.getpid()}.tmp.tif")
        try:
            # GDAL's block cache would otherwise grow to 5 % of RAM with the raster
            with rasterio.Env(GDAL_CACHEMAX=64 << 20), _quiet(grid.crs is None):
                with rasterio.open(stage, "w", **_stage_profile(grid, self.dtype)) as dst:
                    burn(objects, dst, grid, self._values, first_id=first_id)
                    self._describe(dst, tags or {})
                to_cog(stage, tmp, Resampling.nearest if self.values == "instance" else Resampling.mode)
            files.replace(tmp, target)
        finally:
            stage.unlink(missing_ok=True)
            tmp.unlink(missing_ok=True)
        return target

    def _values(self, table: Any, first_id: int) -> np.ndarray:
        if self.values == "instance":
            ids = table.index.to_numpy(np.int64) + (first_id - 1)  # GeoPackage fids count from 1
            if "part" in table.columns:  # the strips of a region: the id of its first
                ids = ids - table["part"].to_numpy(np.int64)
            if len(ids) and ids.max() > np.iinfo(np.uint32).max:
                raise RunError(f"{self.path}: object ids above {np.iinfo(np.uint32).max} do not fit a uint32 raster")
            return ids
        number = {label: k for k, label in enumerate(self.labels, 1)}
        unknown = set(table["label"]) - set(number)
        if unknown:
            raise RunError(f"{self.path}: some objects are labelled {sorted(unknown)[0]!r}, not one of the "
                           f"prompts: use {option('raster_values', 'instance')}")
        return table["label"].map(number).to_numpy(np.int64)

    def _describe(self, dst: Any, tags: dict[str, str]) -> None:
        if self.values == "instance":
            dst.set_band_description(1, "id: the object's id in the vector output; 0 = no object")
        else:
            dst.set_band_description(1, "class: " + ", ".join(f"{k}={v}" for k, v in enumerate(self.labels, 1)))
            tags = {**tags, "geoseg_labels": json.dumps(list(self.labels))}
            if self.dtype == "uint8":
                colours = {0: (0, 0, 0, 0)}
                colours.update({k: (*PALETTE[(k - 1) % len(PALETTE)], 255) for k in range(1, len(self.labels) + 1)})
                dst.write_colormap(1, colours)
        dst.update_tags(geoseg_values=self.values, **tags)


@contextlib.contextmanager
def _quiet(pixel_coords: bool) -> Iterator[None]:
    # with --pixel-coords the raster is meant to have no georeferencing; warning
    # filters are process-wide, so they are touched only then
    if not pixel_coords:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


def plan(raster_out: str | os.PathLike[str] | None, sources: Sequence[Any], *, values: str | None = "instance",
         prompts: Sequence[str] = (), overwrite: bool = False, written: Collection[str] = ()) -> dict[int, LabelRaster]:
    """The label raster of each input (by index), checked before any work.

    With one input `raster_out` is a .tif/.tiff file; with several (or when it
    is an existing folder) one NAME.tif per input is written in that folder,
    NAME as the per-input vector outputs. An existing file is refused unless
    `overwrite` or this run wrote it (`written`), and so is an input raster.
    """
    if values is not None and values not in VALUES:
        raise UsageError(f"{option('raster_values', values)}: use instance or class")
    if raster_out is None:
        if values not in (None, "instance"):
            raise UsageError(f"{option('raster_values', values)} needs {option('raster_out', 'PATH.tif')}")
        return {}
    path = Path(raster_out)
    if path.is_dir():
        targets = [path / name for name in output_names(unique_names(list(sources)), ".tif")]
        folder = path
    elif len(sources) > 1:
        if path.suffix.lower() in SUFFIXES:
            raise OutputError(f"{option('raster_out', str(path))}: {len(sources)} inputs need a folder "
                              f"(one NAME.tif per input is written there): give an existing folder")
        raise OutputError(f"{option('raster_out', str(path))}: no such folder: create it first "
                          "(one NAME.tif per input goes there)")
    else:
        if path.suffix.lower() not in SUFFIXES:
            raise OutputError(f"{option('raster_out', str(path))}: a label raster is a GeoTIFF: give a .tif file name")
        folder = path.parent
        if not folder.is_dir():
            raise OutputError(f"{option('raster_out', str(path))}: folder {str(folder)!r} does not exist: "
                              "create it first")
        targets = [path]
    if not writable(folder):
        raise OutputError(f"{option('raster_out', str(path))}: folder {str(folder)!r} is not writable: "
                          "choose another")
    inputs = {os.path.realpath(s) for s in sources if isinstance(s, str) and not is_remote(s)}
    for t in targets:
        if os.path.realpath(t) in inputs:
            raise OutputError(f"{option('raster_out', str(t))} is an input raster: choose another name")
        if t.is_dir():
            raise OutputError(f"{option('raster_out', str(t))} is a folder: give a file name such as labels.tif")
        if t.exists() and not overwrite and str(t) not in written:
            raise OutputError(f"{t} exists: pass {option('overwrite', True)} to replace it, or choose another name")
    values = values or "instance"
    return {k: LabelRaster(t, values, tuple(prompts)) for k, t in enumerate(targets)}


def _stage_profile(grid: Grid, dtype: str) -> dict[str, Any]:
    return dict(driver="GTiff", width=grid.width, height=grid.height, count=1, dtype=dtype, crs=grid.crs,
                transform=grid.transform, nodata=0, tiled=True, blockxsize=BLOCK, blockysize=BLOCK,
                compress="deflate", zlevel=1, sparse_ok=True, bigtiff="IF_SAFER", num_threads="ALL_CPUS")


def windows(height: int, width: int, size: tuple[int, int] = WINDOW) -> list[Window]:
    """Block-aligned windows covering a raster, row by row."""
    rows, cols = size
    return [Window(c, r, min(cols, width - c), min(rows, height - r))
            for r in range(0, height, rows) for c in range(0, width, cols)]


def _bbox(transform: Affine, height: int, width: int) -> tuple[float, float, float, float]:
    # through the four corners: also right for rotated grids and pixel coordinates (y down)
    xs, ys = zip(*(transform @ (c, r) for c, r in ((0, 0), (width, 0), (0, height), (width, height))))
    return min(xs), min(ys), max(xs), max(ys)


def burn(objects: str | os.PathLike[str], dst: Any, grid: Grid, values: Callable[[Any, int], np.ndarray], *,
         first_id: int = 1) -> int:
    """Burn the objects of a result GeoPackage into band 1 of the open dataset
    `dst` window by window, `values(table, first_id)` giving each object's value;
    where objects overlap, the higher score wins. The number of windows written."""
    info = pyogrio.read_info(objects, layer="objects")
    crs = CRS.from_user_input(info["crs"]) if info["crs"] else None
    reproject = crs is not None and grid.crs is not None and not crs.equals(grid.crs)
    if info["features"] and _fid_range(objects) != (1, info["features"]):
        raise RunError(f"{objects}: object numbers are not 1..{info['features']}: rerun with {option('restart', True)}")
    parts = ["part"] if "part" in info["fields"] else []  # a region's strips: one object (its first's id)
    written = 0
    for window in windows(grid.height, grid.width):
        transform = window_transform(window, grid.transform)
        box = _bbox(transform, window.height, window.width)
        if reproject:
            box = transform_bounds(grid.crs, crs, *box, densify_pts=21)
        table = pyogrio.read_dataframe(objects, layer="objects", columns=["label", "score", *parts], bbox=box,
                                       fid_as_index=True)
        if table.empty:
            continue
        if reproject:
            table = table.to_crs(grid.crs)
        table = table.sort_values("score", kind="stable")  # burnt last, the highest score wins
        burnt = rasterize(zip(table.geometry.values, values(table, first_id)), out_shape=(window.height, window.width),
                          transform=transform, fill=0, all_touched=False, dtype=dst.dtypes[0])
        if burnt.any():
            dst.write(burnt, 1, window=window)
            written += 1
    return written


def _fid_range(objects: str | os.PathLike[str]) -> tuple[int, int]:
    """(first, last) feature id: ids are counted in file order from 1, as the vector output numbers them."""
    row = pyogrio.read_dataframe(objects, sql="SELECT MIN(fid) AS lo, MAX(fid) AS hi FROM objects",
                                 read_geometry=False)
    return int(row["lo"][0]), int(row["hi"][0])


def to_cog(src: str | os.PathLike[str], dst: str | os.PathLike[str], resampling: Resampling) -> None:
    """Copy `src` into a Cloud Optimised GeoTIFF (512 px tiles, DEFLATE with a
    predictor, overviews by `resampling`; empty tiles left out), or, where GDAL
    has no COG driver (before 3.1), a tiled GeoTIFF with internal overviews."""
    with rasterio.Env() as env:
        has_cog = "COG" in env.drivers()
    if not has_cog:
        tiled_geotiff(src, dst, resampling)
        return
    rasterio.shutil.copy(src, dst, driver="COG", BLOCKSIZE=str(BLOCK), PREDICTOR="YES",
                         OVERVIEW_RESAMPLING=resampling.name.upper(), **COPY_OPTIONS)


def tiled_geotiff(src: str | os.PathLike[str], dst: str | os.PathLike[str], resampling: Resampling) -> None:
    """`to_cog` without the COG driver: overviews built into `src`, then copied
    with it into a tiled GeoTIFF (the overviews' IFDs may follow the image's)."""
    with rasterio.open(src, "r+") as ds:
        factors = [2 ** k for k in range(1, 32) if max(ds.width, ds.height) / 2 ** (k - 1) > BLOCK]
        ds.build_overviews(factors, resampling)
    rasterio.shutil.copy(src, dst, driver="GTiff", TILED="YES", BLOCKXSIZE=str(BLOCK), BLOCKYSIZE=str(BLOCK),
                         PREDICTOR="2", COPY_SRC_OVERVIEWS="YES", **COPY_OPTIONS)
