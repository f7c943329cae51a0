"""Options shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

F = Callable[..., Any]


def tiling_options(f: F) -> F:
    f = click.option("--overlap", type=int, default=128, show_default=True,
                     help="Overlap between neighbouring tiles, in pixels.")(f)
    f = click.option("--tile-size", type=int, default=1008, show_default=True,
                     help="Tile side in pixels (SAM 3 sees 1008).")(f)
    return f


def refine_options(f: F) -> F:
    f = click.option("--neighbour-start/--no-neighbour-start", "neighbour_start", default=True, show_default=True,
                     help="Start each tile at the level of sub-tiles its finished neighbours needed, instead of "
                          "at the plan's: a dense scene costs only the forward passes it needs (see docs/dense.md).")(f)
    f = click.option("--zoom", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Start every tile this many levels down (2 x 2 sub-tiles per level): for objects of "
                          "a few pixels (see `geoseg info --object-size`).")(f)
    f = click.option("--refine-depth", type=click.IntRange(min=0), default=2, show_default=True,
                     help="Levels of sub-tiles a saturated tile may be refined in (0: never).")(f)
    f = click.option("--saturation", type=click.FloatRange(0, 1, min_open=True), default=0.8, show_default=True,
                     help="A tile is saturated (refined) when a prompt's detections reach this share of the "
                          "model's object capacity (SAM 3: 200).")(f)
    return f


def read_options(f: F) -> F:
    f = click.option("--pixel-coords", is_flag=True,
                     help="Accept rasters without a CRS; polygons in pixel coordinates.")(f)
    f = click.option("--resolution", type=float, default=None,
                     help="Resample on read to this pixel size, in the raster's CRS units.")(f)
    f = click.option("--bands", default=None, help="1-based bands to use as R,G,B (e.g. 4,3,2), or one for grey.")(f)
    return f


def area_options(f: F) -> F:
    f = click.option("--aoi", default=None,
                     help="Segment only inside the polygons of this vector file (any CRS; not with --bbox).")(f)
    f = click.option("--bbox-crs", default=None,
                     help="CRS of --bbox, e.g. EPSG:4326 for lon/lat [default: the raster's].")(f)
    f = click.option("--bbox", default=None, metavar="MINX,MINY,MAXX,MAXY",
                     help="Segment only this box, in --bbox-crs (objects kept whole when their centroid is in it).")(f)
    return f


def web_options(f: F) -> F:
    """Reading a tile service (https://host/{z}/{x}/{y}.png): level of detail, cache, politeness."""
    f = click.option("--attribution", default=None,
                     help="The tile service's required credit, recorded in the output's provenance.")(f)
    f = click.option("--header", "headers", multiple=True, metavar="'NAME: VALUE'",
                     help="An HTTP header for the tile service (an API key); repeat for several. Kept out of every "
                          "output, log and message.")(f)
    f = click.option("--max-tiles", type=click.IntRange(min=1), default=10_000, show_default=True,
                     help="Refuse a run that needs more service tiles than this (bulk downloads break many "
                          "providers' terms).")(f)
    f = click.option("--max-connections", type=click.IntRange(1, 32), default=2, show_default=True,
                     help="Parallel requests to the tile service.")(f)
    f = click.option("--tile-cache", default=None, metavar="DIR",
                     help="Keep the service's tiles here [default: ~/.cache/geoseg/tiles, shared by runs].")(f)
    f = click.option("--web-resolution", type=float, default=None, metavar="METRES",
                     help="Read a tile service at this ground resolution at the area's centre (the nearest finer "
                          "zoom level).")(f)
    f = click.option("--web-zoom", type=click.IntRange(0, 24), default=None,
                     help="Read a tile service at this zoom level.")(f)
    return f
