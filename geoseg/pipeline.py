"""Orchestration: plan -> read -> segment -> stage -> merge -> vectorise -> write.

Every run stages its per-tile detections on disk (a work folder), then merges
and vectorises them one row of tiles at a time: memory stays bounded whatever
the raster size, and an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import tempfile
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import shapely

from geoseg import export, merge, rasterize, vectorize, workdir
from geoseg.area import Area, cut_by_window, tiles_apart
from geoseg.engine import SEGMENTER_OPTIONS, LocalEngine
from geoseg.errors import EmptyRasterWarning, GeosegError, OutsideAreaError, RasterError, RunError, UsageError
from geoseg.inputs import RASTER_SUFFIXES, list_inputs, output_names, unique_names
from geoseg.progress import Progress
from geoseg.raster import RasterSource, ReadOptions, is_remote, source_name
from geoseg.segmenter import Segmenter, as_segmenter, check_prompts
from geoseg.staging import TileStore
from geoseg.tiling import TilePlan, Window, plan_tiles
from geoseg.workdir import WorkDir

log = logging.getLogger("geoseg")

__all__ = ["RASTER_SUFFIXES", "list_inputs"]  # kept here for callers of pipeline.list_inputs


@dataclass
class Settings:
    """Everything a run needs besides the inputs and the segmenter."""

    prompts: list[str]
    tile_size: int = 1008
    overlap: int = 128
    read: ReadOptions = field(default_factory=ReadOptions)
    dst_crs: Any = None
    simplify: float | None = None
    min_area: float | None = None
    match_iou: float = 0.5
    progress: bool = False

    @classmethod
    def of(cls, prompts: str | Sequence[str], *, tile_size: int = 1008, overlap: int = 128,
           bands: str | Sequence[int] | None = None, resolution: float | None = None,
           stretch: tuple[float, float] = (2.0, 98.0), pixel_coords: bool = False, dst_crs: Any = None,
           simplify: float | None = None, min_area: float | None = None, progress: bool = False,
           bbox: Any = None, bbox_crs: Any = None, aoi: Any = None) -> Settings:
        """Settings from the API's loose types, checked (prompts, tiling, CRS, area) before any work."""
        plan_tiles(tile_size, tile_size, tile_size, overlap)
        # the area's window is grown by the overlap, so objects crossing its edge are read whole
        area = Area.of(bbox=bbox, bbox_crs=bbox_crs, aoi=aoi, margin=overlap)
        return cls(
            prompts=check_prompts(prompts), tile_size=tile_size, overlap=overlap,
            read=ReadOptions.of(bands=bands, resolution=resolution, stretch=stretch, pixel_coords=pixel_coords,
                                area=area),
            dst_crs=None if dst_crs is None else vectorize.parse_crs(dst_crs),
            simplify=simplify, min_area=min_area, progress=progress,
        )


def objects(pieces: list[merge.Piece], plan: TilePlan, transform: Any, crs: Any, source: str,
            settings: Settings) -> gpd.GeoDataFrame:
    """Pieces -> merged objects as polygons, with area_m2, in dst_crs."""
    instances = merge.merge(pieces, plan, iou=settings.match_iou)
    gdf = vectorize.to_frame(instances, transform, crs, source=source, simplify=settings.simplify)
    return vectorize.finish(gdf, transform, settings.dst_crs, settings.min_area)


def provenance(engine: Any, settings: Settings, sources: list[Any]) -> dict[str, Any]:
    """What made an output: stored with it. `engine` tells the backend and its options."""
    from geoseg import __version__

    return {
        "geoseg_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "backend": engine.backend,
        "model": engine.options.get("model"),
        "score_threshold": engine.options.get("score_threshold"),
        "mask_threshold": engine.options.get("mask_threshold"),
        "prompts": settings.prompts,
        "tile_size": settings.tile_size,
        "overlap": settings.overlap,
        "bands": settings.read.bands,
        "resolution": settings.read.resolution,
        "stretch": settings.read.stretch,
        "dst_crs": None if settings.dst_crs is None else settings.dst_crs.to_string(),
        "simplify": settings.simplify,
        "min_area": settings.min_area,
        "area": None if settings.read.area is None else settings.read.area.describe(),
        "sources": unique_names(sources),
    }


