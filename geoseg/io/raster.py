"""Reading rasters tile by tile: windowed, nodata-aware, one scene-wide stretch.

A uint8 source with no resampling is passed through untouched: the segmenter
sees exactly the raster's pixel values. Other dtypes are scaled to uint8 by one
percentile stretch per band computed over the whole scene (never per tile), so
an object looks the same in every tile.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.coords
import rasterio.io
import shapely
from pyproj import CRS
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.transform import array_bounds
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window as RioWindow

from geoseg.core.tiling import Window
from geoseg.errors import OutsideAreaError, RasterError, UsageError, option
from geoseg.io.area import Area, pixel_window
from geoseg.io.sources import is_dataarray, is_dataset, is_mosaic, is_remote, is_web_area, source_name
from geoseg.io.web import read_retrying


@dataclass(frozen=True)
class ReadOptions:
    """How to turn a raster into RGB tiles."""

    bands: tuple[int, ...] | None = None
    resolution: float | None = None
    stretch: tuple[float, float] = (2.0, 98.0)
    pixel_coords: bool = False
    area: Area | None = None  #: read only the window of this area (see `RasterSource`)
    metres: bool = False  #: `resolution` is in metres (a model's), not CRS units: see `crs_resolution`

    @classmethod
    def of(cls, *, bands: str | Sequence[int] | None = None, resolution: float | None = None,
           stretch: tuple[float, float] = (2.0, 98.0), pixel_coords: bool = False,
           area: Area | None = None, metres: bool = False) -> ReadOptions:
        """Options from the API's loose types: bands as "4,3,2" or (4, 3, 2)."""
        return cls(
            bands=parse_bands(bands) if isinstance(bands, (str, type(None))) else tuple(int(b) for b in bands),
            resolution=resolution, stretch=(float(stretch[0]), float(stretch[1])), pixel_coords=pixel_coords,
            area=area, metres=metres and resolution is not None,
        )


def crs_resolution(metres: float, crs: Any, bounds: Sequence[float]) -> tuple[float, float]:
    """A ground distance in metres as the pixel size (x, y) in the units of `crs`, at the centre of
    `bounds` (left, bottom, right, top): in degrees x grows away from the equator; feet are feet."""
    crs = CRS.from_user_input(crs)
    if crs.is_geographic:
        left, bottom, right, top = bounds
        lon, lat, step = (left + right) / 2, (bottom + top) / 2, 1e-3
        geod = crs.get_geod()
        assert geod is not None
        east = geod.inv(lon - step / 2, lat, lon + step / 2, lat)[2]
        north = geod.inv(lon, lat - step / 2, lon, lat + step / 2)[2]
        return metres * step / max(east, 1e-9), metres * step / north
    factor = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
    return metres / factor, metres / factor


def parse_bands(text: str | None) -> tuple[int, ...] | None:
    """'4,3,2' -> (4, 3, 2); None stays None."""
    if text is None or text == "":
        return None
    try:
        bands = tuple(int(b) for b in str(text).split(","))
    except ValueError:
        raise UsageError(f"{option('bands', text)} is not a list of band numbers: "
                         f"use e.g. {option('bands', '4,3,2')}") from None
    if len(bands) not in (1, 3):
        raise UsageError(f"{option('bands', text)} must name 1 band (grey) or 3 (red,green,blue), "
                         f"e.g. {option('bands', '4,3,2')}")
    return bands


def open_dataset(path: str | os.PathLike[str]) -> Any:
    """Open a raster for reading, turning rasterio's errors into one clear line."""
    path = str(path)
    if not is_remote(path):
        p = Path(path)
        if not p.exists():
            raise RasterError(f"{path}: no such file: check the path")
        if p.is_dir():
            raise RasterError(f"{path}: is a folder, not a raster")
    try:
        with warnings.catch_warnings():  # a raster without CRS is refused or allowed below, with our message
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as e:
        raise _open_error(path, str(e).split("\n")[0]) from None


def _open_error(path: str, reason: str) -> RasterError:
    """The one line for a raster GDAL cannot open: a URL that fails (404, no
    connection) is told apart from a file that is not a raster."""
    if is_remote(path) and ("HTTP response code" in reason or "CURL error" in reason):
        return RasterError(f"{path}: cannot fetch the remote raster ({reason}): "
                           f"check the URL, the network and any credentials it needs")
    return RasterError(f"{path}: not a readable raster ({reason}): give a GeoTIFF or another GDAL raster")


