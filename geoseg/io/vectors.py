"""Vector layers given by the user: read in any format GDAL knows, polygons checked."""

from __future__ import annotations

import os
import stat
import warnings
from typing import TypeAlias

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import shapely

from geoseg.core.segmenter import check_prompt
from geoseg.errors import GeosegWarning, PromptError, UsageError, option

_POLYGONAL = ("Polygon", "MultiPolygon")


class InvalidGeometryWarning(GeosegWarning):
    """Invalid polygons (self-intersecting, badly closed) were repaired."""


Vector: TypeAlias = "str | os.PathLike[str] | gpd.GeoDataFrame"


def read_vector(source: Vector, what: str = "vector", *, name: str | None = None) -> gpd.GeoDataFrame:
    """Read any vector file geopandas reads (or pass a GeoDataFrame through). `FILE:LAYER`
    names a layer; a file of several layers without one is refused, naming them.

    Messages call it `what` (PRED, REF), or the parameter `name` in the caller's terms.
    """
    if isinstance(source, gpd.GeoDataFrame):
        return source
    path, layer = _split_layer(str(source))
    shown = f"{what} {source}" if name is None else option(name, str(source))
    if not os.path.exists(path):
        raise UsageError(f"{shown}: no such file: check the path")
    kind = os.stat(path).st_mode
    if stat.S_ISDIR(kind) and not path.lower().endswith(".gdb"):
        raise UsageError(f"{shown}: is a folder, not a vector file")
    if not stat.S_ISDIR(kind) and not stat.S_ISREG(kind):  # a FIFO or a device would block the read for ever
        raise UsageError(f"{shown}: is not a regular file (a pipe or a device): give a vector file")
    try:
        layers = [str(n) for n in pyogrio.list_layers(path)[:, 0]]
        if layer is None and len(layers) > 1:
            raise UsageError(f"{shown}: holds {len(layers)} layers ({', '.join(layers[:5])}"
                             f"{', ...' if len(layers) > 5 else ''}): name one as {path}:LAYER")
        if layer is not None and layer not in layers:
            raise UsageError(f"{shown}: has no layer {layer!r} (it has {', '.join(layers[:5])}): check its name")
        return gpd.read_file(path, layer=layer)
    except UsageError:
        raise
    except Exception as e:  # pyogrio raises DataSourceError and friends; keep it one line
        reason = str(e).split("\n")[0]
        raise UsageError(f"{shown}: not a readable vector file ({reason}): give a GPKG, GeoJSON, "
                         "Shapefile, FlatGeobuf or GeoParquet") from None


def _split_layer(text: str) -> tuple[str, str | None]:
    """`FILE:LAYER` -> (FILE, LAYER) where FILE exists and `text` does not; else (text, None)."""
    head, sep, layer = text.rpartition(":")
    if sep and head and layer and not os.path.exists(text) and os.path.exists(head):
        return head, layer
    return text, None


def polygons_only(gdf: gpd.GeoDataFrame, name: str) -> gpd.GeoDataFrame:
    """Drop empty geometries, repair invalid ones (with a warning naming `name`); refuse points and lines."""
    gdf = gdf[~(gdf.geometry.isna() | gdf.geometry.is_empty)]
    kinds = set(gdf.geometry.geom_type)
    if kinds - set(_POLYGONAL):
        bad = sorted(kinds - set(_POLYGONAL))[0]
        raise UsageError(f"{name} has {bad} geometries: polygons are needed (buffer points or lines first)")
    bad = ~gdf.geometry.is_valid
    if bad.any():
        fixed = [shapely.union_all([p for p in shapely.get_parts(shapely.make_valid(g))
                                    if p.geom_type in _POLYGONAL]) for g in gdf.geometry[bad]]
        gdf = gdf.copy()
        gdf.loc[bad, gdf.geometry.name] = fixed
        # a bow-tie's area is 0 as drawn: said aloud, as its repair changes what is scored
        n, empty = int(bad.sum()), sum(g.is_empty for g in fixed)
        lost = f"; {empty} had no area left and cannot match" if empty else ""
        warnings.warn(f"{name}: {n} of {len(gdf)} polygons invalid (e.g. self-intersecting), repaired with "
                      f"shapely.make_valid keeping their polygonal parts{lost}", InvalidGeometryWarning, stacklevel=3)
    return gdf


class UserFile:
    """Mixed into the value read from a user's vector file (fields `name` and `digest`): its name in
    the caller's terms (`PARAM`: the parameter it was given as) and its resume fingerprint."""

    PARAM = ""
    name: str
    digest: str

    def named(self) -> str:
        return shown(self.name, self.PARAM)

    def fingerprint(self) -> str:
        return f"{os.path.basename(self.name)} ({self.digest})"


def shown(name: str, param: str) -> str:
    """A vector input in the caller's terms: the file as the option names it, or the GeoDataFrame given as it."""
    return f"the GeoDataFrame given as {option(param)}" if name == "GeoDataFrame" else option(param, name)


def boolean_column(gdf: gpd.GeoDataFrame, column: str, named: str, meaning: str) -> list[bool]:
    """A boolean column, true where absent or empty; refused, naming `named`, where it holds anything
    else. `meaning` says what true and false mean, for the fix."""
    if column not in gdf.columns:
        return [True] * len(gdf)
    values = list(gdf[column])
    bad = [v for v in values if not pd.isna(v) and not isinstance(v, (bool, np.bool_))]
    if bad:
        raise UsageError(f"{named}: its {column} column is not boolean (it holds {bad[0]!r}): make it a "
                         f"boolean field, {meaning}")
    return [True if pd.isna(v) else bool(v) for v in values]


def prompt_column(gdf: gpd.GeoDataFrame, column: str, named: str) -> list[str | None]:
    """A text column of prompts or labels, None where absent or empty; each under the rules of `-p`
    (one line, a few words), or refused naming `named`."""
    if column not in gdf.columns:
        return [None] * len(gdf)
    out: list[str | None] = []
    for v in gdf[column]:
        if v is None or (isinstance(v, float) and np.isnan(v)) or (isinstance(v, str) and not v.strip()):
            out.append(None)
        elif not isinstance(v, str):
            raise UsageError(f"{named}: its {column} column holds {v!r}: give text (or leave it empty)")
        else:
            try:
                out.append(check_prompt(v))
            except PromptError as e:
                raise UsageError(f"{named}: its {column} column: {e}") from None
    return out
