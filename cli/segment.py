"""`geoseg segment`: rasters + prompts -> polygons."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from geoseg.cli import echo, log_to, main, say, to_log_file
from geoseg.cli.options import area_options, read_options, refine_options, tiling_options, web_options
from geoseg.core.segmenter import backend_names, load_segmenter
from geoseg.errors import OutputError, UsageError
from geoseg.io import rasterize
from geoseg.io.buckets import is_url
from geoseg.io.export import FORMATS
from geoseg.io.inputs import resolve
from geoseg.io.services import WebOptions
from geoseg.io.sources import unique_names
from geoseg.run import pipeline, shards
from geoseg.run.checks import check_run
from geoseg.run.engine import LocalEngine
from geoseg.run.objects import run_objects
from geoseg.run.settings import Settings
from geoseg.run.workdir import default_work_dir


def _stretch(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--stretch {text!r}: give two percentiles, e.g. --stretch 2,98") from None
    return lo, hi


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-p", "--prompt", "prompts", multiple=True,
              help="Text prompt; repeat for several (-p building -p 'swimming pool'), or separate them with "
                   "commas (-p building,tree). Optional with --exemplars.")
@click.option("--exemplars", default=None, metavar="FILE",
              help="Boxes drawn around examples of what to find (any vector file, any CRS; columns prompt and "
                   "positive, both optional): see docs/exemplars.md.")
@click.option("--objects", default=None, metavar="FILE",
              help="Clicks (points) and boxes (polygons) on single objects, each outlined whole (any vector file, "
                   "any CRS; columns object, positive, label, all optional): see docs/objects.md.")
@click.option("-o", "--output", default=None,
              help="Output file: .gpkg, .geojson, .fgb, .parquet or .shp (GeoParquet needs GDAL >= 3.8 to open: "
                   "older QGIS cannot read it).")
@click.option("--output-dir", default=None, help="One output file per input raster, in this folder.")
@click.option("--format", "fmt", type=click.Choice(sorted(FORMATS)), default="gpkg", show_default=True,
              help="Format of the files written with --output-dir (parquet needs GDAL >= 3.8 to open: older QGIS "
                   "cannot read it).")
@click.option("--layer", default="detections", show_default=True,
              help="GeoPackage layer; added to an existing GeoPackage, its other layers kept.")
@click.option("--overwrite", is_flag=True,
              help="Replace existing output files (in a GeoPackage: only the --layer).")
@click.option("--backend", default="sam3", show_default=True, help="Segmenter backend (see `geoseg backends`).")
@click.option("--model", default=None, help="Hugging Face id or local folder [backend default: facebook/sam3].")
@click.option("--device", default=None, help="cuda, cuda:1, mps or cpu [default: best available].")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default=None,
              help="Model precision [default: bf16 on CUDA, fp32 on CPU].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Tiles per forward pass.")
@click.option("--score-threshold", type=click.FloatRange(0, 1), default=None,
              help="Keep detections scoring this or more [0.5].")
@click.option("--mask-threshold", type=click.FloatRange(0, 1), default=None, help="Mask probability threshold [0.5].")
@click.option("--max-detections", type=click.IntRange(min=1), default=None, help="Most detections per tile and prompt.")
@click.option("--nms-iou", type=click.FloatRange(0, 1), default=None, help="Within-tile mask NMS at this IoU.")
@click.option("--compile", "compile_encoder", is_flag=True,
              help="Compile SAM 3's vision encoder with torch.compile (see docs/sam3.md).")
@tiling_options
@refine_options
@read_options
@area_options
@web_options
@click.option("--stretch", default="2,98", show_default=True,
              help="Percentiles of the scene-wide stretch for non-uint8 rasters.")
@click.option("--dst-crs", default=None, help="Output CRS: EPSG code, WKT or PROJ string [default: the raster's].")
@click.option("--simplify", type=click.FloatRange(min=0), default=None,
              help="Simplify polygons, tolerance in pixels (default 0.5; 0: the pixel edges as they are).")
@click.option("--min-area", type=click.FloatRange(min=0), default=None, help="Drop objects smaller than this, in m².")
@click.option("--raster-out", default=None,
              help="Also write a label raster (COG): a .tif file, or a folder for one NAME.tif per input.")
@click.option("--raster-values", type=click.Choice(rasterize.VALUES), default=None,
              help="Label raster values: each object's id, or its prompt's number [default: instance].")
@click.option("--work-dir", default=None,
              help="Where detections are staged [default: OUT.geoseg-work, or DIR/.geoseg-work with --output-dir, "
                   "DIR/.geoseg-work-K-of-N with --shard].")
@click.option("--restart", is_flag=True,
              help="Discard the work folder of an interrupted (or damaged) run and start over.")
@click.option("--mosaic", "as_mosaic", is_flag=True,
              help="Read INPUTS (adjacent or overlapping tiles, or folders of them) as one raster: objects on file "
                   "edges come back once and whole (see docs/mosaic.md).")
@click.option("--shard", default=None, metavar="K/N",
              help="Segment only shard K of N of the inputs (an array job's part; needs --output-dir; "
                   "see docs/batch.md).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Run on a new local Dask cluster of this many worker processes.")
@click.option("--scheduler", default=None, help="Run on an existing Dask cluster: its scheduler's address.")
@click.option("--resources", default=None, help="Dask worker resources each task needs, e.g. GPU=1.")
@click.option("--asset", default=None,
              help="The asset of STAC items to segment [default: visual, else the first RGB asset] "
                   "(see docs/cloud.md).")
@click.option("--cpu-workers", type=click.IntRange(min=0), default=None,
              help="Worker processes for the CPU work behind the model (vectorising, areas, reprojection) "
                   "[default: cores - 1; 0: all in this process] (see docs/performance.md).")
@click.option("--profile", "show_profile", is_flag=True,
              help="At the end, print the seconds spent in read, model, post-process, stage, merge and "
                   "vectorise+write, and the share of the time the model sat idle.")
@click.option("--log-file", default=None,
              help="Also write every line the run prints (refusals and warnings included), with times, to this file.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or progress lines.")
def segment(inputs: tuple[str, ...], prompts: tuple[str, ...], exemplars: str | None, objects: str | None,
            output: str | None,
            output_dir: str | None, fmt: str,
            layer: str, overwrite: bool, backend: str, model: str | None, device: str | None, dtype: str | None,
            batch_size: int | None, score_threshold: float | None, mask_threshold: float | None,
            max_detections: int | None, nms_iou: float | None, compile_encoder: bool, tile_size: int, overlap: int,
            saturation: float, refine_depth: int, zoom: int, neighbour_start: bool, bands: str | None,
            resolution: float | None, pixel_coords: bool, bbox: str | None, bbox_crs: str | None,
            aoi: str | None, web_zoom: int | None, web_resolution: float | None, tile_cache: str | None,
            max_connections: int, max_tiles: int, headers: tuple[str, ...], attribution: str | None, stretch: str,
            dst_crs: str | None, simplify: float | None, min_area: float | None, raster_out: str | None,
            raster_values: str | None, work_dir: str | None, restart: bool, as_mosaic: bool, shard: str | None,
            workers: int | None, scheduler: str | None, resources: str | None, asset: str | None,
            cpu_workers: int | None, show_profile: bool, log_file: str | None, quiet: bool) -> None:
    """Find the objects named by PROMPTs in INPUTS (rasters, folders or URLs) and write polygons.

    An interrupted run started again with the same arguments resumes from its
    work folder; with several inputs a file that fails is reported and the
    others go on (exit code 1 at the end).
    """
    log_to(log_file, quiet)  # first: the log file gets every refusal too
    if (output is None) == (output_dir is None):
        raise UsageError("give either -o OUT.gpkg (one file for all inputs) or --output-dir DIR (one per input)")
    if workers is not None and scheduler is not None:
        raise UsageError("give either --workers N (a local cluster) or --scheduler ADDRESS (an existing one)")
    part = None if shard is None else shards.check(shards.parse(shard), output, output_dir, raster_out)
    if output_dir is not None and not is_url(output_dir) and not Path(output_dir).is_dir():
        raise OutputError(f"--output-dir {output_dir}: no such folder: create it first")
    settings = Settings.of(prompts, tile_size=tile_size, overlap=overlap, bands=bands, resolution=resolution,
                           stretch=_stretch(stretch), pixel_coords=pixel_coords, dst_crs=dst_crs,
                           simplify=simplify, min_area=min_area, progress=not quiet and sys.stderr.isatty(),
                           bbox=bbox, bbox_crs=bbox_crs, aoi=aoi, saturation=saturation,
                           refine_depth=refine_depth, zoom=zoom, neighbour_start=neighbour_start,
                           cpu_workers=cpu_workers, exemplars=exemplars, segmenter=backend,
                           backend_options={"model": model}, objects=objects)
    web = WebOptions.of(zoom=web_zoom, resolution=web_resolution, cache=tile_cache, max_connections=max_connections,
                        max_tiles=max_tiles, headers=headers, attribution=attribution)
    paths = resolve(inputs, asset=asset, mosaic=as_mosaic, settings=settings, web=web)
    options = dict(model=model, device=device, dtype=dtype, batch_size=batch_size, score_threshold=score_threshold,
                   mask_threshold=mask_threshold, max_detections=max_detections, nms_iou=nms_iou,
                   compile=compile_encoder or None)  # None: not passed to backends without it
    placed = None
    if settings.objects is not None:  # one polygon per object clicked, in this process
        if output is None or workers is not None or scheduler is not None or shard is not None:
            raise UsageError("--objects writes one file in this process: give -o OUT.gpkg, without --output-dir, "
                             "--workers, --scheduler or --shard")
        if not settings.prompts:
            found = pipeline.objects_run(paths, settings, backend, options, output=output, layer=layer,
                                         overwrite=overwrite)
            _tell(f"{output}: {len(found)} objects ({int(found['whole'].sum())} whole)")
            return
        placed = pipeline.check_objects(paths, settings, output, layer, overwrite)
    mine, names = paths, None
    if part is not None and not as_mosaic:  # named as in one run of the whole collection (a mosaic: its rows)
        mine, names = shards.select(paths, unique_names(paths), part)
        if not mine:
            logging.getLogger("geoseg").info("shard %s holds none of the %d inputs: nothing to do", shard,
                                             len(paths))
            return
        work_dir = work_dir or str(default_work_dir(output, output_dir, part, layer))
    if part is None or not as_mosaic:  # a mosaic's shard writes a part, checked as it runs
        check_run(mine, settings, output=output, output_dir=output_dir, fmt=fmt, layer=layer, restart=restart,
                           overwrite=overwrite, work_dir=work_dir, raster_out=raster_out,
                           raster_values=raster_values, names=names, every=paths)  # before the model loads
    with _engine(backend, options, workers, scheduler, resources) as engine:
        pipeline.share_windows(engine, paths, settings, placed)
        summary = pipeline.run(paths, settings, engine, output=output, output_dir=output_dir, fmt=fmt, layer=layer,
                               overwrite=overwrite, work_dir=work_dir, restart=restart, raster_out=raster_out,
                               raster_values=raster_values, shard=part)
        if settings.objects is not None and not summary.failed:  # the objects clicked, in a layer of their own
            clicked = pipeline.objects_layer(layer)
            found = run_objects(paths, settings.objects, settings, engine, output=output, layer=clicked,
                                overwrite=overwrite, placed=placed)
            _tell(f"{output} (layer {clicked}): {len(found)} objects clicked ({int(found['whole'].sum())} whole)")
    if part is not None and as_mosaic:
        _tell(f"{summary.outputs[0]}: shard {shard} of the mosaic staged; once every shard is done: "
              f"geoseg combine {output_dir} -o OUT.gpkg")
    for f in summary.files:
        if f.state == "done" and f.output:
            _tell(f"{f.output}: {f.objects} objects" + (" (done before)" if f.reused else ""))
    if output is not None and summary.outputs:
        _tell(f"{output}: {sum(f.objects for f in summary.files if f.state == 'done')} objects")
    for r in summary.rasters:
        _tell(f"{r}: label raster")
    if len(summary.files) > 1 or summary.failed:
        _tell(summary.report())
    if show_profile:
        profiled = [f for f in summary.files if f.profile is not None]
        for f in profiled:
            _tell(f.profile.table(f.source))  # type: ignore[union-attr]
        if len(profiled) > 1:  # the run as a whole: its files overlap in time
            _tell(summary.profile.table(f"the run ({len(profiled)} files segmented)"))
    if summary.failed:
        where = work_dir or default_work_dir(output, output_dir, layer=layer)
        say(logging.ERROR, f"error: {len(summary.failed)} of {len(summary.files)} files failed; rerun the same "
                           f"command to retry them (work kept in {where})")
        raise SystemExit(1)


def _tell(text: str) -> None:
    """What a run reports at its end, on stderr and in the --log-file."""
    echo(text, err=True)
    to_log_file(logging.INFO, text)


@contextlib.contextmanager
def _engine(backend: str, options: dict[str, Any], workers: int | None, scheduler: str | None,
            resources: str | None) -> Iterator[Any]:
    """A local engine with the backend loaded here, or a Dask engine whose workers load it."""
    if workers is None and scheduler is None:
        if resources:
            raise UsageError("--resources is for Dask workers: add --workers N or --scheduler ADDRESS")
        yield LocalEngine(load_segmenter(backend, **options))
        return
    try:
        from geoseg.run import distributed
    except ImportError:
        raise UsageError("--workers and --scheduler need Dask: pip install 'dask[distributed]'") from None
    needs = distributed.parse_resources(resources)
    client = distributed.connect(workers=workers, scheduler=scheduler, resources=needs)
    try:
        yield distributed.DaskEngine(client, backend, options, resources=needs)
    finally:
        cluster = client.cluster if workers is not None else None
        client.close()
        if cluster is not None:
            cluster.close()


@main.command()
def backends() -> None:
    """List the registered segmenter backends."""
    for name in backend_names():
        click.echo(name)