RGB = ("red", "green", "blue")


def colours(ds: Any) -> tuple[str, ...]:
    """Each band's colour tag (GDAL's colour interpretation): 'red', 'gray', 'alpha', 'undefined', ..."""
    return tuple(ci.name for ci in ds.colorinterp)


def default_bands(tags: Sequence[str]) -> tuple[int, ...] | None:
    """The bands read without `bands`: those tagged red, green and blue, wherever
    they are (NAIP's R,G,B,NIR); else the bands not alpha, when 1 or 3; else None."""
    if all(c in tags for c in RGB):
        return tuple(tags.index(c) + 1 for c in RGB)
    colour = tuple(i for i, t in enumerate(tags, 1) if t != ColorInterp.alpha.name)
    return colour if len(colour) in (1, 3) else None


def _default_bands(ds: Any, path: str, needed: bool = True) -> tuple[int, ...]:
    tags = colours(ds)
    bands = default_bands(tags)
    if bands is not None or not needed:
        return bands or ()
    listed = ", ".join(f"{i} {t}" for i, t in enumerate(tags, 1))
    raise UsageError(f"{path} has {len(tags)} bands, not tagged red, green and blue (bands: {listed}): "
                     f"pick three with {option('bands', 'R,G,B')} or one with {option('bands', 'N')}")


