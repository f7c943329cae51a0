"""Generated scenes with known truth.

Every object is painted in a colour of its own: the dominant channel says its
label ("red", "green", "blue"), the two others encode its number. So a test
segmenter can see exactly what a perfect model would see in any tile.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio
import rasterio.windows
from affine import Affine

LABELS = ("red", "green", "blue")


def color_of(label: str, number: int) -> tuple[int, int, int]:
    """The unique RGB colour of object `number` (0 to 262143) of `label`."""
    if not 0 <= number < 64**3:
        raise ValueError(f"object number {number} out of range")
    low, mid, high = number % 64, (number // 64) % 64, number // 4096
    rgb = [0, 0, 0]
    channel = LABELS.index(label)
    rgb[channel], rgb[(channel + 1) % 3], rgb[(channel + 2) % 3] = 192 + high, low, mid
    return rgb[0], rgb[1], rgb[2]


@dataclass(frozen=True)
class SceneObject:
    """One object: a boolean mask crop whose top-left pixel is (row, col)."""

    label: str
    number: int
    row: int
    col: int
    mask: np.ndarray


def disc(label: str, number: int, cy: float, cx: float, r: float) -> SceneObject:
    """A filled disc of radius `r` pixels centred at (cy, cx)."""
    r0, c0 = int(np.floor(cy - r)), int(np.floor(cx - r))
    n = int(np.ceil(2 * r)) + 2
    yy, xx = np.mgrid[r0:r0 + n, c0:c0 + n]
    return SceneObject(label, number, r0, c0, (yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2 <= r * r)


def rectangle(label: str, number: int, row: int, col: int, height: int, width: int) -> SceneObject:
    """A filled axis-aligned rectangle."""
    return SceneObject(label, number, row, col, np.ones((height, width), bool))


def ring(label: str, number: int, cy: float, cx: float, r_out: float, r_in: float) -> SceneObject:
    """A disc with a round hole."""
    outer, inner = disc(label, number, cy, cx, r_out), disc(label, number, cy, cx, r_in)
    mask = outer.mask.copy()
    dr, dc = inner.row - outer.row, inner.col - outer.col
    mask[dr:dr + inner.mask.shape[0], dc:dc + inner.mask.shape[1]] &= ~inner.mask
    return SceneObject(label, number, outer.row, outer.col, mask)


def draw(height: int, width: int, objects: list[SceneObject], background: int = 40) -> np.ndarray:
    """Paint objects (later ones on top) on a grey background: (H, W, 3) uint8."""
    rgb = np.full((height, width, 3), background, np.uint8)
    for obj in objects:
        h, w = obj.mask.shape
        r0, c0 = max(obj.row, 0), max(obj.col, 0)
        r1, c1 = min(obj.row + h, height), min(obj.col + w, width)
        if r1 <= r0 or c1 <= c0:
            continue
        sub = obj.mask[r0 - obj.row:r1 - obj.row, c0 - obj.col:c1 - obj.col]
        rgb[r0:r1, c0:c1][sub] = color_of(obj.label, obj.number)
    return rgb


def write_geotiff(
    path: str | os.PathLike[str], data: np.ndarray, *, crs: Any = "EPSG:32617",
    transform: Affine | None = None, nodata: float | None = None, **profile: Any,
) -> str:
    """Write (H, W, bands) or (H, W) data as a tiled, compressed GeoTIFF.

    Default georeferencing: UTM 17N, 0.5 m pixels, near Gainesville, Florida.
    """
    if data.ndim == 2:
        data = data[..., None]
    height, width, count = data.shape
    if transform is None:
        transform = Affine(0.5, 0, 404000.0, 0, -0.5, 3286000.0)
    meta = dict(driver="GTiff", height=height, width=width, count=count, dtype=data.dtype, crs=crs,
                transform=transform, nodata=nodata, compress="deflate")
    if count != 3:  # else GDAL takes a 4th band for alpha
        meta["photometric"] = "MINISBLACK"
    if height >= 256 and width >= 256:
        meta.update(tiled=True, blockxsize=256, blockysize=256)
    meta.update(profile)
    with rasterio.open(path, "w", **meta) as dst:
        dst.write(np.moveaxis(data, -1, 0))
    return str(path)


def random_objects(height: int, width: int, n: int, seed: int = 0, r_range: tuple[float, float] = (6, 30),
                   start: int = 0) -> list[SceneObject]:
    """`n` discs and rectangles of all labels at random places; they may overlap."""
    rng = np.random.default_rng(seed)
    objs = []
    for k in range(n):
        label = LABELS[k % 3]
        r = rng.uniform(*r_range)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        if k % 2:
            objs.append(disc(label, start + k, cy, cx, r))
        else:
            objs.append(rectangle(label, start + k, int(cy - r), int(cx - r), int(2 * r), int(1.5 * r)))
    return objs


def make_scene(path: str | os.PathLike[str], size: int = 2048, seed: int = 0, n_objects: int | None = None,
               **kwargs: Any) -> str:
    """A georeferenced RGB GeoTIFF of `size`² px with coloured objects everywhere,
    many crossing the seams of any tiling, one ring larger than a 512 px tile,
    and touching pairs. Returns the path."""
    n = n_objects if n_objects is not None else size * size // 40_000
    objs = random_objects(size, size, n, seed, start=100)
    c = size / 2
    objs.insert(0, ring("green", 1, c, c, min(0.45 * size, 700), min(0.2 * size, 300)))
    # two red squares that touch, and two with a one-pixel gap, near the middle
    m = int(c)
    objs += [rectangle("red", 2, m - 40, m - 30, 30, 30), rectangle("red", 3, m - 40, m, 30, 30),
             rectangle("red", 4, m + 10, m - 30, 30, 30), rectangle("red", 5, m + 10, m + 1, 30, 30)]
    return write_geotiff(path, draw(size, size, objs), **kwargs)


def write_large_scene(path: str | os.PathLike[str], size: int, objects_per_mpx: float = 65.0, seed: int = 0,
                      r_range: tuple[float, float] = (8, 40), strip: int = 1024) -> int:
    """A `size`² RGB GeoTIFF of random discs, written strip by strip so that
    memory stays small at any size. Returns the number of discs drawn."""
    rng = np.random.default_rng(seed)
    n = int(size * size / 1e6 * objects_per_mpx)
    cy, cx = rng.uniform(0, size, n), rng.uniform(0, size, n)
    r = rng.uniform(*r_range, n)
    order = np.argsort(cy - r)
    cy, cx, r = cy[order], cx[order], r[order]
    meta = dict(driver="GTiff", height=size, width=size, count=3, dtype="uint8", crs="EPSG:32617",
                transform=Affine(0.5, 0, 404000.0, 0, -0.5, 3286000.0), compress="deflate",
                tiled=True, blockxsize=512, blockysize=512, BIGTIFF="IF_SAFER")
    with rasterio.open(path, "w", **meta) as dst:
        for top in range(0, size, strip):
            h = min(strip, size - top)
            hit = np.flatnonzero((cy - r < top + h) & (cy + r >= top))
            objs = [disc(LABELS[k % 3], int(k), cy[k] - top, cx[k], r[k]) for k in hit]
            dst.write(np.moveaxis(draw(h, size, objs), -1, 0), window=rasterio.windows.Window(0, top, size, h))
    return n


def write_region_scene(path: str | os.PathLike[str], size: int, seed: int = 0, strip: int = 512,
                       spacing: int = 400) -> dict[str, int]:
    """A `size`² RGB GeoTIFF of two regions: a green forest over the whole raster
    (it touches every edge) with round clearings (holes, one per `spacing`² px
    cell, never touching each other), and a blue river winding in from the left
    edge across 80 % of the width. Written strip by strip, so memory stays small
    at any size. Returns the painted pixel count of each label ("green", "blue")."""
    rng = np.random.default_rng(seed)
    n = max(size // spacing, 1)
    gy, gx = np.mgrid[0:n, 0:n]
    cy = (gy.ravel() + 0.5) * spacing + rng.uniform(-spacing / 7, spacing / 7, n * n)
    cx = (gx.ravel() + 0.5) * spacing + rng.uniform(-spacing / 7, spacing / 7, n * n)
    r = rng.uniform(spacing / 13, spacing * 0.27, n * n)  # gaps of at least 2 * (0.5 - 1/7 - 0.27) * spacing
    forest, river = color_of("green", 1), color_of("blue", 1)
    half = max(size // 330, 3)  # the river's half-width
    meta = dict(driver="GTiff", height=size, width=size, count=3, dtype="uint8", crs="EPSG:32617",
                transform=Affine(0.5, 0, 404000.0, 0, -0.5, 3286000.0), compress="deflate",
                tiled=True, blockxsize=512, blockysize=512, BIGTIFF="IF_SAFER")
    counts = {"green": 0, "blue": 0}
    xs = np.arange(int(0.8 * size))
    centre = size / 2 + size / 6 * np.sin(xs / size * 9.0)  # the river's middle row at each column
    with rasterio.open(path, "w", **meta) as dst:
        for top in range(0, size, strip):
            h = min(strip, size - top)
            rgb = np.empty((h, size, 3), np.uint8)
            rgb[:] = forest
            hit = np.flatnonzero((cy - r < top + h) & (cy + r >= top))
            for k in hit:
                d = disc("green", 0, cy[k] - top, cx[k], r[k])
                r0, r1 = max(d.row, 0), min(d.row + d.mask.shape[0], h)
                c0, c1 = max(d.col, 0), min(d.col + d.mask.shape[1], size)
                if r1 > r0 and c1 > c0:
                    rgb[r0:r1, c0:c1][d.mask[r0 - d.row:r1 - d.row, c0 - d.col:c1 - d.col]] = 40
            rows = np.arange(top, top + h)[:, None] + 0.5
            wet = np.abs(rows - centre[None, :]) <= half
            rgb[:, :xs.size][wet] = river
            counts["blue"] += int(wet.sum())
            counts["green"] += int((rgb == forest).all(axis=2).sum())
            dst.write(np.moveaxis(rgb, -1, 0), window=rasterio.windows.Window(0, top, size, h))
    return counts
