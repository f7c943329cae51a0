"""`geoseg export-dataset`: raster + polygons -> image chips with COCO or YOLO labels."""

from __future__ import annotations

import click

from geoseg.analysis.dataset import FORMATS, IMAGE_FORMATS, export_dataset
from geoseg.cli import main


@main.command("export-dataset")
@click.argument("rasters", nargs=-1, required=True)
@click.argument("vector")
@click.option("-o", "--output", "out_dir", required=True, help="Dataset folder (new, empty, or one to --overwrite).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="coco", show_default=True,
              help="COCO instance segmentation JSON or YOLO segmentation txt + data.yaml.")
@click.option("--chip-size", type=int, default=512, show_default=True,
              help="Chip side, in pixels; a raster smaller than a chip gives padded chips.")
@click.option("--overlap", type=int, default=0, show_default=True, help="Overlap between neighbouring chips, pixels.")
@click.option("--image-format", type=click.Choice(sorted(IMAGE_FORMATS)), default="png", show_default=True,
              help="Chip images: png, or tif (GeoTIFF, georeferenced).")
@click.option("--label-field", default=None,
              help="Column giving the categories [default: label if present, else one class 'object'].")
@click.option("--min-area", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Drop object pieces smaller than this many pixels inside a chip.")
@click.option("--block-size", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Side of the spatial blocks dealt to splits, in chips [default: 4, or 2 or 1 when the rasters "
                   "hold fewer blocks than splits].")
@click.option("--split", default="0.8,0.2", show_default=True, help="Fractions for train,val or train,val,test.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for dealing blocks to splits.")
@click.option("--bands", default=None, help="1-based bands to use as R,G,B (e.g. 4,3,2), or one for grey.")
@click.option("--skip-empty", is_flag=True, help="Leave out chips without objects (kept as negatives by default).")
@click.option("--reviewed", is_flag=True,
              help="VECTOR was reviewed in the explorer (a review column): accepted objects are the labels, rejected "
                   "ones background (hard negatives); chips where an object not reviewed yet lies are left out.")
@click.option("--overwrite", is_flag=True, help="Replace a dataset geoseg wrote before in the output folder.")
def export_dataset_cmd(rasters: tuple[str, ...], vector: str, out_dir: str, fmt: str, chip_size: int, overlap: int,
                       image_format: str, label_field: str | None, min_area: float, block_size: float | None,
                       split: str, seed: int, bands: str | None, skip_empty: bool, reviewed: bool,
                       overwrite: bool) -> None:
    """Cut RASTERS (files or folders: one dataset) into chips and label them with the polygons of VECTOR,
    split by spatial blocks."""
    s = export_dataset(list(rasters), vector, out_dir, fmt=fmt, chip_size=chip_size, overlap=overlap,
                       image_format=image_format, label_field=label_field, min_area=min_area, block_size=block_size,
                       split=split, seed=seed, bands=bands, skip_empty=skip_empty, reviewed=reviewed,
                       overwrite=overwrite)
    per_split = ", ".join(f"{k} {s.chips[k]} chips / {s.objects[k]} objects ({s.blocks[k]} blocks)" for k in s.chips)
    review = (f"; reviewed: {s.negatives} pieces of rejected objects kept as background, {s.skipped_unreviewed} "
              f"chips with objects not reviewed left out") if reviewed else ""
    click.echo(f"{s.out_dir}: {fmt}, {per_split}; {s.truncated} truncated, {s.too_small} too small, "
               f"{s.skipped_nodata} nodata chips skipped, {s.dropped_overlap} dropped at split edges{review}",
               err=True)