class _DataArrayDataset:
    """The part of rasterio's dataset API `RasterSource` uses, over a georeferenced
    (rioxarray) DataArray of (band, y, x) or (y, x). Windows are read with
    `.isel(...)`, so a dask-backed array stays lazy until a window is asked for."""

    def __init__(self, da: Any) -> None:
        try:
            rio = da.rio
        except AttributeError:
            raise UsageError("a DataArray input needs rioxarray: pip install rioxarray; import rioxarray") from None
        if da.ndim == 2:
            da = da.expand_dims("band")
        if da.ndim != 3:
            raise UsageError(f"a DataArray input must be (band, y, x) or (y, x), got dims {da.dims}")
        y, x = rio.y_dim, rio.x_dim
        band = next(d for d in da.dims if d not in (y, x))
        self._da = da.transpose(band, y, x)
        self._last: tuple[tuple[int, int, int, int], np.ndarray] | None = None  # the window read last, all bands
        self.name = source_name(da)
        self.count, self.height, self.width = (int(n) for n in self._da.shape)
        self.dtypes = [str(self._da.dtype)] * self.count
        self.colorinterp = [ColorInterp.undefined] * self.count
        self.crs = rio.crs
        self.transform = rio.transform(recalc=True)
        nodata = rio.nodata if rio.nodata is not None else rio.encoded_nodata
        self.nodata = None if nodata is None or (isinstance(nodata, float) and math.isnan(nodata)) else nodata
        self.bounds = rasterio.coords.BoundingBox(*rio.bounds(recalc=True))

    def overviews(self, band: int) -> list[int]:
        return []

    def _window(self, bands: Sequence[int], window: RioWindow | None) -> np.ndarray:
        if window is None:
            window = RioWindow(0, 0, self.width, self.height)
        (r0, r1), (c0, c1) = window.toranges()
        key = (int(r0), int(r1), int(c0), int(c1))
        if self._last is None or self._last[0] != key:  # a tile's pixels and its mask: one computation
            sub = self._da.isel({self._da.dims[1]: slice(key[0], key[1]), self._da.dims[2]: slice(key[2], key[3])})
            self._last = (key, np.asarray(sub.values))
        return self._last[1][[b - 1 for b in bands]]

    def _invalid(self, data: np.ndarray) -> np.ndarray:
        bad = np.zeros(data.shape, bool) if self.nodata is None else data == self.nodata
        if data.dtype.kind == "f":
            bad |= np.isnan(data)
        return bad

    def read(self, bands: Sequence[int], window: RioWindow | None = None, masked: bool = False,
             out_shape: tuple[int, int, int] | None = None) -> np.ndarray:
        if out_shape is not None:  # decimated: every k-th pixel, enough for a preview or statistics
            (r0, r1), (c0, c1) = (window or RioWindow(0, 0, self.width, self.height)).toranges()
            step_r = max(1, int(r1 - r0) // out_shape[1])
            step_c = max(1, int(c1 - c0) // out_shape[2])
            sub = self._da.isel({self._da.dims[0]: [b - 1 for b in bands],
                                 self._da.dims[1]: slice(int(r0), int(r1), step_r),
                                 self._da.dims[2]: slice(int(c0), int(c1), step_c)})
            data = np.asarray(sub.values)
        else:
            data = self._window(bands, window)
        return np.ma.masked_array(data, self._invalid(data)) if masked else data

    def dataset_mask(self, window: RioWindow | None = None) -> np.ndarray:
        data = self._window(range(1, self.count + 1), window)
        # as GDAL: a pixel is valid when any band is
        return np.where((~self._invalid(data)).any(axis=0), 255, 0).astype(np.uint8)

    def close(self) -> None:
        pass


class RasterSource:
    """An open raster, read as uint8 RGB windows plus a valid-pixel mask.

    `source` is a path (or GDAL name or URL), an open rasterio dataset (left open on
    close: the caller owns it) or a rioxarray-georeferenced `xarray.DataArray`
    (band, y, x), any dtype, read window by window so dask arrays stay lazy.

    Use as a context manager. `transform`, `crs`, `height`, `width` describe
    the grid the tiles are read on (after `resolution` resampling, if any).
    With an `area` in the options that grid is the window of the area's bounds
    grown by `area.margin` pixels and clipped to the raster (`window`, in the
    full grid); `zone` is the area in the raster's CRS. The stretch stays scene-wide.
    `bands` are read (by default see `default_bands`); `colours` is every band's
    colour tag. `choose=False` leaves `bands` empty where none can be chosen, to
    describe such a raster (`geoseg info`) instead of refusing it.
    """

    def __init__(self, source: Any, options: ReadOptions = ReadOptions(),
                 stretch_limits: np.ndarray | None = None, *, choose: bool = True) -> None:
        self.options = options
        self._choose = choose
        if stretch_limits is not None:  # computed once elsewhere (the Dask client), the same for every window
            self.__dict__["stretch_limits"] = np.asarray(stretch_limits, dtype=float)
        self._owned = True
        if is_dataarray(source):
            self._src = _DataArrayDataset(source)
            self.path = self._src.name
            if options.resolution is not None:
                raise UsageError(
                    f"{self.path}: resolution= is for files; resample a DataArray first with .rio.reproject(...)"
                )
        elif is_dataset(source):
            if source.closed:
                raise RasterError(f"{source.name}: the rasterio dataset is closed: pass an open one or the path")
            self._src, self.path, self._owned = source, str(source.name), False
        else:
            self.path = str(source)
            self._src = open_dataset(self.path)
        self.opened_from_path = not (is_dataarray(source) or is_dataset(source))
        self._env: Any = None
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        src, o = self._src, self.options
        if src.crs is None and not o.pixel_coords:
            raise RasterError(
                f"{self.path} has no CRS (not georeferenced): assign one "
                f"(gdal_edit.py -a_srs EPSG:XXXX) or pass {option('pixel_coords', True)} "
                f"for polygons in pixel coordinates"
            )
        if o.bands is not None:
            bad = [b for b in o.bands if not 1 <= b <= src.count]
            if bad:
                raise UsageError(f"{option('bands', bad[0])} is out of range: {self.path} has bands 1 to {src.count}")
        self.colours = colours(src)
        self.bands = o.bands or _default_bands(src, self.path, self._choose)
        self.dtype = np.dtype(src.dtypes[(self.bands or (1,))[0] - 1])
        self._ds = src
        if o.resolution is not None and not is_mosaic(self.path):  # a mosaic is built at its resolution
            self._ds = self._warped(o.resolution, o.metres)
        self.height, self.width = self._ds.height, self._ds.width
        self.transform = rasterio.Affine.identity() if o.pixel_coords else self._ds.transform
        self.crs = None if o.pixel_coords else self._ds.crs
        self.grid_shape = (self.height, self.width)  # of the whole raster, before any area's window
        self.zone: shapely.Geometry | None = None
        self.window: Window | None = None
        if o.area is not None:
            self._place(o.area)
        self.nodata = src.nodata
        # GDAL's block cache (5 % of RAM by default) would grow with the raster;
        # tiles go row by row, so blocks of about one tile row are all worth keeping
        row_bytes = self.width * 1024 * src.count * self.dtype.itemsize
        self._env = rasterio.Env(GDAL_CACHEMAX=int(min(max(row_bytes, 32 << 20), 256 << 20)))
        self._env.__enter__()
        lo_pct, hi_pct = o.stretch
        if not 0 <= lo_pct < hi_pct <= 100:
            raise UsageError(f"{option('stretch', (lo_pct, hi_pct))}: need 0 <= low < high <= 100, "
                             f"e.g. {option('stretch', (2, 98))}")

    def _place(self, area: Area) -> None:
        """Narrow the grid to the window of `area` (refused when it misses the raster)."""
        zone = area.in_crs(self.crs, self.path)
        h, w, full = self.height, self.width, self.transform
        corners = [full @ xy for xy in ((0, 0), (w, 0), (w, h), (0, h))]
        if shapely.intersection(zone, shapely.Polygon(corners)).area <= 0:
            left, bottom, right, top = array_bounds(h, w, full)
            hint = f" and {option('bbox_crs')}" if area.option == "--bbox" else ""
            raise OutsideAreaError(f"{area.shown()} does not overlap {self.path} (bounds {left:.15g},{bottom:.15g},"
                                   f"{right:.15g},{top:.15g} in its CRS): check the coordinates{hint}")
        self.window = pixel_window(zone, full, h, w, area.margin)
        self.zone = zone
        self.height, self.width = self.window.height, self.window.width
        self.transform = full @ rasterio.Affine.translation(self.window.col, self.window.row)

    @functools.cached_property
    def stretch_limits(self) -> np.ndarray | None:
        """Per-band (low, high) scene-wide percentiles; None for uint8 (passed through).

        Computed on first use, so opening a raster to check it costs no reading.
        """
        return None if self.dtype == np.uint8 or not self.bands else self._stretch_limits()

    def _warped(self, resolution: float, metres: bool = False) -> Any:
        src = self._src
        if resolution <= 0:
            raise UsageError(f"{option('resolution', resolution)} must be a positive ground distance in CRS units")
        if src.crs is None or not src.transform.is_rectilinear:
            raise UsageError(f"{option('resolution')} needs a north-up georeferenced raster; {self.path} is not one")
        left, bottom, right, top = src.bounds
        xres, yres = crs_resolution(resolution, src.crs, src.bounds) if metres else (resolution, resolution)
        width = max(1, math.ceil((right - left) / xres))
        height = max(1, math.ceil((top - bottom) / yres))
        transform = rasterio.Affine(xres, 0, left, 0, -yres, top)
        return WarpedVRT(
            src, crs=src.crs, transform=transform, width=width, height=height, resampling=Resampling.bilinear
        )

    def _stretch_limits(self) -> np.ndarray:
        """Per-band (low, high) percentiles over the scene, nodata excluded."""
        ds = self._ds
        lo_pct, hi_pct = self.options.stretch
        if ds.overviews(self.bands[0]):
            scale = max(1, max(ds.height, ds.width) // 1024)
            shape = (len(self.bands), max(1, ds.height // scale), max(1, ds.width // scale))
            samples = [ds.read(self.bands, out_shape=shape, masked=True)]
        else:
            block = getattr(ds, "block_shapes", [(256, 256)])[self.bands[0] - 1]
            samples = [ds.read(self.bands, window=w, masked=True)
                       for w in _sample_windows(ds.height, ds.width, block)]
        limits = np.zeros((len(self.bands), 2))
        for b in range(len(self.bands)):
            values = np.concatenate([s[b].compressed() for s in samples]).astype(np.float64)
            values = values[np.isfinite(values)]
            if values.size:
                limits[b] = np.percentile(values, [lo_pct, hi_pct])
        return limits

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Read `window` as uint8 RGB (H, W, 3) and a valid mask (H, W).

        Parts of the window outside the raster are zero and invalid.
        """
        rgb = np.zeros((window.height, window.width, 3), np.uint8)
        valid = np.zeros((window.height, window.width), bool)
        inside = window.intersection(Window(0, 0, self.height, self.width))
        if inside is None:
            return rgb, valid
        off = self.window or Window(0, 0, 0, 0)  # reads are offset into the area's window
        rio_window = RioWindow(inside.col + off.col, inside.row + off.row, inside.width, inside.height)

        def fetch() -> tuple[np.ndarray, np.ndarray]:
            return self._ds.read(self.bands, window=rio_window), self._ds.dataset_mask(window=rio_window) > 0

        try:
            data, mask = read_retrying(fetch, self.path) if is_web_area(self.path) else fetch()
        except RasterioIOError as e:
            reason = str(e).split("\n")[0]
            cause = "the network failed or the file is corrupt" if is_remote(self.path) else \
                "the file is corrupt or truncated"
            raise RasterError(f"{self.path}: cannot read pixels ({reason}): {cause}") from None
        if self.stretch_limits is not None:
            if data.dtype.kind == "f":
                mask &= np.all(np.isfinite(data), axis=0)
            data = self._to_uint8(data)
        r, c = inside.row - window.row, inside.col - window.col
        sub = rgb[r:r + inside.height, c:c + inside.width]
        sub[:] = np.moveaxis(data, 0, -1) if len(self.bands) == 3 else data[0][..., None]
        sub[~mask] = 0
        valid[r:r + inside.height, c:c + inside.width] = mask
        return rgb, valid

    def _to_uint8(self, data: np.ndarray) -> np.ndarray:
        limits = self.stretch_limits
        assert limits is not None
        out = np.empty(data.shape, np.uint8)
        for b in range(data.shape[0]):
            lo, hi = limits[b]
            scaled = (data[b].astype(np.float32) - lo) * (255.0 / max(hi - lo, 1e-12))
            out[b] = np.clip(np.nan_to_num(scaled, nan=0.0), 0, 255).round().astype(np.uint8)
        return out

    def preview(self, max_size: int = 1024) -> tuple[np.ndarray, np.ndarray, Any]:
        """The whole raster as uint8 RGB at most `max_size` px on a side, read
        decimated (overviews when the file has them), with the scene-wide
        stretch; returns (rgb, valid, transform of the preview grid)."""
        scale = max(1, math.ceil(max(self.height, self.width) / max_size))
        h, w = max(1, self.height // scale), max(1, self.width // scale)
        win = None if self.window is None else RioWindow(self.window.col, self.window.row, self.width, self.height)
        data = self._ds.read(self.bands, window=win, out_shape=(len(self.bands), h, w), masked=True)
        h, w = data.shape[1:]
        valid = np.asarray(~np.ma.getmaskarray(data).all(axis=0))
        values = np.ma.getdata(data)
        if self.stretch_limits is not None:
            if values.dtype.kind == "f":
                valid &= np.all(np.isfinite(values), axis=0)
            values = self._to_uint8(values)
        rgb = np.moveaxis(values, 0, -1) if len(self.bands) == 3 else np.repeat(values[0][..., None], 3, axis=-1)
        rgb = np.where(valid[..., None], rgb, 0).astype(np.uint8)
        transform = self.transform @ rasterio.Affine.scale(self.width / w, self.height / h)
        return rgb, valid, transform

    def close(self) -> None:
        if getattr(self, "_ds", self._src) is not self._src:
            self._ds.close()
        if self._owned:
            self._src.close()
        if self._env is not None:
            self._env.__exit__()
            self._env = None

    def __enter__(self) -> RasterSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sample_windows(height: int, width: int, block: tuple[int, int] = (256, 256), grid: int = 8,
                    size: int = 256) -> list[RioWindow]:
    """A grid of windows spread over the raster, for the stretch: each inside one
    block of the file, so that at most grid² blocks are read (or fetched over
    the network), whatever the raster's size."""
    if height * width <= (grid * size) ** 2:
        return [RioWindow(0, 0, width, height)]
    bh, bw = block if min(block) >= size else (size, size)  # strips: windows on a virtual grid
    rows = np.unique(np.linspace(0, (height - 1) // bh, grid).round().astype(int)) * bh
    cols = np.unique(np.linspace(0, (width - 1) // bw, grid).round().astype(int)) * bw
    return [RioWindow(int(c), int(r), min(size, width - int(c)), min(size, height - int(r)))
            for r in rows for c in cols]


def each_source(paths: list[Any], read: ReadOptions) -> Iterator[tuple[int, RasterSource]]:
    """Each input opened with `read`, with its number. With several inputs one that cannot be
    opened is passed over (the run reports it as that file's failure); a single one raises."""
    for s, path in enumerate(paths):
        try:
            src = RasterSource(path, read)
        except RasterError:
            if len(paths) == 1:
                raise
            continue
        with src:
            yield s, src