@dataclass
class FileResult:
    """What a run did with one input."""

    source: str
    state: str = "pending"  #: "done", "failed" or "skipped" (outside the area)
    tiles: int = 0
    objects: int = 0
    area_m2: float = 0.0
    seconds: float = 0.0
    error: str | None = None
    output: str | None = None
    reused: bool = False  #: done by an earlier, interrupted run
    all_nodata: bool = False


@dataclass
class Summary:
    """What a run did: per file, and where the output went."""

    files: list[FileResult]
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)
    rasters: list[str] = field(default_factory=list)  #: label rasters written (--raster-out)
    frame: gpd.GeoDataFrame | None = None  #: the objects, when asked for

    @property
    def failed(self) -> list[FileResult]:
        return [f for f in self.files if f.state == "failed"]

    def report(self) -> str:
        """A few lines for people: files done and failed, objects, area, time."""
        done = [f for f in self.files if f.state == "done"]
        objects = sum(f.objects for f in done)
        area = sum(f.area_m2 for f in done if f.area_m2 == f.area_m2)
        skipped = [f.source for f in self.files if f.state == "skipped"]
        outside = f", {len(skipped)} outside the area" if skipped else ""
        lines = [f"{len(done)} of {len(self.files)} files done, {len(self.failed)} failed{outside}; {objects} objects, "
                 f"{area / 1e6:.4g} km² of objects; {self.seconds:.1f} s"]
        lines += [f"failed: {f.source}: {f.error}" for f in self.failed]
        if skipped:
            more = " ..." if len(skipped) > 10 else ""
            lines.append("skipped (outside the area): " + ", ".join(skipped[:10]) + more)
        return "\n".join(lines)


def fingerprint(settings: Settings, engine: Any) -> dict[str, Any]:
    """The settings that decide what is staged, by CLI option name."""
    read = settings.read
    out: dict[str, Any] = {"--prompt": settings.prompts, "--backend": engine.backend}
    out.update({"--" + k.replace("_", "-"): engine.options.get(k) for k in SEGMENTER_OPTIONS})
    out.update({
        "--tile-size": settings.tile_size, "--overlap": settings.overlap,
        "--bands": None if read.bands is None else list(read.bands), "--resolution": read.resolution,
        "--stretch": list(read.stretch), "--pixel-coords": read.pixel_coords,
    })
    no_area = {"--bbox": None, "--bbox-crs": None, "--aoi": None}
    out.update(read.area.fingerprint() if read.area is not None else no_area)
    return out


