"""Output assembly: per-input results numbered into one output (or a frame),
with the provenance stored beside them; label rasters burnt from them."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio

from geoseg import errors
from geoseg._version import __version__
from geoseg.core import merge, vectorize
from geoseg.core.tiling import TilePlan
from geoseg.errors import RasterError, RunError, UsageError, option
from geoseg.io import export, rasterize, stac
from geoseg.io.sources import is_web_area, web_meta
from geoseg.run.engine import Engine
from geoseg.run.inspection import RasterInfo
from geoseg.run.settings import Settings
from geoseg.run.summary import FileResult, cost, refined
from geoseg.run.workdir import WorkDir


def provenance(engine: Engine, settings: Settings, sources: list[str],
               results: Sequence[FileResult] | None = None, inputs: Sequence[Any] = ()) -> dict[str, Any]:
    """What made an output: stored with it. `sources` are the inputs' names as
    the run gave them (`geoseg.io.sources.unique_names`, the `source` column). The
    backend's `config()` (model, thresholds, ...) is laid out beside geoseg's own
    settings, which win a clash. From `results` (the files' `FileResult`):
    `refined` (dense tiles refined, sub-tiles segmented in them, the deepest
    level; `geoseg.core.refine`) and `cost` (forward passes and pixels given to
    the model). `inputs`: the sources themselves; a tile service's (`geoseg.io.web`) is recorded
    as `web`: the service (redacted), zoom, tiles, attribution and when it was read."""
    done = refined(results) if results is not None else None
    passes, pixels = cost(results) if results is not None else (None, None)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    web = [{**web_meta(p), "read": created} for p in inputs if is_web_area(p)]
    return {
        "geoseg_version": __version__,
        "created": created,
        "backend": engine.backend,
        **engine.options,
        "prompts": settings.prompts,
        "tile_size": settings.tile_size,
        "overlap": settings.overlap,
        "bands": settings.read.bands,
        "resolution": settings.read.resolution,
        "stretch": settings.read.stretch,
        "dst_crs": None if settings.dst_crs is None else settings.dst_crs.to_string(),
        "simplify": vectorize.tolerance(settings.simplify),  # pixels; the default (0.5) too
        "min_area": settings.min_area,
        "area": None if settings.read.area is None else settings.read.area.describe(),
        "exemplars": None if settings.exemplars is None else settings.exemplars.fingerprint(),
        "refine": {"saturation": settings.refine.saturation, "depth": settings.refine.depth,
                   "zoom": settings.refine.zoom, "max_objects": engine.max_objects,
                   "neighbour_start": settings.refine.neighbours and engine.neighbour_start},
        "refined": None if done is None else dict(zip(("tiles", "sub_tiles", "deepest_level"), done)),
        "cost": None if results is None else {"forward_passes": passes, "pixels": pixels},
        "sources": list(sources),
        **({"web": web} if web else {}),
    }


def objects(pieces: list[merge.Piece], plan: TilePlan, transform: Any, crs: Any, source: str,
            settings: Settings) -> gpd.GeoDataFrame:
    """Pieces held in memory -> merged objects as polygons, with area_m2, in dst_crs."""
    instances = merge.merge(pieces, plan, iou=settings.match_iou)
    gdf = vectorize.to_frame(instances, transform, crs, source=source, simplify=settings.simplify)
    return vectorize.finish(gdf, transform, settings.dst_crs, settings.min_area)


def numbered(gdf: gpd.GeoDataFrame) -> None:
    """Its `part` column (a strip's number in its object) as `object_id`, the id of the object's first
    strip (see `geoseg.core.vectorize.COLUMNS`), in place; `id` is set."""
    part = gdf.pop("part").to_numpy(np.int64) if "part" in gdf.columns else 0
    gdf.insert(1, "object_id", gdf["id"].to_numpy(np.int64) - part)


def empty_frame() -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame({c: [] for c in vectorize.COLUMNS}, geometry=[])


def mixed_crs_error() -> RasterError:
    """Inputs in several CRSs cannot share one output file."""
    other = "use --output-dir" if errors.cli_terms else "segment them one by one"
    return RasterError(f"the inputs have different CRSs: pass {option('dst_crs')} to put them in one, or {other}")


def combine_frames(frames: list[gpd.GeoDataFrame], crs: Any, number: bool = True) -> gpd.GeoDataFrame:
    """One frame of all inputs' objects, numbered from 1 unless `number` is False."""
    frames = [f for f in frames if not f.empty] or frames[:1] or [empty_frame()]
    if len({str(f.crs) for f in frames}) > 1:
        raise mixed_crs_error()
    gdf = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=frames[0].crs if crs is None else crs)
    if number:
        gdf.insert(0, "id", np.arange(1, len(gdf) + 1, dtype=np.int64))
        numbered(gdf)
    return gdf[[*vectorize.COLUMNS, *[c for c in stac.COLUMNS if c in gdf.columns], "geometry"]]


def stac_columns(gdf: gpd.GeoDataFrame, columns: dict[str, dict[str, Any]]) -> gpd.GeoDataFrame:
    """`gdf` with the STAC columns of each object's source, before the geometry."""
    gdf = gdf.copy()
    at = list(gdf.columns).index(gdf.geometry.name)
    for k, c in enumerate(stac.COLUMNS):
        values = [columns.get(src, {}).get(c) for src in gdf["source"]]
        series = pd.Series(values, index=gdf.index, dtype=object)
        gdf.insert(at + k, c, pd.to_datetime(series, utc=True) if c == "datetime" else series.astype("string"))
    return gdf


def read_chunks(path: Path, layer: str | None = "objects", chunk: int = 100_000) -> Iterator[gpd.GeoDataFrame]:
    """A vector file's `layer` (default: a per-input result's), in chunks of
    features (`export.ranges`: of a GeoPackage, bounded in bytes too); at least one chunk,
    empty for an empty layer."""
    total = pyogrio.read_info(path, layer=layer, force_feature_count=True)["features"]
    for start, n in export.ranges(path, layer, total, chunk):
        yield pyogrio.read_dataframe(path, layer=layer, skip_features=start, max_features=n)


def count_objects(path: Path, layer: str | None = "objects") -> int:
    """The objects in a per-input result or an output: its features, the strips of a region
    (see `geoseg.core.merge.SPLIT`) counted once (a result's `part` 0, an output's `object_id`)."""
    info = pyogrio.read_info(path, layer=layer, force_feature_count=True)
    fields = set(info["fields"])
    column = "part" if "part" in fields else "object_id" if "object_id" in fields else None
    if column is None:
        return int(info["features"])
    table = pyogrio.read_dataframe(path, layer=layer, columns=[column], read_geometry=False)
    return int((table["part"] == 0).sum()) if column == "part" else int(table["object_id"].nunique())


def area_of(result: Path) -> float:
    """The summed area (m²) of a per-input result's objects."""
    table = pyogrio.read_dataframe(result, layer="objects", columns=["area_m2"], read_geometry=False)
    return float(np.nansum(table["area_m2"])) if len(table) else 0.0


class Assembler:
    """Writes per-input results into one output (or a frame), numbering objects."""

    def __init__(self, writer: export.Writer | None, collect: bool,
                 columns: dict[str, dict[str, Any]] | None = None) -> None:
        self.writer, self.collect = writer, collect
        self.columns = columns  # per source name, columns added to its objects (a STAC item's id and datetime)
        self.next_id = 1
        self.provenance: dict[str, Any] | None = None  #: what `write_output` stored with the output
        self.frames: list[gpd.GeoDataFrame] = []
        self.empty: gpd.GeoDataFrame | None = None

    def add(self, result: Path) -> None:
        for gdf in read_chunks(result):
            gdf.insert(0, "id", np.arange(self.next_id, self.next_id + len(gdf), dtype=np.int64))
            numbered(gdf)
            gdf = gdf[[*vectorize.COLUMNS, "geometry"]]
            if self.columns:
                gdf = stac_columns(gdf, self.columns)
            self.next_id += len(gdf)
            if self.empty is None:
                self.empty = gdf.iloc[:0]
            if self.writer is not None:
                self.writer.write(gdf)
            if self.collect:
                self.frames.append(gdf)

    def frame(self, crs: Any) -> gpd.GeoDataFrame:
        return combine_frames(self.frames or ([self.empty] if self.empty is not None else []), crs, number=False)


def write_output(output: Any, results: list[Path], sources: list[str], layer: str, engine: Engine,
                 settings: Settings, work: WorkDir, collect: bool = False, *, overwrite: bool,
                 columns: dict[str, dict[str, Any]] | None = None,
                 files: Sequence[FileResult] | None = None, inputs: Sequence[Any] = ()) -> Assembler:
    """Write the per-input `results` into `output` atomically, numbering the objects. `overwrite`:
    what was allowed before the run (also a layer that appeared since is replaced only so).
    `files`: what the run did with those inputs (their refinement and cost, for the provenance);
    `inputs`: the sources themselves (a tile service's is recorded)."""
    meta = provenance(engine, settings, sources, files, inputs)
    try:
        w = export.Writer(output, layer=layer, overwrite=overwrite, provenance=meta)  # CRS: warned by check_run
    except UsageError as e:  # the output appeared during the run: a failure of the run, whose work is kept
        raise RunError(str(e)) from None
    with w:
        assembler = Assembler(w, collect, columns)
        assembler.provenance = meta
        for result in results:
            assembler.add(result)
        w.commit(assembler.empty if assembler.empty is not None else empty_frame())
    work.mark_written(export.output_key(output, layer))
    return assembler


def write_raster(raster: rasterize.LabelRaster, info: RasterInfo, result: Path, settings: Settings,
                 engine: Engine, work: WorkDir, first_id: int = 1) -> None:
    """Burn one input's objects into its label raster, on the grid its tiles were read on."""
    grid = rasterize.Grid(info.transform, info.width, info.height, info.crs)
    meta = json.dumps(provenance(engine, settings, [info.name], inputs=[info.path]), default=str)
    raster.write(result, grid, first_id=first_id, tags={"geoseg": meta})
    work.mark_written(raster.path)
