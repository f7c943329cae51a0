"""`geoseg info`: the plan for a raster, no model run."""

from __future__ import annotations

import json

import click

from geoseg.cli import main
from geoseg.cli.options import read_options, tiling_options
from geoseg.pipeline import describe, list_inputs
from geoseg.segmenter import check_prompts
from geoseg.workdir import WorkDir, read_settings, show


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-p", "--prompt", "prompts", multiple=True, help="Prompts to check (no model is run).")
@tiling_options
@read_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def info(inputs: tuple[str, ...], prompts: tuple[str, ...], tile_size: int, overlap: int, bands: str | None,
         resolution: float | None, pixel_coords: bool, as_json: bool) -> None:
    """Show size, CRS, dtype, nodata, tiles and area of rasters, or the status of
    an interrupted run's work folder (OUT.geoseg-work)."""
    works = [i for i in inputs if read_settings(i) is not None]
    if works:
        _work_status(works, as_json)
        return
    checked = check_prompts(prompts) if prompts else []
    plans = [describe(p, tile_size=tile_size, overlap=overlap, bands=bands, resolution=resolution,
                      pixel_coords=pixel_coords) for p in list_inputs(inputs)]
    if as_json:
        click.echo(json.dumps({"prompts": checked, "rasters": plans}, indent=2))
        return
    for d in plans:
        area = "unknown (no CRS)" if d["area_km2"] is None else f"{d['area_km2']:.4f} km²"
        click.echo(f"{d['path']}\n"
                   f"  size       {d['width']} x {d['height']} px, bands {d['bands']}, {d['dtype']}\n"
                   f"  crs        {d['crs'] or 'none (pixel coordinates)'}, pixel {d['pixel_size']:.6g}\n"
                   f"  nodata     {d['nodata']}\n"
                   f"  stretch    {'none (uint8 passed through)' if d['stretch'] is None else d['stretch']}\n"
                   f"  area       {area}\n"
                   f"  tiles      {d['tiles']} ({d['tile_grid'][0]} x {d['tile_grid'][1]}) of {d['tile_size']} px,"
                   f" overlap {d['overlap']} px")
    if checked:
        click.echo(f"prompts: {', '.join(checked)}")


def _work_status(paths: list[str], as_json: bool) -> None:
    """What an interrupted run has done, per input, and the settings it must be resumed with."""
    status = [{"work_dir": p, "settings": read_settings(p), "files": WorkDir.status_of(p)} for p in paths]
    if as_json:
        click.echo(json.dumps(status, indent=2))
        return
    for w in status:
        opts = " ".join(f"{k} {show(v)}" for k, v in w["settings"].items() if v not in (None, False))
        click.echo(f"{w['work_dir']}: interrupted run (resume with the same command, or --restart)")
        click.echo(f"  settings   {opts}")
        for f in w["files"]:
            if f["error"]:
                state = f"failed: {f['error']}"
            elif f["merged"]:
                state = "done"
            else:
                state = f"{f['done']}/{f['tiles']} tiles staged, {f['detections']} detections"
            click.echo(f"  {f['source']}: {state}")