class _FileMerge:
    """Merges a raster's staged rows of tiles in a background thread as they
    complete (behind the model), vectorising each batch of finished objects
    into `target`. Rows are fed with `feed(n)`: rows 0..n-1 are staged."""

    def __init__(self, store_path: Path, plan: TilePlan, info: dict[str, Any], settings: Settings,
                 target: Path) -> None:
        self.store_path, self.plan, self.info, self.settings, self.target = store_path, plan, info, settings, target
        self.rows: queue.Queue[int | None] = queue.Queue()
        self.next = 0
        self.objects, self.area_m2, self.cut = 0, 0.0, 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="geoseg-merge", daemon=True)
        self.thread.start()

    def feed(self, complete: int) -> None:
        while self.next < complete:
            self.rows.put(self.next)
            self.next += 1

    def abort(self) -> None:
        self.rows.put(None)

    def join(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        info, settings = self.info, self.settings
        transform, crs, name, utm = info["transform"], info["crs"], info["name"], info["utm"]
        zone = info.get("zone")
        if zone is not None:
            shapely.prepare(zone)
        merger = merge.RowMerger(self.plan, iou=settings.match_iou)
        try:
            with TileStore(self.store_path) as store, \
                    export.Writer(self.target, layer="objects", overwrite=True, multi=False) as w:
                for t in iter(self.rows.get, None):
                    instances = merger.add(t, store.pieces_in_row(t))
                    if instances:
                        gdf = vectorize.to_frame(instances, transform, crs, source=name, simplify=settings.simplify)
                        if zone is not None:  # kept whole when the centroid is in the area, else dropped
                            keep = shapely.contains(zone, shapely.centroid(gdf.geometry.values))
                            self.cut += int((keep & cut_by_window(instances, info["window"], info["grid"])).sum())
                            gdf = gdf[keep]
                    if instances and len(gdf):
                        gdf = vectorize.finish(gdf, transform, settings.dst_crs, settings.min_area, utm=utm)
                        w.write(gdf)
                        self.objects += len(gdf)
                        self.area_m2 += float(np.nansum(gdf["area_m2"]))
                    if t == self.plan.shape[0] - 1:
                        if self.cut:
                            log.warning("%s: %d objects kept reach the edge of the window read (--overlap %d px "
                                        "around the area) and may be cut there: raise --overlap to read them whole",
                                        name, self.cut, settings.overlap)
                        empty = vectorize.to_frame([], transform, crs, source=name)
                        w.commit(vectorize.finish(empty, transform, settings.dst_crs))
                        return
        except BaseException as e:  # handed to the caller by join()
            self.error = e


class _Rows:
    """Which rows of tiles are completely staged (tiles arrive in any order)."""

    def __init__(self, plan: TilePlan, done: set[int]) -> None:
        self.cols = plan.shape[1]
        self.left = [self.cols] * plan.shape[0]
        self.complete = 0
        self.add(done)

    def add(self, tiles: Iterable[int]) -> int:
        """Count `tiles` as staged; the number of leading rows complete."""
        for k in tiles:
            self.left[k // self.cols] -= 1
        while self.complete < len(self.left) and self.left[self.complete] == 0:
            self.complete += 1
        return self.complete


def _read_chunks(path: Path, chunk: int = 100_000) -> Iterator[gpd.GeoDataFrame]:
    total = pyogrio.read_info(path, layer="objects")["features"]
    for start in range(0, max(total, 1), chunk):
        yield pyogrio.read_dataframe(path, layer="objects", skip_features=start, max_features=chunk)


class _Assembler:
    """Writes per-file results into one output (or a frame), numbering objects."""

    def __init__(self, writer: export.Writer | None, collect: bool) -> None:
        self.writer, self.collect = writer, collect
        self.next_id = 1
        self.frames: list[gpd.GeoDataFrame] = []
        self.empty: gpd.GeoDataFrame | None = None

    def add(self, result: Path) -> None:
        for gdf in _read_chunks(result):
            gdf.insert(0, "id", np.arange(self.next_id, self.next_id + len(gdf), dtype=np.int64))
            gdf = gdf[[*vectorize.COLUMNS, "geometry"]]
            self.next_id += len(gdf)
            if self.empty is None:
                self.empty = gdf.iloc[:0]
            if self.writer is not None:
                self.writer.write(gdf)
            if self.collect:
                self.frames.append(gdf)

    def frame(self, crs: Any) -> gpd.GeoDataFrame:
        return combine_frames(self.frames or ([self.empty] if self.empty is not None else []), crs, number=False)


def default_work_dir(output: Any = None, output_dir: Any = None) -> Path:
    """Where a run stages its work: OUTPUT.geoseg-work, or OUTPUT_DIR/.geoseg-work."""
    if output_dir is not None:
        return Path(output_dir) / ".geoseg-work"
    return Path(str(output) + ".geoseg-work")


def _km2_per_tile(info: dict[str, Any]) -> float:
    return float(info["area_km2"] or 0.0) / max(info["tiles"], 1)


def run(
    sources: Any,
    settings: Settings,
    engine: Any,
    *,
    output: str | os.PathLike[str] | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    fmt: str = "gpkg",
    layer: str = "detections",
    overwrite: bool = False,
    work_dir: str | os.PathLike[str] | None = None,
    restart: bool = False,
    collect: bool = False,
    raster_out: str | os.PathLike[str] | None = None,
    raster_values: str | None = None,
) -> Summary:
    """Segment rasters, staging per-tile detections in a work folder; resumable.

    A run stopped in any way and started again with the same arguments goes on
    from the tiles already staged; its output is identical to an uninterrupted
    run's. With several inputs a file that fails is recorded and the others go
    on. The work folder is removed once every file is done and written.
    """
    start = time.perf_counter()
    paths = list_inputs(sources)
    several = len(paths) > 1
    outputs, rasters = check_run(paths, settings, output=output, output_dir=output_dir, fmt=fmt, layer=layer,
                                 overwrite=overwrite, work_dir=work_dir, raster_out=raster_out,
                                 raster_values=raster_values)
    engine.check(settings.prompts)  # also loads the model where it runs: fails early
    temporary = work_dir is None and output is None and output_dir is None
    if temporary:
        path = Path(tempfile.mkdtemp(prefix="geoseg-work-"))
    else:
        path = Path(work_dir) if work_dir is not None else default_work_dir(output, output_dir)
    work = WorkDir(path, fingerprint(settings, engine), restart=restart and not temporary)
    try:
        summary = _run(paths, several, settings, engine, work, outputs, output, layer, overwrite, collect, rasters)
    except BaseException as e:
        # a bad input or option in a new run leaves nothing behind; an interrupted run keeps its work
        if temporary or (isinstance(e, UsageError) and not work.resumed):
            work.remove()
        raise
    summary.seconds = time.perf_counter() - start
    if temporary or not summary.failed:
        work.remove()
    return summary


def check_run(paths: list[Any], settings: Settings, *, output: Any = None, output_dir: Any = None, fmt: str = "gpkg",
              layer: str = "detections", overwrite: bool = False, work_dir: Any = None, raster_out: Any = None,
              raster_values: str | None = None) -> tuple[dict[int, Path], dict[int, rasterize.LabelRaster]]:
    """Every check a run needs no model for, made before the model loads:
    outputs (format, folder, an existing file or layer), a single input
    (opened, and its last block read, so a truncated file is caught), the area,
    the label rasters. Returns the per-input outputs and label rasters by index.
    """
    outputs: dict[int, Path] = {}
    if output_dir is not None:
        names = output_names(unique_names(paths), export.FORMATS[fmt])
        outputs = {k: Path(output_dir) / n for k, n in enumerate(names)}
    temporary = work_dir is None and output is None and output_dir is None
    own = set() if temporary else set(workdir.written(work_dir or default_work_dir(output, output_dir)))
    for out in outputs.values():
        if export.output_key(out, layer) not in own:
            export.check_output(_probe(out), overwrite, layer)
    if output is not None:
        export.check_output(output, overwrite or export.output_key(output, layer) in own, layer)
    if len(paths) == 1:  # several: each file's faults are its own, reported by the run
        with RasterSource(paths[0], settings.read) as src:
            if _local_file(paths[0]):  # a cut copy: GDAL opens it, then fails on the blocks that are gone
                src.read(Window(src.height - 1, src.width - 1, 1, 1))
    check_area(paths, settings.read)
    rasters = rasterize.plan(raster_out, paths, values=raster_values, prompts=settings.prompts, overwrite=overwrite,
                             written=own)
    return outputs, rasters


def _local_file(source: Any) -> bool:
    # not a URL (a block costs a request) nor a VRT (its sources may be remote)
    return isinstance(source, str) and not is_remote(source) and not source.lower().endswith(".vrt")


def _probe(out: Path) -> Path:
    """`out`, or where its subfolder is still to be made (it mirrors an
    input's folder), a name in the nearest existing folder to check instead."""
    if out.parent.is_dir():
        return out
    folder = out.parent
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    return folder / f".geoseg-{os.getpid()}{out.suffix}"


def _run(paths: list[Any], several: bool, settings: Settings, engine: Any, work: WorkDir,
         outputs: dict[int, Path], output: Any, layer: str, overwrite: bool, collect: bool,
         rasters: dict[int, rasterize.LabelRaster] | None = None) -> Summary:
    rasters = rasters or {}
    written = set(workdir.written(work.path))
    names = unique_names(paths)
    results = [FileResult(n) for n in names]
    infos: dict[int, dict[str, Any]] = {}
    for k, p in enumerate(paths):  # fail on a bad input before any tile is read
        try:
            infos[k] = inspect(p, tile_size=settings.tile_size, overlap=settings.overlap, read=settings.read)
            infos[k]["name"] = names[k]
        except OutsideAreaError as e:  # with several inputs, one outside the area is skipped, not failed
            if not several:
                raise
            results[k].state, results[k].error = "skipped", str(e)
        except GeosegError as e:
            if not several:
                raise
            _failed(results[k], work, p, e)
    if several and all(r.state == "skipped" for r in results):
        raise _outside_all(settings.read, len(paths))
    if output is not None and several and settings.dst_crs is None:
        crss = {str(i["crs"]) for i in infos.values()}
        if len(crss) > 1:
            raise RasterError("the inputs have different CRSs: pass --dst-crs to put them in one, or use --output-dir")
    progress = Progress(bars=settings.progress, n_files=len(paths),
                        total_tiles=sum(i["tiles"] for i in infos.values()))
    merger = ThreadPoolExecutor(max_workers=1, thread_name_prefix="geoseg-merge")
    merges: dict[int, Future[None]] = {}
    try:
        for k, p in enumerate(paths):
            if k not in infos:
                continue
            if (k in outputs and export.output_key(outputs[k], layer) in written
                    and export.has_output(outputs[k], layer)):
                results[k].state, results[k].reused, results[k].output = "done", True, str(outputs[k])
                results[k].tiles = infos[k]["tiles"]
                results[k].objects = pyogrio.read_info(outputs[k], layer=layer if outputs[k].suffix == ".gpkg"
                                                       else None)["features"]
                if k in rasters and str(rasters[k].path) not in written:  # --raster-out added on the rerun
                    _write_raster(rasters[k], infos[k], work.result_path(p), p, settings, engine, work)
                continue
            try:
                merging = stage_one(p, settings, engine, work, infos[k], progress)
            except Exception as e:  # with several inputs, any failure is that file's
                if not several:
                    raise
                _failed(results[k], work, p, e)
                continue
            merges[k] = merger.submit(_finish_one, p, settings, engine, work, infos[k], results[k], merging,
                                      outputs.get(k), layer, rasters.get(k),
                                      overwrite=overwrite or (k in outputs
                                                              and export.output_key(outputs[k], layer) in written))
        for k, fut in merges.items():
            try:
                fut.result()
            except Exception as e:
                if not several:
                    raise
                _failed(results[k], work, paths[k], e)
    finally:
        merger.shutdown(wait=True, cancel_futures=True)
        progress.close()
    for r in results:
        if r.all_nodata:
            warnings.warn(f"{r.source}: every pixel is nodata: no object can be found", EmptyRasterWarning,
                          stacklevel=3)
    summary = Summary(results)
    done = [k for k, r in enumerate(results) if r.state == "done"]
    summary.outputs = [str(outputs[k]) for k in done if k in outputs]
    results_done = [work.result_path(paths[k]) for k in done]
    if output is not None and done:
        assembler = _write_output(output, results_done, [paths[k] for k in done], layer, engine, settings, work,
                                  collect, overwrite=overwrite or export.output_key(output, layer) in written)
        summary.outputs.append(str(output))
    elif collect:
        assembler = _Assembler(None, collect=True)
        for result in results_done:
            assembler.add(result)
    if collect:
        summary.frame = assembler.frame(settings.dst_crs)
    if rasters and not outputs:  # ids numbered over all inputs, as in -o and the frame returned
        first = 1
        for k in done:
            result = work.result_path(paths[k])
            _write_raster(rasters[k], infos[k], result, paths[k], settings, engine, work, first)
            first += int(pyogrio.read_info(result, layer="objects")["features"])
    summary.rasters = [str(rasters[k].path) for k in done if k in rasters]
    return summary


def _write_output(output: Any, results: list[Path], sources: list[Any], layer: str, engine: Any,
                  settings: Settings, work: WorkDir, collect: bool = False, *, overwrite: bool) -> _Assembler:
    """Write the per-file `results` into `output` atomically, numbering the objects. `overwrite`:
    what was allowed before the run (also a layer that appeared since is replaced only so)."""
    try:
        w = export.Writer(output, layer=layer, overwrite=overwrite, provenance=provenance(engine, settings, sources),
                          crs_requested=settings.dst_crs is not None)
    except UsageError as e:  # the output appeared during the run: a failure of the run, whose work is kept
        raise RunError(str(e)) from None
    with w:
        assembler = _Assembler(w, collect)
        for result in results:
            assembler.add(result)
        w.commit(assembler.empty if assembler.empty is not None else _empty_frame())
    work.mark_written(export.output_key(output, layer))
    return assembler


def check_area(paths: list[Any], read: ReadOptions) -> None:
    """Refuse an area that overlaps none of several `paths`, before any model
    loads (opening files, reading no pixel). A single input is checked by opening it."""
    if read.area is None or len(paths) < 2:
        return
    for p in paths:
        try:
            RasterSource(p, read).close()
            return
        except OutsideAreaError:
            continue
        except GeosegError:  # reported with its file by the run
            return
    raise _outside_all(read, len(paths))


def _outside_all(read: ReadOptions, n: int) -> OutsideAreaError:
    assert read.area is not None
    hint = " and --bbox-crs" if read.area.option == "--bbox" else " and the CRS of the --aoi file"
    return OutsideAreaError(f"{read.area.describe()} overlaps none of the {n} inputs: check the coordinates{hint}")


def _failed(result: FileResult, work: WorkDir, path: Any, error: Exception) -> None:
    message = str(error) if isinstance(error, GeosegError) else f"{type(error).__name__}: {error}"
    result.state, result.error = "failed", message
    work.fail(path, message)
    log.error("%s: %s", result.source, message)


def _empty_frame() -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame({c: [] for c in vectorize.COLUMNS}, geometry=[])


def stage_one(path: Any, settings: Settings, engine: Any, work: WorkDir, info: dict[str, Any],
              progress: Progress) -> _FileMerge | None:
    """Stage the detections of one raster's tiles not yet staged, merging the
    rows of tiles behind the model as they complete; the running merge (None
    when an earlier run merged this raster)."""
    plan = info["plan"]
    store = work.store(path, len(plan), plan.shape)  # refuses an input changed since an earlier run
    if work.result_path(path).exists():
        store.close()
        return None
    work.fail(path, None)
    merging = _FileMerge(store.path, plan, info, settings, work.result_path(path))
    try:
        done = store.done()
        away = info.get("skip", [])
        if set(away) - done:  # tiles away from the area: staged empty, never read, so their rows complete
            store.put(away, [], plan.shape[1], nodata=away)
            done |= set(away)
        rows = _Rows(plan, done)
        merging.feed(rows.complete)
        todo = [k for k in range(len(plan)) if k not in done]
        progress.start(source_name(path), len(plan) - len(away), len(done) - len(away), _km2_per_tile(info),
                       lambda: merging.objects)
        if todo:
            with RasterSource(path, settings.read) as src:
                engine.stage(src, plan, todo, settings.prompts, store, progress,
                             staged=lambda tiles: merging.feed(rows.add(tiles)))
        progress.finish()
        info["all_nodata"] = store.nodata() == len(plan)
    except BaseException:
        merging.abort()
        raise
    finally:
        store.close()
    return merging


def _finish_one(path: Any, settings: Settings, engine: Any, work: WorkDir, info: dict[str, Any],
                result: FileResult, merging: _FileMerge | None, output: Path | None, layer: str,
                raster: rasterize.LabelRaster | None = None, *, overwrite: bool = False) -> None:
    """Wait for one raster's merge, then write its own output if it has one."""
    t0 = time.perf_counter()
    target = work.result_path(path)
    if merging is not None:
        merging.join()
        result.objects, result.area_m2 = merging.objects, merging.area_m2
    else:  # merged by an earlier run
        result.objects = int(pyogrio.read_info(target, layer="objects")["features"])
        result.area_m2 = _area(target)
    result.tiles, result.state = info["tiles"], "done"
    result.all_nodata = bool(info.get("all_nodata"))
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)  # a subfolder mirroring the input's
        if raster is not None:  # before the output: a file done before has its raster
            _write_raster(raster, info, target, path, settings, engine, work)
        _write_output(output, [target], [path], layer, engine, settings, work, overwrite=overwrite)
        result.output = str(output)
    result.seconds = time.perf_counter() - t0
    log.info("%s: %d tiles -> %d objects", result.source, result.tiles, result.objects)


def _write_raster(raster: rasterize.LabelRaster, info: dict[str, Any], result: Path, source: Any,
                  settings: Settings, engine: Any, work: WorkDir, first_id: int = 1) -> None:
    """Burn one input's objects into its label raster, on the grid its tiles were read on."""
    grid = rasterize.Grid(info["transform"], info["width"], info["height"], info["crs"])
    meta = json.dumps(provenance(engine, settings, [source]), default=str)
    raster.write(result, grid, first_id=first_id, tags={"geoseg": meta})
    work.mark_written(raster.path)


def _area(result: Path) -> float:
    table = pyogrio.read_dataframe(result, layer="objects", columns=["area_m2"], read_geometry=False)
    return float(np.nansum(table["area_m2"])) if len(table) else 0.0


def combine_frames(frames: list[gpd.GeoDataFrame], crs: Any, number: bool = True) -> gpd.GeoDataFrame:
    """One frame of all inputs' objects, numbered from 1 unless `number` is False."""
    frames = [f for f in frames if not f.empty] or frames[:1] or [_empty_frame()]
    if len({str(f.crs) for f in frames}) > 1:
        raise RasterError("the inputs have different CRSs: pass --dst-crs to put them in one, or use --output-dir")
    gdf = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=frames[0].crs if crs is None else crs)
    if number:
        gdf.insert(0, "id", np.arange(1, len(gdf) + 1, dtype=np.int64))
    return gdf[[*vectorize.COLUMNS, "geometry"]]


