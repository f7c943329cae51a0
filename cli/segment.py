"""`geoseg segment`: rasters + prompts -> polygons."""

from __future__ import annotations

from pathlib import Path

import click

from geoseg import pipeline
from geoseg.cli import main
from geoseg.cli.options import read_options, tiling_options
from geoseg.errors import OutputError, UsageError
from geoseg.export import FORMATS, check_output
from geoseg.segmenter import check_prompts, load_segmenter


def _stretch(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--stretch {text!r}: give two percentiles, e.g. --stretch 2,98") from None
    return lo, hi


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-p", "--prompt", "prompts", multiple=True, required=True,
              help="Text prompt; repeat for several (-p building -p 'swimming pool').")
@click.option("-o", "--output", default=None, help="Output file: .gpkg, .geojson, .fgb or .parquet.")
@click.option("--output-dir", default=None, help="One output file per input raster, in this folder.")
@click.option("--format", "fmt", type=click.Choice(sorted(FORMATS)), default="gpkg", show_default=True,
              help="Format of the files written with --output-dir.")
@click.option("--layer", default="detections", show_default=True, help="GeoPackage layer name.")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
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
@tiling_options
@read_options
@click.option("--stretch", default="2,98", show_default=True,
              help="Percentiles of the scene-wide stretch for non-uint8 rasters.")
@click.option("--dst-crs", default=None, help="Output CRS: EPSG code, WKT or PROJ string [default: the raster's].")
@click.option("--simplify", type=click.FloatRange(min=0), default=None, help="Simplify polygons, tolerance in pixels.")
@click.option("--min-area", type=click.FloatRange(min=0), default=None, help="Drop objects smaller than this, in m².")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def segment(inputs: tuple[str, ...], prompts: tuple[str, ...], output: str | None, output_dir: str | None, fmt: str,
            layer: str, overwrite: bool, backend: str, model: str | None, device: str | None, dtype: str | None,
            batch_size: int | None, score_threshold: float | None, mask_threshold: float | None,
            max_detections: int | None, nms_iou: float | None, tile_size: int, overlap: int, bands: str | None,
            resolution: float | None, pixel_coords: bool, stretch: str, dst_crs: str | None,
            simplify: float | None, min_area: float | None, quiet: bool) -> None:
    """Find the objects named by PROMPTs in INPUTS (rasters or folders) and write polygons."""
    if (output is None) == (output_dir is None):
        raise UsageError("give either -o OUT.gpkg (one file for all inputs) or --output-dir DIR (one per input)")
    checked = check_prompts(prompts)
    common = dict(tile_size=tile_size, overlap=overlap, bands=bands, resolution=resolution,
                  stretch=_stretch(stretch), pixel_coords=pixel_coords, dst_crs=dst_crs, simplify=simplify,
                  min_area=min_area, layer=layer, overwrite=overwrite, progress=not quiet)
    paths = pipeline.list_inputs(inputs)
    if output_dir is not None:
        out_dir = Path(output_dir)
        if not out_dir.is_dir():
            raise OutputError(f"--output-dir {output_dir}: no such folder: create it first")
        jobs = [(p, out_dir / (Path(p).stem + FORMATS[fmt])) for p in paths]
    else:
        jobs = [(paths, Path(output))]  # type: ignore[list-item]
    for _, out in jobs:
        check_output(out, overwrite)
    for p in paths:  # bad rasters and options fail before the model loads
        pipeline.describe(p, tile_size=tile_size, overlap=overlap, bands=bands, resolution=resolution,
                          pixel_coords=pixel_coords)
    segmenter = load_segmenter(backend, model=model, device=device, dtype=dtype, batch_size=batch_size,
                               score_threshold=score_threshold, mask_threshold=mask_threshold,
                               max_detections=max_detections, nms_iou=nms_iou)
    for src, out in jobs:
        gdf = pipeline.segment(src, checked, segmenter=segmenter, output=out, **common)  # type: ignore[arg-type]
        counts = ", ".join(f"{n} {label}" for label, n in gdf["label"].value_counts().items())
        click.echo(f"{out}: {len(gdf)} objects ({counts or 'none'})", err=True)


@main.command()
def backends() -> None:
    """List the registered segmenter backends."""
    from geoseg.segmenter import backend_names

    for name in backend_names():
        click.echo(name)
