"""Every check a run needs no model for, made before the model loads: outputs
(local or in a bucket), a single input's last block, the area, the label rasters."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from geoseg.core.exemplars import Exemplars
from geoseg.core.tiling import Window
from geoseg.errors import OutputError, UsageError, option
from geoseg.io import export, rasterize, upload
from geoseg.io.exemplars import place, prepare
from geoseg.io.raster import RasterSource
from geoseg.io.sources import is_remote, output_names, unique_names
from geoseg.run import workdir
from geoseg.run.inspection import check_area
from geoseg.run.settings import Settings, own_fingerprint
from geoseg.run.workdir import default_work_dir

LAYER = "detections"  # the default layer: every format takes it (a GeoPackage's layer, else the file's name)


def remote_outputs(output: Any, output_dir: Any, work_dir: Any, shard: tuple[int, int] | None, fmt: str,
                   names: list[str], overwrite: bool, layer: str) -> upload.Target | None:
    """A run's outputs in a bucket (see `geoseg.io.upload.target`); None for local ones."""
    work = work_dir if work_dir is not None else default_work_dir(output, output_dir, shard, layer)
    return upload.target(output, output_dir, work_dir=work, fmt=fmt, names=names, overwrite=overwrite,
                         suffixes=export.FORMATS, layer=layer, written=own_outputs(work))


def own_outputs(work: Any) -> list[str]:
    """The outputs the run in work folder `work` wrote, its own to replace; none where its record is
    damaged (the run then refuses the folder, or discards it with restart): an output there needs overwrite."""
    try:
        return workdir.written(work)
    except UsageError:
        return []


def check_run(paths: list[Any], settings: Settings, *, output: Any = None, output_dir: Any = None, fmt: str = "gpkg",
              layer: str = LAYER, overwrite: bool = False, work_dir: Any = None, raster_out: Any = None,
              raster_values: str | None = None, names: list[str] | None = None,
              restart: bool = False, every: list[Any] | None = None,
              ) -> tuple[dict[int, Path], dict[int, rasterize.LabelRaster]]:
    """Every check a run needs no model for, made before the model loads:
    outputs (format, folder, an existing file or layer), a single input
    (opened, and its last block read, so a truncated file is caught), the area,
    the label rasters, and an interrupted run's settings (unless `restart`).
    Returns the per-input outputs and label rasters by index.
    `names`: the inputs' names, where not their `unique_names` (a shard's).
    `every`: all the inputs of the collection (a shard's or a resumed bucket run's `paths`
    are some of them), where exemplar boxes may lie; default `paths`.
    """
    check_layer(output, fmt, layer)
    remote = remote_outputs(output, output_dir, work_dir, None, fmt, names or unique_names(paths), overwrite, layer)
    if remote is not None:  # its local stand-ins are checked
        output, output_dir, work_dir = remote.output, remote.output_dir, remote.work_dir
    outputs: dict[int, Path] = {}
    if output_dir is not None:
        files = output_names(unique_names(paths) if names is None else names, export.FORMATS[fmt])
        outputs = {k: Path(output_dir) / n for k, n in enumerate(files)}
    temporary = work_dir is None and output is None and output_dir is None
    work = None if temporary else work_dir or default_work_dir(output, output_dir, layer=layer)
    if work is not None:
        _check_work_folder(Path(work))
    if work is not None and not restart:
        workdir.check_resumable(work, own_fingerprint(settings))
    own = set() if work is None else set(own_outputs(work))
    for out in outputs.values():
        if export.output_key(out, layer) not in own:
            export.check_output(_probe(out), overwrite, layer)
    if output is not None:
        export.check_output(output, overwrite or export.output_key(output, layer) in own, layer)
    if settings.dst_crs is not None:  # warned now, not once the model has run
        export.warn_crs(output if output is not None else f"{output_dir}/*{export.FORMATS.get(fmt, '')}",
                        settings.dst_crs)
    if len(paths) == 1:  # several: each file's faults are its own, reported by the run
        with RasterSource(paths[0], settings.read) as src:
            if _local_file(paths[0]):  # a cut copy: GDAL opens it, then fails on the blocks that are gone
                src.read(Window(src.height - 1, src.width - 1, 1, 1))
    check_area(paths, settings.read)
    if settings.exemplars is not None:
        place(settings.exemplars, every or paths, settings.read, tile_size=settings.tile_size,
              overlap=settings.overlap, refine=settings.refine)
    rasters = rasterize.plan(raster_out, paths, values=raster_values, prompts=settings.prompts, overwrite=overwrite,
                             written=own)
    return outputs, rasters


def exemplars_of(paths: list[Any], settings: Settings) -> Exemplars | None:
    """The run's exemplars placed on `paths`, with their tiles' pixels; None without."""
    if settings.exemplars is None:
        return None
    return prepare(settings.exemplars, paths, settings.read, settings.text_prompts, tile_size=settings.tile_size,
                   overlap=settings.overlap, refine=settings.refine)


def check_layer(output: Any, fmt: str, layer: str) -> None:
    """Refuse a layer other than the default for a format without layers (all but
    GeoPackage), which would ignore it. The default cannot be told from the same
    name given, so `detections` is taken with every format."""
    if layer == LAYER:
        return
    suffix = Path(str(output)).suffix.lower() if output is not None else export.FORMATS.get(fmt, "")
    if export.DRIVERS.get(suffix, "GPKG") == "GPKG":
        return  # a GeoPackage, or an unknown format: refused by its own check
    if output is not None:
        raise OutputError(f"{option('layer', layer)}: {output} has no layers (only .gpkg has): "
                          f"leave out {option('layer')} or write a .gpkg")
    raise OutputError(f"{option('layer', layer)}: {option('fmt', fmt, flag='--format')} has no layers (only gpkg "
                      f"has): leave out {option('layer')} or use {option('fmt', 'gpkg', flag='--format')}")


def _check_work_folder(work: Path) -> None:
    """Refuse a work folder that cannot be written (read-only, or under a file)."""
    folder = _nearest_folder(work)
    if folder.is_dir() and not export.writable(folder):
        raise UsageError(f"work folder {work}: {folder} is not writable: pass another {option('work_dir')}")


def _local_file(source: Any) -> bool:
    # not a URL (a block costs a request) nor a VRT (its sources may be remote)
    return isinstance(source, str) and not is_remote(source) and not source.lower().endswith(".vrt")


def _probe(out: Path) -> Path:
    """`out`, or where its subfolder is still to be made (it mirrors an
    input's folder), a name in the nearest existing folder to check instead."""
    if out.parent.is_dir():
        return out
    return _nearest_folder(out.parent) / f".geoseg-{os.getpid()}{out.suffix}"


def _nearest_folder(path: Path) -> Path:
    """`path`, or its nearest parent that is an existing folder."""
    while not path.is_dir() and path != path.parent:
        path = path.parent
    return path