def segment(
    source: Any,
    prompts: str | Sequence[str],
    *,
    segmenter: Segmenter | str = "sam3",
    tile_size: int = 1008,
    overlap: int = 128,
    bands: str | Sequence[int] | None = None,
    resolution: float | None = None,
    stretch: tuple[float, float] = (2.0, 98.0),
    pixel_coords: bool = False,
    dst_crs: Any = None,
    simplify: float | None = None,
    min_area: float | None = None,
    bbox: Any = None,
    bbox_crs: Any = None,
    aoi: Any = None,
    output: str | os.PathLike[str] | None = None,
    layer: str = "detections",
    overwrite: bool = False,
    progress: bool = False,
    work_dir: str | os.PathLike[str] | None = None,
    restart: bool = False,
    raster_out: str | os.PathLike[str] | None = None,
    raster_values: str = "instance",
    **backend_options: Any,
) -> gpd.GeoDataFrame:
    """Segment rasters with text prompts; return one polygon per object.

    Args:
        source: a raster path or URL (``/vsicurl/``, ``https://``, ``/vsis3/``),
            a folder of rasters, an open rasterio dataset, an `xarray.DataArray`
            georeferenced with rioxarray (band, y, x; any dtype; dask-backed
            arrays are read window by window), or a list of these.
        prompts: one or more text prompts ("building", "tree crown").
        segmenter: an object following the `Segmenter` protocol, or the name
            of a registered backend ("sam3"), built with `backend_options`
            (model=..., device=..., score_threshold=...).
        tile_size, overlap: tiling in pixels of the grid read.
        bands: 1-based band numbers, "4,3,2" or (4, 3, 2); one band is grey.
        resolution: resample on read to this pixel size (CRS units).
        stretch: percentiles of the scene-wide stretch for non-uint8 rasters.
        pixel_coords: accept rasters without a CRS; polygons in pixel space.
        dst_crs: output CRS (anything pyproj reads); default the raster's.
        simplify: simplification tolerance in pixels.
        min_area: drop objects smaller than this many square metres.
        bbox: segment only this part: (minx, miny, maxx, maxy) or "minx,miny,maxx,maxy",
            in `bbox_crs` (default: each raster's own CRS).
        bbox_crs: the CRS of `bbox` (e.g. "EPSG:4326" for lon/lat), or of a shapely `aoi`.
        aoi: segment only inside these polygons: a vector file, a GeoDataFrame
            or GeoSeries with a CRS, or a shapely geometry (in `bbox_crs`, default
            the raster's CRS). Not with `bbox`. Only tiles near the area are read;
            an object is kept, whole, when its centroid lies in the area.
        output: write the result there too (.gpkg, .geojson, .fgb, .parquet).
        work_dir: where detections are staged (default: OUTPUT.geoseg-work
            beside `output`, else a temporary folder). A run interrupted and
            started again with the same arguments resumes from it.
        restart: discard an interrupted run's work folder first.
        raster_out: also write a label raster (Cloud Optimised GeoTIFF) on the
            grid read: a .tif file for one input, else an existing folder
            (one NAME.tif per input). See docs/raster-output.md.
        raster_values: "instance" (each object's id, uint32) or "class"
            (the 1-based number of its prompt).

    Returns:
        A GeoDataFrame with columns id, label, score, area_m2, n_tiles, source.

    Raises:
        RunError: with several inputs, when some failed (the others are written).
    """
    settings = Settings.of(prompts, tile_size=tile_size, overlap=overlap, bands=bands, resolution=resolution,
                           stretch=stretch, pixel_coords=pixel_coords, dst_crs=dst_crs, simplify=simplify,
                           min_area=min_area, progress=progress, bbox=bbox, bbox_crs=bbox_crs, aoi=aoi)
    paths = list_inputs(source)
    check_run(paths, settings, output=output, layer=layer, overwrite=overwrite, work_dir=work_dir,
              raster_out=raster_out, raster_values=raster_values)  # before the model loads
    engine = LocalEngine(as_segmenter(segmenter, **backend_options))
    summary = run(paths, settings, engine, output=output, layer=layer, overwrite=overwrite, work_dir=work_dir,
                  restart=restart, collect=True, raster_out=raster_out, raster_values=raster_values)
    if summary.failed:
        raise RunError(f"{len(summary.failed)} of {len(paths)} inputs failed: "
                       + "; ".join(f"{f.source}: {f.error}" for f in summary.failed))
    gdf = summary.frame
    assert gdf is not None
    gdf.attrs["geoseg"] = provenance(engine, settings, paths)
    return gdf


