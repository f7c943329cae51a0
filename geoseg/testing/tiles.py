"""A scene cut into the tiles of a web map service (XYZ or TMS rows), to serve locally.

`write_tiles` draws coloured objects on the tile grid of one zoom level in
EPSG:3857 and saves both the scene as a GeoTIFF (the truth, read like any
raster) and its 256 px PNG tiles as `z/x/y.png`, ready for
`geoseg.testing.http.RangeServer` to serve as a tile service.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from affine import Affine
from PIL import Image

from geoseg.testing.scenes import draw, random_objects, ring, write_geotiff

WORLD = 20037508.342789244
TILE = 256


@dataclass(frozen=True)
class TileScene:
    """Where a scene lies on the service's grid, and its GeoTIFF."""

    zoom: int
    x0: int  #: first tile column
    y0: int  #: first tile row, from the top
    columns: int
    rows: int
    geotiff: str

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """minx, miny, maxx, maxy in EPSG:3857."""
        res = 2 * WORLD / (TILE * 2**self.zoom)
        left, top = -WORLD + self.x0 * TILE * res, WORLD - self.y0 * TILE * res
        return left, top - self.rows * TILE * res, left + self.columns * TILE * res, top


def write_tiles(folder: str | os.PathLike[str], *, zoom: int = 17, x0: int = 35200, y0: int = 54200,
                columns: int = 6, rows: int = 6, n_objects: int = 60, seed: int = 0, tms: bool = False) -> TileScene:
    """Draw a scene of `columns` x `rows` service tiles at (`x0`, `y0`) and `zoom`, with a ring
    larger than a tile; write it as `folder/scene.tif` (EPSG:3857) and as PNG tiles
    `folder/tiles/z/x/y.png` (`y` counted from the bottom with `tms`)."""
    folder = Path(folder)
    height, width = rows * TILE, columns * TILE
    objs = random_objects(height, width, n_objects, seed, start=100)
    objs.insert(0, ring("green", 1, height / 2, width / 2, min(height, width) * 0.3, min(height, width) * 0.15))
    rgb = draw(height, width, objs)
    res = 2 * WORLD / (TILE * 2**zoom)
    transform = Affine(res, 0, -WORLD + x0 * TILE * res, 0, -res, WORLD - y0 * TILE * res)
    folder.mkdir(parents=True, exist_ok=True)
    tif = write_geotiff(folder / "scene.tif", rgb, crs="EPSG:3857", transform=transform)
    for r in range(rows):
        for c in range(columns):
            y = y0 + r if not tms else 2**zoom - 1 - (y0 + r)
            path = folder / "tiles" / str(zoom) / str(x0 + c) / f"{y}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(rgb[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE])).save(path)
    return TileScene(zoom, x0, y0, columns, rows, tif)


def write_capabilities(path: str | os.PathLike[str], base_url: str, *, layer: str = "ortho", levels: int = 19) -> str:
    """A WMTS capabilities document (REST, GoogleMapsCompatible, zoom 0 to `levels` - 1) whose tiles are
    `base_url` + `tiles/{TileMatrix}/{TileCol}/{TileRow}.png`, as `write_tiles` lays them out."""
    matrices = []
    for z in range(levels):
        res = 2 * WORLD / (TILE * 2**z)
        matrices.append(
            f"<TileMatrix><ows:Identifier>{z}</ows:Identifier><ScaleDenominator>{res / 0.00028!r}</ScaleDenominator>"
            f"<TopLeftCorner>{-WORLD!r} {WORLD!r}</TopLeftCorner><TileWidth>{TILE}</TileWidth>"
            f"<TileHeight>{TILE}</TileHeight><MatrixWidth>{2**z}</MatrixWidth><MatrixHeight>{2**z}</MatrixHeight>"
            f"</TileMatrix>")
    text = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<Capabilities xmlns="http://www.opengis.net/wmts/1.0" xmlns:ows="http://www.opengis.net/ows/1.1" '
        'xmlns:xlink="http://www.w3.org/1999/xlink" version="1.0.0"><Contents>'
        f"<Layer><ows:Title>{layer}</ows:Title><ows:Identifier>{layer}</ows:Identifier>"
        "<ows:WGS84BoundingBox><ows:LowerCorner>-180 -85</ows:LowerCorner><ows:UpperCorner>180 85</ows:UpperCorner>"
        "</ows:WGS84BoundingBox><Style isDefault=\"true\"><ows:Identifier>default</ows:Identifier></Style>"
        "<Format>image/png</Format><TileMatrixSetLink><TileMatrixSet>GoogleMapsCompatible</TileMatrixSet>"
        f'</TileMatrixSetLink><ResourceURL format="image/png" resourceType="tile" '
        f'template="{base_url}tiles/{{TileMatrix}}/{{TileCol}}/{{TileRow}}.png"/></Layer>'
        "<TileMatrixSet><ows:Identifier>GoogleMapsCompatible</ows:Identifier>"
        "<ows:SupportedCRS>urn:ogc:def:crs:EPSG::3857</ows:SupportedCRS>" + "".join(matrices)
        + "</TileMatrixSet></Contents></Capabilities>\n")
    Path(path).write_text(text)
    return str(path)
