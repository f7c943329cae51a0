"""The explorer's state file: a GeoPackage that brings results, decisions and drawings back.

Layers: `results` (every object found, with its `uid` and `review`), `reviews`
(the decisions alone, rewritten on each one: cheap beside the polygons),
`boxes`, `clicks`, and `explorer` (one row: the source, the threshold, the view).
A file that exists without an `explorer` layer is the user's, not ours: refused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import pandas as pd
import pyogrio

from geoseg.core.vectorize import COLUMNS
from geoseg.errors import UsageError
from geoseg.io.export import as_multi
from geoseg.io.review import REVIEW

MARK = "explorer"


def empty_results(crs: Any) -> gpd.GeoDataFrame:
    return as_results(gpd.GeoDataFrame({c: [] for c in COLUMNS}, geometry=[], crs=crs), crs)


def as_results(gdf: gpd.GeoDataFrame, crs: Any, uids: Iterable[int] | None = None) -> gpd.GeoDataFrame:
    """`gdf` with the columns of a CLI output and `review`, indexed by uid (`uids`, else its index)."""
    out = gdf.copy()
    if uids is not None:
        out.index = pd.Index(list(uids), dtype="int64")
        if {"id", "object_id"} <= set(out.columns):  # a region's strips share the new id of their first
            out["object_id"] = out["object_id"].map(dict(zip(out["id"], out.index)))
    out.index.name = "uid"
    out["id"] = out.index
    if "object_id" not in out.columns:
        out["object_id"] = out.index
    for c in COLUMNS:
        if c not in out.columns:
            out[c] = 0 if c in ("n_tiles", "level") else None
    out = out.drop(columns=["object"], errors="ignore")  # a run's own numbering: the uid is the id here
    for c in ("id", "object_id", "n_tiles", "level"):
        out[c] = out[c].fillna(0).astype("int64")
    if REVIEW not in out.columns:
        out[REVIEW] = None
    out[REVIEW] = out[REVIEW].astype(object).where(out[REVIEW].notna(), None)
    out = out[COLUMNS + [c for c in out.columns if c not in COLUMNS + [REVIEW, "geometry"]] + [REVIEW, "geometry"]]
    return gpd.GeoDataFrame(out, geometry="geometry", crs=crs)


@dataclass
class Kept:
    results: gpd.GeoDataFrame
    exemplars: gpd.GeoDataFrame | None
    clicks: gpd.GeoDataFrame | None
    threshold: float | None
    view: list[float] | None


class StateFile:
    """The GeoPackage at `path`, for the explorer of `source` (its path or mosaic); `setting()` gives
    the explorer's threshold and view as they are now."""

    def __init__(self, path: str | Path, source: str,
                 setting: Callable[[], tuple[float, Sequence[float]]] = lambda: (0.5, ())) -> None:
        self.path = Path(path)
        self.setting = setting
        if self.path.suffix.lower() != ".gpkg":
            raise UsageError(f"state={str(path)!r}: the explorer keeps its state in a GeoPackage (.gpkg)")
        self.source = source
        if self.path.exists():
            layers = self._layers()
            if MARK not in layers:
                raise UsageError(f"{self.path} exists and is not an explorer's state file: it is left as it is; "
                                 f"give a new .gpkg path for state=")
            row = pyogrio.read_dataframe(self.path, layer=MARK)
            if len(row) and row["source"].iloc[0] != _name(source):
                raise UsageError(f"{self.path} keeps the state of {row['source'].iloc[0]}, not of {_name(source)}: "
                                 f"give another state file")
        elif not self.path.parent.is_dir():
            raise UsageError(f"state={str(path)!r}: folder {self.path.parent} does not exist")

    def _layers(self) -> set[str]:
        try:
            return {str(n) for n, _ in pyogrio.list_layers(self.path)}
        except Exception:  # not a GeoPackage at all
            return set()

    def exists(self) -> bool:
        return self.path.exists()

    def load(self, crs: Any) -> Kept:
        layers = self._layers()
        results = empty_results(crs)
        if "results" in layers:
            results = pyogrio.read_dataframe(self.path, layer="results").set_index("uid").to_crs(crs)
            if "reviews" in layers:
                reviews = pd.DataFrame(pyogrio.read_dataframe(self.path, layer="reviews")).set_index("uid")[REVIEW]
                results[REVIEW] = reviews.reindex(results.index)
        row = pyogrio.read_dataframe(self.path, layer=MARK)
        view = json.loads(row["view"].iloc[0]) if len(row) and row["view"].iloc[0] else None
        return Kept(results=results,
                    exemplars=pyogrio.read_dataframe(self.path, layer="boxes") if "boxes" in layers else None,
                    clicks=pyogrio.read_dataframe(self.path, layer="clicks") if "clicks" in layers else None,
                    threshold=float(row["threshold"].iloc[0]) if len(row) else None, view=view or None)

    def save_results(self, frame: gpd.GeoDataFrame) -> None:
        self._mark()
        out = as_multi(frame.reset_index())
        pyogrio.write_dataframe(out, self.path, layer="results")
        self.save_reviews(frame)

    def save_reviews(self, frame: gpd.GeoDataFrame) -> None:
        self._mark()
        decided = frame[frame[REVIEW].notna()]
        table = pd.DataFrame({"uid": decided.index.to_numpy("int64"), REVIEW: decided[REVIEW].astype(str)})
        pyogrio.write_dataframe(table, self.path, layer="reviews")

    def save_drawn(self, layer: str, gdf: gpd.GeoDataFrame) -> None:
        """The boxes or the clicks drawn (`layer`); none left: the layer emptied."""
        self._mark()
        if len(gdf) or layer in self._layers():
            pyogrio.write_dataframe(gdf, self.path, layer=layer)

    def save_setting(self) -> None:
        """The threshold and the view, as they are now."""
        self._mark(again=True)

    def _mark(self, again: bool = False) -> None:
        """The `explorer` row (the source, the threshold, the view), written before anything else: it marks
        the file as ours. Written only where it is missing, unless `again`."""
        if not again and self.path.exists() and MARK in self._layers():
            return
        threshold, view = self.setting()
        row = pd.DataFrame({"source": [_name(self.source)], "threshold": [threshold],
                            "view": [json.dumps(list(view)) if view else ""]})
        pyogrio.write_dataframe(row, self.path, layer=MARK)


def _name(source: str) -> str:
    """The source as kept in the file: a path, or a short digest of a mosaic's or service's VRT."""
    if source.lstrip().startswith("<"):
        return "vrt:" + hashlib.sha1(source.encode()).hexdigest()[:12]
    return str(source)