def inspect(path: Any, *, tile_size: int, overlap: int, read: ReadOptions) -> dict[str, Any]:
    """Open a raster and plan its tiles, reading no pixel: grid, CRS, area, UTM zone."""
    with RasterSource(path, read) as src:
        return _inspect(src, path, tile_size, overlap)


def _inspect(src: RasterSource, path: Any, tile_size: int, overlap: int) -> dict[str, Any]:
    from rasterio.windows import bounds

    plan = plan_tiles(src.height, src.width, tile_size, overlap)
    box = shapely.box(*bounds(((0, src.height), (0, src.width)), src.transform))
    skip: list[int] = []
    if src.zone is not None and src.options.area is not None:  # only the tiles near the area are read
        box = shapely.intersection(box, src.zone)
        skip = tiles_apart(src.zone, plan, src.transform, src.options.area.margin)
    footprint = gpd.GeoSeries([box], crs=src.crs)
    utm = None if src.crs is None else footprint.estimate_utm_crs()
    area = vectorize.area_m2(footprint, utm)[0]
    return {"zone": src.zone, "window": src.window, "grid": src.grid_shape, "skip": skip,
        "path": str(path), "name": source_name(path), "width": src.width, "height": src.height,
        "bands": list(src.bands), "dtype": str(src.dtype), "crs": src.crs, "transform": src.transform,
        "pixel_size": vectorize.pixel_size(src.transform), "nodata": src.nodata, "utm": utm,
        "area_km2": None if np.isnan(area) else area / 1e6, "plan": plan, "tiles": len(plan) - len(skip),
    }


