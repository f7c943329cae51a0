"""`geoseg fetch`: the area of a tile service -> a Cloud-Optimised GeoTIFF."""

from __future__ import annotations

import click

from geoseg.cli import echo, main
from geoseg.cli.options import area_options, web_options
from geoseg.errors import UsageError, redact
from geoseg.io import web
from geoseg.io.area import Area
from geoseg.io.services import WebOptions, is_web


@main.command()
@click.argument("source")
@area_options
@web_options
@click.option("-o", "--output", required=True, help="The GeoTIFF to write (.tif).")
@click.option("--overwrite", is_flag=True, help="Replace the output if it exists.")
def fetch(source: str, bbox: str | None, bbox_crs: str | None, aoi: str | None, web_zoom: int | None,
          web_resolution: float | None, tile_cache: str | None, max_connections: int, max_tiles: int,
          headers: tuple[str, ...], attribution: str | None, output: str, overwrite: bool) -> None:
    """Write the area of a tile service (SOURCE: https://host/{z}/{x}/{y}.png) as a Cloud-Optimised
    GeoTIFF, through the same cache and limits as `geoseg segment`, to keep the pixels with the results."""
    if not is_web(source):
        raise UsageError(f"{redact(source)}: not a tile service: give a template such as "
                         f"https://host/{{z}}/{{x}}/{{y}}.png (or xyz:..., {{-y}} for TMS rows)")
    area = Area.of(bbox=bbox, bbox_crs=bbox_crs, aoi=aoi)
    options = WebOptions.of(zoom=web_zoom, resolution=web_resolution, cache=tile_cache,
                            max_connections=max_connections, max_tiles=max_tiles, headers=headers,
                            attribution=attribution)
    out, g = web.fetch(source, output, area=area, options=options, overwrite=overwrite)
    level = f"at zoom {g.zoom}" if g.zoom is not None else "(WMS requests)"
    echo(f"{out}: {g.tiles} service tiles {level}, {g.width} x {g.height} px")
