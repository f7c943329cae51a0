"""`geoseg combine`: the per-input outputs of array jobs (shards) -> one file."""

from __future__ import annotations

import click

from geoseg.cli import main
from geoseg.run.combine import combine as combine_outputs


@main.command()
@click.argument("out_dir")
@click.option("-o", "--output", required=True,
              help="The combined file: .gpkg, .geojson, .fgb, .parquet or .shp (never read as an input).")
@click.option("--layer", default="detections", show_default=True,
              help="GeoPackage layer read from each .gpkg and written in the output; its other layers kept.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output (in a GeoPackage: only the --layer).")
@click.option("--dst-crs", default=None,
              help="Reproject every output to this CRS: needed when they are in different CRSs.")
def combine(out_dir: str, output: str, layer: str, overwrite: bool, dst_crs: str | None) -> None:
    """Combine every output under OUT_DIR (the --output-dir of `segment --shard`) into one file, ids from 1.

    With `segment --mosaic --shard`, OUT_DIR holds the parts of one mosaic: they are merged across the shards'
    boundaries (see docs/mosaic.md)."""
    objects, files = combine_outputs(out_dir, output, layer=layer, overwrite=overwrite, dst_crs=dst_crs)
    click.echo(f"{output}: {objects} objects from {files} files", err=True)
