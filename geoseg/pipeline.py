"""Orchestration: plan -> read -> segment -> merge -> vectorise -> write."""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import geopandas as gpd
import numpy as np
import pandas as pd
from tqdm import tqdm

from geoseg import export, merge, vectorize
from geoseg.errors import EmptyRasterWarning, RasterError, RunError
from geoseg.raster import RasterSource, ReadOptions, is_raster_object, source_name
from geoseg.segmenter import Segmenter, as_segmenter, check_prompts
from geoseg.tiling import Tile, TilePlan, plan_tiles

log = logging.getLogger("geoseg")
T = TypeVar("T")

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")


@dataclass
class Settings:
    """Everything a run needs besides the inputs and the segmenter."""

    prompts: list[str]
    tile_size: int = 1008
    overlap: int = 128
    read: ReadOptions = field(default_factory=ReadOptions)
    dst_crs: Any = None
    simplify: float | None = None
    min_area: float | None = None
    match_iou: float = 0.5
    progress: bool = False


@dataclass
class RunStats:
    """What a run did, per file."""

    tiles: int = 0
    skipped: int = 0
    detections: int = 0
    objects: int = 0
    seconds: float = 0.0


def list_inputs(sources: Any) -> list[Any]:
    """Expand folders into the rasters they hold (sorted); keep files, open
    rasterio datasets and DataArrays as given."""
    if isinstance(sources, (str, os.PathLike)) or is_raster_object(sources):
        sources = [sources]
    paths: list[Any] = []
    for s in sources:
        if is_raster_object(s):
            paths.append(s)
            continue
        p = Path(s)
        if p.is_dir():
            found = sorted(str(f) for f in p.iterdir() if f.suffix.lower() in RASTER_SUFFIXES and f.is_file())
            if not found:
                raise RasterError(f"{p}: folder holds no raster (.tif, .tiff, .vrt, .jp2, .img)")
            paths.extend(found)
        else:
            paths.append(str(s))
    if not paths:
        raise RasterError("no input raster given")
    return paths


def read_ahead(src: RasterSource, tiles: list[Tile], depth: int) -> Iterator[tuple[Tile, np.ndarray, np.ndarray]]:
    """Read tiles in a background thread, `depth` ahead of the consumer.

    One thread only: a GDAL dataset handle must not be read concurrently.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="geoseg-read") as pool:
        queue: deque[tuple[Tile, Future[tuple[np.ndarray, np.ndarray]]]] = deque()
        it = iter(tiles)
        for tile in it:
            queue.append((tile, pool.submit(src.read, tile.window)))
            if len(queue) >= depth:
                break
        while queue:
            tile, fut = queue.popleft()
            nxt = next(it, None)
            if nxt is not None:
                queue.append((nxt, pool.submit(src.read, nxt.window)))
            rgb, valid = fut.result()
            yield tile, rgb, valid


def batch_size_of(segmenter: Segmenter) -> int:
    """Tiles per `segment` call: the segmenter's `batch_size`, else 4."""
    return max(1, int(getattr(segmenter, "batch_size", 4) or 4))


def batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """`items` in lists of `size` (the last may be shorter)."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def segment_batch(segmenter: Segmenter, batch: list[tuple[Tile, np.ndarray, np.ndarray]],
                   prompts: list[str]) -> list[merge.Piece]:
    tiles = np.stack([rgb for _, rgb, _ in batch])
    results = segmenter.segment(tiles, prompts)
    if len(results) != len(batch):
        raise RunError(f"the segmenter returned {len(results)} results for {len(batch)} tiles")
    pieces = []
    for (tile, _, valid), dets in zip(batch, results):
        for det in dets:
            piece = merge.to_piece(det, tile, valid)
            if piece is not None:
                pieces.append(piece)
    return pieces


def segment_raster(path: Any, segmenter: Segmenter, settings: Settings) -> tuple[gpd.GeoDataFrame, RunStats]:
    """Segment one raster into a GeoDataFrame (with area_m2, in dst_crs)."""
    start = time.perf_counter()
    stats = RunStats()
    with RasterSource(path, settings.read) as src:
        plan: TilePlan = plan_tiles(src.height, src.width, settings.tile_size, settings.overlap)
        stats.tiles = len(plan)
        begin = getattr(segmenter, "begin", None)
        if callable(begin):
            begin(len(plan), settings.prompts)
        batch_size = batch_size_of(segmenter)
        pieces: list[merge.Piece] = []
        bar = tqdm(total=len(plan), desc=source_name(path), unit="tile", disable=not settings.progress, leave=False)

        def valid_tiles() -> Iterator[tuple[Tile, np.ndarray, np.ndarray]]:
            for tile, rgb, valid in read_ahead(src, list(plan), depth=2 * batch_size):
                bar.update(1)
                if valid.any():
                    yield tile, rgb, valid
                else:
                    stats.skipped += 1

        with bar:
            for batch in batches(valid_tiles(), batch_size):
                pieces.extend(segment_batch(segmenter, batch, settings.prompts))
        stats.detections = len(pieces)
        if stats.skipped == stats.tiles:
            warnings.warn(f"{src.path}: every pixel is nodata: no object can be found", EmptyRasterWarning,
                          stacklevel=2)
        gdf = objects(pieces, plan, src.transform, src.crs, source_name(path), settings)
    stats.objects = len(gdf)
    stats.seconds = time.perf_counter() - start
    log.info("%s: %d tiles (%d nodata skipped), %d detections -> %d objects in %.1f s",
             source_name(path), stats.tiles, stats.skipped, stats.detections, stats.objects, stats.seconds)
    return gdf, stats


def objects(pieces: list[merge.Piece], plan: TilePlan, transform: Any, crs: Any, source: str,
            settings: Settings) -> gpd.GeoDataFrame:
    """Pieces -> merged objects as polygons, with area_m2, in dst_crs."""
    instances = merge.merge(pieces, plan, iou=settings.match_iou)
    gdf = vectorize.to_frame(instances, transform, crs, source=source, simplify=settings.simplify)
    return vectorize.finish(gdf, transform, settings.dst_crs, settings.min_area)


def provenance(segmenter: Segmenter | str, settings: Settings, sources: list[Any]) -> dict[str, Any]:
    """What made an output: stored with it."""
    from geoseg import __version__

    seg = segmenter if not isinstance(segmenter, str) else None
    return {
        "geoseg_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "backend": getattr(seg, "name", type(seg).__name__),
        "model": getattr(seg, "model_id", None),
        "score_threshold": getattr(seg, "score_threshold", None),
        "mask_threshold": getattr(seg, "mask_threshold", None),
        "prompts": settings.prompts,
        "tile_size": settings.tile_size,
        "overlap": settings.overlap,
        "bands": settings.read.bands,
        "resolution": settings.read.resolution,
        "stretch": settings.read.stretch,
        "dst_crs": None if settings.dst_crs is None else settings.dst_crs.to_string(),
        "simplify": settings.simplify,
        "min_area": settings.min_area,
        "sources": [source_name(s) for s in sources],
    }


def combine_frames(frames: list[gpd.GeoDataFrame], crs: Any) -> gpd.GeoDataFrame:
    frames = [f for f in frames if not f.empty] or frames[:1]
    if len({str(f.crs) for f in frames}) > 1:
        raise RasterError("the inputs have different CRSs: pass --dst-crs to put them in one, or use --output-dir")
    gdf = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=frames[0].crs if crs is None else crs)
    gdf.insert(0, "id", np.arange(1, len(gdf) + 1, dtype=np.int64))
    return gdf[[*vectorize.COLUMNS, "geometry"]]


def segment(
    source: Any,
    prompts: str | Sequence[str],
    *,
    segmenter: Segmenter | str = "sam3",
    tile_size: int = 1008,
    overlap: int = 128,
    bands: str | Sequence[int] | None = None,
    resolution: float | None = None,
    stretch: tuple[float, float] = (2.0, 98.0),
    pixel_coords: bool = False,
    dst_crs: Any = None,
    simplify: float | None = None,
    min_area: float | None = None,
    output: str | os.PathLike[str] | None = None,
    layer: str = "detections",
    overwrite: bool = False,
    progress: bool = False,
    **backend_options: Any,
) -> gpd.GeoDataFrame:
    """Segment rasters with text prompts; return one polygon per object.

    Args:
        source: a raster path, a folder of rasters, an open rasterio dataset, an
            `xarray.DataArray` georeferenced with rioxarray (band, y, x; any dtype;
            dask-backed arrays are read window by window), or a list of these.
        prompts: one or more text prompts ("building", "tree crown").
        segmenter: an object following the `Segmenter` protocol, or the name
            of a registered backend ("sam3"), built with `backend_options`
            (model=..., device=..., score_threshold=...).
        tile_size, overlap: tiling in pixels of the grid read.
        bands: 1-based band numbers, "4,3,2" or (4, 3, 2); one band is grey.
        resolution: resample on read to this pixel size (CRS units).
        stretch: percentiles of the scene-wide stretch for non-uint8 rasters.
        pixel_coords: accept rasters without a CRS; polygons in pixel space.
        dst_crs: output CRS (anything pyproj reads); default the raster's.
        simplify: simplification tolerance in pixels.
        min_area: drop objects smaller than this many square metres.
        output: write the result there too (.gpkg, .geojson, .fgb, .parquet).

    Returns:
        A GeoDataFrame with columns id, label, score, area_m2, n_tiles, source.
    """
    read = ReadOptions.of(bands=bands, resolution=resolution, stretch=stretch, pixel_coords=pixel_coords)
    settings = Settings(
        prompts=check_prompts(prompts), tile_size=tile_size, overlap=overlap, read=read,
        dst_crs=None if dst_crs is None else vectorize.parse_crs(dst_crs),
        simplify=simplify, min_area=min_area, progress=progress,
    )
    plan_tiles(tile_size, tile_size, tile_size, overlap)  # validates the tiling before any work
    if output is not None:
        export.check_output(output, overwrite)
    paths = list_inputs(source)
    for path in paths:  # fail on a bad input before the model loads
        RasterSource(path, read).close()
    segmenter = as_segmenter(segmenter, **backend_options)
    check = getattr(segmenter, "check_prompts", None)
    if callable(check):
        check(settings.prompts)
    frames = [segment_raster(path, segmenter, settings)[0] for path in paths]
    gdf = combine_frames(frames, settings.dst_crs)
    gdf.attrs["geoseg"] = provenance(segmenter, settings, paths)
    if output is not None:
        export.write(gdf, output, layer=layer, overwrite=overwrite, provenance=gdf.attrs["geoseg"],
                     crs_requested=dst_crs is not None)
    return gdf


def describe(
    path: str | os.PathLike[str], *, tile_size: int = 1008, overlap: int = 128,
    bands: str | Sequence[int] | None = None, resolution: float | None = None, pixel_coords: bool = False,
) -> dict[str, Any]:
    """The plan for one raster, without running any model."""
    import shapely
    from rasterio.windows import bounds

    read = ReadOptions.of(bands=bands, resolution=resolution, pixel_coords=pixel_coords)
    with RasterSource(path, read) as src:
        plan = plan_tiles(src.height, src.width, tile_size, overlap)
        footprint = shapely.box(*bounds(((0, src.height), (0, src.width)), src.transform))
        area = vectorize.area_m2(gpd.GeoSeries([footprint], crs=src.crs))[0]
        return {
            "path": str(path),
            "width": src.width,
            "height": src.height,
            "bands": list(src.bands),
            "dtype": str(src.dtype),
            "crs": None if src.crs is None else src.crs.to_string(),
            "pixel_size": vectorize.pixel_size(src.transform),
            "nodata": src.nodata,
            "stretch": None if src.stretch_limits is None else src.stretch_limits.round(3).tolist(),
            "area_km2": None if np.isnan(area) else area / 1e6,
            "tile_size": tile_size,
            "overlap": overlap,
            "tile_grid": list(plan.shape),
            "tiles": len(plan),
        }
