"""Orchestration: plan -> read -> segment -> stage -> merge -> vectorise -> write.

Every run stages its per-tile detections on disk (a work folder), then merges
and vectorises them one row of tiles at a time: memory stays bounded whatever
the raster size, and an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio

from geoseg.core.segmenter import Segmenter, as_segmenter
from geoseg.errors import EmptyRasterWarning, GeosegError, OutsideAreaError, RunError, UsageError, option, redact
from geoseg.io import export, rasterize, services, stac, upload
from geoseg.io.buckets import is_url
from geoseg.io.inputs import list_inputs, resolve
from geoseg.io.objects import Placed
from geoseg.io.objects import place as place_objects
from geoseg.io.sources import is_mosaic, unique_names
from geoseg.run import rowshards, shards, workdir, workers
from geoseg.run.assemble import (
    Assembler,
    area_of,
    count_objects,
    mixed_crs_error,
    provenance,
    write_output,
    write_raster,
)
from geoseg.run.checks import check_run, exemplars_of, own_outputs, remote_outputs
from geoseg.run.engine import Engine, LocalEngine
from geoseg.run.inspection import RasterInfo, inspect, outside_all
from geoseg.run.objects import run_objects, window_pixels
from geoseg.run.progress import Found, Progress
from geoseg.run.rowmerge import FileMerge
from geoseg.run.settings import Settings, fingerprint
from geoseg.run.stage import stage_one
from geoseg.run.summary import FileResult, Summary
from geoseg.run.workdir import WorkDir, default_work_dir

log = logging.getLogger("geoseg")

def run(
    sources: Any,
    settings: Settings,
    engine: Engine,
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
    shard: tuple[int, int] | None = None,
) -> Summary:
    """Segment rasters, staging per-tile detections in a work folder; resumable.

    A run stopped in any way and started again with the same arguments goes on
    from the tiles already staged; its output is identical to an uninterrupted
    run's. With several inputs a file that fails is recorded and the others go
    on. The work folder is removed once every file is done and written.
    `shard=(K, N)` segments only shard K of N of the inputs (see `geoseg.run.shards`).
    """
    start = time.perf_counter()
    paths = list_inputs(sources)
    collection = paths  # exemplars may lie in any input, also one of another shard or one done before
    names = unique_names(paths)  # of the whole collection: a shard's outputs are named as in one run
    several = len(paths) > 1
    if shard is not None and len(paths) == 1 and is_mosaic(paths[0]):  # shards of the mosaic's rows
        shard = shards.check(shard, output, output_dir, raster_out)
        part, tiles = rowshards.run_part(paths[0], settings, engine, shard=shard, output_dir=output_dir,
                                         work_dir=work_dir, restart=restart)
        return Summary([FileResult(names[0], state="done", tiles=tiles)], time.perf_counter() - start,
                       outputs=[str(part)])
    every = names
    if shard is not None:
        shard = shards.check(shard, output, output_dir, raster_out)
        paths, names = shards.select(paths, names, shard)
        work_dir = work_dir if work_dir is not None else default_work_dir(output, output_dir, shard, layer)
        if not paths:
            log.info("shard %d/%d holds none of the %d inputs: nothing to do", *shard, len(every))
            if not is_url(output_dir):
                shards.write_manifest(output_dir, shard, every, fingerprint(settings, engine), [], layer)
            else:  # its manifest, written beside its work folder and put under the --output-dir URL
                empty = remote_outputs(output, output_dir, work_dir, shard, fmt, [], overwrite, layer)
                assert empty is not None
                empty.local.mkdir(parents=True, exist_ok=True)
                made = shards.write_manifest(empty.local, shard, every, fingerprint(settings, engine), [], layer,
                                             remote=empty)
                empty.put(made, made.name)
                empty.finish()
            return Summary([])
    remote = remote_outputs(output, output_dir, work_dir, shard, fmt, names, overwrite, layer)
    before: list[FileResult] = []
    if remote is not None:  # written locally, then uploaded; inputs whose output is in the bucket are done
        output, output_dir, work_dir = remote.output, remote.output_dir, remote.work_dir
        before = [FileResult(n, state="done", reused=True, output=remote.done[n],
                             objects=upload.count(remote.done[n], layer)) for n in names if n in remote.done]
        keep = [k for k, n in enumerate(names) if n not in remote.done]
        paths, names = [paths[k] for k in keep], [names[k] for k in keep]
        if not paths:
            log.info("every output is in %s already: nothing to do", remote.url)
            remote.finish()
            return Summary(before)
    outputs, rasters = check_run(paths, settings, output=output, output_dir=output_dir, fmt=fmt, layer=layer,
                                 overwrite=overwrite, work_dir=work_dir, raster_out=raster_out,
                                 raster_values=raster_values, names=names, restart=restart,
                                 every=collection)
    engine.check(settings.text_prompts, exemplars_of(collection, settings))  # also loads the model: fails early
    temporary = work_dir is None and output is None and output_dir is None
    if temporary:
        path = Path(tempfile.mkdtemp(prefix="geoseg-work-"))
    else:
        path = Path(work_dir) if work_dir is not None else default_work_dir(output, output_dir, layer=layer)
    # what an interrupted run wrote stays its own to replace after --restart, as `check_run` allowed
    own = own_outputs(path) if restart and not temporary else []
    work = WorkDir(path, fingerprint(settings, engine), restart=restart and not temporary)
    for done in own:
        work.mark_written(done)
    try:
        summary = _run(paths, several, settings, engine, work, outputs, output, layer, overwrite, collect, rasters,
                       names, upload=remote.upload_one if remote is not None and remote.folder else None)
    except BaseException as e:
        # a bad input or option in a new run leaves nothing behind; an interrupted run keeps its work
        if temporary or (isinstance(e, UsageError) and not work.resumed):
            work.remove()
        raise
    finally:
        work.close()
    summary.seconds = time.perf_counter() - start
    if shard is not None and remote is None:  # what `combine` checks: every shard there, of one setting
        shards.write_manifest(output_dir, shard, every, work.settings, summary.files, layer)
    if remote is not None:  # before the work folder goes: a failed upload is retried by a rerun
        upload.publish(remote, summary, before, finish=False)
        if shard is not None and remote.folder:  # its manifest too, once every output is up
            made = shards.write_manifest(remote.local, shard, every, work.settings, summary.files, layer,
                                         remote=remote)
            remote.put(made, made.name)
        if not summary.failed:
            remote.finish()
    if temporary or not summary.failed:
        work.remove()
    return summary


def _run(paths: list[Any], several: bool, settings: Settings, engine: Engine, work: WorkDir,
         outputs: dict[int, Path], output: Any, layer: str, overwrite: bool, collect: bool,
         rasters: dict[int, rasterize.LabelRaster] | None = None, names: list[str] | None = None,
         upload: Callable[[Path], str] | None = None) -> Summary:
    rasters = rasters or {}
    written = set(workdir.written(work.path))
    names = unique_names(paths) if names is None else names
    results = [FileResult(n) for n in names]
    infos: dict[int, RasterInfo] = {}
    for k, p in enumerate(paths):  # fail on a bad input before any tile is read
        try:
            info = inspect(p, tile_size=settings.tile_size, overlap=settings.overlap, read=settings.read)
            infos[k] = replace(info, name=names[k])
        except OutsideAreaError as e:  # with several inputs, one outside the area is skipped, not failed
            if not several:
                raise
            results[k].state, results[k].error = "skipped", str(e)
        except GeosegError as e:
            if not several:
                raise
            _failed(results[k], work, p, e)
    if several and all(r.state == "skipped" for r in results):
        raise outside_all(settings.read, len(paths))
    if output is not None and several and settings.dst_crs is None:
        crss = {str(i.crs) for i in infos.values()}
        if len(crss) > 1:
            raise mixed_crs_error()
    progress = Progress(bars=settings.progress, n_files=len(paths),
                        total_tiles=sum(i.tiles for i in infos.values()), watch=settings.watch)
    merger = ThreadPoolExecutor(max_workers=1, thread_name_prefix="geoseg-merge")
    pool = workers.Pool(workers.check_workers(settings.cpu_workers))  # started on first use, shared by the files
    merges: dict[int, Future[None]] = {}
    try:
        for k, p in enumerate(paths):
            if k not in infos:
                continue
            if (k in outputs and export.output_key(outputs[k], layer) in written
                    and export.has_output(outputs[k], layer)):
                results[k].state, results[k].reused, results[k].output = "done", True, str(outputs[k])
                results[k].tiles = infos[k].tiles
                results[k].objects = count_objects(outputs[k], layer if outputs[k].suffix == ".gpkg" else None)
                if k in rasters and str(rasters[k].path) not in written:  # --raster-out added on the rerun
                    write_raster(rasters[k], infos[k], work.result_path(p), settings, engine, work)
                continue
            try:
                merging = stage_one(p, settings, engine, work, infos[k], progress, pool, result=results[k])
            except Exception as e:  # with several inputs, any failure is that file's
                if not several:
                    raise
                _failed(results[k], work, p, e)
                continue
            merges[k] = merger.submit(_finish_one, p, settings, engine, work, infos[k], results[k], merging,
                                      outputs.get(k), layer, rasters.get(k),
                                      overwrite=overwrite or (k in outputs
                                                              and export.output_key(outputs[k], layer) in written),
                                      upload=upload)
        for k, fut in merges.items():
            try:
                fut.result()
            except Exception as e:
                if not several:
                    raise
                _failed(results[k], work, paths[k], e)
    finally:
        merger.shutdown(wait=True, cancel_futures=True)
        pool.close()
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
        assembler = write_output(output, results_done, [names[k] for k in done], layer, engine, settings, work,
                                  collect, overwrite=overwrite or export.output_key(output, layer) in written,
                                  columns=stac.columns(paths, names), files=[results[k] for k in done],
                                  inputs=[paths[k] for k in done])
        summary.outputs.append(str(output))
        summary.provenance = assembler.provenance
    elif collect:
        assembler = Assembler(None, collect=True, columns=stac.columns(paths, names))
        for result in results_done:
            assembler.add(result)
    if collect:
        summary.frame = assembler.frame(settings.dst_crs)
    if rasters and not outputs:  # ids numbered over all inputs, as in -o and the frame returned
        first = 1
        for k in done:
            result = work.result_path(paths[k])
            write_raster(rasters[k], infos[k], result, settings, engine, work, first)
            first += int(pyogrio.read_info(result, layer="objects")["features"])
    summary.rasters = [str(rasters[k].path) for k in done if k in rasters]
    return summary


def _failed(result: FileResult, work: WorkDir, path: Any, error: Exception) -> None:
    message = str(error) if isinstance(error, GeosegError) else redact(f"{type(error).__name__}: {error}")
    result.state, result.error = "failed", message
    work.fail(path, message)
    log.error("%s: %s", result.source, message)


def _finish_one(path: Any, settings: Settings, engine: Engine, work: WorkDir, info: RasterInfo,
                result: FileResult, merging: FileMerge | None, output: Path | None, layer: str,
                raster: rasterize.LabelRaster | None = None, *, overwrite: bool = False,
                upload: Callable[[Path], str] | None = None) -> None:
    """Wait for one raster's merge, then write its own output if it has one
    (and `upload` it, for a bucket: as soon as it is written)."""
    t0 = time.perf_counter()
    target = work.result_path(path)
    if merging is not None:
        merging.join()
        result.objects, result.area_m2 = merging.objects, merging.area_m2
        result.all_nodata = merging.all_nodata
    else:  # merged by an earlier run
        result.objects = count_objects(target)
        result.area_m2 = area_of(target)
    result.tiles, result.state = info.tiles, "done"
    t_out = time.perf_counter()
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)  # a subfolder mirroring the input's
        if raster is not None:  # before the output: a file done before has its raster
            write_raster(raster, info, target, settings, engine, work)
        write_output(output, [target], [info.name], layer, engine, settings, work, overwrite=overwrite,
                     columns=stac.columns([path], [info.name]), files=[result], inputs=[path])
        result.output = str(output) if upload is None else upload(output)
    result.seconds = time.perf_counter() - t0
    if merging is not None:  # from the first read to the output written
        merging.profile.add("write", time.perf_counter() - t_out)
        merging.profile.wall = time.perf_counter() - merging.started
        result.profile = merging.profile
    log.info("%s: %d tiles -> %d objects", result.source, result.tiles, result.objects)


def segment(
    source: Any,
    prompts: str | Sequence[str] | None = None,
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
    mosaic: bool = False,
    cpu_workers: int | None = None,
    saturation: float = 0.8,
    refine_depth: int = 2,
    zoom: int = 0,
    neighbour_start: bool = True,
    asset: str | None = None,
    exemplars: Any = None,
    objects: Any = None,
    web_zoom: int | None = None,
    web_resolution: float | None = None,
    tile_cache: str | os.PathLike[str] | None = None,
    max_connections: int = services.DEFAULT_CONNECTIONS,
    max_tiles: int = services.DEFAULT_MAX_TILES,
    headers: Sequence[str] = (),
    attribution: str | None = None,
    watch: Callable[[Found], None] | None = None,
    **backend_options: Any,
) -> gpd.GeoDataFrame:
    """Segment rasters with text prompts; return one polygon per object.

    Args:
        source: a raster path or URL (``/vsicurl/``, ``https://``, ``/vsis3/``),
            a folder of rasters, a bucket prefix (``s3://bucket/orthos/``, gs://,
            az://), a STAC Item or ItemCollection (.json), an open rasterio dataset, an `xarray.DataArray`
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
        simplify: simplification tolerance in pixels (default 0.5; 0: the pixel edges as they are).
        min_area: drop objects smaller than this many square metres.
        bbox: segment only this part: (minx, miny, maxx, maxy) or "minx,miny,maxx,maxy",
            in `bbox_crs` (default: each raster's own CRS).
        bbox_crs: the CRS of `bbox` (e.g. "EPSG:4326" for lon/lat), or of a shapely `aoi`.
        aoi: segment only inside these polygons: a vector file, a GeoDataFrame
            or GeoSeries with a CRS, or a shapely geometry (in `bbox_crs`, default
            the raster's CRS). Not with `bbox`. Only tiles near the area are read;
            an object is kept, whole, when its centroid lies in the area.
        output: write the result there too (.gpkg, .geojson, .fgb, .parquet),
            a local file or an object (``s3://bucket/out.gpkg``, uploaded once complete).
        work_dir: where detections are staged (default: OUTPUT.geoseg-work
            beside `output`, else a temporary folder). A run interrupted and
            started again with the same arguments resumes from it.
        restart: discard an interrupted run's work folder first.
        raster_out: also write a label raster (Cloud Optimised GeoTIFF) on the
            grid read: a .tif file for one input, else an existing folder
            (one NAME.tif per input). See docs/raster-output.md.
        raster_values: "instance" (each object's id, uint32) or "class"
            (the 1-based number of its prompt).
        mosaic: read the inputs (adjacent or overlapping files, folders of
            them) as one virtual raster, so objects on file edges come back
            once and whole; `source` names the files each object was read
            from. See docs/mosaic.md.
        cpu_workers: worker processes for the CPU work behind the model
            (vectorising, areas, reprojection); default: cores - 1; 0: all in
            this process. The output is the same with any number. See docs/performance.md.
        saturation, refine_depth, zoom: dense scenes: a tile whose detections
            for a prompt reach `saturation` x the segmenter's `max_objects` is
            segmented again in 2 x 2 sub-tiles, down to `refine_depth` levels;
            `zoom` starts every tile that many levels down. See docs/dense.md.
        neighbour_start: start each tile at the level its finished neighbours
            needed (per prompt), instead of at the plan's. See docs/dense.md.
        asset: the asset of STAC items given as `source` (default "visual",
            else the first RGB asset). See docs/cloud.md.
        exemplars: boxes around examples of what to find (and, with a false
            `positive` column, of what not to): a vector file, GeoDataFrame or
            GeoSeries with a CRS; a `prompt` column ties a box to a prompt, or
            makes a concept of its own. `prompts` may then be None. See docs/exemplars.md.
        objects: clicks and boxes on single objects (points and polygons; columns `object`,
            `positive`, `label`): a vector file, GeoDataFrame or GeoSeries with a CRS. Each object
            comes back as one polygon, with `object`, `label`, `score` and `whole`. Without
            `prompts`. See docs/objects.md.
        web_zoom, web_resolution: for a tile service given as `source`
            (``https://host/{z}/{x}/{y}.png``, ``{-y}`` for TMS rows): its zoom
            level, or the ground metres per pixel to read at (the nearest finer
            zoom). A service needs an area: `bbox` or `aoi`. See docs/web-imagery.md.
        tile_cache, max_connections, max_tiles, headers, attribution: the tile
            cache folder (default ~/.cache/geoseg/tiles), parallel requests,
            the most service tiles a run may need, HTTP headers ("Name: value",
            an API key; never written anywhere) and the provider's credit.
        watch: called after each batch of tiles with a `geoseg.run.progress.Found`: that batch's
            detections as the model gave them, before the seam merge (to show them as they
            come, as the explorer does); an exception it raises stops the run. Local runs only.

    Returns:
        A GeoDataFrame with columns id, label, score, area_m2, n_tiles, level, source.

    Raises:
        RunError: with several inputs, when some failed (the others are written).
    """
    settings = Settings.of(prompts, tile_size=tile_size, overlap=overlap, bands=bands, resolution=resolution,
                           stretch=stretch, pixel_coords=pixel_coords, dst_crs=dst_crs, simplify=simplify,
                           min_area=min_area, progress=progress, bbox=bbox, bbox_crs=bbox_crs, aoi=aoi,
                           cpu_workers=cpu_workers, saturation=saturation, refine_depth=refine_depth, zoom=zoom,
                           neighbour_start=neighbour_start, exemplars=exemplars, segmenter=segmenter,
                           backend_options=backend_options, objects=objects)
    settings.watch = watch
    web = services.WebOptions.of(zoom=web_zoom, resolution=web_resolution, cache=tile_cache,
                                 max_connections=max_connections, max_tiles=max_tiles, headers=headers,
                                 attribution=attribution)
    paths = resolve(source, asset=asset, mosaic=mosaic, settings=settings, web=web)
    if settings.objects is not None and not settings.prompts:
        return objects_run(paths, settings, segmenter, backend_options, output=output, layer=layer,
                           overwrite=overwrite)
    placed = None if settings.objects is None else check_objects(paths, settings, output, layer, overwrite)
    check_run(paths, settings, output=output, layer=layer, overwrite=overwrite, work_dir=work_dir,
              raster_out=raster_out, raster_values=raster_values, restart=restart)  # before the model loads
    engine = LocalEngine(as_segmenter(segmenter, **backend_options))
    share_windows(engine, paths, settings, placed)
    summary = run(paths, settings, engine, output=output, layer=layer, overwrite=overwrite, work_dir=work_dir,
                  restart=restart, collect=True, raster_out=raster_out, raster_values=raster_values)
    if summary.failed:
        raise RunError(f"{len(summary.failed)} of {len(paths)} inputs failed: "
                       + "; ".join(f"{f.source}: {f.error}" for f in summary.failed))
    gdf = summary.frame
    assert gdf is not None
    # the provenance written with the output (the same `created`), else made now
    meta = dict(summary.provenance or provenance(engine, settings, unique_names(paths), summary.files, paths))
    if settings.objects is not None:  # the objects clicked, after the text prompts' (a layer of their own)
        found = run_objects(paths, settings.objects, settings, engine, output=output, layer=objects_layer(layer),
                            overwrite=overwrite, placed=placed)
        gdf = gpd.GeoDataFrame(pd.concat([gdf, found.drop(columns="id")], ignore_index=True), crs=gdf.crs)
        gdf["id"] = np.arange(1, len(gdf) + 1, dtype=np.int64)
        meta["objects"] = settings.objects.fingerprint()
    gdf.attrs["geoseg"] = meta
    return gdf


def objects_layer(layer: str) -> str:
    """The GeoPackage layer of the objects clicked in a run with text prompts too."""
    return f"{layer}_objects"


def check_objects(paths: list[Any], settings: Settings, output: Any, layer: str, overwrite: bool) -> list[Placed]:
    """Object prompts beside text prompts, checked before the model loads: placed on the inputs (the
    objects placed, returned), and an output that holds two layers (a GeoPackage; objects in
    `objects_layer(layer)`)."""
    assert settings.objects is not None
    placed = place_objects(settings.objects, paths, settings.read)
    if output is not None:
        if Path(str(output)).suffix.lower() != ".gpkg":
            raise UsageError(f"{option('objects')} with text prompts writes two layers: give "
                             f"{option('output', 'OUT.gpkg', flag='-o')} (a GeoPackage)")
        export.check_output(output, overwrite, objects_layer(layer))
    return placed


def share_windows(engine: Any, paths: list[Any], settings: Settings, placed: list[Placed] | None) -> None:
    """With object prompts (`placed` on the inputs), tell a segmenter that keeps windows' features
    (SAM 3) which tiles they will be read in first: one backbone pass on those tiles serves the text
    and the object prompts."""
    keep = getattr(getattr(getattr(engine, "segmenter", None), "segmenter", None), "keep_windows", None)
    if placed and callable(keep):
        keep(window_pixels(paths, placed, settings))


def objects_run(paths: list[Any], settings: Settings, segmenter: Any, backend_options: dict[str, Any], *,
                output: Any, layer: str, overwrite: bool) -> gpd.GeoDataFrame:
    """A run of object prompts alone: checked (the objects placed, the output) before the model loads."""
    assert settings.objects is not None and not settings.prompts
    placed = place_objects(settings.objects, paths, settings.read)
    if output is not None:
        export.check_output(output, overwrite, layer)
    engine = LocalEngine(as_segmenter(segmenter, **backend_options))
    return run_objects(paths, settings.objects, settings, engine, output=output, layer=layer, overwrite=overwrite,
                       placed=placed)
