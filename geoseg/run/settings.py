"""What a run needs besides its inputs and its segmenter, as one checked value."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from geoseg.core import vectorize
from geoseg.core.refine import Refine
from geoseg.core.segmenter import (
    check_prompts,
    check_takes_exemplars,
    check_takes_objects,
    preferred_bands,
    preferred_resolution,
)
from geoseg.core.tiling import plan_tiles
from geoseg.io.area import Area
from geoseg.io.exemplars import ExemplarFile, read_exemplars
from geoseg.io.objects import ObjectFile, read_objects
from geoseg.io.raster import ReadOptions
from geoseg.run.progress import Found
from geoseg.run.workers import check_workers


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
    refine: Refine = field(default_factory=Refine)
    cpu_workers: int | None = None  #: worker processes for the CPU work (None: cores - 1; see `geoseg.run.workers`)
    exemplars: ExemplarFile | None = None  #: boxes that define concepts (see `geoseg.io.exemplars`)
    only: tuple[str, ...] = ()  #: the labels among `prompts` of exemplar-only concepts
    objects: ObjectFile | None = None  #: clicks and boxes on single objects (see `geoseg.io.objects`)
    watch: Callable[[Found], None] | None = None  #: sees each batch's detections as they come (`Progress.found`)

    @property
    def text_prompts(self) -> list[str]:
        """The prompts given as text (`prompts` are every concept's label)."""
        return [p for p in self.prompts if p not in self.only]

    @classmethod
    def of(cls, prompts: str | Sequence[str], *, tile_size: int = 1008, overlap: int = 128,
           bands: str | Sequence[int] | None = None, resolution: float | None = None,
           stretch: tuple[float, float] = (2.0, 98.0), pixel_coords: bool = False, dst_crs: Any = None,
           simplify: float | None = None, min_area: float | None = None, progress: bool = False,
           bbox: Any = None, bbox_crs: Any = None, aoi: Any = None, saturation: float = 0.8, refine_depth: int = 2,
           zoom: int = 0, neighbour_start: bool = True, cpu_workers: int | None = None,
           exemplars: Any = None, segmenter: Any = None, backend_options: dict[str, Any] | None = None,
           objects: Any = None) -> Settings:
        """Settings from the API's loose types, checked (prompts, tiling, CRS, area, refinement,
        exemplars) before any work. With `exemplars`, `prompts` may be empty.

        With `segmenter` (a backend name, built with `backend_options`, or a segmenter object), what
        the model asks for, read before it loads: without `resolution`, the rasters are read at the
        ground resolution it was trained at (metres, converted into each raster's units); without
        `bands`, the bands it was trained on; `exemplars` only for a model that takes them. With
        `objects` (clicks and boxes, `geoseg.io.objects`) alone, no prompt is needed."""
        plan_tiles(tile_size, tile_size, tile_size, overlap)
        boxes = None if exemplars is None else read_exemplars(exemplars)
        if boxes is not None and segmenter is not None:
            check_takes_exemplars(segmenter)
        clicks = None if objects is None else read_objects(objects)
        if clicks is not None and segmenter is not None:
            check_takes_objects(segmenter)
        text = check_prompts(prompts or []) if (boxes is None and clicks is None) or prompts else []
        labels, only = text, []
        if boxes is not None:
            labels, only, _ = boxes.concepts(text)
        # the area's window is grown by the overlap, so objects crossing its edge are read whole
        area = Area.of(bbox=bbox, bbox_crs=bbox_crs, aoi=aoi, margin=overlap)
        return cls(
            prompts=labels, tile_size=tile_size, overlap=overlap,
            read=model_reading(bands=bands, resolution=resolution, stretch=stretch, pixel_coords=pixel_coords,
                              area=area, segmenter=segmenter, backend_options=backend_options),
            dst_crs=None if dst_crs is None else vectorize.parse_crs(dst_crs),
            simplify=simplify, min_area=min_area, progress=progress,
            refine=Refine.of(saturation=saturation, depth=refine_depth, zoom=zoom, neighbours=neighbour_start,
                             tile_size=tile_size, overlap=overlap),
            cpu_workers=None if cpu_workers is None else check_workers(cpu_workers),
            exemplars=boxes, only=tuple(only), objects=clicks,
        )


def model_reading(*, bands: str | Sequence[int] | None = None, resolution: float | None = None,
                 stretch: tuple[float, float] = (2.0, 98.0), pixel_coords: bool = False, area: Area | None = None,
                 segmenter: Any = None, backend_options: dict[str, Any] | None = None) -> ReadOptions:
    """How to read the rasters for `segmenter` (see `Settings.of`): what is not given, as the model asks."""
    metres = False
    if segmenter is not None:
        options = backend_options or {}
        if resolution is None:  # a student reads at the resolution it was trained at
            resolution = preferred_resolution(segmenter, **options)
            metres = resolution is not None
        if bands is None:
            bands = preferred_bands(segmenter, **options)
    return ReadOptions.of(bands=bands, resolution=resolution, stretch=stretch, pixel_coords=pixel_coords, area=area,
                          metres=metres)


def fingerprint(settings: Settings, engine: Any) -> dict[str, Any]:
    """The settings that decide what is staged, by CLI option name (a backend's
    `config()` keys as `--key-name`)."""
    out: dict[str, Any] = {"--backend": engine.backend}
    out.update({"--" + k.replace("_", "-"): v for k, v in engine.options.items()})
    out.update(own_fingerprint(settings))
    return out


def own_fingerprint(settings: Settings) -> dict[str, Any]:
    """The part of `fingerprint` that geoseg's own settings make: known before any model loads."""
    read = settings.read
    out: dict[str, Any] = {"--prompt": settings.text_prompts}
    out["--exemplars"] = None if settings.exemplars is None else settings.exemplars.fingerprint()
    if settings.objects is not None:  # absent otherwise, so that older work folders still resume
        out["--objects"] = settings.objects.fingerprint()
    out.update({
        "--tile-size": settings.tile_size, "--overlap": settings.overlap,
        "--bands": None if read.bands is None else list(read.bands),
        # a model's own resolution (metres) is the model's, fingerprinted by it: --resolution is in CRS units
        "--resolution": None if read.metres else read.resolution,
        "--stretch": list(read.stretch), "--pixel-coords": read.pixel_coords,
    })
    no_area = {"--bbox": None, "--bbox-crs": None, "--aoi": None}
    out.update(read.area.fingerprint() if read.area is not None else no_area)
    out.update(settings.refine.fingerprint())
    return out
