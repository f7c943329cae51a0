"""An interactive session: one raster, one loaded model, many prompts.

`Segmentation` plans the tiles and loads the segmenter once. Each `segment`
call reads the tiles again (cheap beside the model). With a backend that can hand
out its vision features (SAM 3's `vision_features` / `segment_features`), the
vision encoder runs once per tile (and per sub-tile of a refined dense tile) over
the session; the features stay on the model's device, so later prompts run only
the text encoder (cached per prompt) and the detection and mask heads.

Memory: SAM 3's features take ~60 MB per 1008 px tile in bf16 (position encodings
are shared), so a session suits rasters of tens of tiles; use `geoseg.segment` for
a large mosaic.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import geopandas as gpd
import numpy as np

from geoseg.analysis.plot import plot
from geoseg.core import merge, vectorize
from geoseg.core.exemplars import Exemplars, WithExemplars
from geoseg.core.refine import Refine
from geoseg.core.segmenter import (
    Backend,
    Segmenter,
    as_segmenter,
    check_prompts,
    check_takes_exemplars,
    check_takes_objects,
)
from geoseg.core.tiling import TilePlan, plan_tiles
from geoseg.errors import EmptyRasterWarning, UsageError, option
from geoseg.io.area import Area
from geoseg.io.exemplars import prepare, read_exemplars
from geoseg.io.objects import read_objects
from geoseg.io.raster import RasterSource
from geoseg.io.services import DEFAULT_CONNECTIONS, DEFAULT_MAX_TILES, WebOptions, is_web
from geoseg.io.sources import source_name
from geoseg.io.web import open_sources
from geoseg.run.assemble import combine_frames, objects, provenance
from geoseg.run.engine import AtLimit, LocalEngine, segment_tiles
from geoseg.run.objects import run_objects
from geoseg.run.settings import Settings, model_reading


class Segmentation:
    """Segment one raster with one prompt after another, keeping the model loaded.

    Args:
        source: a raster path, an open rasterio dataset or a georeferenced DataArray; or a
            tile service (``https://host/{z}/{x}/{y}.png``, ``WMTS:...``, ``WMS:...``) over the
            area `bbox` (in `bbox_crs`) or `aoi`, at `web_zoom` or `web_resolution`, with the
            other options of `geoseg.segment` for services (see docs/web-imagery.md).
        segmenter: a `Segmenter` or the name of a backend ("sam3"), built with
            `backend_options` (model=..., device=..., score_threshold=...).
        tile_size, overlap, bands, resolution, stretch, pixel_coords: as `geoseg.segment`.
        saturation, refine_depth, zoom: dense scenes, as `geoseg.segment`.
        progress: show a progress bar while the tiles are read and encoded.
        exemplars: boxes around examples, as `geoseg.segment`; their tokens are
            encoded once in the session.

    Example:
        >>> seg = Segmentation("ortho.tif", model="facebook/sam3")
        >>> trees = seg.segment("tree")
        >>> dead = seg.segment("dead tree")      # no second pass of the vision encoder
    """

    def __init__(
        self,
        source: Any,
        *,
        segmenter: Segmenter | str = "sam3",
        tile_size: int = 1008,
        overlap: int = 128,
        bands: str | Sequence[int] | None = None,
        resolution: float | None = None,
        stretch: tuple[float, float] = (2.0, 98.0),
        pixel_coords: bool = False,
        progress: bool = False,
        saturation: float = 0.8,
        refine_depth: int = 2,
        zoom: int = 0,
        exemplars: Any = None,
        bbox: Any = None,
        bbox_crs: Any = None,
        aoi: Any = None,
        web_zoom: int | None = None,
        web_resolution: float | None = None,
        tile_cache: Any = None,
        max_connections: int = DEFAULT_CONNECTIONS,
        max_tiles: int = DEFAULT_MAX_TILES,
        headers: Sequence[str] = (),
        attribution: str | None = None,
        **backend_options: Any,
    ) -> None:
        area = Area.of(bbox=bbox, bbox_crs=bbox_crs, aoi=aoi)
        if area is not None and not is_web(source):
            raise UsageError(f"{option('bbox')} and {option('aoi')} take part of a tile service here: for a file, "
                             f"use geoseg.segment(..., bbox=...) or crop it first")
        web = WebOptions.of(zoom=web_zoom, resolution=web_resolution, cache=tile_cache,
                            max_connections=max_connections, max_tiles=max_tiles, headers=headers,
                            attribution=attribution)
        source = open_sources([source], area, web, overlap)[0]
        self.source = source
        # what the model asks for (a student: its resolution and bands) where not given
        self.read = model_reading(bands=bands, resolution=resolution, stretch=stretch, pixel_coords=pixel_coords,
                                 segmenter=segmenter, backend_options=backend_options)
        self.tile_size, self.overlap, self.progress = tile_size, overlap, progress
        with RasterSource(source, self.read) as src:  # fails on a bad input before the model loads
            self.plan: TilePlan = plan_tiles(src.height, src.width, tile_size, overlap)
            self.transform, self.crs = src.transform, src.crs
        self.exemplars = None if exemplars is None else read_exemplars(exemplars)
        if self.exemplars is not None:
            check_takes_exemplars(segmenter)
        self.segmenter = Backend(as_segmenter(segmenter, **backend_options))
        self.tokens: dict[Any, Any] = {}  #: encoded exemplars, by level and concept
        self.name = source_name(source)
        # the cascade: each call is one prompt set, so no neighbour levels are kept between calls
        self.refine = Refine.of(saturation=saturation, depth=refine_depth, zoom=zoom, tile_size=tile_size,
                                overlap=overlap, neighbours=False)
        #: vision features of each tile (and sub-tile of a refined tile) segmented, by its pixels
        self.features: dict[bytes, Any] = {}
        self._nodata = 0

    @property
    def caches_features(self) -> bool:
        """Whether the backend lets the session reuse vision features across prompts."""
        return self.segmenter.reuses_features

    def _bar(self) -> Any:
        from tqdm.auto import tqdm

        return tqdm(total=len(self.plan), desc=self.name, unit="tile", disable=not self.progress, leave=False)

    def _pieces(self, prompts: list[str], exemplars: Exemplars | None = None) -> list[merge.Piece]:
        backend: Any = _Reusing(self.segmenter, self.features) if self.caches_features else self.segmenter
        if exemplars is not None:
            backend = WithExemplars(backend, exemplars, self.segmenter.encode_exemplars, self.tokens)
        pieces: list[merge.Piece] = []
        self._nodata = 0
        with RasterSource(self.source, self.read) as src, self._bar() as bar:
            at_limit = AtLimit(src, self.plan)
            for batch in segment_tiles(src, self.plan, list(range(len(self.plan))), backend, prompts, self.refine):
                bar.update(len(batch.tiles))
                self._nodata += len(batch.nodata)
                pieces += batch.pieces
                at_limit.add(batch.at_limit)
            at_limit.close()
        return pieces

    def segment(
        self,
        prompts: str | Sequence[str] | None = None,
        *,
        dst_crs: Any = None,
        simplify: float | None = None,
        min_area: float | None = None,
    ) -> gpd.GeoDataFrame:
        """Segment the raster with `prompts`; the same GeoDataFrame `geoseg.segment` returns."""
        import warnings

        text = check_prompts(prompts or []) if self.exemplars is None or prompts else []
        labels, only = (text, []) if self.exemplars is None else self.exemplars.concepts(text)[:2]
        settings = Settings(
            prompts=labels, tile_size=self.tile_size, overlap=self.overlap, read=self.read,
            dst_crs=None if dst_crs is None else vectorize.parse_crs(dst_crs), simplify=simplify, min_area=min_area,
            refine=self.refine, exemplars=self.exemplars, only=tuple(only),
        )
        self.segmenter.check_prompts(settings.text_prompts)
        placed = None if self.exemplars is None else prepare(
            self.exemplars, [self.source], self.read, text, tile_size=self.tile_size, overlap=self.overlap,
            refine=self.refine)
        pieces = self._pieces(settings.prompts, placed)
        if self._nodata == len(self.plan):
            warnings.warn(f"{self.name}: every pixel is nodata: no object can be found", EmptyRasterWarning,
                          stacklevel=2)
        gdf = combine_frames([objects(pieces, self.plan, self.transform, self.crs, self.name, settings)],
                             settings.dst_crs)
        gdf.attrs["geoseg"] = provenance(LocalEngine(self.segmenter), settings, [self.name])
        return gdf

    def segment_objects(self, objects: Any, *, dst_crs: Any = None, simplify: float | None = None,
                        min_area: float | None = None) -> gpd.GeoDataFrame:
        """The one object under each click or box of `objects` (a vector file, GeoDataFrame or
        GeoSeries, as `geoseg.segment(objects=...)`): one polygon each, with `object`, `label`,
        `score` and `whole`. The segmenter keeps the features of the windows it saw last, so
        another click near one costs the prompt decoder alone (see docs/objects.md)."""
        clicks = read_objects(objects)
        check_takes_objects(self.segmenter)
        settings = Settings(
            prompts=[], tile_size=self.tile_size, overlap=self.overlap, read=self.read,
            dst_crs=None if dst_crs is None else vectorize.parse_crs(dst_crs), simplify=simplify, min_area=min_area,
            refine=self.refine, objects=clicks,
        )
        return run_objects([self.source], clicks, settings, LocalEngine(self.segmenter))

    def plot(self, gdf: gpd.GeoDataFrame | None = None, **kwargs: Any) -> Any:
        """`geoseg.plot` of this raster (with the session's bands and stretch) and `gdf`."""
        kwargs.setdefault("bands", self.read.bands)
        kwargs.setdefault("stretch", self.read.stretch)
        return plot(self.source, gdf, **kwargs)

    def clear(self) -> None:
        """Drop the cached features and exemplar tokens (frees the device memory they hold)."""
        self.features.clear()
        self.tokens.clear()

    def __repr__(self) -> str:
        return (
            f"Segmentation({self.name!r}, {len(self.plan)} tiles {self.plan.shape}, "
            f"backend {self.segmenter.name}, "
            f"{len(self.features)} tiles' features cached)"
        )


class _Reusing:
    """A backend that encodes each distinct tile once (keyed by its pixels) and
    keeps its vision features, so later prompts, and the sub-tiles of refined
    tiles, run only the text encoder and the heads."""

    def __init__(self, backend: Backend, features: dict[bytes, Any]) -> None:
        self.backend, self.features = backend, features
        self.name, self.batch_size, self.max_objects = backend.name, backend.batch_size, backend.max_objects

    def segment(self, tiles: np.ndarray, prompts: Sequence[str], exemplars: dict[str, Any] | None = None) -> list[Any]:
        keys = [hashlib.blake2b(t.tobytes(), digest_size=16, person=str(t.shape).encode()[:16]).digest()
                for t in tiles]
        new = [i for i, k in enumerate(keys) if k not in self.features]
        if new:
            for i, f in zip(new, self.backend.vision_features(tiles[new]), strict=True):
                self.features[keys[i]] = f
        return self.backend.segment_features([self.features[k] for k in keys], prompts, exemplars)
