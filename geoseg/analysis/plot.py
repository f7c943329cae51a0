"""Pictures of results: the raster (scene-wide stretch) under the polygons, in map units.

matplotlib is imported inside the functions, so `import geoseg` stays light;
`explore` needs folium (optional).
"""

from __future__ import annotations

import math
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np

from geoseg.errors import UsageError
from geoseg.io.raster import RasterSource, ReadOptions


def _pyplot() -> Any:
    """matplotlib.pyplot, or one line saying how to install it (it is an optional dependency)."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        # geoseg is not on PyPI: name what installs from anywhere, and the extra for a clone
        raise UsageError('geoseg.plot needs matplotlib, which is not installed: pip install matplotlib '
                         '(or, in a clone of geoseg, pip install ".[plot]")') from None
    return plt


def _nice_length(span: float) -> float:
    """A round length (1, 2 or 5 x 10^k) about a fifth of `span`."""
    target = span / 5
    base = 10 ** math.floor(math.log10(target))
    return max((m * base for m in (1, 2, 5) if m * base <= target), default=base)


def add_scale_bar(ax: Any, crs: Any, *, location: str = "lower right") -> Any:
    """A scale bar in the map units of `crs` (metres shown as m or km); None when the CRS is
    missing or geographic, where a constant bar would be wrong."""
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar
    from pyproj import CRS

    if crs is None or CRS(crs).is_geographic:
        return None
    unit = CRS(crs).axis_info[0].unit_name
    x0, x1 = ax.get_xlim()
    length = _nice_length(abs(x1 - x0))
    if unit in ("metre", "meter"):
        label = f"{length / 1000:g} km" if length >= 1000 else f"{length:g} m"
    else:
        label = f"{length:g} {unit}"
    bar = AnchoredSizeBar(ax.transData, length, label, location, pad=0.4, color="white", frameon=True,
                          size_vertical=abs(x1 - x0) / 150)
    bar.patch.set(facecolor="black", alpha=0.5)
    ax.add_artist(bar)
    return bar


def plot(
    raster: Any,
    gdf: gpd.GeoDataFrame | None = None,
    *,
    column: str | None = None,
    ax: Any = None,
    bands: str | Sequence[int] | None = None,
    stretch: tuple[float, float] = (2.0, 98.0),
    max_size: int = 1024,
    alpha: float = 0.35,
    edgecolor: str | None = None,
    linewidth: float = 1.0,
    cmap: str | None = None,
    legend: bool = True,
    scale_bar: bool = True,
    title: str | None = None,
    figsize: tuple[float, float] = (8, 8),
) -> Any:
    """Draw `raster` and the polygons of `gdf` over it; return the matplotlib Axes.

    Args:
        raster: a path, an open rasterio dataset or a georeferenced DataArray. It is
            read decimated to at most `max_size` px on a side, with the scene-wide
            stretch the segmenter sees (uint8 rasters untouched).
        gdf: polygons (any CRS: reprojected to the raster's). None draws the raster only.
        column: colour by this column: "label" (categories, default when present) or
            "score" (a colour scale with a colour bar); any other column works too.
        bands, stretch: as in `geoseg.segment`.
        alpha, edgecolor, linewidth, cmap: polygon style; edges default to the fill colour.
        legend, scale_bar, title: decorations. Axes are in map units (pixels without CRS).
    """
    plt = _pyplot()
    read = ReadOptions.of(bands=bands, stretch=stretch)
    try:
        src = RasterSource(raster, read)
    except Exception:
        # a raster without CRS: draw it in pixel coordinates
        src = RasterSource(raster, ReadOptions(bands=read.bands, stretch=read.stretch, pixel_coords=True))
    with src:
        rgb, valid, transform = src.preview(max_size)
        crs, name = src.crs, Path(src.path).name
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    h, w = rgb.shape[:2]
    x0, y0 = transform @ (0, 0)
    x1, y1 = transform @ (w, h)
    image = np.dstack([rgb, np.where(valid, 255, 0).astype(np.uint8)])
    ax.imshow(image, extent=(x0, x1, y1, y0), interpolation="nearest")
    if gdf is not None and len(gdf):
        frame = gdf if crs is None or gdf.crs is None or gdf.crs == crs else gdf.to_crs(crs)
        if column is None:
            column = "label" if "label" in frame.columns else None
        _draw(ax, frame, column, alpha=alpha, edgecolor=edgecolor, linewidth=linewidth, cmap=cmap, legend=legend)
    ax.set_xlim(min(x0, x1), max(x0, x1))
    ax.set_ylim(min(y0, y1), max(y0, y1))
    ax.set_aspect("equal")
    if crs is not None:
        unit = crs.linear_units if not crs.is_geographic else "degree"
        ax.set_xlabel(f"x ({unit})")
        ax.set_ylabel(f"y ({unit})")
        ax.ticklabel_format(useOffset=False, style="plain")
    if scale_bar:
        add_scale_bar(ax, crs)
    ax.set_title(title if title is not None else f"{name}" + (f": {len(gdf)} objects" if gdf is not None else ""))
    return ax


def _draw(ax: Any, gdf: gpd.GeoDataFrame, column: str | None, *, alpha: float, edgecolor: str | None,
          linewidth: float, cmap: str | None, legend: bool) -> None:
    plt = _pyplot()
    from matplotlib.patches import Patch

    if column is None:
        gdf.plot(ax=ax, facecolor="none", edgecolor=edgecolor or "yellow", linewidth=linewidth)
        return
    values = gdf[column]
    if values.dtype.kind in "biuf":
        norm = plt.Normalize(float(values.min()), float(values.max()) if values.max() > values.min() else 1.0)
        colours = plt.get_cmap(cmap or "viridis")(norm(values.to_numpy(float)))
        gdf.plot(ax=ax, color=colours, alpha=alpha, linewidth=0)
        gdf.boundary.plot(ax=ax, color=edgecolor or colours, linewidth=linewidth)
        if legend:
            mappable = plt.cm.ScalarMappable(norm=norm, cmap=plt.get_cmap(cmap or "viridis"))
            ax.figure.colorbar(mappable, ax=ax, label=column, shrink=0.7)
        return
    cats = sorted(values.astype(str).unique())
    palette = plt.get_cmap(cmap or "tab10")
    lookup = {c: palette(k % palette.N) for k, c in enumerate(cats)}
    colours = [lookup[v] for v in values.astype(str)]
    gdf.plot(ax=ax, color=colours, alpha=alpha, linewidth=0)
    gdf.boundary.plot(ax=ax, color=edgecolor or colours, linewidth=linewidth)
    if legend:
        counts = values.astype(str).value_counts()
        ax.legend(handles=[Patch(facecolor=lookup[c], edgecolor=lookup[c], label=f"{c} ({counts[c]})") for c in cats],
                  loc="upper right", framealpha=0.8)


def explore(gdf: gpd.GeoDataFrame, column: str = "label", **kwargs: Any) -> Any:
    """An interactive web map (folium) of `gdf` over a basemap; needs `pip install folium mapclassify`."""
    try:
        import folium  # noqa: F401
    except ImportError:
        raise ImportError("geoseg.plot.explore needs folium: pip install folium mapclassify") from None
    return gdf.explore(column=column if column in gdf.columns else None, **kwargs)


class _CallableModule(types.ModuleType):
    """`geoseg.plot(raster, gdf)` calls `plot`, while `geoseg.plot.explore` etc. stay reachable:
    importing the submodule binds the name `plot` on the package to this module."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return plot(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
