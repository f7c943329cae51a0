"""`geoseg distill`: rasters + prompts -> teacher labels on a sample -> a student -> its report."""

from __future__ import annotations

import sys

import click

from geoseg.analysis.distill import distill, format_report
from geoseg.cli import log_to, main
from geoseg.errors import UsageError


@main.command("distill")
@click.argument("rasters", nargs=-1, required=True)
@click.option("-p", "--prompt", "prompts", multiple=True, required=True,
              help="What to find; repeat for several. They become the student's classes.")
@click.option("-o", "--output", "out_dir", required=True,
              help="Folder for the sample, labels, dataset, model, student output and report.")
@click.option("--reviewed", default=None, metavar="FILE",
              help="A result reviewed in the explorer, instead of a teacher: its accepted objects are the labels, "
                   "its rejected ones background; the sample is the blocks where objects were reviewed.")
@click.option("--sample-aoi", default=None, help="Label the blocks touching these polygons (any vector file).")
@click.option("--sample-fraction", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Label this share of the rasters' blocks, drawn at random (e.g. 0.1).")
@click.option("--holdout", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2,
              show_default=True, help="Share of the sample kept out of training, to score the student on.")
@click.option("--teacher", default="sam3", show_default=True, help="Backend that labels the sample.")
@click.option("--teacher-model", default=None, help="The teacher's --model [its default: facebook/sam3].")
@click.option("--device", default=None, help="cuda, cuda:1, mps or cpu, for teacher and student [default: best].")
@click.option("--chip-size", type=click.IntRange(min=32), default=512, show_default=True,
              help="Training chip side, px; the sample is cut in blocks of 2 x 2 chips.")
@click.option("--tile-size", type=click.IntRange(min=16), default=1008, show_default=True,
              help="Tile side of every run, px.")
@click.option("--overlap", type=click.IntRange(min=0), default=128, show_default=True, help="Tile overlap, px.")
@click.option("--epochs", type=click.IntRange(min=1), default=100, show_default=True, help="Most training epochs.")
@click.option("--patience", type=click.IntRange(min=1), default=20, show_default=True,
              help="Stop after this many epochs without a better val score.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True, help="Chips per step.")
@click.option("--weights", default=None, help="Checkpoint to start the student from (see `geoseg train`).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sample, the splits and training.")
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True,
              help="Data loader processes of training.")
@click.option("--sample-only", is_flag=True,
              help="Stop after scoring on the held-out blocks: do not run the student over every raster.")
@click.option("--overwrite", is_flag=True, help="Replace a distillation folder written before.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or progress lines.")
@click.pass_context
def distill_cmd(ctx: click.Context, rasters: tuple[str, ...], prompts: tuple[str, ...], out_dir: str,
                reviewed: str | None, sample_aoi: str | None,
                sample_fraction: float | None, holdout: float, teacher: str, teacher_model: str | None,
                device: str | None, chip_size: int, tile_size: int, overlap: int, epochs: int, patience: int,
                batch_size: int, weights: str | None, seed: int, workers: int, sample_only: bool, overwrite: bool,
                quiet: bool) -> None:
    """Label a sample of RASTERS with a teacher (SAM 3), train a fast student on it, score it against
    the teacher on held-out blocks, run it over all RASTERS and report.
    Needs Ultralytics (AGPL-3.0): `pip install ultralytics`."""
    log_to(None, quiet)
    given = ctx.get_parameter_source("teacher") == click.core.ParameterSource.COMMANDLINE or teacher_model
    if reviewed is not None and given:
        raise UsageError("--reviewed FILE takes the teacher's place: leave out --teacher and --teacher-model")
    teacher_options = {"model": teacher_model, "device": device}
    report = distill(list(rasters), list(prompts), out_dir, teacher=teacher, teacher_options=teacher_options,
                     sample_aoi=sample_aoi, sample_fraction=sample_fraction, holdout=holdout, chip_size=chip_size,
                     tile_size=tile_size, overlap=overlap, epochs=epochs, patience=patience, batch_size=batch_size,
                     device=device, weights=weights, seed=seed, workers=workers, run_all=not sample_only,
                     progress=not quiet and sys.stderr.isatty(), overwrite=overwrite, reviewed=reviewed)
    click.echo(format_report(report))
    click.echo(f"{out_dir}: report.txt, report.json, model/ (run it with --backend yolo --model {out_dir}/model)"
               + ("" if sample_only else ", student.gpkg"), err=True)
