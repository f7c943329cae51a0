"""`geoseg info`: the plan for a raster, no model run."""

from __future__ import annotations

import json
import shlex
from typing import Any

import click

from geoseg.cli import echo, main
from geoseg.cli.options import area_options, read_options, tiling_options, web_options
from geoseg.core.refine import MODEL_INPUT, RESOLVED, Refine, object_scale, suggested_zoom
from geoseg.core.segmenter import check_prompts
from geoseg.errors import OutsideAreaError, UsageError
from geoseg.io.area import Area
from geoseg.io.exemplars import place, read_exemplars
from geoseg.io.inputs import list_inputs
from geoseg.io.raster import ReadOptions
from geoseg.io.services import WebOptions
from geoseg.io.sources import unique_names
from geoseg.io.web import open_sources
from geoseg.run.inspection import describe
from geoseg.run.settings import model_reading
from geoseg.run.workdir import WorkDir, read_settings


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-p", "--prompt", "prompts", multiple=True, help="Prompts to check (no model is run).")
@tiling_options
@read_options
@area_options
@web_options
@click.option("--object-size", type=click.FloatRange(min=0, min_open=True), default=None, metavar="METRES",
              help="Show how large objects of this size look to SAM 3 at each zoom level, and the --zoom to use.")
@click.option("--exemplars", default=None, metavar="FILE",
              help="Show the tile each exemplar box is encoded on and its size in model pixels.")
@click.option("--backend", default=None,
              help="Read the rasters as this backend would (a yolo student: at its training resolution and bands).")
@click.option("--model", default=None, help="The backend's --model (a student's folder).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def info(inputs: tuple[str, ...], prompts: tuple[str, ...], tile_size: int, overlap: int, bands: str | None,
         resolution: float | None, pixel_coords: bool, bbox: str | None, bbox_crs: str | None, aoi: str | None,
         object_size: float | None, exemplars: str | None, backend: str | None, model: str | None,
         as_json: bool, web_zoom: int | None, web_resolution: float | None, tile_cache: str | None,
         max_connections: int, max_tiles: int, headers: tuple[str, ...], attribution: str | None) -> None:
    """Show size, CRS, dtype, nodata, tiles and area of rasters, or the status of
    an interrupted run's work folder (OUT.geoseg-work). With --backend (and --model), as that model
    reads them."""
    works = [i for i in inputs if read_settings(i) is not None]
    if works:
        _work_status(works, as_json)
        return
    checked = check_prompts(prompts) if prompts else []
    area = Area.of(bbox=bbox, bbox_crs=bbox_crs, aoi=aoi, margin=overlap)
    if model is not None and backend is None:
        raise UsageError("--model goes with --backend: name the backend whose model it is (e.g. --backend yolo)")
    read = model_reading(bands=bands, resolution=resolution, pixel_coords=pixel_coords, segmenter=backend,
                        backend_options={"model": model})
    web = WebOptions.of(zoom=web_zoom, resolution=web_resolution, cache=tile_cache, max_connections=max_connections,
                        max_tiles=max_tiles, headers=headers, attribution=attribution)
    paths = list_inputs(open_sources(list(inputs), area, web, overlap))  # a tile service: its area, no tile read
    plans = [_describe(p, len(paths) > 1, tile_size=tile_size, overlap=overlap, bands=read.bands,
                       resolution=read.resolution, pixel_coords=pixel_coords, area=area, metres=read.metres)
             for p in paths]
    for d in plans:
        if read.metres and not d.get("outside"):
            d["model_resolution_m"] = read.resolution
    if area is not None and all(d.get("outside") for d in plans):
        raise OutsideAreaError(f"{area.describe()} overlaps none of the {len(paths)} inputs: check the coordinates")
    if object_size is not None:
        for d in plans:
            if not d.get("outside"):
                d["object_size"] = _object_size(d, object_size)
    boxes = None if exemplars is None else _exemplars(exemplars, paths, tile_size, overlap, read)
    if as_json:
        more = {} if boxes is None else {"exemplars": boxes}
        echo(json.dumps({"prompts": checked, "rasters": plans, **more}, indent=2))
        return
    for d in plans:
        if d.get("outside"):
            echo(f"{d['path']}\n  outside the area: would be skipped")
            continue
        km2 = "unknown (no CRS)" if d["area_km2"] is None else f"{d['area_km2']:.4f} km²"
        echo(f"{d['path']}\n"
                   f"  size       {d['width']} x {d['height']} px, bands {d['bands'] or 'none chosen'}, {d['dtype']}\n"
                   + _colours_line(d) + _web_line(d) +
                   f"  crs        {d['crs'] or 'none (pixel coordinates)'}, pixel {d['pixel_size']:.6g}\n"
                   + _model_line(d, backend) +
                   f"  nodata     {d['nodata']}\n"
                   f"  stretch    {_stretch(d)}\n"
                   f"  area       {km2}{'' if area is None else ' in ' + area.describe()}\n"
                   + _window_line(d) +
                   f"  tiles      {d['tiles']} ({d['tile_grid'][0]} x {d['tile_grid'][1]}) of {d['tile_size']} px,"
                   f" overlap {d['overlap']} px" + ("" if area is None else ", to segment")
                   + _object_line(d.get("object_size")))
    if checked:
        echo(f"prompts: {', '.join(checked)}")
    for b in boxes or []:
        sign = "positive" if b["positive"] else "negative"
        what = f"prompt {b['prompt']!r}" if b["prompt"] is not None else "no prompt"
        echo(f"box {b['box']} ({what}, {sign}): encoded on {b['source']} tile {b['tile']}, "
             f"{b['size_px'][0]:g} x {b['size_px'][1]:g} px = {b['model_px'][0]:g} x {b['model_px'][1]:g} model px")


