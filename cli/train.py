"""`geoseg train`: a dataset (or rasters + polygons) -> a student model folder for `--backend yolo`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from geoseg.analysis.dataset import MANIFEST as DATASET_MANIFEST
from geoseg.analysis.train import ARCHITECTURE, train
from geoseg.cli import log_to, main
from geoseg.errors import UsageError


def dataset_or_rasters(inputs: tuple[str, ...]) -> tuple[object, str | None]:
    """(dataset folder, None) for one folder written by export-dataset, else (rasters, vector)."""
    if len(inputs) == 1:
        if (Path(inputs[0]) / DATASET_MANIFEST).is_file():
            return inputs[0], None
        raise UsageError(f"{inputs[0]}: not a dataset written by `geoseg export-dataset` (no {DATASET_MANIFEST}); "
                         f"give a DATASET folder, or RASTERS... VECTOR")
    return list(inputs[:-1]), inputs[-1]


@main.command("train")
@click.argument("inputs", nargs=-1, required=True, metavar="DATASET | RASTERS... VECTOR")
@click.option("-o", "--output", "out_dir", required=True, help="Model folder (new, empty, or one to --overwrite).")
@click.option("--epochs", type=click.IntRange(min=1), default=100, show_default=True, help="Most epochs to train.")
@click.option("--patience", type=click.IntRange(min=1), default=20, show_default=True,
              help="Stop after this many epochs without a better score on the val split.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True, help="Chips per step.")
@click.option("--device", default=None, help="cuda, cuda:1, mps or cpu [default: CUDA if there is one].")
@click.option("--weights", default=None,
              help=f"Checkpoint to start from (e.g. yolo11n-seg.pt, downloaded by you: far faster to train), or an "
                   f"architecture yaml [default: {ARCHITECTURE}, random weights].")
@click.option("--chip-size", type=click.IntRange(min=32), default=512, show_default=True,
              help="With RASTERS VECTOR: chip side of the exported dataset, px (also the training image size).")
@click.option("--label-field", default=None, help="With RASTERS VECTOR: the column giving the classes.")
@click.option("--split", default="0.8,0.2", show_default=True, help="With RASTERS VECTOR: fractions train,val.")
@click.option("--bands", default=None, help="With RASTERS VECTOR: 1-based bands to use as R,G,B.")
@click.option("--reviewed", is_flag=True,
              help="With RASTERS VECTOR: VECTOR was reviewed in the explorer; only accepted objects are labels "
                   "(see export-dataset --reviewed).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split and of training.")
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True,
              help="Data loader processes (0: all in this one).")
@click.option("--overwrite", is_flag=True, help="Replace a model folder geoseg train wrote before.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or progress lines.")
def train_cmd(inputs: tuple[str, ...], out_dir: str, epochs: int, patience: int, batch_size: int,
              device: str | None, weights: str | None, chip_size: int, label_field: str | None, split: str,
              bands: str | None, reviewed: bool, seed: int, workers: int, overwrite: bool, quiet: bool) -> None:
    """Train a YOLO segmentation student on DATASET (from `geoseg export-dataset --format yolo`), or on
    RASTERS labelled by the polygons of VECTOR (exported first); run it with
    `geoseg segment ... --backend yolo --model OUTPUT`. Needs Ultralytics (AGPL-3.0): `pip install ultralytics`."""
    log_to(None, quiet)
    data, vector = dataset_or_rasters(inputs)
    info = train(data, out_dir, vector=vector, epochs=epochs, patience=patience, batch_size=batch_size,
                 device=device, weights=weights, chip_size=chip_size, label_field=label_field, split=split,
                 bands=bands, seed=seed, workers=workers, progress=not quiet and sys.stderr.isatty(),
                 reviewed=reviewed, overwrite=overwrite)
    val, t = info["val"], info["training"]
    click.echo(f"{out_dir}: student for {', '.join(info['classes'])}; {t['epochs_run']} epochs in "
               f"{t['seconds'] / 60:.1f} min; val mask mAP50 {val['mask_map50']:.3f}, mAP50-95 "
               f"{val['mask_map50_95']:.3f}; run it with: geoseg segment RASTER -p {info['classes'][0]} "
               f"--backend yolo --model {out_dir} -o OUT.gpkg", err=True)