def describe(
    path: str | os.PathLike[str], *, tile_size: int = 1008, overlap: int = 128,
    bands: str | Sequence[int] | None = None, resolution: float | None = None, pixel_coords: bool = False,
    area: Area | None = None,
) -> dict[str, Any]:
    """The plan for one raster, without running any model. With an `area`
    (`Area.of(bbox=...)`), `window` is its pixel window [col, row, width, height]
    in the grid read, and `tiles` and `area_km2` count only what would be segmented."""
    read = ReadOptions.of(bands=bands, resolution=resolution, pixel_coords=pixel_coords, area=area)
    with RasterSource(path, read) as src:
        info = _inspect(src, path, tile_size, overlap)
        stretch = None if src.stretch_limits is None else src.stretch_limits.round(3).tolist()
        (height, width), win = src.grid_shape, src.window
    return {
        "window": None if win is None else [win.col, win.row, win.width, win.height],
        "path": str(path), "width": width, "height": height, "bands": info["bands"],
        "dtype": info["dtype"], "crs": None if info["crs"] is None else info["crs"].to_string(),
        "pixel_size": info["pixel_size"], "nodata": info["nodata"], "stretch": stretch,
        "area_km2": info["area_km2"], "tile_size": tile_size, "overlap": overlap,
        "tile_grid": list(info["plan"].shape), "tiles": info["tiles"],
    }