def _exemplars(path: str, inputs: list[str], tile_size: int, overlap: int, read: ReadOptions) -> list[dict[str, Any]]:
    """Where each box of an exemplar file is encoded, and how large the model sees it (at level 0)."""
    file = read_exemplars(path)
    names = unique_names(inputs)
    out = []
    for p in place(file, inputs, read, tile_size=tile_size, overlap=overlap, refine=Refine()):
        x0, y0, x1, y1 = p.xyxy
        size = [round(x1 - x0, 1), round(y1 - y0, 1)]
        out.append({"box": p.box + 1, "prompt": file.labels[p.box], "positive": file.positive[p.box],
                    "source": names[p.source], "tile": p.tile, "size_px": size,
                    "model_px": [round(v * MODEL_INPUT / tile_size, 1) for v in size]})
    return out


def _object_size(d: dict[str, Any], metres: float) -> dict[str, Any]:
    """How large an object of `metres` looks to the model at each level of refinement."""
    if d["area_km2"] is None:
        raise UsageError(f"--object-size {metres:g}: {d['path']} has no CRS, so its pixels have no size in metres")
    w, h = (d["window"][2], d["window"][3]) if d["window"] is not None else (d["width"], d["height"])
    pixel_m = (d["area_km2"] * 1e6 / (w * h)) ** 0.5  # also right for a CRS in degrees or feet
    scale = object_scale(metres / pixel_m, d["tile_size"], d["overlap"])
    return {"metres": metres, "pixels": round(metres / pixel_m, 1), "levels": scale, "zoom": suggested_zoom(scale)}


def _object_line(obj: dict[str, Any] | None) -> str:
    if obj is None:
        return ""
    seen = ", ".join(f"{s['model_px']:g} at level {s['level']}" for s in obj["levels"])
    best = obj["zoom"]
    advice = ("no zoom needed" if best == 0 else f"use --zoom {best}") if obj["levels"][best]["model_px"] >= RESOLVED \
        else f"too small even at the deepest level: use --zoom {best} and a smaller --tile-size"
    return (f"\n  objects    {obj['metres']:g} m = {obj['pixels']:g} px = {seen} model px "
            f"(SAM 3 resolves {RESOLVED}+): {advice}")


def _web_line(d: dict[str, Any]) -> str:
    """A tile service's zoom and the service tiles a run would fetch (or take from the cache)."""
    if "web" not in d:
        return ""
    w = d["web"]
    level = f"zoom {w['zoom']}" if w["zoom"] is not None else f"pixel {w['pixel']:.6g}"
    credit = f", {w['attribution']}" if w.get("attribution") else ""
    return f"  service    {level}, {w['tiles']} service tiles{credit}\n"


def _colours_line(d: dict[str, Any]) -> str:
    tags = ", ".join(f"{i} {t}" for i, t in enumerate(d["colours"], 1))
    hint = "" if d["bands"] else ": to segment, pick three with --bands R,G,B or one with --bands N"
    return f"  colours    {tags}{hint}\n"


def _stretch(d: dict[str, Any]) -> str:
    if d["stretch"] is not None:
        return str(d["stretch"])
    return "none (uint8 passed through)" if d["dtype"] == "uint8" else "none until bands are chosen"


def _model_line(d: dict[str, Any], backend: str | None) -> str:
    if d.get("model_resolution_m") is None:
        return ""
    x, y = d["pixel_xy"]
    return (f"  read at    {d['model_resolution_m']:g} m, the {backend} model's training resolution: pixel {x:.6g} x "
            f"{y:.6g} in the CRS's units\n")


def _window_line(d: dict[str, Any]) -> str:
    if d["window"] is None:
        return ""
    col, row, width, height = d["window"]
    return f"  window     {width} x {height} px at col {col}, row {row} (the area plus {d['overlap']} px)\n"


def _describe(path: str, several: bool, **kwargs: Any) -> dict[str, Any]:
    """`describe`, where with several inputs one outside the area is marked so, not an error."""
    try:
        return describe(path, **kwargs)
    except OutsideAreaError:
        if not several:
            raise
        return {"path": str(path), "outside": True}


def _work_status(paths: list[str], as_json: bool) -> None:
    """What an interrupted run has done, per input, and the settings it must be resumed with."""
    status = [{"work_dir": p, "settings": read_settings(p), "files": WorkDir.status_of(p)} for p in paths]
    if as_json:
        echo(json.dumps(status, indent=2))
        return
    for w in status:
        opts = cli_args(w["settings"])
        echo(f"{w['work_dir']}: interrupted run (resume with the same command, or --restart)")
        echo(f"  settings   {opts}")
        for f in w["files"]:
            if f["error"]:
                state = f"failed: {f['error']}"
            elif f["merged"]:
                state = "done"
            else:
                state = f"{f['done']}/{f['tiles']} tiles staged, {f['detections']} detections"
            echo(f"  {f['source']}: {state}")


_DTYPES = {"torch.bfloat16": "bf16", "torch.float16": "fp16", "torch.float32": "fp32"}


def cli_args(settings: dict[str, Any]) -> str:
    """A work folder's settings as `geoseg segment` options to paste into a shell:
    one `--prompt` per prompt, flags bare, defaults left out."""
    words: list[str] = []
    for option, value in settings.items():
        if value is None or value is False:
            continue
        if value is True:
            words.append(option)
        elif option == "--prompt":
            for prompt in value:
                words += [option, shlex.quote(prompt)]
        else:
            text = ",".join(str(v) for v in value) if isinstance(value, list) else _DTYPES.get(str(value), str(value))
            words += [option, shlex.quote(text)]
    return " ".join(words)
